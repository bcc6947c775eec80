"""The backend chosen for the user (sfport.runtime.backend.Runner, features.Model, MTCNN), progress lines in logs, and
features streamed to the output: each against the plain eager net (checked against OpenCV and Caffe elsewhere)."""
import re
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sfport.formats import caffe_files
from sfport.runtime import export
from sfport.runtime import backend as backend_mod
from sfport.runtime.backend import Runner, for_onnxruntime, run_session, session
from sfport.face.features import Model
from sfport.runtime.net import Net
from sfport.report.progress import Progress

import synthfaces
from conftest import FIXTURES
from test_optimize import BN, SCALE, _net
from netcases import layer

GLOG = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ [\w.]+:\d+\] ")


@pytest.fixture(scope="module")
def bn_face(tmp_path_factory):
    """A 3 x 112 x 96 net with BatchNorm + Scale after each convolution and an fc5 feature blob followed by more
    layers (which the features do not need), its caffemodel and prototxt; and 6 face images."""
    d = tmp_path_factory.mktemp("bnface")
    body = (layer("c1", "Convolution", ["data"], ["c1"], 'convolution_param { num_output: 8 kernel_size: 3 stride: 2 }')
            + layer("bn1", "BatchNorm", ["c1"], ["c1"], BN) + layer("s1", "Scale", ["c1"], ["c1"], SCALE)
            + layer("r1", "PReLU", ["c1"], ["c1"])
            + layer("c2", "Convolution", ["c1"], ["c2"], 'convolution_param { num_output: 8 kernel_size: 3 stride: 2 '
                                                       'bias_term: false }')
            + layer("bn2", "BatchNorm", ["c2"], ["c2"], BN) + layer("s2", "Scale", ["c2"], ["c2"], SCALE)
            + layer("fc5", "InnerProduct", ["c2"], ["fc5"], "inner_product_param { num_output: 16 }")
            + layer("fc6", "InnerProduct", ["fc5"], ["fc6"], "inner_product_param { num_output: 4 }"))
    m = _net(body, (1, 3, 112, 96))
    caffe_files.write_caffemodel(d / "bn.caffemodel", m)
    caffe_files.write_prototxt(d / "bn.prototxt", m.net)
    rng = np.random.default_rng(0)
    for k in range(6):
        cv2.imwrite(str(d / f"f{k}.jpg"), synthfaces.render(synthfaces.identity(rng), rng))
    return d


def _plain_fc5(d, x):
    net = Net(str(d / "bn.prototxt"), str(d / "bn.caffemodel"))
    net.forward(data=x)
    return net.blobs["fc5"].detach().numpy()


# auto's choice: OpenVINO where it is installed (the test extras install it), else onnxruntime
AUTO = "openvino" if backend_mod.openvino_installed() else "onnxruntime"


def test_auto_runs_the_optimized_net_on_its_export_and_only_what_the_blob_needs(bn_face):
    m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    assert m.backend == AUTO and m.output == "fc5"
    assert m.backend_line.startswith(f"backend: {AUTO} (its ONNX export, checked against the eager net)")
    assert "4 layers folded into 2" in m.backend_line and "1 not needed for the output" in m.backend_line
    assert [gl.name for gl in m.net.graph.layers] == ["c1", "r1", "c2", "fc5"]
    x = np.random.default_rng(1).uniform(-1, 1, (5, 3, 112, 96)).astype(np.float32)
    want = _plain_fc5(bn_face, x)
    for backend in ("auto", "torch", "onnxruntime") + (("openvino",) if AUTO == "openvino" else ()):
        m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt", backend=backend)
        assert m.backend == (AUTO if backend == "auto" else backend)
        got = m.features(torch.from_numpy(x))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))


def test_auto_runs_a_small_job_eagerly(bn_face):
    """A job of fewer than AUTO_EAGER_BELOW images (mirror images counted) runs on the eager net under auto, and
    says so; from that count on, or where the count is not given, on the export; a backend named is honoured."""
    from sfport.runtime import AUTO_EAGER_BELOW
    args = (bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, 112, 96)).astype(np.float32)
    want = _plain_fc5(bn_face, x)
    small = Model(*args, forwards=AUTO_EAGER_BELOW - 1)
    assert small.backend == "torch" and small.runner.session is None
    assert small.backend_line.startswith(f"backend: torch (auto: {AUTO_EAGER_BELOW - 1} image(s) to run, fewer "
                                         f"than {AUTO_EAGER_BELOW}: done before an export would be ready); "
                                         f"optimized: 4 layers folded into 2")
    np.testing.assert_allclose(small.features(torch.from_numpy(x)), want, rtol=0,
                               atol=1e-5 * max(1, np.abs(want).max()))
    assert Model(*args, forwards=AUTO_EAGER_BELOW).backend == AUTO
    assert Model(*args, backend="onnxruntime", forwards=4).backend == "onnxruntime"


def test_auto_exports_at_the_first_use_so_cached_features_export_nothing(bn_face, tmp_path, monkeypatch):
    """Under auto the Runner chooses (exports, compiles, checks) at its first use: features read from the cache
    run nothing, so nothing is exported; the features computed are the plain net's."""
    from sfport.face import features
    made = []
    real = export.onnx_bytes
    monkeypatch.setattr(export, "onnx_bytes", lambda *a, **k: made.append(1) or real(*a, **k))
    paths = [f"f{k}.jpg" for k in range(6)]
    m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    assert made == [] and m.runner._chosen is None
    first = features.extract(m, paths, bn_face, cache_dir=tmp_path, workers=0)
    assert made == [1] and m.backend == AUTO
    x = np.stack([cv2.imread(str(bn_face / p)).astype(np.float32) for p in paths])
    want = _plain_fc5(bn_face, ((x - 127.5) / 128).transpose(0, 3, 1, 2))
    np.testing.assert_allclose(first.features, want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))
    again = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    cached = features.extract(again, paths, bn_face, cache_dir=tmp_path, workers=0)
    assert made == [1] and again.runner._chosen is None
    np.testing.assert_array_equal(cached.features, first.features)
    np.testing.assert_array_equal(cached.flipped, first.flipped)


def test_openvino_is_taken_only_where_it_compiles_and_agrees(bn_face, monkeypatch):
    pytest.importorskip("openvino")
    from sfport.errors import CaffeFileError
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, 112, 96)).astype(np.float32)
    want = _plain_fc5(bn_face, x)
    run = backend_mod.OpenVINO.run

    def off(self, outputs, input_name, batch):   # a backend 1e-4 (relative) away from the eager net
        return {o: v * (1 + 1e-4) for o, v in run(self, outputs, input_name, batch).items()}
    monkeypatch.setattr(backend_mod.OpenVINO, "run", off)
    m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    assert m.backend == "onnxruntime"   # auto: the next backend
    np.testing.assert_allclose(m.features(torch.from_numpy(x)), want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))
    with pytest.raises(CaffeFileError, match=r"bn.caffemodel: openvino's outputs differ from the eager net's by "
                                             r"[\d.]+e-0[45] \(relative\), over 1e-5: use --backend onnxruntime"):
        Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt", backend="openvino")
    monkeypatch.setattr(backend_mod.OpenVINO, "run", run)

    def refuse(self, data, path):
        raise CaffeFileError(path, "openvino cannot compile it: no such op")
    monkeypatch.setattr(backend_mod.OpenVINO, "__init__", refuse)
    assert Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt").backend == "onnxruntime"
    with pytest.raises(CaffeFileError, match="bn.caffemodel: openvino cannot compile it: no such op"):
        Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt", backend="openvino")


def test_backend_openvino_needs_openvino_installed(bn_face, monkeypatch):
    from sfport.errors import CaffeFileError
    monkeypatch.setattr(backend_mod, "openvino_installed", lambda: False)
    assert Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt").backend == "onnxruntime"
    with pytest.raises(CaffeFileError, match=r'bn.caffemodel: backend openvino: OpenVINO is not installed \(pip install '
                                             r'"sfport\[openvino\]"\)'):
        Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt", backend="openvino")


def test_a_net_that_does_not_export_runs_eagerly_and_says_why(bn_face, monkeypatch):
    def refuse(net, *a, **k):
        raise export.ExportMismatch("ONNX at 1x3x112x96: does not run (no kernel)")
    monkeypatch.setattr(export, "onnx_bytes", refuse)
    m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    assert m.backend == "torch"
    assert m.backend_line.startswith("backend: torch (the net does not export to ONNX: ONNX at 1x3x112x96: does not "
                                     "run (no kernel))")
    from sfport.errors import CaffeFileError
    with pytest.raises(CaffeFileError, match="bn.caffemodel: does not run on onnxruntime: ONNX at"):
        Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt", backend="onnxruntime")


def _prelu_model(slope_shape, after_conv: bool = False):
    """x (2, 16, 6, 5) [-> Conv 3x3 pad 1 -> c] -> PRelu -> y -> Relu -> z; the slopes negative, 0, > 1."""
    rng = np.random.default_rng(5)
    slope = np.resize(np.array([0.25, -0.5, 1.5, 0.0, 0.1], np.float32), int(np.prod(slope_shape))).reshape(slope_shape)
    shape = [2, 16, 6, 5]
    nodes, inits, src = [], [numpy_helper.from_array(slope, "a")], "x"
    if after_conv:
        inits += [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w"),
                  numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")]
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]))
        src = "c"
    nodes += [helper.make_node("PRelu", [src, "a"], ["y"], name="p"), helper.make_node("Relu", ["y"], ["z"], name="q")]
    outs = [helper.make_tensor_value_info(v, TensorProto.FLOAT, shape) for v in ("y", "z", "c")[:3 if after_conv else 2]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), slope


def _wide_input():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 16, 6, 5)) * 10.0 ** rng.integers(-30, 30, (2, 16, 6, 5))).astype(np.float32)
    x[0, :, 0, :2] = 0.0
    return x


def _caffe_prelu(x, slope):
    # prelu_layer.cpp PReLULayer::Forward_cpu: max(x, 0) + slope_data[c] * min(x, 0), in float
    return np.maximum(x, np.float32(0)) + np.broadcast_to(slope.reshape(-1, 1, 1), (16, 1, 1)) * np.minimum(x, np.float32(0))


@pytest.mark.parametrize("slope_shape", [(16, 1, 1), (1,)])
def test_onnxruntime_prelu_not_after_a_conv_is_rewritten_to_caffes_bits(slope_shape):
    data, slope = _prelu_model(slope_shape)
    rewritten = for_onnxruntime(data)
    assert [n.op_type for n in onnx.load_from_string(rewritten).graph.node] == ["Relu", "Sub", "Mul", "Add", "Relu"]
    x = _wide_input()
    caffe = _caffe_prelu(x, slope)
    got = run_session(session(rewritten, "m.onnx"), ["y", "z"], "x", x)
    assert np.array_equal(got["y"], caffe) and np.array_equal(got["z"], np.maximum(caffe, 0))
    assert np.array_equal(got["y"], run_session(session(data, "m.onnx"), ["y"], "x", x)["y"])


def test_onnxruntime_prelu_after_a_conv_is_rewritten_as_batchnorms_to_caffes_values():
    data, slope = _prelu_model((16, 1, 1), after_conv=True)
    rewritten = for_onnxruntime(data)
    ops = [n.op_type for n in onnx.load_from_string(rewritten).graph.node]
    assert ops == ["Conv", "Relu", "BatchNormalization", "BatchNormalization", "Add", "Add", "Relu"]
    assert "a" not in {i.name for i in onnx.load_from_string(rewritten).graph.initializer}
    x = np.random.default_rng(4).standard_normal((2, 16, 6, 5)).astype(np.float32)
    got = run_session(session(rewritten, "m.onnx"), ["y", "z", "c"], "x", x)
    caffe = _caffe_prelu(got["c"], slope)
    assert (got["c"] < 0).sum() > 100 and (got["c"] > 0).sum() > 100
    # the bracket a*x + (-a)*x is 0, or the rounding residual of a*x where a kernel fuses it as a multiply-add
    np.testing.assert_allclose(got["y"], caffe, rtol=2 ** -22, atol=0)
    np.testing.assert_array_equal(got["z"], np.maximum(got["y"], 0))


def test_the_runner_hands_onnxruntime_the_rewritten_net_and_checks_it(bn_face, monkeypatch):
    from sfport.runtime import backend
    monkeypatch.setattr(backend, "openvino_installed", lambda: False)   # auto's onnxruntime
    seen = []
    real_session = backend.session
    monkeypatch.setattr(backend, "session", lambda m, p: seen.append(m) or real_session(m, p))
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 112, 96)).astype(np.float32)
    want = _plain_fc5(bn_face, x)
    m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    assert seen == [] and m.backend == "onnxruntime"   # auto chooses at the first use
    assert len(seen) == 1 and "BatchNormalization" in [n.op_type for n in onnx.load_from_string(seen[0]).graph.node]
    np.testing.assert_allclose(m.features(torch.from_numpy(x)), want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))

    def wrong(data):       # a rewrite that is not PReLU: the check refuses it and the export runs as it is
        model = onnx.load_from_string(data)
        for n in model.graph.node:
            if n.op_type == "PRelu":
                n.op_type = "Relu"
                del n.input[1:]
        return model.SerializeToString()
    seen.clear()
    monkeypatch.setattr(backend, "for_onnxruntime", wrong)
    m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt")
    assert m.backend == "onnxruntime" and len(seen) == 2 and "PRelu" in [n.op_type for n in onnx.load_from_string(seen[1]).graph.node]
    np.testing.assert_allclose(m.features(torch.from_numpy(x)), want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))


def test_a_model_without_prelu_is_not_rewritten():
    data, _ = _prelu_model((16, 1, 1))
    m = onnx.load_from_string(data)
    m.graph.node[0].op_type = "Mul"
    data = m.SerializeToString()
    assert for_onnxruntime(data) is data


def test_runner_keeps_only_its_outputs(bn_face):
    net = Net(str(bn_face / "bn.prototxt"), str(bn_face / "bn.caffemodel"))
    r = Runner(net, ["fc5"], backend="torch")
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 112, 96)).astype(np.float32)
    with torch.no_grad():
        blobs = r.net.module.run({"data": torch.from_numpy(x)})
    assert list(blobs) == [r.net.graph.final["fc5"]]
    np.testing.assert_allclose(r(x)["fc5"], _plain_fc5(bn_face, x), rtol=0, atol=1e-5)


def test_progress_lines_in_logs_are_glog_lines_with_rate_and_eta():
    lines = []
    with Progress(10, "features", "images", show="log", log=lambda m, w: lines.append((m, w)), every=0,
                  header=["backend: x"]) as p:
        for _ in range(5):
            p.update(2)
    assert lines[0] == ("backend: x", "features.py:0")
    assert re.fullmatch(r"features: 2 / 10 images \(20\.0%\), [\d.]+ img/s, ETA \d+s", lines[1][0])
    assert re.fullmatch(r"features: 10 / 10 images \(100\.0%\), [\d.]+ img/s, done in \d+s", lines[-1][0])
    lines.clear()
    with pytest.raises(RuntimeError):
        with Progress(10, "features", show="log", log=lambda m, w: lines.append(m), header=["backend: x"]) as p:
            raise RuntimeError("bad image")
    assert lines == []     # a failure at once shows only its error


def test_eval_and_embed_log_the_backend_and_progress_when_not_on_a_terminal(bn_face, tmp_path):
    out = tmp_path / "f.npy"
    x = np.stack([cv2.imread(str(bn_face / f"f{k}.jpg")).astype(np.float32) for k in range(6)])
    x = ((x - 127.5) / 128).transpose(0, 3, 1, 2)
    want = np.concatenate([_plain_fc5(bn_face, x), _plain_fc5(bn_face, np.ascontiguousarray(x[..., ::-1]))], 1)
    # the export's backend as auto takes it for a large job; then auto itself, which runs these 12 images eagerly
    for backend, line in ((AUTO, f"backend: {AUTO} (its ONNX export, checked against the eager net)"),
                          ("auto", "backend: torch (auto: 12 image(s) to run, fewer than 256: done before an "
                                   "export would be ready)")):
        images = [str(bn_face / f"f{k}.jpg") for k in range(6)]
        r = subprocess.run([sys.executable, "-m", "sfport", "embed", *images, "-m", str(bn_face / "bn.caffemodel"),
                            "-p", str(bn_face / "bn.prototxt"), "-o", str(out), "--batch-size", "4", "--workers", "1",
                            "--backend", backend], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        err = r.stderr.splitlines()
        assert all(GLOG.match(l) for l in err), err
        assert f"] {line}" in err[0]
        assert re.search(r"\] features: 6 / 6 images \(100\.0%\), [\d.]+ img/s, done in", err[-1])
        f = np.load(out)
        assert f.shape == (6, 32) and f.dtype == np.float32
        np.testing.assert_allclose(f, want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))
    r = subprocess.run([sys.executable, "-m", "sfport", "embed", str(bn_face / "f0.jpg"), "-m",
                        str(bn_face / "bn.caffemodel"), "-p", str(bn_face / "bn.prototxt"), "-o", str(out),
                        "--backend", "torch"], capture_output=True, text=True)
    assert r.returncode == 0 and "] backend: torch (--backend torch); optimized: 4 layers folded" in r.stderr


def test_embed_leaves_nothing_when_an_image_fails_halfway(bn_face, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths = [str(bn_face / f"f{k}.jpg") for k in range(5)] + [str(tmp_path / "bad.jpg")]
    r = subprocess.run([sys.executable, "-m", "sfport", "embed", *paths, "-m", str(bn_face / "bn.caffemodel"), "-p",
                        str(bn_face / "bn.prototxt"), "-o", str(tmp_path / "out" / "f.npy"), "--batch-size", "2",
                        "--workers", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.jpg: unreadable or corrupt" in r.stderr
    left = sorted(p.name for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert left == []


def test_relus_run_in_place_where_nothing_else_reads_their_bottom():
    """UltraFace: every ReLU follows a convolution read by it alone; in place they give exactly what the
    out-of-place ReLUs give, and the plain net's outputs within the tolerance."""
    net = Net(str(FIXTURES / "ultraface/slim-320.prototxt"), str(FIXTURES / "ultraface/slim-320.caffemodel"))
    r = Runner(net, None, backend="torch")
    relus = [gl.name for gl in r.net.graph.layers if gl.type == "ReLU"]
    assert r.net.module.in_place == set(relus) and len(relus) == 34
    x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 240, 320)).astype(np.float32)
    fast = r(x)
    r.net.module.in_place = set()
    slow = r(x)
    want = net.forward(input=x)
    for k in ("boxes", "scores"):
        np.testing.assert_array_equal(fast[k], slow[k])
        ref = want[k].detach().numpy()
        np.testing.assert_allclose(fast[k], ref, rtol=0, atol=1e-5 * max(1, np.abs(ref).max()))
    # a blob read by two layers (or an input, or an output) is never overwritten
    body = (layer("ip", "InnerProduct", ["data"], ["ip"], "inner_product_param { num_output: 4 }")
            + layer("r1", "ReLU", ["ip"], ["r1"]) + layer("t", "TanH", ["ip"], ["t"])
            + layer("r2", "ReLU", ["data"], ["r2"]))
    b = Net(_net(body, (2, 3)), optimize=True)
    assert b.module.in_place == set()


def test_openvino_leaves_the_threads_signal_stack_as_it_was(bn_face):
    # OpenVINO 2026.4's CPU plugin installs an alternate signal stack of its own on the compiling thread; with it,
    # a SIGCHLD (any child's exit, once torch's DataLoader installed a handler) killed this suite with SIGSEGV
    pytest.importorskip("openvino")
    import ctypes
    sigaltstack = ctypes.CDLL(None).sigaltstack

    def now():
        buf = ctypes.create_string_buffer(64)
        assert sigaltstack(None, buf) == 0
        return buf.raw
    before = now()
    m = Model(bn_face / "bn.caffemodel", bn_face / "bn.prototxt", backend="openvino")
    m.features(torch.zeros(2, 3, 112, 96))
    assert now() == before
