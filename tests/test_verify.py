"""`sfport verify` on any net form: train/test definitions (the reference reads the inference net sfport derived),
fork types the reference knows under another name, and every input of a multi-input net fed."""
import json
import pathlib
import re

from click.testing import CliRunner
from google.protobuf import text_format

import sfport
from sfport.formats import caffe_files
from sfport.cli import cli
from sfport.netdef.weight_match import with_random_weights
from sfport.protos import caffe_pb2
from tests.conftest import FIXTURES

NETS = pathlib.Path(__file__).parent / "nets"


def _verify(args):
    r = CliRunner().invoke(cli, ["verify", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _random_model(text, tmp_path):
    net = caffe_pb2.NetParameter()
    text_format.Parse(text, net)
    p, w = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    caffe_files.write_prototxt(p, net)
    caffe_files.write_caffemodel(w, with_random_weights(sfport.CaffeModel.from_net(net), seed=5))
    return p, w


def test_a_train_test_definition_verifies_against_opencv():
    doc = _verify([str(FIXTURES / "lenet/lenet_iter_10000.caffemodel"), "-p", str(NETS / "lenet_train_test.prototxt"),
                   "--shape", "2,1,28,28"])
    names = [b["name"] for b in doc["blobs"]]
    assert doc["passed"] and names[-1] == "prob" and "loss" not in names and "accuracy" not in names
    assert doc["input_shape"] == [2, 1, 28, 28]


def test_depthwise_convolution_is_read_by_opencv_as_a_grouped_convolution(tmp_path):
    p, w = _random_model('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 9 '
                         'dim: 7 } } } layer { name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "dw" '
                         'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }', tmp_path)
    doc = _verify([str(w), "-p", str(p)])
    assert doc["passed"] and [b["name"] for b in doc["blobs"]] == ["dw"]


def test_every_input_of_a_two_input_net_is_fed(tmp_path):
    p, w = _random_model('layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 5 } } } '
                         'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" } '
                         'layer { name: "conv" type: "Convolution" bottom: "s" top: "c" '
                         'convolution_param { num_output: 2 kernel_size: 3 } }', tmp_path)
    doc = _verify([str(w), "-p", str(p), "--shape", "a=1,3,8,7", "--shape", "b=1,3,8,7"])
    # 'sum' = a + b equals OpenCV's only when both inputs are fed, each the same on both sides
    assert doc["passed"] and doc["blobs"][0]["name"] == "sum" and doc["blobs"][0]["shape"] == [1, 3, 8, 7]


TWO_INPUTS = ('layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 5 } '
              'shape { dim: 1 dim: 3 dim: 6 dim: 5 } } } '
              'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }')


def test_each_input_takes_its_own_image_or_array(tmp_path):
    """--input NAME=SOURCE per input: the reference directory holds a + b computed here from the image and the
    array, so the blob passes only when each input got its own source."""
    import cv2
    import numpy as np
    p, w = _random_model(TWO_INPUTS, tmp_path)
    img = np.random.default_rng(3).integers(0, 256, (20, 17, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "face.png"), img)
    b = np.random.default_rng(4).normal(size=(1, 3, 6, 5)).astype(np.float32)
    np.save(tmp_path / "b.npy", b)
    a = (cv2.resize(img, (5, 6), interpolation=cv2.INTER_LINEAR).astype(np.float32) - 127.5) / 128
    ref = tmp_path / "ref"
    ref.mkdir()
    np.save(ref / "s.npy", a.transpose(2, 0, 1)[None] + b)
    doc = _verify([str(w), "-p", str(p), "--reference", str(ref), "--input", f"a={tmp_path / 'face.png'}",
                   "--input", f"b={tmp_path / 'b.npy'}", "--tol", "1e-6"])
    assert doc["passed"] and [c["name"] for c in doc["blobs"]] == ["s"]
    assert doc["inputs"]["b"] == {"shape": [1, 3, 6, 5], "source": str(tmp_path / "b.npy")}
    # a bare source is the first input's; the other one is random and the sum no longer matches
    r = CliRunner().invoke(cli, ["verify", str(w), "-p", str(p), "--reference", str(ref),
                                 "--input", str(tmp_path / "face.png")])
    assert r.exit_code == 1 and "FAILED: 1 of 1" in r.stdout


def test_an_array_input_gives_its_shape(tmp_path):
    import numpy as np
    p, w = _random_model(TWO_INPUTS, tmp_path)
    for name in "ab":
        np.save(tmp_path / f"{name}.npy", np.ones((2, 3, 9, 4), np.float32))
    doc = _verify([str(w), "-p", str(p), "--input", f"a={tmp_path / 'a.npy'}", "--input", f"b={tmp_path / 'b.npy'}"])
    assert doc["passed"] and doc["blobs"][0]["shape"] == [2, 3, 9, 4]
    assert doc["blobs"][0]["max_ref"] == 2.0     # ones + ones, fed to OpenCV too


def test_bad_inputs_are_one_line(tmp_path):
    import pickle
    import numpy as np
    p, w = _random_model(TWO_INPUTS, tmp_path)
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 6, 4), np.float32))
    np.save(tmp_path / "text.npy", np.array(["x", "y"]))
    (tmp_path / "pickled.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, "
                                           b"'shape': (1,), }" + b" " * 53 + b"\n" + pickle.dumps([1]))
    (tmp_path / "short.npy").write_bytes((tmp_path / "wrong.npy").read_bytes()[:100])
    cases = {("--input", "c=random"): "has no input 'c' (inputs: a, b)",
             ("--input", f"b={tmp_path / 'wrong.npy'}", "--shape", "b=1,3,6,5"): "an array of shape [1, 3, 6, 4] "
                                                                                 "for an input of shape [1, 3, 6, 5]",
             ("--input", f"a={tmp_path / 'text.npy'}"): "not an array of real numbers",
             ("--input", f"a={tmp_path / 'pickled.npy'}"): "not a valid .npy file",
             ("--input", f"a={tmp_path / 'short.npy'}"): "not a valid .npy file",
             ("--input", f"a={tmp_path / 'none.npy'}"): "no such file",
             ("--input", "random", "--input", "random"): "several --input values without a name"}
    for args, said in cases.items():
        r = CliRunner().invoke(cli, ["verify", str(w), "-p", str(p), *args])
        assert r.exit_code == 2 and r.stdout == "", (args, r.output)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sfport: error: ") and said in lines[0], (args, r.stderr)


def test_a_reference_that_cannot_load_the_net_is_one_line(tmp_path, shared):
    """OpenCV has no MarginInnerProduct: the golden margin net (no loss, so fc6 is an output) cannot run there."""
    golden = shared / "golden"
    net = caffe_files.read_prototxt(golden / "margin/margin_single.prototxt")
    w = tmp_path / "margin.caffemodel"
    caffe_files.write_caffemodel(w, with_random_weights(net, seed=2))
    r = CliRunner().invoke(cli, ["verify", str(w), "-p", str(golden / "margin/margin_single.prototxt")])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code == 2 and r.stdout == "", r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sfport: error: {w}: the reference (OpenCV "), r.stderr
    assert "cannot load or run the net" in lines[0] and "--reference caffe" in lines[0]


def test_every_shared_prototxt_verifies_or_is_one_line(shared, tmp_path):
    """Every .prototxt under the shared folder with seeded random weights: a net passes against OpenCV (train
    'model' nets once given the shape they leave open), anything else is one clean line (exit 2)."""
    from sfport.errors import CaffeFileError
    outcome = {"passed": [], "error": []}
    for k, path in enumerate(sorted(shared.rglob("*.prototxt"))):
        try:
            w = tmp_path / f"{k}.caffemodel"
            caffe_files.write_caffemodel(w, with_random_weights(caffe_files.read_prototxt(path), seed=k))
            args = ["verify", str(w), "-p", str(path)]
        except CaffeFileError:
            try:   # a training net whose data layer leaves the shape open: random weights at a given shape
                from sfport.runtime.net import load_net
                inference = load_net(str(path), input_shapes=(1, 3, 112, 96)).definition
                caffe_files.write_caffemodel(w, with_random_weights(caffe_files.CaffeModel.from_net(inference, None),
                                                                    seed=k))
                args = ["verify", str(w), "-p", str(path), "--shape", "1,3,112,96"]
            except CaffeFileError:
                args = ["verify", str(path)]           # a file sfport cannot read as a net: verify says so
        r = CliRunner().invoke(cli, args)
        if r.exit_code == 2 and "--shape" in r.stderr:
            r = CliRunner().invoke(cli, args + ["--shape", "1,3,112,96"])
        assert r.exception is None or isinstance(r.exception, SystemExit), (path, r.exception)
        assert "Traceback" not in r.output, path
        if r.exit_code == 0:
            assert r.stdout.splitlines()[-1].startswith("passed: "), (path, r.stdout)
            outcome["passed"].append(path.name)
            continue
        if r.exit_code == 1 and path.name.startswith(("faster_rcnn", "rfcn")):
            # the two-stage detectors at their prototxt's 224 x 224: py-faster-rcnn's ProposalLayer keeps fewer
            # than 300 rois there, OpenCV's Proposal always gives 300 rows (tests/test_detectors.py verifies them
            # where both keep 300)
            last = r.stdout.splitlines()[-1]
            assert re.search(r"first divergence at 'proposal' \(shapes differ: sfport (\d+)x5, reference 300x5\)$",
                             last) and int(re.search(r"sfport (\d+)x5", last).group(1)) < 300, r.stdout
            outcome["error"].append(path.name)
            continue
        assert r.exit_code == 2 and r.stdout == "", (path, r.output)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sfport: error: "), (path, r.stderr)
        outcome["error"].append(path.name)
    # every deploy net and every SphereFace training net passes; the errors are the solvers, the SSD nets
    # (fields of the SSD fork the schema lacks), the margin nets OpenCV cannot run and the two-stage detectors
    # (above)
    assert all(n in outcome["passed"] for n in ("sphereface_deploy.prototxt", "sphereface_model.prototxt",
                                                "sphereface_64_model.prototxt", "sfplus_model.prototxt",
                                                "det1.prototxt", "slim-320.prototxt", "lenet.prototxt")), outcome
    assert len(outcome["passed"]) >= 23 and all("solver" in n or "SSD" in n or n.startswith(("margin", "inter"))
                                                 or n.startswith(("faster_rcnn", "rfcn")) for n in outcome["error"]), \
        outcome


def test_blobs_of_different_sizes_are_named_with_both_shapes():
    # OpenCV's Proposal always gives post_nms_topN rows where py-faster-rcnn's (and sfport's) keeps the NMS
    # survivors: nothing to compare value by value, and the table and the summary say so with both shapes
    import numpy as np
    from sfport.runtime import verify as V
    ours = {"a": np.ones((2, 3)), "rois": np.zeros((4, 5))}
    ref = {"a": np.ones((2, 3)) + 1e-7, "rois": np.full((300, 5), -7.0)}
    checks = V.compare(ours, ref, ["a", "rois"])
    assert [c.ok for c in checks] == [True, False]
    bad = checks[1]
    assert bad.shape == [300, 5] and bad.our_shape == [4, 5] and bad.max_ref == 7.0
    assert V.failure_text(bad) == "shapes differ: sfport 4x5, reference 300x5"
    assert V.failure_text(checks[0]).startswith("rel err ")
    assert "300x5 (sfport 4x5)" in V.format_table(checks).splitlines()[2]
