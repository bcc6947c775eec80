"""Running a net: the ``torch.nn.Module`` of a Caffe net and pycaffe's ``Net`` (:mod:`.net`), export to
TorchScript, ONNX and ``.caffemodel`` (:mod:`.export`), what runs an inference net (:mod:`.backend`), and
verification blob by blob against a reference (:mod:`.verify`)."""

# what may run an inference net (sfport.runtime.backend.Runner; the commands' --backend)
BACKENDS = ("auto", "openvino", "onnxruntime", "torch")
