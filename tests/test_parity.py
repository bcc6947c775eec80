"""Acceptance 1-3 of convert/verify: every weighted fixture, the SphereFace nets with sfport-written random
weights and MobileFaceNet on real photos match OpenCV 4's Caffe implementation blob by blob; TorchScript, ONNX
(onnxruntime) and the written-back caffemodel (read by OpenCV) match too."""
import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sfport.cli import cli
from sfport.runtime import export, verify
from sfport.formats import caffe_files
from sfport.netdef import weight_match
from sfport.runtime.net import Net

from conftest import FIXTURES, MODEL_PAIRS

TOL = 1e-5


def opencv_parity(net, prototxt, caffemodel, x, name):
    """Every blob OpenCV exposes, against sfport's output of the same layer; returns the checks."""
    ref = verify.opencv_reference(str(prototxt), str(caffemodel), {name: x})
    net.forward(**{name: x})
    ours = {n: o[0].detach().numpy() for n, o in net.layer_outputs.items()}
    checks = verify.compare(ours, ref, list(net.layer_outputs), TOL)
    assert len(checks) >= len([n for n in ref if n in ours]) > 0
    assert all(c.ok for c in checks), verify.format_table(checks)
    return checks


SIZES = {"mtcnn/det1.caffemodel": [(1, 3, 12, 12), (1, 3, 100, 80), (1, 3, 217, 173)],
         "lenet/lenet_iter_10000.caffemodel": [(3, 1, 28, 28)]}


@pytest.mark.parametrize("prototxt,caffemodel", MODEL_PAIRS, ids=[c.split("/")[-1] for _, c in MODEL_PAIRS])
def test_fixture_models_match_opencv_at_every_blob(prototxt, caffemodel):
    p, c = FIXTURES / prototxt, FIXTURES / caffemodel
    for shape in SIZES.get(caffemodel, [None]):
        net = Net(str(p), str(c), input_shapes=shape)
        (name, in_shape), = list(net.inputs.items())
        checks = opencv_parity(net, p, c, verify.make_input(in_shape, "random", 1), name)
        print(caffemodel, in_shape, "worst", max(checks, key=lambda k: k.rel_err))


def test_stored_training_net_of_a_snapshot_converts():
    """Without a prototxt: det1.caffemodel stores its training net (HDF5Data with label first, Slice of the
    label, losses); the deploy form keeps data12face as input and drops the label branch."""
    c = FIXTURES / "mtcnn/det1.caffemodel"
    net = Net(str(c), input_shapes=(1, 3, 12, 12))
    assert list(net.inputs) == ["data12face"] and set(net.outputs) == {"conv4-1", "conv4-2"}
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        deploy = os.path.join(d, "deploy.prototxt")
        caffe_files.write_prototxt(deploy, net.definition)
        opencv_parity(net, deploy, c, verify.make_input((1, 3, 12, 12), "random", 2), "data12face")


SPHEREFACE = ["sphereface_prototxt/zuoqing1988/sphereface04_deploy.prototxt",
              "sphereface_prototxt/zuoqing1988/sphereface06_deploy.prototxt",
              "sphereface_prototxt/zuoqing1988/sphereface06bn_deploy.prototxt",
              "sphereface_prototxt/wy1iu/sphereface_deploy.prototxt",
              "sphereface_prototxt/wy1iu/sphereface_64_deploy.prototxt"]


@pytest.mark.parametrize("prototxt", SPHEREFACE, ids=lambda p: p.split("/")[-1])
def test_sphereface_nets_with_random_weights_match_opencv(prototxt, tmp_path):
    p = FIXTURES / prototxt
    w = tmp_path / "random.caffemodel"
    caffe_files.write_caffemodel(w, weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=1))
    net = Net(str(p), str(w))
    checks = opencv_parity(net, p, w, verify.make_input((1, 3, 112, 96), "random", 0), "data")
    by_depth = [f"{c.name}:{c.rel_err:.1e}" for c in checks if c.name.startswith(("res", "fc5"))]
    print(prototxt, "error by depth", by_depth)


PHOTOS = ["mobilefacenet_insightface/Aaron_Eckhart_0001.jpg", "lfw/Anthony_Hopkins_0001.jpg",
          "lfw/Anthony_Hopkins_0002.jpg", "sphereface_prototxt/zuoqing1988/00.jpg", "mtcnn/test1.jpg"]


def test_mobilefacenet_features_on_real_photos_equal_opencv():
    p = FIXTURES / "mobilefacenet_insightface/mxnet2caffe_mobilefacenet.prototxt"
    c = FIXTURES / "mobilefacenet_insightface/mxnet2caffe_mobilefacenet.caffemodel"
    net = Net(str(p), str(c))
    ref_net = cv2.dnn.readNetFromCaffe(str(p), str(c))
    feats = []
    for photo in PHOTOS:
        x = verify.make_input((1, 3, 112, 112), str(FIXTURES / photo))
        ours = next(iter(net.forward(data=x).values())).detach().numpy().ravel().astype(np.float64)
        ref_net.setInput(x)
        ref = ref_net.forward().ravel().astype(np.float64)
        cos = ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref)
        assert cos >= 0.99999, (photo, cos)
        feats.append(ours / np.linalg.norm(ours))
    # and the features mean something: the matched LFW pair is closer than a different person
    assert feats[1] @ feats[2] > feats[1] @ feats[0] + 0.3


@pytest.mark.parametrize("prototxt,caffemodel", MODEL_PAIRS, ids=[c.split("/")[-1] for _, c in MODEL_PAIRS])
def test_exports_match_caffenet(prototxt, caffemodel, tmp_path):
    """TorchScript and ONNX (onnxruntime, batch 1 and 2) within 1e-5; the caffemodel written back is read by
    OpenCV and gives the outputs of the original file."""
    p, c = FIXTURES / prototxt, FIXTURES / caffemodel
    net = Net(str(p), str(c))
    _, ts_err = export.torchscript_bytes(net, TOL)
    _, onnx_err = export.onnx_bytes(net, TOL)
    assert ts_err <= TOL and onnx_err <= TOL
    back = tmp_path / "back.caffemodel"
    export.write(net, back, "caffemodel")
    (name, shape), = list(net.inputs.items())
    x = verify.make_input(shape, "random", 5)
    outs = []
    for weights in (c, back):
        ref = cv2.dnn.readNetFromCaffe(str(p), str(weights))
        ref.setInput(x, name)
        outs.append(ref.forward(net.outputs))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    print(caffemodel, f"TorchScript {ts_err:.1e}, ONNX {onnx_err:.1e}")


def test_pt_file_round_trip_and_weights_only(tmp_path):
    p = FIXTURES / "mtcnn/det2.prototxt"
    c = FIXTURES / "mtcnn/det2.caffemodel"
    net = Net(str(p), str(c))
    path = tmp_path / "det2.pt"
    net.save(path)
    doc = torch.load(path, weights_only=True)  # no code runs on load
    assert doc["format"] == "sfport-net" and "conv1.weight" in "".join(doc["state_dict"])
    again = Net(str(path))
    x = verify.make_input((1, 3, 24, 24), "random", 3)
    for k, v in net.forward(data=x).items():
        assert torch.equal(v, again.forward(data=x)[k])


def test_cli_convert_and_verify(tmp_path):
    runner = CliRunner()
    c, p = FIXTURES / "mtcnn/det1.caffemodel", FIXTURES / "mtcnn/det1.prototxt"
    out = tmp_path / "det1.onnx"
    r = runner.invoke(cli, ["convert", str(c), "-p", str(p), "--format", "onnx", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 20000 and "checked against the eager net" in r.stdout
    r = runner.invoke(cli, ["verify", str(c), "--shape", "1,3,100,80", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["passed"] and len(doc["blobs"]) == 9 and doc["input_shape"] == [1, 3, 100, 80]
    r = runner.invoke(cli, ["verify", str(c), "-p", str(p), "--tol", "1e-12"])
    assert r.exit_code == 1 and "first divergence at 'conv1'" in r.stdout


def test_verify_against_a_directory_of_npy(tmp_path):
    """A reference given as <blob>.npy files, pycaffe's convention (each blob's last value, so conv1 is after
    the in-place PReLU1), here made from OpenCV's layer outputs: a changed blob is found."""
    c, p = FIXTURES / "mtcnn/det1.caffemodel", FIXTURES / "mtcnn/det1.prototxt"
    x = verify.make_input((1, 3, 12, 12), "random", 0)
    ref = verify.opencv_reference(str(p), str(c), {"data": x})
    for layer in caffe_files.read_prototxt(p).net.layer:
        if layer.name in ref:
            np.save(tmp_path / f"{layer.top[0]}.npy", ref[layer.name])
    r = CliRunner().invoke(cli, ["verify", str(c), "-p", str(p), "--reference", str(tmp_path)])
    assert r.exit_code == 0, r.output
    bad = ref["PReLU3"].copy()
    bad[0, 0, 0, 0] += 0.01
    np.save(tmp_path / "conv3.npy", bad)
    r = CliRunner().invoke(cli, ["verify", str(c), "-p", str(p), "--reference", str(tmp_path)])
    assert r.exit_code == 1 and "first divergence at 'conv3'" in r.stdout


CAFFE_PYTHON = __import__("os").environ.get("SFPORT_CAFFE_PYTHON")


@pytest.mark.skipif(not CAFFE_PYTHON, reason="pycaffe oracle not built: run ../shared/tools/build-caffe-oracle.sh "
                                              "and set SFPORT_CAFFE_PYTHON to its python")
@pytest.mark.parametrize("prototxt,caffemodel", MODEL_PAIRS, ids=[c.split("/")[-1] for _, c in MODEL_PAIRS])
def test_fixture_models_match_pycaffe(prototxt, caffemodel):
    """The same check against a real (forward-only) Caffe build, blob by blob in pycaffe's naming."""
    r = CliRunner().invoke(cli, ["verify", str(FIXTURES / caffemodel), "-p", str(FIXTURES / prototxt),
                                 "--reference", "caffe", "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["passed"] and len(doc["blobs"]) >= 4, r.output
