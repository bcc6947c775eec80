"""Acceptance 2 and 3: every fixture caffemodel reads as OpenCV 4's Caffe reader sees it, and writes back
byte for byte; solverstates too; deploy + weights merge by layer name as Caffe's CopyTrainedLayersFrom."""
import hashlib

import cv2
import numpy as np
import pytest

from google.protobuf import text_format

from sfport.formats import caffe_files
from sfport.netdef import weight_match
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2

from conftest import FIXTURES, GOLDEN, MODEL_PAIRS, all_caffemodels

assert cv2.__version__.split(".")[0] == "4", "OpenCV 5 has no Caffe reader; the tests need opencv<5"


def _opencv_shape_matches(ours, theirs):
    """OpenCV keeps blobs as cv::Mat: a 1-D blob of n values becomes n x 1 (or 1 x n for InnerProduct bias)."""
    ours, theirs = tuple(ours), tuple(theirs)
    if len(ours) == 1:
        return theirs in ((ours[0], 1), (1, ours[0]))
    if len(ours) == 0:
        return theirs == (1, 1)
    return ours == theirs


@pytest.mark.parametrize("prototxt,caffemodel", MODEL_PAIRS, ids=[c for _, c in MODEL_PAIRS])
def test_blobs_equal_opencv(prototxt, caffemodel):
    """Every layer OpenCV builds from deploy + weights has the same blobs (count, shape, values) in sfport."""
    net = cv2.dnn.readNetFromCaffe(str(FIXTURES / prototxt), str(FIXTURES / caffemodel))
    ours = caffe_files.read_caffemodel(FIXTURES / caffemodel).params
    deploy_layers = {l.name for l in caffe_files.read_prototxt(FIXTURES / prototxt).net.layer}
    checked = 0
    for name in net.getLayerNames():
        layer = net.getLayer(net.getLayerId(name))
        if not layer.blobs:
            continue
        assert name in ours, f"OpenCV has blobs for {name}, sfport has none"
        assert len(ours[name]) == len(layer.blobs), name
        for j, (a, b) in enumerate(zip(ours[name], layer.blobs)):
            assert _opencv_shape_matches(a.shape, b.shape), f"{name} blob {j}: sfport {a.shape}, OpenCV {b.shape}"
            assert np.array_equal(a.ravel(), b.ravel()), f"{name} blob {j} values differ"
            checked += 1
    # and nothing sfport reads for a deploy layer is missed by OpenCV
    with_blobs_in_deploy = {n for n in ours if n in deploy_layers}
    opencv_with_blobs = {n for n in net.getLayerNames() if net.getLayer(net.getLayerId(n)).blobs}
    assert with_blobs_in_deploy == opencv_with_blobs
    assert checked >= 4


@pytest.mark.parametrize("path", all_caffemodels(include_golden=True), ids=lambda p: p.name)
def test_read_write_is_byte_identical(path, tmp_path):
    """Acceptance 3, also for the golden Caffe 1.0 snapshots."""
    m = caffe_files.read_caffemodel(path)
    out = tmp_path / "copy.caffemodel"
    caffe_files.write_caffemodel(out, m)
    a, b = path.read_bytes(), out.read_bytes()
    assert len(a) == len(b) and hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def test_values_match_protobufs_own_decoding():
    """The zero-copy reader gives the same numbers as plain protobuf parsing of the whole file."""
    path = FIXTURES / "mtcnn/det3.caffemodel"
    ref = caffe_pb2.NetParameter.FromString(path.read_bytes())
    ours = caffe_files.read_caffemodel(path)
    n = 0
    for i, layer in enumerate(ref.layer):
        arrays = ours.blob_arrays(i)
        for blob, arr in zip(layer.blobs, arrays):
            assert arr.shape == tuple(blob.shape.dim)
            assert np.array_equal(arr.ravel(), np.array(blob.data, dtype=np.float32))
            n += 1
    assert n == 21  # 8 convolutions/inner products x 2 + 5 PReLU


@pytest.mark.parametrize("path", sorted(GOLDEN.rglob("*.solverstate")), ids=lambda p: p.parent.name)
def test_solverstate_reads_and_round_trips(path, tmp_path):
    s = caffe_files.read_solverstate(path)
    ref = caffe_pb2.SolverState.FromString(path.read_bytes())
    assert (s.state.iter, s.state.current_step, s.state.learned_net) == (ref.iter, ref.current_step, ref.learned_net)
    assert len(s.history) == len(ref.history) > 0
    for arr, blob in zip(s.history, ref.history):
        assert np.array_equal(arr.ravel(), np.array(blob.data, dtype=np.float32))
    out = tmp_path / "copy.solverstate"
    caffe_files.write_solverstate(out, s.state, s.history)
    assert out.read_bytes() == path.read_bytes()


def test_merge_deploy_with_training_snapshot():
    """det1.caffemodel is a training snapshot: its data/loss layers have no place in the deploy net."""
    definition = caffe_files.read_prototxt(FIXTURES / "mtcnn/det1.prototxt")
    weights = caffe_files.read_caffemodel(FIXTURES / "mtcnn/det1.caffemodel")
    merged, report = weight_match.merge(definition, weights)
    assert report.copied == ["conv1", "PReLU1", "conv2", "PReLU2", "conv3", "PReLU3", "conv4-1", "conv4-2"]
    assert report.layers_without_weights == [] and report.weights_without_layers == []
    assert [l.name for l in merged.net.layer][:2] == ["input", "conv1"]
    assert np.array_equal(merged.params["conv3"][0], weights.params["conv3"][0])


def test_merge_reports_missing_and_unused_layers(tmp_path):
    definition = caffe_files.read_prototxt(FIXTURES / "mtcnn/det1.prototxt")
    definition.net.layer[1].name = "conv1_renamed"
    weights = caffe_files.read_caffemodel(FIXTURES / "mtcnn/det1.caffemodel")
    merged, report = weight_match.merge(definition, weights)
    assert report.layers_without_weights == ["conv1_renamed"]
    assert report.weights_without_layers == ["conv1"]


def test_merge_shape_mismatch_names_both_shapes(tmp_path):
    p = tmp_path / "det1_wide.prototxt"
    p.write_text((FIXTURES / "mtcnn/det1.prototxt").read_text().replace("num_output: 16", "num_output: 17"))
    with pytest.raises(CaffeFileError) as e:
        weight_match.merge(caffe_files.read_prototxt(p), caffe_files.read_caffemodel(FIXTURES / "mtcnn/det1.caffemodel"))
    msg = str(e.value)
    assert "layer 'conv2' (Convolution) blob 0: weights have shape [16, 10, 3, 3], the net needs [17, 10, 3, 3]" in msg
    assert str(p) in msg and "det1.caffemodel" in msg and "(and" in msg  # conv2 bias, PReLU2, conv3 follow


def test_legacy_4d_blob_shapes_match_like_caffe(tmp_path):
    """Old caffemodels store an InnerProduct weight as num/channels/height/width = 1,1,N,K (Blob::ShapeEquals)."""
    src = caffe_files.read_caffemodel(FIXTURES / "lenet/lenet_iter_10000.caffemodel")
    i = next(k for k, l in enumerate(src.net.layer) if l.name == "ip2")
    blob = src.net.layer[i].blobs[0]
    blob.ClearField("shape")
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 10, 500
    legacy = tmp_path / "legacy.caffemodel"
    caffe_files.write_caffemodel(legacy, src)
    weights = caffe_files.read_caffemodel(legacy)
    assert weights.params["ip2"][0].shape == (1, 1, 10, 500)
    merged, report = weight_match.merge(caffe_files.read_prototxt(FIXTURES / "lenet/lenet.prototxt"), weights)
    assert "ip2" in report.copied and not report.mismatches
    blob.num = 2
    blob.height = 5
    caffe_files.write_caffemodel(legacy, src)
    with pytest.raises(CaffeFileError, match=r"blob 0: weights have shape \[2, 1, 5, 500\], the net needs \[10, 500\]"):
        weight_match.merge(caffe_files.read_prototxt(FIXTURES / "lenet/lenet.prototxt"), caffe_files.read_caffemodel(legacy))


TINY_IP = """name: "ip"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
"""


def _tiny_ip_weights(shape, path):
    """The tiny net with an InnerProduct weight blob of ``shape`` (12 values) and a bias of 3."""
    model = caffe_files.CaffeModel.from_net(text_format.Parse(TINY_IP, caffe_pb2.NetParameter()))
    model.set_blob_arrays(1, [np.arange(12, dtype=np.float32).reshape(shape), np.zeros(3, np.float32)])
    caffe_files.write_caffemodel(path, model)
    return caffe_files.read_caffemodel(path)


@pytest.mark.parametrize("how", ["net", "merge"])
def test_transposed_weight_of_the_same_size_is_refused_by_every_copy(how, tmp_path):
    """Caffe's Blob::ShapeEquals: a (4, 3) blob does not load into a (3, 4) InnerProduct, though both hold 12
    values; Net (convert, verify, train --weights) and merge (inspect --prototxt) copy by the same rule."""
    (tmp_path / "ip.prototxt").write_text(TINY_IP)
    definition = caffe_files.read_prototxt(tmp_path / "ip.prototxt")
    good = _tiny_ip_weights((3, 4), tmp_path / "good.caffemodel")
    bad = _tiny_ip_weights((4, 3), tmp_path / "bad.caffemodel")
    copy = (lambda w: Net(definition, weights=w)) if how == "net" else (lambda w: weight_match.merge(definition, w))
    copy(good)
    with pytest.raises(CaffeFileError) as e:
        copy(bad)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "bad.caffemodel")) and str(tmp_path / "ip.prototxt") in msg
    assert "layer 'ip' (InnerProduct) blob 0: weights have shape [4, 3], the net needs [3, 4]" in msg
    if how == "net":
        assert Net(definition, weights=good).params["ip"][0].detach().numpy().ravel().tolist() == list(range(12))


def test_blob_count_disagreeing_with_shape_is_reported(tmp_path):
    src = caffe_files.read_caffemodel(FIXTURES / "mtcnn/det1.caffemodel")
    i = next(k for k, l in enumerate(src.net.layer) if l.name == "conv2")
    src.net.layer[i].blobs[0].shape.dim[0] = 15
    bad = tmp_path / "bad.caffemodel"
    caffe_files.write_caffemodel(bad, src)
    with pytest.raises(CaffeFileError, match=r"layer 'conv2' \(Convolution\) blob 0: blob holds 1440 values "
                                             r"but its shape \[15, 10, 3, 3\] needs 1350"):
        caffe_files.read_caffemodel(bad)


@pytest.mark.parametrize("case", ["empty", "missing", "directory", "random", "text_as_weights", "binary_as_text"])
def test_bad_files_raise_one_line_errors(case, tmp_path):
    path = tmp_path / "x.caffemodel"
    reader = caffe_files.read_caffemodel
    if case == "empty":
        path.write_bytes(b"")
        expect = "empty file"
    elif case == "missing":
        expect = "no such file"
    elif case == "directory":
        path.mkdir()
        expect = "is a directory"
    elif case == "random":
        path.write_bytes(np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes())
        expect = "not a valid binary Caffe NetParameter"
    elif case == "text_as_weights":
        path.write_bytes((FIXTURES / "mtcnn/det1.prototxt").read_bytes())
        expect = "is a text prototxt, but a binary .caffemodel"
    else:
        path = tmp_path / "x.prototxt"
        path.write_bytes((FIXTURES / "mtcnn/det1.caffemodel").read_bytes())
        reader = caffe_files.read_prototxt
        expect = "is a binary protobuf (a .caffemodel?)"
    with pytest.raises(CaffeFileError) as e:
        reader(path)
    assert str(e.value).startswith(f"{path}: ") and expect in str(e.value) and "\n" not in str(e.value)


def test_writes_are_atomic_and_leave_nothing_behind(tmp_path, monkeypatch):
    """A failing write leaves neither a half-written target nor a temporary file; a good one has the
    usual permissions."""
    m = caffe_files.read_caffemodel(FIXTURES / "mtcnn/det1.caffemodel")
    target = tmp_path / "out.caffemodel"
    target.write_bytes(b"previous content")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(caffe_files.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        caffe_files.write_caffemodel(target, m)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.caffemodel"]
    monkeypatch.undo()
    caffe_files.write_caffemodel(target, m)
    assert target.read_bytes() == (FIXTURES / "mtcnn/det1.caffemodel").read_bytes()
    import os, stat
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
