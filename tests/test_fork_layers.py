"""The forks' pooling and normalisation fields and layers: Pooling's ``ceil_mode`` (the ceil-mode forks and OpenCV
4), Pooling's mask top, BN (SegNet / ENet / yjxiong forks), MaxUnPool and PixelShuffle.

References, both independent of sfport:

- OpenCV 4 (``cv2.dnn`` reads ``ceil_mode`` from a text prototxt) for ``ceil_mode`` at odd sizes, MAX and AVE, with
  pads and strides;
- the fork itself: tests/data/forklayers/*.npz hold tiny nets that brocolli-caffe 9.0.2's own pycaffe ran (see
  tests/data/forklayers/README.md and make_reference.py there): the tops, the mask, BN's moving blobs after a
  TRAIN forward, and after net.backward() the input and parameter diffs (MaxUnPool's and PixelShuffle's
  Backward_cpu are empty: their input diffs are zeros there and here).

The criterion is the project's: max |ours - ref| <= 1e-5 * max(1, max |ref|); the mask must be equal."""
import io
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.netdef import shapes, weight_match
from sfport.protos import caffe_pb2
from sfport.pycaffe.net import Net as PyNet
from sfport.runtime import export, verify
from sfport.runtime.net import Net

from netcases import layer, one_layer, prototxt

DATA = Path(__file__).resolve().parent / "data" / "forklayers"
CASES = sorted(p.stem for p in DATA.glob("*.npz"))
FLOOR = caffe_pb2.PoolingParameter.FLOOR


def _load(name: str):
    with np.load(DATA / f"{name}.npz") as z:
        a = {k: z[k] for k in z.files}
    return str(a.pop("prototxt")), str(a.pop("phase")), a


FLT_MAX = float(np.finfo(np.float32).max)


def _close(ours, ref, what: str) -> float:
    """The project's criterion; Caffe's values of an empty pooling window (MAX: -FLT_MAX, AVE: 0 / 0 = NaN) must be
    the same and stay out of the scale."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    special = np.isnan(ref) | (np.abs(ref) == FLT_MAX)
    assert np.array_equal(ours[special], ref[special], equal_nan=True), f"{what}: empty windows differ"
    ours, ref = ours[~special], ref[~special]
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"
    return err


def _keys(a: dict, prefix: str) -> list[str]:
    return sorted(k[len(prefix):] for k in a if k.startswith(prefix))


def test_the_reference_covers_the_cases():
    """Every net make_reference.py lists has its file (a lost file would silently drop a case)."""
    assert CASES == sorted([
        "bn_test", "bn_test_frozen", "bn_train", "bn_train_2d", "bn_train_3d", "bn_train_frozen",
        "pixelshuffle_r1", "pixelshuffle_r2", "pixelshuffle_r2_unread_channels", "pixelshuffle_r3",
        "pool_ave_ceil_k3s2p2", "pool_ave_floor_hw", "pool_ave_floor_k3s2p1", "pool_ave_floor_k3s2p2",
        "pool_max_ceil_k2s2_ties", "pool_max_ceil_k2s3", "pool_max_ceil_k3s2p1", "pool_max_floor_hw",
        "pool_max_floor_k2s2_ties", "pool_max_floor_k3s2p1", "pool_max_floor_k4s3p3", "pool_max_floor_k2s3",
        "pool_max_ceil_k2s3_empty_window", "pool_ave_ceil_k2s3_empty_window",
        "unpool_duplicate_indices", "unpool_floor_larger_dst", "unpool_k2s2_ties", "unpool_k3s2p1"])
    assert sum(p.stat().st_size for p in DATA.glob("*.npz")) < 300_000


# ---- every reference net in sfport's pycaffe Net: forward, moving blobs, backward ------------------------------

@pytest.mark.parametrize("name", CASES)
def test_pycaffe_net_matches_the_fork(name, tmp_path):
    """The fork's net in sfport's pycaffe ``Net`` (its phase, force_backward): the blobs the fork was given, the
    same inputs (BN TRAIN: two forwards, the moving blobs carried), every top (the mask equal), BN's moving blobs
    after the forwards, then net.backward() with the fork's top diffs: the input diffs and the parameter diffs."""
    text, phase, a = _load(name)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(text)
    n = PyNet(str(path), phase=phase.lower())
    for key in _keys(a, "param_"):
        lname, j = key.rsplit("_", 1)
        n.params[lname][int(j)].data[...] = a[f"param_{key}"]
    runs = sorted({k.split("_", 1)[0] for k in a if k.startswith("input")})
    for run in runs:   # "input" (one forward) or "input0", "input1"
        for b in _keys(a, f"{run}_"):
            n.blobs[b].data[...] = a[f"{run}_{b}"]
        n.forward()
    for t in _keys(a, "top_"):
        if t == "mask":   # the argmax's flat index h * W + w, as a float: equal
            assert np.array_equal(n.blobs[t].data, a["top_mask"]), name
        else:
            _close(n.blobs[t].data, a[f"top_{t}"], f"top {t}")
    for key in _keys(a, "after_"):
        lname, j = key.rsplit("_", 1)
        _close(n.params[lname][int(j)].data, a[f"after_{key}"], f"blob {j} of {lname} after the forward")
    n.backward(**{t: a[f"topdiff_{t}"] for t in _keys(a, "topdiff_")})
    for b in _keys(a, "diff_"):
        _close(n.blobs[b].diff, a[f"diff_{b}"], f"diff of {b}")
    for key in _keys(a, "paramdiff_"):
        lname, j = key.rsplit("_", 1)
        _close(n.params[lname][int(j)].diff, a[f"paramdiff_{key}"], f"diff of blob {j} of {lname}")


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("pool_")])
def test_shape_inference_is_the_forks(name):
    """shapes.infer gives the pooled size the fork gave (floor with ``ceil_mode: false``)."""
    text, _, a = _load(name)
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    ls = shapes.infer(net)[1]
    assert ls.tops == [a[f"top_{t}"].shape for t in ("pool", "mask") if f"top_{t}" in a]


@pytest.mark.parametrize("name", ["bn_test", "bn_train", "bn_train_frozen", "bn_train_2d"])
def test_bn_module_matches_the_fork(name):
    """The converter's module alone (autograd, no pycaffe Net): the fork's top, moving blobs and diffs."""
    text, phase, a = _load(name)
    lp = next(lp for lp in text_format.Parse(text, caffe_pb2.NetParameter()).layer if lp.type == "BN")
    runs = sorted({k.split("_", 1)[0] for k in a if k.startswith("input")})
    x0 = a[f"{runs[0]}_data"]
    c = converters.get("BN")
    module = c.build(lp, [x0.shape]).train(phase == "TRAIN")
    c.load(module, [a[f"param_bn_{j}"] for j in range(4)])
    for run in runs:
        x = torch.tensor(a[f"{run}_data"], requires_grad=True)
        y = module(x)
    _close(y.detach().numpy(), a["top_bn"], "top")
    for j, got in enumerate(c.save(module)):
        _close(got, a[f"after_bn_{j}"], f"blob {j}")
    params = [getattr(module, p) for p in module.caffe_blobs]
    grads = torch.autograd.grad(y, [x] + params, torch.tensor(a["topdiff_bn"]), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [x] + params)]
    _close(grads[0].numpy(), a["diff_data"], "bottom diff")
    for j in range(4):
        _close(grads[1 + j].numpy(), a[f"paramdiff_bn_{j}"], f"diff of blob {j}")


def test_bn_fillers_are_the_forks():
    """BNLayer::LayerSetUp: slope_filler and bias_filler (Caffe's default filler, constant 0, when absent), the
    moving mean 0, the moving inverse std 1."""
    n = PyNet(caffe_files.CaffeModel.from_net(text_format.Parse(
        prototxt((2, 3, 4, 4), layer("bn", "BN", ["data"], ["bn"], 'bn_param { slope_filler { type: "constant" '
                                      'value: 2 } }')), caffe_pb2.NetParameter()), None), phase="test")
    slope, bias, mean, inv_std = (b.data for b in n.params["bn"])
    assert slope.shape == (1, 3) and np.all(slope == 2) and np.all(bias == 0) and np.all(mean == 0)
    assert np.all(inv_std == 1)


def test_bn_folds_into_the_optimized_net(tmp_path):
    """With the stored statistics BN is ``a * x + b`` per channel: the optimized net (folded into the
    convolution before it) gives the net's output."""
    p = tmp_path / "bn.prototxt"
    p.write_text(prototxt((2, 3, 6, 5), layer("c", "Convolution", ["data"], ["c"], "convolution_param { "
                                                                                    "num_output: 4 kernel_size: 3 }")
                          + layer("bn", "BN", ["c"], ["bn"])))
    w = tmp_path / "bn.caffemodel"
    caffe_files.write_caffemodel(w, weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=3))
    net = Net(str(p), str(w))
    x = verify.make_input((2, 3, 6, 5), "random", seed=1)
    opt = net.optimized()
    assert [gl.type for gl in opt.graph.layers] == ["Convolution"]
    _close(opt.forward(data=torch.from_numpy(x))["bn"].detach(), net.forward(data=torch.from_numpy(x))["bn"].detach(),
           "optimized")


# ---- ceil_mode against OpenCV 4 -----------------------------------------------------------------------------------

OPENCV_POOLS = [
    "pool: MAX kernel_size: 3 stride: 2 ceil_mode: false",
    "pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false",
    "pool: MAX kernel_size: 2 stride: 2 pad: 1 ceil_mode: false",
    "pool: MAX kernel_size: 2 stride: 2 pad: 1 ceil_mode: true",
    "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 ceil_mode: false",
    "pool: AVE kernel_size: 3 stride: 2 ceil_mode: false",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: true",
    "pool: AVE kernel_size: 2 stride: 3 pad: 1 ceil_mode: false",
    "pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 0 pad_w: 1 ceil_mode: false",
]
OPENCV_SIZES = [(2, 3, 9, 11), (1, 2, 10, 7), (1, 2, 13, 8)]


def _pool_net(tmp_path, shape, param, name="pool"):
    p, w = tmp_path / f"{name}.prototxt", tmp_path / f"{name}.caffemodel"
    p.write_text(prototxt(shape, layer("t", "Pooling", ["data"], ["t"], f"pooling_param {{ {param} }}"), name))
    caffe_files.write_caffemodel(w, weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=0))
    return p, w


@pytest.mark.parametrize("param", OPENCV_POOLS)
def test_ceil_mode_matches_opencv(param, tmp_path):
    """OpenCV 4 reads the same text prototxt: per size, the same output (shape and values) as sfport's eager net,
    and sfport's shape inference gives that shape; ``ceil_mode: false`` rounds down as OpenCV does."""
    worst = 0.0
    for k, shape in enumerate(OPENCV_SIZES):
        p, w = _pool_net(tmp_path, shape, param, f"pool{k}")
        x = verify.make_input(shape, "random", seed=k)
        ref = verify.opencv_reference(str(p), str(w), {"data": x})["t"]
        ours = Net(str(p), str(w)).forward(data=torch.from_numpy(x))["t"].detach().numpy()
        worst = max(worst, _close(ours, ref, f"{param} at {shape}"))
        assert shapes.infer(caffe_files.read_prototxt(p).net)[1].tops == [ref.shape]
        n, c, h, wd = shape
        ceil = "ceil_mode: true" in param
        kh, kw, sh, sw, ph, pw = _geometry(param)
        if not ceil:   # floor, and no last window dropped (it cannot start past the input when rounding down)
            assert ref.shape == (n, c, (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1)
    print(f"{param}: worst error {worst:.2e}")


def _geometry(param: str):
    """(kh, kw, sh, sw, ph, pw) of a pooling_param text, read independently of sfport's geometry."""
    f = dict(zip(param.split()[::2], param.split()[1::2]))
    g = {k.rstrip(":"): v for k, v in f.items()}
    kh = int(g.get("kernel_h", g.get("kernel_size", 0)))
    kw = int(g.get("kernel_w", g.get("kernel_size", 0)))
    sh = int(g.get("stride_h", g.get("stride", 1)))
    sw = int(g.get("stride_w", g.get("stride", 1)))
    ph = int(g.get("pad_h", g.get("pad", 0)))
    pw = int(g.get("pad_w", g.get("pad", 0)))
    return kh, kw, sh, sw, ph, pw


def test_ceil_mode_false_changes_the_size():
    """The same window, ceil and floor: 9 + 2 - 3 = 8 over stride 3 is 2.67, so 4 outputs ceil and 3 floor."""
    c = converters.get("Pooling")
    for text, size in (("", 4), ("ceil_mode: true", 4), ("ceil_mode: false", 3), ("round_mode: FLOOR", 3),
                       ("round_mode: FLOOR ceil_mode: false", 3), ("round_mode: CEIL ceil_mode: true", 4)):
        _, lp, _ = one_layer("Pooling", f"pooling_param {{ kernel_size: 3 stride: 3 pad: 1 {text} }}", [(1, 1, 9, 9)])
        assert c.top_shapes(lp, [(1, 1, 9, 9)]) == [(1, 1, size, size)], text


@pytest.mark.parametrize("text", ["round_mode: FLOOR ceil_mode: true", "round_mode: CEIL ceil_mode: false"])
def test_round_mode_and_ceil_mode_that_disagree_are_refused(text):
    """The forks have no round_mode; both set and disagreeing: one line naming the layer."""
    net = text_format.Parse(prototxt((1, 2, 9, 9), layer("pool1", "Pooling", ["data"], ["p"],
                                                          f"pooling_param {{ kernel_size: 3 stride: 2 {text} }}")),
                            caffe_pb2.NetParameter())
    with pytest.raises(CaffeFileError, match="layer 'pool1': round_mode .* and ceil_mode .* disagree") as e:
        shapes.infer(net)
    assert "\n" not in str(e.value)


def test_binary_field_13_of_a_ceil_mode_fork_reads_as_round_mode():
    """What the README says of binary files: a ceil-mode fork writes ``ceil_mode`` as field 13, which is BVLC's
    round_mode here (1 = FLOOR, so the fork's ``ceil_mode: true`` reads as FLOOR: inverted); sfport's own
    ``ceil_mode`` is field 2005. Text files name the field and read the same in both."""
    fork_true, fork_false = bytes([13 << 3, 1]), bytes([13 << 3, 0])   # field 13, varint
    assert caffe_pb2.PoolingParameter.FromString(fork_true).round_mode == FLOOR
    assert caffe_pb2.PoolingParameter.FromString(fork_false).round_mode == caffe_pb2.PoolingParameter.CEIL
    assert not caffe_pb2.PoolingParameter.FromString(fork_true).HasField("ceil_mode")
    ours = caffe_pb2.PoolingParameter(ceil_mode=False).SerializeToString()
    assert ours == bytes([(2005 << 3) & 0x7F | 0x80, 2005 >> 4, 0])
    assert text_format.Parse("ceil_mode: false", caffe_pb2.PoolingParameter()).ceil_mode is False


# ---- exports -------------------------------------------------------------------------------------------------

EXPORTS = ["bn_test", "bn_test_frozen", "pool_max_floor_k3s2p1", "pool_ave_floor_k3s2p2", "pool_max_ceil_k2s3",
           "unpool_k3s2p1", "unpool_floor_larger_dst", "pixelshuffle_r2", "pixelshuffle_r3",
           "pixelshuffle_r2_unread_channels"]


def _runtime_net(name, tmp_path):
    text, _, a = _load(name)
    p = tmp_path / f"{name}.prototxt"
    p.write_text(text)
    net = Net(str(p))
    with torch.no_grad():
        for key in _keys(a, "param_"):
            lname, j = key.rsplit("_", 1)
            net.params[lname][int(j)].copy_(torch.from_numpy(a[f"param_{key}"]))
    return net, a


@pytest.mark.parametrize("name", EXPORTS)
def test_onnx_and_torchscript_exports_match_the_fork(name, tmp_path):
    """The TEST-phase net exported to ONNX (checked on onnxruntime) and TorchScript: on the fork's input, every
    output is the fork's (the mask equal). PixelShuffle is ONNX DepthToSpace in CRD mode; MaxUnPool a scatter of
    the last writer (ScatterElements with max) and a gather; BN four element-wise ops."""
    net, a = _runtime_net(name, tmp_path)
    data, r = export.onnx_export(net)
    assert r.worst <= 1e-5
    model = onnx.load_from_string(data)
    ops = {n.op_type for n in model.graph.node}
    if name.startswith("pixelshuffle"):
        (d2s,) = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
        assert {at.name: at.s for at in d2s.attribute}["mode"] == b"CRD"
    if name.startswith("unpool"):
        assert "ScatterElements" in ops and not r.dynamic_size   # dst_h x dst_w: the net's own size only
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = dict(zip(net.outputs, sess.run(net.outputs, {"data": a["input_data"]})))
    ts_bytes, r_ts = export.torchscript_export(net)
    assert r_ts.worst <= 1e-5
    with torch.no_grad():
        traced = torch.jit.load(io.BytesIO(ts_bytes))(torch.from_numpy(a["input_data"]))
    traced = dict(zip(net.outputs, [traced] if isinstance(traced, torch.Tensor) else traced))
    for out in net.outputs:
        for what, value in (("onnx", got[out]), ("torchscript", traced[out].numpy())):
            if out == "mask":
                assert np.array_equal(value, a["top_mask"]), what
            else:
                _close(value, a[f"top_{out}"], f"{what} {out}")


# ---- one-line errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,said", [
    (layer("ps", "PixelShuffle", ["data"], ["ps"]), "layer 'ps': PixelShuffle needs a positive pixelshuffle_param "
                                                    "upscale_factor, got 0"),
    (layer("ps", "PixelShuffle", ["data"], ["ps"], "pixelshuffle_param { upscale_factor: 3 }"),
     "layer 'ps': PixelShuffle needs channels divisible by upscale_factor 3, got 8"),
    (layer("u", "MaxUnPool", ["data", "data"], ["u"], "max_unpool_param { dst_h: 8 }"),
     "layer 'u': MaxUnPool needs max_unpool_param dst_h and dst_w"),
    (layer("u", "MaxUnPool", ["data", "data"], ["u"], "max_unpool_param { dst_h: 0 dst_w: 4 }"),
     "layer 'u': MaxUnPool dst_h and dst_w must be positive"),
    (layer("u", "MaxUnPool", ["data"], ["u"], "max_unpool_param { dst_h: 8 dst_w: 8 }"),
     "layer 'u': MaxUnPool takes 2 bottoms"),
    (layer("p", "Pooling", ["data"], ["p"], "pooling_param { kernel_size: 2 }")
     + layer("u", "MaxUnPool", ["data", "p"], ["u"], "max_unpool_param { dst_h: 8 dst_w: 8 }"),
     "layer 'u': MaxUnPool needs a 4-D data bottom and a mask of the same shape"),
    (layer("r", "Reshape", ["data"], ["r"], "reshape_param { shape { dim: 2 dim: 4 dim: 2 dim: 2 dim: 4 } }")
     + layer("bn", "BN", ["r"], ["bn"]), "layer 'bn': BN takes a blob of 2 to 4 axes"),
])
def test_impossible_parameters_name_the_layer(body, said):
    net = text_format.Parse(prototxt((2, 8, 4, 4), body), caffe_pb2.NetParameter())
    with pytest.raises(CaffeFileError, match=said.replace("(", "\\(").replace(")", "\\)")) as e:
        shapes.infer(net)
    assert "\n" not in str(e.value)


def test_max_unpool_index_out_of_range_names_the_layer():
    """MaxUnPoolLayer::Forward_cpu: LOG(FATAL) "uppool top index ... out of range"; here a ValueError naming the
    layer (a negative index too, which the fork would write before its buffer)."""
    _, _, m = one_layer("MaxUnPool", "max_unpool_param { dst_h: 2 dst_w: 3 }", [(1, 1, 2, 2)] * 2, name="u")
    x = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"layer 'u': uppool top index 6 out of range \[0, 6\)"):
        m(x, torch.tensor([[[[0.0, 1.0], [6.0, 2.0]]]]))
    with pytest.raises(ValueError, match=r"layer 'u': uppool top index -1 out of range"):
        m(x, torch.tensor([[[[0.0, 1.0], [-1.0, 2.0]]]]))
    # static_cast<int>: 5.9 is index 5, the last place
    y = m(torch.arange(4.0).reshape(1, 1, 2, 2), torch.tensor([[[[5.9, 0.0], [0.0, 2.0]]]]))
    assert y.reshape(-1).tolist() == [2.0, 0.0, 3.0, 0.0, 0.0, 0.0]
    assert math.isclose(float(y.sum()), 5.0)
