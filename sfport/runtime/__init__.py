"""Running a net: the ``torch.nn.Module`` of a Caffe net and pycaffe's ``Net`` (:mod:`.net`), export to
TorchScript, ONNX and ``.caffemodel`` (:mod:`.export`), what runs an inference net (:mod:`.backend`), and
verification blob by blob against a reference (:mod:`.verify`)."""

# what may run an inference net (sfport.runtime.backend.Runner; the commands' --backend)
BACKENDS = ("auto", "openvino", "onnxruntime", "torch")

# Under ``auto`` (sfport.runtime.backend.Runner), a job of fewer forwards (images, mirror images counted) than this
# runs on the eager net: making and checking the export (and compiling it on OpenVINO) took 2.0-2.4 s for
# SphereFace-20 and 0.45-0.6 s for MobileFaceNet on the 2-core CPU machine, and saves 1.5-3.2 ms (SphereFace-20)
# and 2.9-3.3 ms (MobileFaceNet) a forward over the optimized eager net: it pays from about 170 forwards for
# MobileFaceNet, 700-1,500 for SphereFace-20. ``sfport compare`` (4 forwards) took 5.0-5.4 s with the export,
# 2.8-3.0 eagerly.
AUTO_EAGER_BELOW = 256
