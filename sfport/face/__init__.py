"""The face application of SphereFace: alignment as the authors' Matlab (:mod:`.align`), MTCNN detection
(:mod:`.mtcnn`), features of image lists (:mod:`.features`) and the LFW protocol of ``evaluation.m``
(:mod:`.lfw`). No module outside this package and the command line imports it."""
