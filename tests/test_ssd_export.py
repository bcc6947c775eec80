"""DetectionOutput exported whole (converters/modules/ssd_export.py): MobileNet-SSD's ``detection_out`` from its ONNX
file on onnxruntime and from its TorchScript file equals OpenCV 4's (cv2.dnn's DetectionOutput) on the same weights and
input, at batch 1 and 2, with the conf heads scaled so that many priors pass confidence_threshold (keep_top_k cut
or not); hand-built nets of the one layer against the fork's own C++ (the oracle pycaffe, when installed) and the
rules of detection_output_layer.cpp Forward_cpu: ties at the keep_top_k cut, an image without detections, the
all-empty rows, inverted boxes, top_k; ``pre_nms`` (``sfport convert --pre-nms``) keeps the form before the NMS.

How rows are compared (:func:`_match`): as sets per image and label, each of ours with an unused reference row whose
every value is within 1e-5 (relative to max(1, |value|)); rows may differ only where scores tie at the keep_top_k
cut: an unmatched row on either side must have the score of its image's last kept row, the image must hold
keep_top_k rows, and both sides the same number of rows per image. Caffe (and OpenCV) choose among those ties by
std::sort's order; the export keeps the lower label, then the lower prior."""
import io
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

from sfport import converters
from sfport.cli import cli
from sfport.formats import caffe_files
from sfport.netdef import weight_match
from sfport.protos import caffe_pb2
from sfport.runtime import export, verify
from sfport.runtime.net import Net

from conftest import HAVE_SHARED, NO_SHARED, SHARED

TOL = 1e-5
ORACLE = os.environ.get("SFPORT_ORACLE_PYTHON", "/tmp/oracle/venv/bin/python")


def _match(ours, ref, keep_top_k):
    """The number of our rows that are other rows of a score tied at the keep_top_k cut (see the module); asserts
    everything else. ``_match.worst``: the largest relative difference of matched rows so far."""
    a, b = ours.reshape(-1, 7), ref.reshape(-1, 7)
    assert sorted(a[:, 0].tolist()) == sorted(b[:, 0].tolist()), "rows per image"
    used, swapped, worst = np.zeros(len(b), bool), [], 0.0
    for r in a:
        err = (np.abs(b - r) / np.maximum(1, np.abs(b))).max(1)
        ok = ~used & (b[:, 0] == r[0]) & (b[:, 1] == r[1]) & (err <= TOL)
        if ok.any():
            j = int(np.argmin(np.where(ok, err, np.inf)))
            used[j], worst = True, max(worst, float(err[j]))
        else:
            swapped.append(r)
    for side, rows in (("ours", np.asarray(swapped).reshape(-1, 7)), ("reference", b[~used])):
        for r in rows:
            img = a[a[:, 0] == r[0]]
            cut = img[:, 2].min()
            assert len(img) == keep_top_k and abs(r[2] - cut) <= TOL * max(1, cut), (side, r, cut)
    _match.worst = max(getattr(_match, "worst", 0.0), worst)
    return len(swapped)


def _caffe_order(rows):
    """Forward_cpu's order: by image, then ascending label, then descending score."""
    r = rows.reshape(-1, 7)
    key = np.lexsort((-r[:, 2], r[:, 1], r[:, 0]))
    return np.array_equal(key, np.arange(len(r)))


# ------------------------------------------------------------------------------------ MobileNet-SSD vs OpenCV 4

@pytest.fixture(scope="module", params=[10.0, 30.0], ids=["55-detections", "keep_top_k-cut"])
def ssd(request, tmp_path_factory):
    """MobileNet-SSD, seeded random weights with the mbox_conf heads scaled (x10: 55 detections per image, fewer
    than keep_top_k; x30: more than keep_top_k 100), exported once to ONNX and to TorchScript; OpenCV's files."""
    if not HAVE_SHARED:
        pytest.skip(NO_SHARED)
    p = SHARED / "fixtures/ssd/MobileNetSSD_deploy.prototxt"
    d = tmp_path_factory.mktemp("ssd")
    m = weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=1)
    for i, layer in enumerate(m.net.layer):
        if layer.name.endswith("_mbox_conf"):
            w, b = m.blob_arrays(i)
            m.set_blob_arrays(i, [w * request.param, b])
    caffe_files.write_caffemodel(d / "w.caffemodel", m)
    net = Net(str(p), str(d / "w.caffemodel"))
    onnx_data, r_onnx = export.onnx_export(net)
    ts_data, r_ts = export.torchscript_export(net)
    caffe_files.write_prototxt(d / "ref.prototxt", verify.reference_definition(net, opencv=True))
    caffe_files.write_caffemodel(d / "ref.caffemodel", verify.reference_weights(net))
    return dict(p=str(p), w=str(d / "w.caffemodel"), net=net, onnx=onnx_data, r_onnx=r_onnx, ts=ts_data, r_ts=r_ts,
                ref=(str(d / "ref.prototxt"), str(d / "ref.caffemodel")))


def _opencv(ref, x):
    """cv2.dnn's detection_out rows, its zero-score padding (up to keep_top_k) dropped."""
    import cv2
    net = cv2.dnn.readNetFromCaffe(*ref)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.setInput(x, "data")
    rows = np.asarray(net.forward("detection_out")).reshape(-1, 7)
    return rows[rows[:, 2] != 0]


def _input(shared, batch):
    srcs = ["random", str(shared / "fixtures/mtcnn/test1.jpg")][:batch]
    return np.concatenate([verify.make_input((1, 3, 300, 300), s, 7) for s in srcs])


@pytest.mark.parametrize("batch", [1, 2])
def test_onnx_and_torchscript_detection_out_is_opencvs(ssd, shared, batch):
    """The exported files' detection_out (1 x 1 x R x 7, R dynamic) against cv2.dnn's, and against the eager net."""
    r = ssd["r_onnx"]
    assert r.dynamic_size and not any("before its NMS" in n for n in r.notes) and r.worst <= TOL
    assert ssd["r_ts"].worst <= TOL and not any("before its NMS" in n for n in ssd["r_ts"].notes)
    proto = onnx.load_from_string(ssd["onnx"])
    assert {"NonMaxSuppression", "TopK"} <= {n.op_type for n in proto.graph.node}
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_value == 7             # the row count is dynamic
    x = _input(shared, batch)
    got = ort.InferenceSession(ssd["onnx"], providers=["CPUExecutionProvider"]).run(["detection_out"],
                                                                                    {"data": x})[0]
    with torch.no_grad():
        ts = torch.jit.load(io.BytesIO(ssd["ts"]))(torch.from_numpy(x))[0].numpy()
    cv = _opencv(ssd["ref"], x)
    eager = Net(ssd["p"], ssd["w"], input_shapes={"data": x.shape}).forward(data=x)["detection_out"].numpy()
    keep = 100
    assert got.shape[:2] == (1, 1) and got.shape[3] == 7 and _caffe_order(got)
    per_image = [int((got[0, 0, :, 0] == i).sum()) for i in range(batch)]
    assert all(n > 50 for n in per_image), per_image
    _match.worst = 0.0
    swapped = {"opencv": _match(got, cv, keep)}
    worst_cv = _match.worst
    swapped |= {"eager": _match(got, eager, keep),
               "torchscript vs opencv": _match(ts, cv, keep)}
    assert ts.shape == got.shape and _caffe_order(ts)
    print(f"batch {batch}: rows per image {per_image}, rows of a tied score swapped {swapped}, worst relative "
          f"difference of matched onnx / opencv rows {worst_cv:.2e}")


# ------------------------------------------------------------------------------ one DetectionOutput, hand-built

def _layer_net(param: str, p: int, n: int, c: int, loc_classes: int = 1) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="det")
    for name, shape in (("loc", (n, p * loc_classes * 4)), ("conf", (n, p * c)), ("prior", (1, 2, p * 4))):
        layer = net.layer.add(name=name, type="Input")
        layer.top.append(name)
        layer.input_param.shape.add().dim.extend(shape)
    layer = net.layer.add(name="detection_out", type="DetectionOutput")
    layer.bottom.extend(["loc", "conf", "prior"])
    layer.top.append("detection_out")
    text_format.Parse(param, layer.detection_output_param)
    return net


def _grid_priors(p: int, inverted=()) -> np.ndarray:
    """p disjoint priors on a row, variances 0.1 0.1 0.2 0.2; the ``inverted`` ones with xmax < xmin."""
    boxes = np.array([[k * 0.1, 0.1, k * 0.1 + 0.05, 0.2] for k in range(p)], np.float32)
    for k in inverted:
        boxes[k, [0, 2]] = boxes[k, [2, 0]]
    var = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (p, 1))
    return np.stack([boxes.reshape(-1), var.reshape(-1)])[None]


def _oracle(tmp_path, net, inputs):
    """The fork's Forward_cpu: the oracle pycaffe in a subprocess, or None when it is not installed."""
    if not Path(ORACLE).exists():
        return None
    caffe_files.write_prototxt(tmp_path / "o.prototxt", net)
    np.savez(tmp_path / "in.npz", **inputs)
    script = ("import sys, numpy as np, caffe\ncaffe.set_mode_cpu()\nnet = caffe.Net(sys.argv[1], caffe.TEST)\n"
              "x = np.load(sys.argv[2])\nfor k in x.files:\n    net.blobs[k].data[...] = x[k]\n"
              "np.save(sys.argv[3], net.forward()['detection_out'])\n")
    subprocess.run([ORACLE, "-c", script, str(tmp_path / "o.prototxt"), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npy")], check=True, capture_output=True, timeout=120)
    return np.load(tmp_path / "out.npy")


def _exports(tmp_path, net_param, inputs, **options):
    """detection_out of the net's ONNX file (onnxruntime) and TorchScript file, and the eager net's."""
    caffe_files.write_prototxt(tmp_path / "n.prototxt", net_param)
    net = Net(str(tmp_path / "n.prototxt"))
    data, r = export.onnx_export(net, dynamic=False, **options)
    ts, r2 = export.torchscript_export(net, dynamic=False, **options)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    with torch.no_grad():
        t = torch.jit.load(io.BytesIO(ts))(*[torch.from_numpy(inputs[k]) for k in ("loc", "conf", "prior")])[0]
    eager = net.forward(**inputs)["detection_out"].numpy()
    return got, t.numpy(), eager, r


def test_ties_at_the_keep_top_k_cut(tmp_path):
    """30 disjoint priors; 40 detections of score 0.75 (class 1 priors 0..19, class 2 priors 10..29: saturated heads
    give such ties), 10 above them, keep_top_k 25: the 10 and 15 of the tied 40 are kept. The fork (std::sort) picks its 15 by its own order;
    the export the lower label, then the lower prior: class 1's priors 0..14. Everything else equals the fork's."""
    p, c = 30, 3
    conf = np.zeros((1, p, c), np.float32)
    conf[0, :, 1] = conf[0, :, 2] = 0.75
    conf[0, 20:, 0], conf[0, :10, 2] = 0.25, 0.5
    conf[0, 20:, 1] = np.float32(0.8) + np.arange(10, dtype=np.float32) * np.float32(0.01)   # the 10 above
    inputs = {"loc": np.zeros((1, p * 4), np.float32), "conf": conf.reshape(1, -1), "prior": _grid_priors(p)}
    net = _layer_net("num_classes: 3 background_label_id: 0 keep_top_k: 25 confidence_threshold: 0.3 code_type: CORNER "
                     "nms_param { nms_threshold: 0.45 top_k: 100 }", p, 1, c)
    got, ts, eager, _ = _exports(tmp_path, net, inputs)
    np.testing.assert_array_equal(ts, got)
    rows = got.reshape(-1, 7)
    assert len(rows) == 25 and _caffe_order(got)
    above = rows[rows[:, 2] > 0.76]
    assert sorted(above[:, 1].tolist()) == [1] * 10
    tied = rows[rows[:, 2] == np.float32(0.75)]
    assert [(int(r[1]), int(np.rint(r[3] / 0.1))) for r in tied] == [(1, k) for k in range(15)]
    ref = _oracle(tmp_path, net, inputs)
    swapped = _match(got, eager if ref is None else ref, 25)
    assert swapped <= 15
    print(f"ties at the cut: {swapped} of the 15 tied rows kept are other rows than "
          f"{'the oracle' if ref is not None else 'eager (libstdc++ std::sort)'} keeps")


def test_an_image_without_detections_the_all_empty_rows_and_inverted_boxes(tmp_path):
    """Batch 2: image 0 has detections (two of them inverted boxes, which overlap nothing in Caffe), image 1 none:
    rows of image 0 only. All scores below the threshold: one row [i, -1, -1, -1, -1, -1, -1] per image
    (Forward_cpu's num_kept == 0). CORNER code, share_location false, top_k 4 of 6 candidates."""
    p, c = 8, 3
    pr = _grid_priors(p)
    pr[0, 0, 4:8] = pr[0, 0, 0:4] + np.float32([0.01, 0, 0.01, 0])        # prior 1 on prior 0 (IoU > 0.45)
    loc = np.zeros((2, p, c, 4), np.float32)
    loc[0, 2, 1] = [0.5, 0, -0.5, 0]                                      # prior 2 of class 1: xmax < xmin
    loc[0, 3, 1] = [0, 0.5, 0, -0.5]
    conf = np.zeros((2, p, c), np.float32)
    conf[0, :6, 1] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    conf[0, :3, 2] = 0.6
    inputs = {"loc": loc.reshape(2, -1), "conf": conf.reshape(2, -1), "prior": pr}
    text = ("num_classes: 3 share_location: false background_label_id: 0 keep_top_k: -1 code_type: CORNER "
            "confidence_threshold: 0.3 nms_param { nms_threshold: 0.45 top_k: 4 }")
    net = _layer_net(text, p, 2, c, loc_classes=c)
    got, ts, eager, _ = _exports(tmp_path, net, inputs)
    ref = _oracle(tmp_path, net, inputs)
    want = eager if ref is None else ref
    np.testing.assert_array_equal(ts, got)
    assert got.shape == want.shape and np.abs(got - want).max() <= TOL
    rows = got.reshape(-1, 7)
    assert set(rows[:, 0].tolist()) == {0.0}
    # class 1: prior 1 suppressed by prior 0; priors 2, 3 inverted (kept); prior 4 outside top_k 4. class 2: 0, 2
    assert [(int(r[1]), round(float(r[2]), 2)) for r in rows] == [(1, 0.9), (1, 0.7), (1, 0.6), (2, 0.6), (2, 0.6)]
    inputs["conf"] = np.full_like(inputs["conf"], 0.1)
    got, ts, eager, _ = _exports(tmp_path, net, inputs)
    empty = np.array([[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]], np.float32).reshape(1, 1, 2, 7)
    np.testing.assert_array_equal(got, empty)
    np.testing.assert_array_equal(ts, empty)
    if ref is not None:
        np.testing.assert_array_equal(_oracle(tmp_path, net, inputs), empty)


def test_eta_below_one_and_pre_nms_keep_the_form_before_the_nms(tmp_path):
    """eta < 1 (no standard operation adapts the threshold) and pre_nms export the rows before the NMS, with
    their note; converters.ssd.detections finishes them as the eager net."""
    p, c = 8, 3
    conf = np.random.default_rng(0).random((1, p, c)).astype(np.float32)
    inputs = {"loc": np.zeros((1, p * 4), np.float32), "conf": conf.reshape(1, -1), "prior": _grid_priors(p)}
    base = ("num_classes: 3 keep_top_k: 5 confidence_threshold: 0.1 code_type: CORNER "
            "nms_param { nms_threshold: 0.45 %s }")
    for text, options in ((base % "eta: 0.9", {}), (base % "", {"pre_nms": True})):
        got, ts, eager, r = _exports(tmp_path, _layer_net(text, p, 1, c), inputs, **options)
        assert got.shape == (1, p, 4 + c) and any("before its NMS" in n for n in r.notes)
        from sfport.converters import ssd
        finished = ssd.detections(text, got)
        np.testing.assert_allclose(finished, eager, rtol=0, atol=TOL)


def test_convert_pre_nms_on_the_command_line(shared, tmp_path):
    """`sfport convert --format onnx` writes detection_out's rows; with --pre-nms the N x priors x 25 rows."""
    p = shared / "fixtures/ssd/MobileNetSSD_deploy.prototxt"
    m = weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=2)
    caffe_files.write_caffemodel(tmp_path / "w.caffemodel", m)
    assert "--pre-nms" in CliRunner().invoke(cli, ["convert", "--help"]).output
    for flag, shape in (([], None), (["--pre-nms"], (1, 1917, 25))):
        out = tmp_path / f"m{len(flag)}.onnx"
        res = CliRunner().invoke(cli, ["convert", str(tmp_path / "w.caffemodel"), "-p", str(p), "--format", "onnx",
                                       "-o", str(out), *flag])
        assert res.exit_code == 0, res.output
        x = verify.make_input((1, 3, 300, 300), "random", 0)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
        if shape:
            assert got.shape == shape
        else:   # random weights: nothing above 0.25, the fork's empty row
            np.testing.assert_array_equal(got, np.float32([[[[0, -1, -1, -1, -1, -1, -1]]]]))
    assert converters.export_option("pre_nms") is None       # the option holds only while exporting
