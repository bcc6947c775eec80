"""Every layer type a Caffe net file can hold has a home in sfport: a registered converter, or (the data layers)
an input of the graph. The list is BVLC/caffe master's layer registry (src/caffe/layers/*_layer.cpp,
REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR), checked against the legacy V1 type enum of the schema, plus the
fork types sfport reads. A Python layer's code lives in the user's module: its error says how to register it."""
import pytest
from google.protobuf import text_format

from sfport import converters
from sfport.netdef import datalayers
from sfport.converters import UnknownLayerType
from sfport.protos import caffe_pb2
from sfport.formats.upgrade import V1_TYPE_NAMES

# BVLC master's registered layer types (Recurrent is abstract: RNN and LSTM register, it does not)
BVLC_TYPES = """AbsVal Accuracy ArgMax BatchNorm BatchReindex Bias BNLL Clip Concat ContrastiveLoss Convolution Crop
Data Deconvolution Dropout DummyData Eltwise ELU Embed EuclideanLoss Exp Filter Flatten HDF5Data HDF5Output
HingeLoss Im2col ImageData InfogainLoss InnerProduct Input Log LRN LSTM LSTMUnit MemoryData MultinomialLogisticLoss
MVN Parameter Pooling Power PReLU Python Reduction ReLU Reshape RNN Scale Sigmoid SigmoidCrossEntropyLoss Silence
Slice Softmax SoftmaxWithLoss Split SPP Swish TanH Threshold Tile WindowData""".split()

# the forks' types sfport reads: SphereFace (MarginInnerProduct, InterClass), SSD (Normalize, PriorBox,
# DetectionOutput, Permute, DetectionEvaluate, MultiBoxLoss), DeepLab (Interp), ShuffleNet (ShuffleChannel), MobileNet forks
# (ReLU6, DepthwiseConvolution, ConvolutionDepthwise), SegNet / YOLO (Upsample), SegNet / ENet (BN), brocolli
# (MaxUnPool, PixelShuffle)
FORK_TYPES = """MarginInnerProduct InterClass Normalize PriorBox DetectionOutput Permute DetectionEvaluate MultiBoxLoss Interp
ShuffleChannel ReLU6 DepthwiseConvolution ConvolutionDepthwise Upsample BN MaxUnPool PixelShuffle""".split()
# py-faster-rcnn (ROIPooling, SmoothL1Loss) and R-FCN (PSROIPooling): converters/roi.py
FORK_TYPES += ["ROIPooling", "PSROIPooling", "SmoothL1Loss"]
# the brocolli fork's own small layers: converters/brocolli.py
FORK_TYPES += ["HardSigmoid", "HardSwish", "Pad", "Unsqueeze", "Resize", "BilinearInterpolate", "BatchNormKyle"]
# the C++ Proposal of the py-faster-rcnn forks (the oracle's brocolli-caffe): converters/proposal.py
FORK_TYPES += ["Proposal"]
# DeepLab's test-time layers (converters/segmentation.py)
FORK_TYPES += ["SegAccuracy", "MatWrite", "Padding"]
# DeepLab v1's V1 enum types (SEG_ACCURACY = 40 ... DENSE_CRF = 45, IMAGE_SEG_DATA), under DeepLab v2's names; two
# have no converter in sfport (the README says why): their files parse, and building them names the type
DEEPLAB_V1 = {"ImageSegData", "SegAccuracy", "Interp", "Padding", "MatWrite", "MatRead", "DenseCRF"}
NOT_PORTED = {"MatRead", "DenseCRF"}

CANNOT_BE_IN_A_MODEL_FILE = {"Python"}   # its code is the user's module, never imported from a file


def test_the_bvlc_list_covers_the_legacy_enum():
    """Every V1 LayerType (caffe.proto's V1LayerParameter, BVLC's list of 2014) is in the master list."""
    legacy = set(V1_TYPE_NAMES.values()) - {""} - DEEPLAB_V1
    assert legacy <= set(BVLC_TYPES), legacy - set(BVLC_TYPES)


@pytest.mark.parametrize("t", sorted(NOT_PORTED))
def test_deeplab_types_without_a_converter_are_one_line(t):
    with pytest.raises(UnknownLayerType) as e:
        converters.get(t, "x")
    assert f"'{t}'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("t", sorted(set(BVLC_TYPES + FORK_TYPES) - CANNOT_BE_IN_A_MODEL_FILE))
def test_every_type_has_a_converter_or_is_a_data_layer(t):
    assert converters.find(t) is not None or t in datalayers.DATA_TYPES, t


def test_every_registered_type_is_a_known_caffe_type():
    """No converter for a name Caffe and the forks do not use (a typo would never match a file)."""
    assert set(converters.registered_types()) <= set(BVLC_TYPES + FORK_TYPES)


def test_a_python_layer_says_how_to_register_a_converter():
    layer = text_format.Parse('name: "py" type: "Python" bottom: "x" top: "y" '
                              'python_param { module: "m" layer: "L" }', caffe_pb2.LayerParameter())
    with pytest.raises(UnknownLayerType) as e:
        converters.get(layer.type, layer.name)
    msg = str(e.value)
    assert "layer 'py' is a Python layer" in msg and "@sfport.converters.register('Python')" in msg
    assert "\n" not in msg
