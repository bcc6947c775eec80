"""The brocolli fork's Resize, BilinearInterpolate and BatchNormKyle (converters/brocolli.py) against the fork itself:
tests/data/brocolli_resize/*.npz hold tiny nets its own pycaffe ran (the oracle; make_reference.py and README.md
there say how): the top, BatchNormKyle's blobs after the forwards (TRAIN: two, the moving averages carried), and after
net.backward() with a given top diff the input's diff and the blobs' diffs (BilinearInterpolate's Backward_cpu is
empty: zeros). sfport's pycaffe Net and the converter's module alone must give them within 1e-5 * max(1, max |ref|)
(NaN where the fork gives NaN); the TEST-phase nets exported to ONNX (on onnxruntime) and TorchScript give the fork's
top; the fork's impossible parameters are one line naming the layer.

use_alpha_beta is field 9 of the fork's BatchNormParameter, in sfport's schema at the fork's number."""
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

import sfport
from sfport import converters
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.netdef import shapes
from sfport.protos import caffe_pb2
from sfport.pycaffe.net import Net as PyNet
from sfport.runtime import export
from sfport.runtime.net import Net

DATA = Path(__file__).resolve().parent / "data" / "brocolli_resize"
CASES = sorted(p.stem for p in DATA.glob("*.npz") if not p.stem.startswith("solver_"))


def _load(name: str):
    with np.load(DATA / f"{name}.npz") as z:
        a = {k: z[k] for k in z.files}
    text, phase = str(a.pop("prototxt")), str(a.pop("phase"))
    return text, phase, a


def _close(ours, ref, what: str) -> float:
    """The project's criterion; the fork's NaN must be NaN here too and stays out of the scale."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), f"{what}: NaN at other places"
    ours, ref = ours[~np.isnan(ref)], ref[~np.isnan(ref)]
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"
    return err


def _inputs(a) -> list[np.ndarray]:
    return [a["x"]] if "x" in a else [a["x0"], a["x1"]]


def _blobs(a, prefix: str) -> list[np.ndarray]:
    return [a[f"{prefix}_{j}"] for j in range(sum(k.startswith(f"{prefix}_") for k in a))]


def test_the_reference_covers_the_cases():
    """Every net make_reference.py lists has its file (a lost file would silently drop a case); the data is small."""
    assert CASES == sorted([
        "resize_up_odd", "resize_down", "resize_same", "resize_pyramid", "resize_pyramid_up2", "resize_3d",
        "bilinear_dst_align", "bilinear_dst_noalign", "bilinear_scale_align", "bilinear_scale_noalign_down",
        "bilinear_dst_h_only", "bilinear_src_row", "bilinear_dst_row_nan", "bilinear_dst_row_noalign",
        "kyle_test", "kyle_test_alpha", "kyle_test_factor0", "kyle_test_batch_stats", "kyle_train",
        "kyle_train_alpha", "kyle_train_2d", "kyle_train_global"])
    assert (DATA / "solver_kyle_sgd.npz").exists()
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 100_000


@pytest.mark.parametrize("name", CASES)
def test_pycaffe_net_matches_the_fork(name, tmp_path):
    """The fork's net in sfport's pycaffe Net (its phase, force_backward): the blobs the fork was given, the same
    inputs, the top, the blobs after the forwards, then net.backward() with the fork's top diff: the input's diff
    and every blob's diff."""
    text, phase, a = _load(name)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    n = PyNet(str(path), phase=phase.lower())
    blobs = n.params["l"] if "l" in n.params else []
    assert len(blobs) == len(_blobs(a, "param"))
    for b, v in zip(blobs, _blobs(a, "param")):
        b.data[...] = v
    for x in _inputs(a):
        n.blobs["data"].data[...] = x
        n.forward()
    _close(n.blobs["out"].data, a["out"], "top")
    for j, (b, v) in enumerate(zip(blobs, _blobs(a, "after"))):
        _close(b.data, v, f"blob {j} after the forwards")
    n.backward(out=a["topdiff"])
    _close(n.blobs["data"].diff, a["diff"], "bottom diff")
    for j, (b, v) in enumerate(zip(blobs, _blobs(a, "paramdiff"))):
        _close(b.diff, v, f"diff of blob {j}")


@pytest.mark.parametrize("name", CASES)
def test_converter_module_matches_the_fork(name):
    """The converter alone: shapes as the fork's, the module's top, blobs and autograd gradients (zero or none where
    the fork writes no diff: BilinearInterpolate's bottom, BatchNormKyle's statistics, and alpha and beta with global
    statistics; in the TRAIN phase every BatchNormKyle blob takes part, as a solver and DistributedDataParallel
    need)."""
    text, phase, a = _load(name)
    lp = text_format.Parse(text, caffe_pb2.NetParameter()).layer[0]
    c = converters.get(lp.type)
    xs = _inputs(a)
    bottom = [tuple(xs[0].shape)]
    assert c.top_shapes(lp, bottom) == [a["out"].shape]
    assert c.param_shapes(lp, bottom) == [v.shape for v in _blobs(a, "param")]
    module = c.build(lp, bottom).train(phase == "TRAIN")
    if _blobs(a, "param"):
        c.load(module, _blobs(a, "param"))
    for x in xs:
        x = torch.tensor(x, requires_grad=True)
        y = module(x)
    _close(y.detach().numpy(), a["out"], "top")
    for j, (got, v) in enumerate(zip(c.save(module), _blobs(a, "after"))):
        _close(got, v, f"blob {j}")
    if lp.type == "BilinearInterpolate":
        assert not y.requires_grad and not a["diff"].any()   # Backward_cpu is empty
        return
    params = [getattr(module, p) for p in module.caffe_blobs]
    grads = torch.autograd.grad(y, [x] + params, torch.tensor(a["topdiff"]), allow_unused=True)
    _close(grads[0].numpy(), a["diff"], "bottom diff")
    for j, (g, v) in enumerate(zip(grads[1:], _blobs(a, "paramdiff"))):
        if phase == "TRAIN":   # every learnable blob takes part (a zero diff where the fork writes none)
            assert g is not None, f"blob {j} takes no part in the TRAIN phase"
        _close(np.zeros_like(v) if g is None else g.numpy(), v, f"diff of blob {j}")


@pytest.mark.parametrize("name", CASES)
def test_shape_inference_is_the_forks(name, tmp_path):
    """shapes.infer (what inspect and the weight checks ask) gives the fork's top shape."""
    text, phase, a = _load(name)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    ls = shapes.infer(caffe_files.read_prototxt(path).net, getattr(caffe_pb2, phase))[-1]
    assert ls.tops == [a["out"].shape] and ls.params == [v.shape for v in _blobs(a, "param")]


EXPORTS = [c for c in CASES if c.startswith(("resize", "bilinear", "kyle_test"))]   # the TEST-phase nets


@pytest.mark.parametrize("name", EXPORTS)
def test_onnx_and_torchscript_exports_match_the_fork(name, tmp_path):
    """The TEST-phase net exported to ONNX (checked on onnxruntime, at a second size too: size-polymorphic where
    the net has a 4-D input) and TorchScript: on the fork's input, the fork's top."""
    text, _, a = _load(name)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    net = Net(str(path))
    with torch.no_grad():
        for j, v in enumerate(_blobs(a, "param")):
            net.params["l"][j].copy_(torch.from_numpy(v))
    data, r = export.onnx_export(net)
    assert r.worst <= 1e-5 and r.dynamic_size == (a["x"].ndim == 4)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    _close(sess.run(["out"], {"data": a["x"]})[0], a["out"], "onnx")
    ts, r_ts = export.torchscript_export(net)
    assert r_ts.worst <= 1e-5
    with torch.no_grad():
        traced = torch.jit.load(io.BytesIO(ts))(torch.from_numpy(a["x"]))
    _close((traced if isinstance(traced, torch.Tensor) else traced[0]).numpy(), a["out"], "torchscript")


def test_kyle_folds_into_the_optimized_net(tmp_path):
    """With global statistics BatchNormKyle is ``a * x + b`` per channel (alpha and beta included): the optimized
    net folds it into the convolution before it and gives the net's top."""
    _, _, a = _load("kyle_test_alpha")
    path = tmp_path / "fold.prototxt"
    path.write_text(f'input: "data"\ninput_shape {{ {" ".join(f"dim: {d}" for d in a["x"].shape)} }}\n'
                    'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 '
                    'kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }\n'
                    'layer { name: "l" type: "BatchNormKyle" batch_norm_param { use_alpha_beta: true eps: 0.001 } '
                    'bottom: "c" top: "out" }\n')
    net = Net(str(path))
    with torch.no_grad():
        for j, v in enumerate(_blobs(a, "param")):
            net.params["l"][j].copy_(torch.from_numpy(v))
    opt = net.optimized()
    assert [gl.type for gl in opt.graph.layers] == ["Convolution"]
    x = torch.from_numpy(a["x"])
    _close(opt.forward(data=x)["out"].detach(), net.forward(data=x)["out"].detach(), "optimized")


def test_kyle_verifies_against_opencv(tmp_path):
    """sfport verify reads a BatchNormKyle without alpha and beta as the BatchNorm it then is (a zero scale factor as
    zero statistics, which OpenCV would divide by): OpenCV 4 gives every blob of the net."""
    pytest.importorskip("cv2")
    from sfport.netdef import weight_match
    from sfport.runtime import verify
    path = tmp_path / "kyle.prototxt"
    path.write_text('input: "data"\ninput_shape { dim: 2 dim: 3 dim: 5 dim: 4 }\n'
                    'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 '
                    'kernel_size: 3 } }\n'
                    'layer { name: "l" type: "BatchNormKyle" bottom: "c" top: "l" }\n'
                    'layer { name: "z" type: "BatchNormKyle" bottom: "l" top: "z" }\n')
    model = weight_match.with_random_weights(caffe_files.read_prototxt(path), seed=1)
    z = [layer.name for layer in model.net.layer].index("z")
    blobs = model.blob_arrays(z)
    blobs[2][...] = 0
    model.set_blob_arrays(z, blobs)
    caffe_files.write_caffemodel(tmp_path / "kyle.caffemodel", model)
    result = verify.run(str(tmp_path / "kyle.caffemodel"), str(path), reference="opencv")
    assert result.passed and [c.name for c in result.checks] == ["c", "l", "z"]


def test_sgd_solver_matches_the_fork(tmp_path):
    """The fork's SGD solver over a TRAIN net with a BatchNormKyle (alpha and beta; momentum, weight decay): three
    steps on the fork's data give its losses and its blobs, the statistics included (learnable blobs with a zero
    diff in the fork: weight decay shrinks them, and the moving averages go on from there)."""
    from sfport.pycaffe.solver import SGDSolver
    with np.load(DATA / "solver_kyle_sgd.npz") as z:
        a = {k: z[k] for k in z.files}
    (tmp_path / "net.prototxt").write_text(str(a["net"]))
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\n' + str(a["solver"]))
    solver = SGDSolver(str(tmp_path / "solver.prototxt"))
    for k in range(len(a["loss"])):
        solver.net.blobs["data"].data[...] = a["data"][k]
        solver.net.blobs["target"].data[...] = a["target"][k]
        solver.step(1)
        _close(solver.net.blobs["loss"].data, a["loss"][k], f"loss of step {k}")
    blobs = solver.net.params["l"]
    assert len(blobs) == 5
    for j, b in enumerate(blobs):
        _close(b.data, a[f"after_{j}"], f"blob {j} after the steps")
    # sfport train's net: the same five learnable blobs (Net::learnable_params_), lr_mult and decay_mult 1
    net = Net(str(tmp_path / "net.prototxt"), phase="train")
    assert [(name, lr, dm) for name, _, lr, dm in net.module.learnable_params()] == \
        [(f"l/{j}", 1.0, 1.0) for j in range(5)]


@pytest.mark.parametrize("layer, shape, what", [
    ('type: "Resize"', (1, 1, 4, 4), "Resize needs resize_param height and width"),
    ('type: "Resize" resize_param { height: 3 }', (1, 1, 4, 4), "Resize needs resize_param height and width"),
    ('type: "Resize" resize_param { height: 0 width: 3 }', (1, 1, 4, 4), "height and width must be positive, got 0"),
    ('type: "Resize" resize_param { is_pyramid_test: true out_height_scale: 2 }', (1, 1, 4, 4),
     "needs resize_param out_height_scale and out_width_scale"),
    ('type: "Resize" resize_param { is_pyramid_test: true out_height_scale: 0.2 out_width_scale: 1 }', (1, 1, 4, 4),
     "make a 0 x 4 top of a 4 x 4 bottom"),
    ('type: "Resize" resize_param { is_pyramid_test: true out_height_scale: -1 out_width_scale: 1 }', (1, 1, 4, 4),
     "make a -4 x 4 top"),
    ('type: "Resize" resize_param { height: 3 width: 3 }', (1, 1, 2, 4, 4), "at most 4 axes, got 5"),
    ('type: "BilinearInterpolate"', (1, 1, 4, 4), "dst_h and/or dst_w, or scale_factor, not neither"),
    ('type: "BilinearInterpolate" bilinear_interpolate_param { dst_w: 3 scale_factor: 2 }', (1, 1, 4, 4),
     "not both"),
    ('type: "BilinearInterpolate" bilinear_interpolate_param { dst_h: 0 }', (1, 1, 4, 4),
     "dst_h and dst_w must be positive, got 0, -"),
    ('type: "BilinearInterpolate" bilinear_interpolate_param { dst_h: 3 dst_w: -2 }', (1, 1, 4, 4),
     "must be positive, got 3, -2"),
    ('type: "BilinearInterpolate" bilinear_interpolate_param { scale_factor: 0.2 }', (1, 1, 4, 9),
     "scale_factor 0.2 makes a 0 x 1 top of a 4 x 9 bottom"),
    ('type: "BilinearInterpolate" bilinear_interpolate_param { dst_h: 3 }', (1, 1, 2, 4, 4), "at most 4 axes"),
    ('type: "BatchNormKyle"', (6,), "BatchNormKyle needs a bottom of at least 2 axes"),
])
def test_impossible_parameters_are_one_line(tmp_path, layer, shape, what):
    path = tmp_path / "bad.prototxt"
    path.write_text(f'input: "data"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                    f'layer {{ name: "l" {layer} bottom: "data" top: "out" }}\n')
    with pytest.raises(CaffeFileError, match=what.replace("(", "\\(")) as e:
        sfport.TorchNet(str(path), weights=None)
    assert "layer 'l'" in str(e.value) and "\n" not in str(e.value)
