"""Acceptance 4 and 5: each converter against OpenCV's Caffe layers, or - where OpenCV has no such layer or
departs from Caffe - against the formula of Caffe's layer evaluated independently in numpy (float64), plus
hand-computed edge cases; and a converter registered from outside the package."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sfport.formats import caffe_files
from sfport.netdef import weight_match
from sfport.runtime import verify
from sfport.converters import UnknownLayerType
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net

from netcases import OPENCV_CASES, layer, one_layer, prototxt


def build(tmp_path, shape, body, seed=3, weights=None, name="case"):
    """Write prototxt + caffemodel (random weights, or the given {layer: [arrays]}), return (net, x, paths)."""
    p = tmp_path / f"{name}.prototxt"
    p.write_text(prototxt(shape, body, name))
    definition = caffe_files.read_prototxt(p)
    m = weight_match.with_random_weights(definition, seed=seed)
    for i, lay in enumerate(m.net.layer):
        if weights and lay.name in weights:
            m.set_blob_arrays(i, weights[lay.name])
    w = tmp_path / f"{name}.caffemodel"
    caffe_files.write_caffemodel(w, m)
    net = Net(str(p), str(w))
    x = verify.make_input(shape, "random", seed=0)
    net.forward(data=x)
    return net, x, (str(p), str(w))


def assert_parity(actual, ref, **_):
    """The project's fp32 criterion: max |actual - ref| <= 1e-5 * max(1, max |ref|)."""
    actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
    assert actual.shape == ref.shape, (actual.shape, ref.shape)
    err, scale = float(np.abs(actual - ref).max()), max(1.0, float(np.abs(ref).max()))
    assert err <= 1e-5 * scale, f"max abs error {err:.3e} over 1e-5 * {scale:.3g}"


def out(net, name="t", k=0):
    return net.layer_outputs[name][k].detach().numpy().astype(np.float64)


@pytest.mark.parametrize("case", sorted(OPENCV_CASES))
def test_layer_matches_opencv(case, tmp_path):
    shape, body = OPENCV_CASES[case]
    net, x, (p, w) = build(tmp_path, shape, body, name=case)
    ref = verify.opencv_reference(p, w, {"data": x})
    ours = {n: o[0].detach().numpy() for n, o in net.layer_outputs.items()}
    checks = verify.compare(ours, ref, list(net.layer_outputs), tol=1e-5)
    assert checks and all(c.ok for c in checks), verify.format_table(checks)
    assert checks[-1].name == net.graph.layers[-1].name


# ---- hand-computed pooling (pooling_layer.cpp) ------------------------------------------------------------------

X44 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)


def test_max_pool_ceil_with_padding_hand_computed(tmp_path):
    """4x4, k3 s2 p1: ceil((4+2-3)/2)+1 = 3 windows: rows [0,1], [1,3], [3] (clipped)."""
    net, _, _ = build(tmp_path, (1, 1, 4, 4), layer("t", "Pooling", ["data"], ["t"],
                      "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }"))
    net.forward(data=X44)
    assert out(net).tolist() == [[[[5, 7, 7], [13, 15, 15], [13, 15, 15]]]]


def test_ave_pool_divisor_hand_computed(tmp_path):
    """Divisor = window clipped to H + pad = 3, 3, 2 per axis; padding counts, beyond it does not."""
    net, _, _ = build(tmp_path, (1, 1, 4, 4), layer("t", "Pooling", ["data"], ["t"],
                      "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"))
    net.forward(data=X44)
    expected = [[10 / 9, 24 / 9, 10 / 6], [51 / 9, 90 / 9, 33 / 6], [25 / 6, 42 / 6, 15 / 4]]
    assert_parity(out(net)[0, 0], expected, rtol=1e-6)


def _caffe_pool_loops(x, k, s, p, ave):
    """Caffe's PoolingLayer::Forward_cpu loops, written out (pooling_layer.cpp)."""
    H, W = x.shape
    oh = int(np.ceil((H + 2 * p - k) / s)) + 1
    ow = int(np.ceil((W + 2 * p - k) / s)) + 1
    if p and (oh - 1) * s >= H + p:
        oh -= 1
    if p and (ow - 1) * s >= W + p:
        ow -= 1
    y = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, H + p), min(ws + k, W + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
            win = x[hs:he, ws:we]
            y[i, j] = win.sum() / size if ave else win.max()
    return y


@pytest.mark.parametrize("size,k,s,p", [(5, 2, 2, 1), (6, 3, 2, 1), (7, 3, 3, 1), (9, 4, 3, 2), (12, 3, 2, 0),
                                        (13, 5, 4, 2)])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffe_loops(size, k, s, p, method, tmp_path):
    net, x, _ = build(tmp_path, (1, 2, size, size + 1), layer("t", "Pooling", ["data"], ["t"],
                      f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} }}"))
    for c in range(2):
        ref = _caffe_pool_loops(x[0, c].astype(np.float64), k, s, p, method == "AVE")
        assert_parity(out(net)[0, c], ref, rtol=1e-6, atol=1e-6)


def test_pool_round_mode_floor(tmp_path):
    net, x, _ = build(tmp_path, (1, 1, 7, 7), layer("t", "Pooling", ["data"], ["t"],
                      "pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }"))
    assert out(net).shape == (1, 1, 3, 3)
    assert out(net)[0, 0, 2, 2] == x[0, 0, 4:6, 4:6].max()


# ---- formulas where OpenCV has no layer or departs from Caffe -------------------------------------------

def test_batchnorm_scale_factor_zero_and_two(tmp_path):
    """BatchNorm uses sums / s, and 0 when s == 0 (then y = x / sqrt(eps))."""
    body = layer("t", "BatchNorm", ["data"], ["t"], "batch_norm_param { eps: 1e-5 }")
    sums = [np.array([1, 2, 3], np.float32), np.array([4, 5, 6], np.float32)]
    net, x, _ = build(tmp_path, (2, 3, 2, 2), body, weights={"t": sums + [np.array([0], np.float32)]})
    assert_parity(out(net), x / np.sqrt(1e-5), rtol=1e-6)
    net, x, _ = build(tmp_path, (2, 3, 2, 2), body, weights={"t": sums + [np.array([2], np.float32)]}, name="s2")
    mean, var = np.array([0.5, 1, 1.5]), np.array([2, 2.5, 3])
    ref = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    assert_parity(out(net), ref, rtol=1e-6, atol=1e-7)


def test_lrn_across_channels_with_k(tmp_path):
    """scale = k + alpha/n * sum over n channels of x^2 (OpenCV ignores k != 1 here)."""
    net, x, _ = build(tmp_path, (2, 7, 5, 4), layer("t", "LRN", ["data"], ["t"],
                      "lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }"))
    x = x.astype(np.float64)
    sq = np.pad(x ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    ref = x * (2 + 0.3 / 5 * sum(sq[:, i:i + 7] for i in range(5))) ** -0.75
    assert_parity(out(net), ref, rtol=1e-6, atol=1e-7)


def test_log_with_scale_and_shift(tmp_path):
    body = layer("a", "AbsVal", ["data"], ["a"]) + layer("t", "Log", ["a"], ["t"],
                                                         "log_param { base: 10 scale: 2 shift: 0.5 }")
    net, x, _ = build(tmp_path, (2, 3, 4, 4), body)
    assert_parity(out(net), np.log10(0.5 + 2 * np.abs(x.astype(np.float64))), rtol=1e-6)


def test_inner_product_transpose(tmp_path):
    """transpose: the blob is K x N and y = x W (OpenCV ignores the flag)."""
    net, x, (_, w) = build(tmp_path, (2, 3, 4, 5), layer("t", "InnerProduct", ["data"], ["t"],
                           "inner_product_param { num_output: 7 transpose: true }"))
    W, b = caffe_files.read_caffemodel(w).params["t"]
    assert W.shape == (60, 7)
    assert_parity(out(net), x.reshape(2, 60).astype(np.float64) @ W + b, rtol=1e-5, atol=1e-6)


def test_inner_product_axis2(tmp_path):
    net, x, (_, w) = build(tmp_path, (2, 3, 4, 5), layer("t", "InnerProduct", ["data"], ["t"],
                           "inner_product_param { num_output: 7 axis: 2 }"))
    W, b = caffe_files.read_caffemodel(w).params["t"]
    ref = np.einsum("abk,nk->abn", x.reshape(2, 3, 20).astype(np.float64), W) + b
    assert_parity(out(net), ref, rtol=1e-5, atol=1e-6)


def test_prelu_channel_shared(tmp_path):
    """Caffe gives a channel-shared PReLU a 0-d blob (OpenCV cannot read that)."""
    net, x, (_, w) = build(tmp_path, (2, 3, 4, 4), layer("t", "PReLU", ["data"], ["t"],
                           "prelu_param { channel_shared: true }"), weights={"t": [np.array(0.3, np.float32)]})
    assert caffe_files.read_caffemodel(w).params["t"][0].shape == ()
    assert_parity(out(net), np.where(x > 0, x, 0.3 * x), rtol=1e-6)


def test_threshold_bias_and_two_bottom_scale(tmp_path):
    body = (layer("s", "Slice", ["data"], ["s1", "s2"], "slice_param { axis: 1 slice_point: 1 }")
            + layer("sc", "Scale", ["s2", "s1"], ["sc"], "scale_param { axis: 0 }")
            + layer("b", "Bias", ["data"], ["b"]) + layer("t", "Threshold", ["data"], ["t"],
                                                          "threshold_param { threshold: 0.2 }"))
    net, x, _ = build(tmp_path, (2, 3, 4, 4), body, weights={"b": [np.array([1, 2, 3], np.float32)]})
    assert_parity(out(net, "sc"), x[:, 1:] * x[:, :1], rtol=1e-6)
    assert_parity(out(net, "b"), x + np.array([1, 2, 3])[None, :, None, None], rtol=1e-6)
    assert out(net).tolist() == (x > 0.2).astype(np.float64).tolist()


def test_slice_even_and_concat_roundtrip(tmp_path):
    body = (layer("s", "Slice", ["data"], ["a", "b", "c"]) + layer("t", "Concat", ["c", "a", "b"], ["t"]))
    net, x, _ = build(tmp_path, (2, 6, 3, 3), body)
    assert [o.shape[1] for o in net.layer_outputs["s"]] == [2, 2, 2]
    np.testing.assert_array_equal(out(net), np.concatenate([x[:, 4:], x[:, :2], x[:, 2:4]], axis=1))


def test_eltwise_against_numpy(tmp_path):
    body = (layer("a", "TanH", ["data"], ["a"]) + layer("sum", "Eltwise", ["data", "a", "a"], ["sum"],
            "eltwise_param { coeff: 2 coeff: -1 coeff: 0.5 }") + layer("p", "Eltwise", ["data", "a"], ["p"],
            "eltwise_param { operation: PROD }") + layer("m", "Eltwise", ["data", "a"], ["m"],
            "eltwise_param { operation: MAX }"))
    net, x, _ = build(tmp_path, (2, 3, 4, 4), body)
    a = np.tanh(x.astype(np.float64))
    assert_parity(out(net, "sum"), 2 * x - 0.5 * a, rtol=1e-6, atol=1e-7)
    assert_parity(out(net, "p"), x * a, rtol=1e-6, atol=1e-7)
    assert_parity(out(net, "m"), np.maximum(x, a), rtol=1e-6, atol=1e-7)


def test_softmax_axis_and_argmax(tmp_path):
    body = (layer("sm", "Softmax", ["data"], ["sm"], "softmax_param { axis: 2 }")
            + layer("t", "ArgMax", ["data"], ["t"], "argmax_param { top_k: 2 axis: 1 }")
            + layer("g", "ArgMax", ["data"], ["g"], "argmax_param { out_max_val: true }"))
    net, x, _ = build(tmp_path, (2, 3, 4, 5), body)
    e = np.exp(x - x.max(axis=2, keepdims=True))
    assert_parity(out(net, "sm"), e / e.sum(axis=2, keepdims=True), rtol=1e-6)
    assert out(net).tolist() == np.argsort(-x, axis=1)[:, :2].astype(np.float64).tolist()
    flat = x.reshape(2, -1)
    assert out(net, "g")[:, 0, 0, 0].tolist() == flat.argmax(1).tolist()   # ArgMaxLayer::Reshape: >= 3 axes, or the bottom's
    assert_parity(out(net, "g")[:, 1, 0, 0], flat.max(1))


def test_depthwise_convolution_equals_grouped(tmp_path):
    """DepthwiseConvolution (mobile forks) is a Convolution with group = channels."""
    dw, x, (_, w) = build(tmp_path, (1, 4, 9, 9), layer("t", "DepthwiseConvolution", ["data"], ["t"],
                          "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }"), name="dw")
    W, b = caffe_files.read_caffemodel(w).params["t"]
    assert W.shape == (4, 1, 3, 3)
    ref = np.zeros((1, 4, 9, 9))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for c in range(4):
        for i in range(9):
            for j in range(9):
                ref[0, c, i, j] = (xp[0, c, i:i + 3, j:j + 3] * W[c, 0]).sum() + b[c]
    assert_parity(out(dw), ref, rtol=1e-5, atol=1e-6)


def test_upsample_nearest(tmp_path):
    net, x, _ = build(tmp_path, (1, 2, 3, 4), layer("t", "Upsample", ["data"], ["t"], "upsample_param { scale: 2 }"))
    np.testing.assert_array_equal(out(net), x.repeat(2, axis=2).repeat(2, axis=3))


# ---- graph semantics ------------------------------------------------------------------------------------

def test_in_place_chain_keeps_every_value(tmp_path):
    shape, body = OPENCV_CASES["inplace_chain"]
    net, x, (_, w) = build(tmp_path, shape, body)
    (cw, cb), (sw, sb) = caffe_files.read_caffemodel(w).params["c"], caffe_files.read_caffemodel(w).params["s"]
    conv = np.einsum("oc,nchw->nohw", cw[:, :, 0, 0], x.astype(np.float64)) + cb[None, :, None, None]
    relu = np.maximum(conv, 0)
    scaled = relu * sw[None, :, None, None] + sb[None, :, None, None]
    assert_parity(out(net, "c"), conv, rtol=1e-5, atol=1e-6)
    assert_parity(out(net, "r"), relu, rtol=1e-5, atol=1e-6)
    assert_parity(net.blobs["c"].detach().numpy(), scaled, rtol=1e-5, atol=1e-6)  # pycaffe: last
    assert net.outputs == ["c"]


def test_shared_parameter_is_one_tensor(tmp_path):
    body = (layer("ip1", "InnerProduct", ["data"], ["y1"], 'param { name: "w" } param { name: "b" } '
                  "inner_product_param { num_output: 3 }")
            + layer("ip2", "InnerProduct", ["data"], ["y2"], 'param { name: "w" } param { name: "b" } '
                    "inner_product_param { num_output: 3 }"))
    net, x, _ = build(tmp_path, (2, 4), body)
    assert net.params["ip1"][0] is net.params["ip2"][0] and net.params["ip1"][1] is net.params["ip2"][1]
    assert len(list(net.module.parameters())) == 2
    np.testing.assert_array_equal(out(net, "ip1"), out(net, "ip2"))
    net.module.train()
    res = net.module(torch.from_numpy(x))
    (res["y1"].sum() + res["y2"].sum()).backward()
    assert_parity(net.params["ip1"][0].grad.numpy(), 2 * np.tile(x.sum(0), (3, 1)), rtol=1e-6)


def test_phase_filtering(tmp_path):
    body = (layer("d", "Dropout", ["data"], ["t"], "include { phase: TRAIN }")
            + layer("t", "TanH", ["data"], ["t"], "include { phase: TEST }"))
    net, x, _ = build(tmp_path, (2, 3), body)
    assert [gl.name for gl in net.graph.layers] == ["t"]
    assert_parity(out(net), np.tanh(x), rtol=1e-6)


def test_unknown_type_names_layer_and_how_to_register(tmp_path):
    p = tmp_path / "u.prototxt"
    p.write_text(prototxt((1, 3), layer("odd", "FancyLayer", ["data"], ["t"])))
    with pytest.raises(UnknownLayerType) as e:
        Net(str(p))
    assert "layer 'odd' has type 'FancyLayer'" in str(e.value) and "SFPORT_CONVERTERS" in str(e.value)


def test_bottom_not_produced_is_an_error(tmp_path):
    p = tmp_path / "b.prototxt"
    p.write_text(prototxt((1, 3), layer("t", "TanH", ["nothing"], ["t"])))
    with pytest.raises(CaffeFileError, match=r"unknown bottom blob 'nothing' \(bottom index 0\): no earlier layer produces it"):
        Net(str(p))


PLUGIN = '''
import torch
from torch import nn
from sfport.converters import Converter, register

class TimesK(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.k = nn.Parameter(torch.ones(channels))
        self.caffe_blobs = ["k"]

    def forward(self, x):
        return x * self.k.reshape(1, -1, 1, 1)

@register("TimesK")
class TimesKConverter(Converter):
    def build(self, layer, bottom_shapes):
        return TimesK(bottom_shapes[0][1])
'''


def test_custom_layer_registered_from_outside(tmp_path):
    """A toy type in a module outside sfport, named in SFPORT_CONVERTERS: converts, loads its blob, runs,
    and writes its blob back to a caffemodel."""
    (tmp_path / "toy_plugin.py").write_text(PLUGIN)
    (tmp_path / "toy.prototxt").write_text(prototxt((1, 3, 2, 2), layer("t", "TimesK", ["data"], ["t"])))
    code = textwrap.dedent(f"""
        import numpy as np
        from sfport.formats import caffe_files
        from sfport.runtime.net import Net
        net = Net({str(tmp_path / 'toy.prototxt')!r})
        net.params["t"][0].data[:] = __import__("torch").tensor([1.0, 2.0, 3.0])
        y = net.forward(data=np.ones((1, 3, 2, 2), np.float32))["t"]
        assert y[0, :, 0, 0].tolist() == [1.0, 2.0, 3.0], y
        net.save_caffemodel({str(tmp_path / 'toy.caffemodel')!r})
        again = Net({str(tmp_path / 'toy.prototxt')!r}, {str(tmp_path / 'toy.caffemodel')!r})
        print(again.forward(data=np.ones((1, 3, 2, 2), np.float32))["t"][0, :, 1, 1].tolist())
    """)
    env = {"SFPORT_CONVERTERS": "toy_plugin", "PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[1.0, 2.0, 3.0]"


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.1])
def test_dropout_scale_train_false_scales_at_test(ratio):
    """py-faster-rcnn's `scale_train: false` (caffe-fast-rcnn dropout_layer.cpp): the test output is
    x * float(1. / scale_), scale_ = float(1. / (1. - threshold_)), threshold_ the float ratio; when training the
    kept values pass unscaled. The default (true) stays the identity at test time."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    _, _, mod = one_layer("Dropout", f"dropout_param {{ dropout_ratio: {ratio} scale_train: false }}")
    mod.eval()
    threshold = np.float32(ratio)
    scale = np.float32(1.0 / (1.0 - np.float64(threshold)))
    want = x * np.float32(1.0 / np.float64(scale))
    np.testing.assert_array_equal(mod(torch.from_numpy(x)).numpy(), want)
    assert not np.array_equal(want, x)
    mod.train()
    y = mod(torch.from_numpy(x)).numpy()
    assert set(np.unique(y[y != x])) <= {0.0} and np.any(y == 0) and np.any(y == x)
    _, _, plain = one_layer("Dropout", f"dropout_param {{ dropout_ratio: {ratio} }}")
    plain.eval()
    np.testing.assert_array_equal(plain(torch.from_numpy(x)).numpy(), x)


def test_small_dense_convolutions_run_on_im2col_and_gemm(monkeypatch):
    """A dense 2-D convolution of fewer than SMALL_CONV_MACS multiply-adds runs on thnn_conv2d (im2col + GEMM, as
    Caffe) on the CPU: values and gradients against the convolution in float64, strided and padded, with and
    without bias; a large one, a grouped one and a traced one run F.conv2d."""
    import torch.nn.functional as F

    from sfport.converters.modules import conv as conv_mod
    calls = []
    real = torch._C._nn.thnn_conv2d
    monkeypatch.setattr(torch._C._nn, "thnn_conv2d", lambda *a: calls.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(5)
    for (n, c, h, w, o, stride, pad, bias) in [(8, 3, 24, 20, 8, 2, 1, True), (8, 8, 12, 10, 16, 1, 0, False),
                                               (2, 4, 7, 9, 5, 3, 2, True)]:
        m = conv_mod.CaffeConv((o, c, 3, 3), bias, (stride, stride), (pad, pad), (1, 1), 1, False)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(rng.normal(size=(o, c, 3, 3)).astype(np.float32)))
            if bias:
                m.bias.copy_(torch.from_numpy(rng.normal(size=o).astype(np.float32)))
        x = torch.from_numpy(rng.normal(size=(n, c, h, w)).astype(np.float32)).requires_grad_()
        calls.clear()
        y = m(x)
        assert calls == [x.shape]
        g = torch.from_numpy(rng.normal(size=tuple(y.shape)).astype(np.float32))
        y.backward(g)
        x64, w64 = x.detach().double().requires_grad_(), m.weight.detach().double().requires_grad_()
        ref = F.conv2d(x64, w64, m.bias.detach().double() if bias else None, stride, pad)
        ref.backward(g.double())
        for got, want in ((y, ref), (x.grad, x64.grad), (m.weight.grad, w64.grad)):
            want = want.detach().numpy()
            assert np.abs(got.detach().numpy() - want).max() <= 1e-6 * max(1.0, np.abs(want).max())
    big = conv_mod.CaffeConv((64, 64, 3, 3), True, (1, 1), (1, 1), (1, 1), 1, False)
    grouped = conv_mod.CaffeConv((8, 1, 3, 3), True, (1, 1), (1, 1), (1, 1), 8, False)
    small = conv_mod.CaffeConv((8, 8, 3, 3), True, (1, 1), (1, 1), (1, 1), 1, False)
    calls.clear()
    big(torch.zeros(1, 64, 32, 32))       # 37.7 M multiply-adds
    grouped(torch.zeros(8, 8, 12, 10))
    traced = torch.jit.trace(small, torch.zeros(8, 8, 12, 10), check_trace=False)
    assert calls == [] and "aten::_convolution" in str(traced.graph) and "thnn" not in str(traced.graph)


def test_pointwise_convolutions_of_one_image_run_as_one_matrix_product(monkeypatch):
    """A 1x1 convolution (stride 1, no padding, one group) of a batch of one at inference on the CPU runs as one
    torch.mm / addmm (NCHW: W x pixels; NHWC: pixels x W^T) with its top in the input's layout: values against
    the convolution in float64, with and without bias; a batch of two, a grouped one, a padded one, one with
    gradients, a prepacked one and a traced one run as before (no mm)."""
    import torch.nn.functional as F

    from sfport.converters.modules import conv as conv_mod
    calls = []
    for name in ("mm", "addmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    rng = np.random.default_rng(6)

    def conv(o, c, bias, pad=0, groups=1):
        m = conv_mod.CaffeConv((o, c // groups, 1, 1), bias, (1, 1), (pad, pad), (1, 1), groups, False)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(rng.normal(size=tuple(m.weight.shape)).astype(np.float32)))
            if bias:
                m.bias.copy_(torch.from_numpy(rng.normal(size=o).astype(np.float32)))
        return m

    for (c, h, w, o, bias) in [(64, 7, 6, 128, True), (16, 12, 10, 3, False), (5, 1, 1, 7, True)]:
        m = conv(o, c, bias)
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.from_numpy(rng.normal(size=(1, c, h, w)).astype(np.float32)).contiguous(memory_format=layout)
            calls.clear()
            with torch.no_grad():
                y = m(x)
            assert calls == ["addmm" if bias else "mm"]
            assert y.shape == (1, o, h, w) and y.is_contiguous(memory_format=layout)
            ref = F.conv2d(x.double(), m.weight.detach().double(), m.bias.detach().double() if bias else None)
            assert np.abs(y.numpy() - ref.numpy()).max() <= 1e-5 * max(1.0, np.abs(ref.numpy()).max())
    m = conv(8, 8, True)
    prepacked = conv(32, 32, True)
    prepacked.prepacked = True
    calls.clear()
    with torch.no_grad():
        m(torch.zeros(2, 8, 5, 5))
        conv(8, 8, True, groups=2)(torch.zeros(1, 8, 5, 5))
        conv(8, 8, True, pad=1)(torch.zeros(1, 8, 5, 5))
        prepacked(torch.zeros(1, 32, 5, 5))
    m(torch.zeros(1, 8, 5, 5, requires_grad=True))
    with torch.no_grad():
        traced = torch.jit.trace(m, torch.zeros(1, 8, 5, 5), check_trace=False)
    assert calls == [] and "aten::_convolution" in str(traced.graph) and "mm" not in str(traced.graph)
