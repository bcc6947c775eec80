"""A net definition and its transformations, as Caffe's Net builds them: the NetState rules
(:mod:`.netstate`), the data layers (:mod:`.datalayers`), the wiring of bottoms to tops and Caffe's inserted
splits (:mod:`.wiring`), shapes (:mod:`.shapes`), the graph a net runs (:mod:`.graph`), the deploy form
(:mod:`.deploy`), the inference-optimized form (:mod:`.optimize`), weight matching (:mod:`.weight_match`),
what ``sfport inspect`` shows (:mod:`.inspection`), the built-in SphereFace nets (:mod:`.builtin`) and
draw_net.py's graph (:mod:`.draw`)."""
