"""Shape inference (used to check weights against a definition) agrees with OpenCV's Caffe importer, and the
built-in SphereFace nets are the authors' deploy prototxts."""
import cv2
import pytest

from sfport.formats import caffe_files
from sfport.netdef import weight_match, builtin, shapes
from sfport.converters import geometry
from sfport.protos import caffe_pb2

from conftest import FIXTURES

CASES = [
    ("mtcnn/det1.prototxt", (1, 3, 12, 12)),
    ("mtcnn/det1.prototxt", (1, 3, 37, 53)),      # odd sizes: Caffe's ceil pooling
    ("mtcnn/det2.prototxt", (1, 3, 24, 24)),
    ("mtcnn/det3.prototxt", (1, 3, 48, 48)),
    ("mtcnn/det4.prototxt", (1, 15, 24, 24)),      # Slice + Concat
    ("lenet/lenet.prototxt", (64, 1, 28, 28)),
    ("mobilefacenet_insightface/mxnet2caffe_mobilefacenet.prototxt", (1, 3, 112, 112)),  # depthwise, BN on FC
    ("ultraface/slim-320.prototxt", (1, 3, 240, 320)),   # Permute, Reshape
    ("sphereface_prototxt/wy1iu/sphereface_deploy.prototxt", (1, 3, 112, 96)),
    ("sphereface_prototxt/zuoqing1988/sphereface06bn_deploy.prototxt", (2, 3, 112, 96)),
]


@pytest.mark.parametrize("prototxt,shape", CASES, ids=[f"{p.split('/')[-1]}-{s[2]}x{s[3]}" for p, s in CASES])
def test_top_and_param_shapes_match_opencv(prototxt, shape, tmp_path):
    """OpenCV loads sfport's random weights (so the parameter shapes are what it expects) and reports the
    same top shapes for every layer."""
    m = caffe_files.read_prototxt(FIXTURES / prototxt)
    dims = m.net.layer[0].input_param.shape[0]
    del dims.dim[:]
    dims.dim.extend(shape)
    caffe_files.write_prototxt(tmp_path / "n.prototxt", m.net)
    caffe_files.write_caffemodel(tmp_path / "w.caffemodel", weight_match.with_random_weights(m))
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "n.prototxt"), str(tmp_path / "w.caffemodel"))
    ids, _, outs = net.getLayersShapes(list(shape))
    names = net.getLayerNames()
    theirs = {names[i - 1]: [tuple(int(x) for x in a) for a in o] for i, o in zip(ids, outs) if i}
    ours = {m.net.layer[ls.index].name: [tuple(t) for t in ls.tops] for ls in shapes.infer(m.net)}
    assert len(theirs) >= 8
    for name, tops in theirs.items():
        assert ours[name] == tops, f"{name}: sfport {ours[name]}, OpenCV {tops}"


@pytest.mark.parametrize("size,kernel,pad,stride,ceil,expected", [
    (12, 3, 0, 2, True, 6), (12, 3, 0, 2, False, 5), (7, 3, 1, 2, True, 4), (6, 3, 1, 2, True, 4),
    (5, 2, 1, 2, True, 3), (4, 2, 1, 2, True, 3), (1, 3, 1, 2, True, 1)])
def test_pooling_output_size_hand_computed(size, kernel, pad, stride, ceil, expected):
    """Caffe PoolingLayer::Reshape: out = ceil((H + 2p - k) / s) + 1, minus one when the last window starts in the padding."""
    assert geometry.pooled_size(size, size, (kernel, kernel), (stride, stride), (pad, pad), ceil) == \
        (expected, expected)


@pytest.mark.parametrize("depth,path", [(20, "sphereface_deploy.prototxt"), (64, "sphereface_64_deploy.prototxt")])
def test_builtin_sphereface_equals_authors_deploy(depth, path):
    authors = caffe_files.read_prototxt(FIXTURES / "sphereface_prototxt/wy1iu" / path).net
    assert builtin.sphereface_deploy(depth) == authors


def test_sphereface20_parameter_count():
    """The authors' SphereFace-20 deploy prototxt: fc5 is 512 x 21504; the whole deploy net has 22.67 M parameters (the ~90 MB caffemodel)."""
    params = [p for ls in shapes.infer(builtin.sphereface_deploy(20)) for p in ls.params]
    assert (512, 21504) in params
    assert sum(__import__("math").prod(p) for p in params) == 22_670_656


def test_phase_filtering_follows_net_state_rules():
    layer = caffe_pb2.LayerParameter(name="x")
    layer.include.add(phase=caffe_pb2.TRAIN)
    assert shapes.layer_included(layer, caffe_pb2.TRAIN) and not shapes.layer_included(layer, caffe_pb2.TEST)
    layer = caffe_pb2.LayerParameter(name="y")
    layer.exclude.add(phase=caffe_pb2.TEST, stage=["deploy"])
    assert shapes.layer_included(layer, caffe_pb2.TEST)
    assert not shapes.layer_included(layer, caffe_pb2.TEST, stages=("deploy",))
