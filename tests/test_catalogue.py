"""The catalogue converters - Clip, Swish, ReLU6, Embed, Tile, Reduction, BatchReindex, Filter, Parameter, ArgMax -
against OpenCV 4 where cv2.dnn implements the type as Caffe does (ReLU6; Swish with beta 1: OpenCV ignores beta),
otherwise against references written here in numpy float64 from Caffe's C++ (src/caffe/layers/<name>_layer.cpp,
cited per test), never from sfport. Layers that train are checked backward too: the autograd gradient against
Caffe's Backward_cpu formula (with a random top diff) and, where that is the true derivative, against central
finite differences (torch.autograd.gradcheck in float64)."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.formats import caffe_files
from sfport.netdef import shapes
from sfport.runtime import verify
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2

from netcases import input_grad, layer, one_layer, prototxt
from test_converters import assert_parity, build, out

RNG = np.random.default_rng(7)


def fwd(mod, *xs):
    y = mod(*[torch.tensor(np.asarray(x, dtype=np.float64)) for x in xs])
    return y.detach().numpy() if isinstance(y, torch.Tensor) else [t.detach().numpy() for t in y]


def net_from(tmp_path, inputs: dict, body: str, weights=None, name="case"):
    """A net with one Input layer per named input shape; optional {layer: [arrays]} weights."""
    text = f'name: "{name}"\n' + "".join(
        f'layer {{ name: "in_{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in s) + " } } }\n" for k, s in inputs.items()) + body + "\n"
    p = tmp_path / f"{name}.prototxt"
    p.write_text(text)
    if weights is None:
        return Net(str(p))
    m = caffe_files.CaffeModel.from_net(caffe_files.read_prototxt(p).net)
    for i, lay in enumerate(m.net.layer):
        if lay.name in weights:
            m.set_blob_arrays(i, weights[lay.name])
    w = tmp_path / f"{name}.caffemodel"
    caffe_files.write_caffemodel(w, m)
    return Net(str(p), str(w))


def bad_net(tmp_path, shape, body):
    """The one-line error of building a net (Input 'data' of ``shape``) with a bad layer."""
    with pytest.raises(CaffeFileError) as e:
        net_from(tmp_path, {"data": shape}, body)
    return e


def one_line_error(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


# ---- OpenCV parity: ReLU6, Swish (beta 1) --------------------------------------------------------------------

OPENCV = {
    # Power scales the uniform(-1, 1) input to (-8, 8) so both of ReLU6's bounds are crossed
    "relu6": layer("s", "Power", ["data"], ["s"], "power_param { scale: 8 }") + layer("t", "ReLU6", ["s"], ["t"]),
    "swish": layer("s", "Power", ["data"], ["s"], "power_param { scale: 4 }") + layer("t", "Swish", ["s"], ["t"]),
}


@pytest.mark.parametrize("case", sorted(OPENCV))
def test_matches_opencv(case, tmp_path):
    net, x, (p, w) = build(tmp_path, (2, 3, 6, 5), OPENCV[case], name=case)
    ref = verify.opencv_reference(p, w, {"data": x})
    ours = {n: o[0].detach().numpy() for n, o in net.layer_outputs.items()}
    checks = verify.compare(ours, ref, list(net.layer_outputs), tol=1e-5)
    assert checks and all(c.ok for c in checks), verify.format_table(checks)
    assert checks[-1].name == "t"


# ---- Clip (clip_layer.cpp) ----------------------------------------------------------------------------------

def _clip_caffe(x, lo, hi):
    """Forward_cpu: std::max(min, std::min(x, max)), with std::min(a, b) = (b < a) ? b : a, std::max(a, b) =
    (a < b) ? b : a - so NaN gives min."""
    v = np.where(hi < x, hi, x)
    return np.where(lo < v, v, lo)


def test_clip_forward_backward_at_the_bounds():
    lo, hi = -0.5, 0.25
    x = np.array([-1, -0.5, -0.2, 0, 0.25, 0.3, 2, np.nan, np.inf, -np.inf])
    _, _, m = one_layer("Clip", f"clip_param {{ min: {lo} max: {hi} }}")
    np.testing.assert_array_equal(fwd(m, x), _clip_caffe(x, lo, hi))
    assert fwd(m, [np.nan])[0] == lo
    # Backward_cpu: top_diff * (x >= min && x <= max): the bounds themselves pass the gradient
    g = RNG.standard_normal(x.shape)
    np.testing.assert_array_equal(input_grad(m, [x], g), g * ((x >= lo) & (x <= hi)))


def test_clip_min_above_max_gives_min():
    _, _, m = one_layer("Clip", "clip_param { min: 1 max: -1 }")
    x = RNG.uniform(-3, 3, (2, 3))
    np.testing.assert_array_equal(fwd(m, x), np.full(x.shape, 1.0))
    np.testing.assert_array_equal(input_grad(m, [x], np.ones(x.shape)), 0)


def test_clip_net_and_finite_differences(tmp_path):
    net, x, _ = build(tmp_path, (2, 3, 4, 4), layer("t", "Clip", ["data"], ["t"], "clip_param { min: -0.3 max: 0.6 }"))
    assert_parity(out(net), _clip_caffe(x.astype(np.float64), np.float32(-0.3), np.float32(0.6)))
    _, _, m = one_layer("Clip", "clip_param { min: -0.3 max: 0.6 }")
    xt = torch.tensor(RNG.uniform(-1, 1, (3, 7)))
    xt = torch.where((xt + 0.3).abs() < 1e-3, xt + 0.01, xt)
    xt = torch.where((xt - 0.6).abs() < 1e-3, xt + 0.01, xt).requires_grad_(True)   # away from the kinks
    assert torch.autograd.gradcheck(m, (xt,))


def test_clip_needs_min_and_max(tmp_path):
    e = bad_net(tmp_path, (1, 2), layer("t", "Clip", ["data"], ["t"]))
    one_line_error(e, "'t'", "Clip", "min", "max")


# ---- Swish (swish_layer.cpp) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 2.5, -0.5])
def test_swish_forward_and_caffe_backward(beta):
    x = RNG.uniform(-6, 6, (2, 3, 4))
    _, _, m = one_layer("Swish", f"swish_param {{ beta: {beta} }}")
    s = 0.5 * np.tanh(0.5 * beta * x) + 0.5            # Caffe's sigmoid(): 0.5 * tanh(0.5 x) + 0.5
    y = x * s
    np.testing.assert_allclose(fwd(m, x), y, rtol=1e-12, atol=1e-14)
    g = RNG.standard_normal(x.shape)                   # Backward_cpu: top_diff * (beta y + s (1 - beta y))
    np.testing.assert_allclose(input_grad(m, [x], g), g * (beta * y + s * (1 - beta * y)), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(m.double(), (torch.tensor(x, requires_grad=True),))


def test_swish_beta_in_a_net(tmp_path):
    net, x, _ = build(tmp_path, (2, 3, 4, 4), layer("t", "Swish", ["data"], ["t"], "swish_param { beta: 3 }"))
    x = x.astype(np.float64)
    assert_parity(out(net), x * (0.5 * np.tanh(1.5 * x) + 0.5))


# ---- ReLU6 (the MobileNet forks, e.g. MobileNet-YOLO src/caffe/layers/relu6_layer.cpp) -----------------------

def test_relu6_forward_backward_at_the_bounds():
    x = np.array([-2, -0.0, 0, 1e-3, 3, 6 - 1e-3, 6, 7, np.inf, -np.inf])
    _, _, m = one_layer("ReLU6")
    np.testing.assert_array_equal(fwd(m, x), np.minimum(np.maximum(x, 0), 6))
    assert np.isnan(fwd(m, [np.nan])[0])
    g = RNG.standard_normal(x.shape)                   # Backward_cpu: top_diff * (x > 0) * (x < 6)
    np.testing.assert_array_equal(input_grad(m, [x], g), g * ((x > 0) & (x < 6)))


def test_relu6_rejects_a_negative_slope(tmp_path):
    e = bad_net(tmp_path, (1, 2), layer("t", "ReLU6", ["data"], ["t"], "relu_param { negative_slope: 0.1 }"))
    one_line_error(e, "'t'", "ReLU6", "negative_slope")


# ---- Embed (embed_layer.cpp) ---------------------------------------------------------------------------------

EMBED = 'layer { name: "t" type: "Embed" bottom: "data" top: "t" embed_param { num_output: 4 input_dim: 5 %s } }'


def test_embed_forward_weights_and_backward(tmp_path):
    W, b = RNG.standard_normal((5, 4)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    net = net_from(tmp_path, {"data": (2, 3)}, EMBED % "", weights={"t": [W, b]})
    assert [tuple(p.shape) for p in net.params["t"]] == [(5, 4), (4,)]
    idx = np.array([[0, 4, 4], [2, 2, 4]], np.float32)
    y = net.forward(data=idx)["t"]
    assert tuple(y.shape) == (2, 3, 4)                 # Reshape: bottom shape + (num_output,)
    assert_parity(y.detach().numpy(), W[idx.astype(int)].astype(np.float64) + b)
    # Backward_cpu: caffe_axpy of each top row into weight row index (accumulating), bias += sum of top_diff
    _, _, m = one_layer("Embed", "embed_param { num_output: 4 input_dim: 5 }", [(2, 3)])
    m = m.double()
    g = RNG.standard_normal((2, 3, 4))
    (m(torch.tensor(idx, dtype=torch.float64)) * torch.tensor(g)).sum().backward()
    wd = np.zeros((5, 4))
    for n, k in enumerate(idx.astype(int).ravel()):
        wd[k] += g.reshape(-1, 4)[n]
    np.testing.assert_allclose(m.weight.grad.numpy(), wd, rtol=1e-12)
    np.testing.assert_allclose(m.bias.grad.numpy(), g.reshape(-1, 4).sum(0), rtol=1e-12)


def test_embed_without_bias_and_truncation(tmp_path):
    W = RNG.standard_normal((5, 4)).astype(np.float32)
    net = net_from(tmp_path, {"data": (4,)}, EMBED % "bias_term: false", weights={"t": [W]})
    assert len(net.params["t"]) == 1
    # static_cast<int> truncates toward zero (what a release build does; a debug build DCHECKs integers)
    y = net.forward(data=np.array([2.7, -0.5, 4.99, 0], np.float32))["t"].detach().numpy()
    np.testing.assert_array_equal(y, W[[2, 0, 4, 0]])


@pytest.mark.parametrize("bad", [5, -1, 7.5])
def test_embed_index_out_of_range_is_one_line(bad, tmp_path):
    net = net_from(tmp_path, {"data": (3,)}, EMBED % "")
    with pytest.raises(CaffeFileError) as e:
        net.forward(data=np.array([0, bad, 1], np.float32))
    one_line_error(e, "'t'", "Embed", "0..4")


@pytest.mark.parametrize("param,word", [("num_output: 0 input_dim: 5", "num_output"),
                                        ("num_output: 3", "input_dim")])
def test_embed_bad_parameters(param, word, tmp_path):
    body = f'layer {{ name: "t" type: "Embed" bottom: "data" top: "t" embed_param {{ {param} }} }}'
    with pytest.raises(CaffeFileError) as e:
        net_from(tmp_path, {"data": (3,)}, body)
    one_line_error(e, "'t'", "Embed", word)


def test_embed_fillers(tmp_path):
    net = net_from(tmp_path, {"data": (3,)}, EMBED % "weight_filler { type: 'constant' value: 0.5 } "
                   "bias_filler { type: 'constant' value: -2 }")
    W, b = net.params["t"]
    assert torch.all(W == 0.5) and torch.all(b == -2)


# ---- Tile (tile_layer.cpp) -----------------------------------------------------------------------------------

def _tile_caffe(x, axis, tiles):
    """Forward_cpu: for each of outer = count(0, axis), copy the inner = count(axis) block tiles times."""
    outer, inner = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    src, top = x.reshape(-1), []
    for i in range(outer):
        for _ in range(tiles):
            top.append(src[i * inner:(i + 1) * inner])
    shape = list(x.shape)
    shape[axis] *= tiles
    return np.concatenate(top).reshape(shape)


def _tile_caffe_backward(top_diff, shape, axis, tiles):
    """Backward_cpu: bottom_diff block i = sum over t of top_diff block (i, t)."""
    outer, inner = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
    td = top_diff.reshape(outer, tiles, inner)
    return td.sum(1).reshape(shape)


@pytest.mark.parametrize("axis,tiles", [(0, 2), (1, 3), (2, 2), (-1, 4), (3, 1)])
def test_tile_forward_backward(axis, tiles, tmp_path):
    shape = (2, 3, 4, 5)
    net, x, _ = build(tmp_path, shape, layer("t", "Tile", ["data"], ["t"],
                                             f"tile_param {{ axis: {axis} tiles: {tiles} }}"))
    ax = axis % 4
    np.testing.assert_array_equal(out(net), _tile_caffe(x.astype(np.float64), ax, tiles))
    _, _, m = one_layer("Tile", f"tile_param {{ axis: {axis} tiles: {tiles} }}", [shape])
    g = RNG.standard_normal(out(net).shape)
    np.testing.assert_allclose(input_grad(m, [x], g), _tile_caffe_backward(g, shape, ax, tiles), rtol=1e-12)
    assert torch.autograd.gradcheck(m, (torch.tensor(x[:1, :2, :2, :3], dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("param,words", [("tiles: 0", ("tiles", "positive")), ("axis: 1", ("tiles",)),
                                         ("axis: 4 tiles: 2", ("axis 4",)), ("axis: -5 tiles: 2", ("axis -5",))])
def test_tile_bad_parameters(param, words, tmp_path):
    e = bad_net(tmp_path, (2, 3, 4, 5), layer("t", "Tile", ["data"], ["t"], f"tile_param {{ {param} }}"))
    one_line_error(e, "'t'", "Tile", *words)


# ---- Reduction (reduction_layer.cpp) -------------------------------------------------------------------------

def _reduction_caffe(x, op, axis, coeff):
    """Forward_cpu and Backward_cpu's formulas over num = count(0, axis) rows of dim = count(axis); coeff_ is a
    Dtype (float), divided by dim in Reshape for MEAN."""
    num, dim = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    rows = x.reshape(num, dim)
    c = float(np.float32(coeff) / np.float32(dim)) if op == "MEAN" else coeff
    y = {"SUM": rows.sum(1), "MEAN": rows.sum(1), "ASUM": np.abs(rows).sum(1), "SUMSQ": (rows * rows).sum(1)}[op]

    def backward(top_diff):
        bc = top_diff.reshape(num, 1) * c
        d = {"SUM": np.ones_like(rows), "MEAN": np.ones_like(rows), "ASUM": np.sign(rows), "SUMSQ": 2 * rows}[op]
        return (bc * d).reshape(x.shape)
    return (y * c).reshape(x.shape[:axis]), backward


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, -0.5), (2, 2.0), (-1, 1.0)])
def test_reduction_forward_backward(op, axis, coeff, tmp_path):
    shape = (2, 3, 4, 5)
    net, x, _ = build(tmp_path, shape, layer("t", "Reduction", ["data"], ["t"],
                      f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}"))
    x = x.astype(np.float64)
    x.reshape(-1)[::7] = 0                              # ASUM's sign(0) = 0 (caffe_cpu_sign)
    net.forward(data=x.astype(np.float32))
    ref, backward = _reduction_caffe(x, op, axis % 4, coeff)
    assert out(net).shape == shape[:axis % 4]           # Reshape: the axes before the reduced one
    assert_parity(out(net), ref)
    _, _, m = one_layer("Reduction", f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}", [shape])
    g = RNG.standard_normal(ref.shape)
    np.testing.assert_allclose(input_grad(m, [x], g), backward(g), rtol=1e-10, atol=1e-12)
    xs = torch.tensor(RNG.uniform(0.1, 1, (2, 3, 2)) * RNG.choice([-1, 1], (2, 3, 2)), requires_grad=True)
    _, _, m = one_layer("Reduction", f"reduction_param {{ operation: {op} axis: {min(axis % 4, 2)} coeff: {coeff} }}",
                     [(2, 3, 2)])
    assert torch.autograd.gradcheck(m, (xs,))


def test_reduction_shape_inference_and_bad_axis(tmp_path):
    net, _, _ = build(tmp_path, (2, 3, 4), layer("t", "Reduction", ["data"], ["t"], "reduction_param { axis: 0 }"))
    assert out(net).shape == ()
    assert net.graph.layers[-1].top_shapes == [()]
    for axis in (3, -4):
        e = bad_net(tmp_path, (2, 3, 4), layer("t", "Reduction", ["data"], ["t"],
                                               f"reduction_param {{ axis: {axis} }}"))
        one_line_error(e, "'t'", "Reduction", f"axis {axis}")


# ---- BatchReindex (batch_reindex_layer.cpp) ------------------------------------------------------------------

REINDEX = 'layer { name: "t" type: "BatchReindex" bottom: "data" bottom: "permut" top: "t" }'


def test_batch_reindex_forward_backward(tmp_path):
    net = net_from(tmp_path, {"data": (4, 3, 2), "permut": (6,)}, REINDEX)
    x = RNG.standard_normal((4, 3, 2)).astype(np.float32)
    permut = np.array([3, 0, 0, 2.5, 3, 1], np.float32)   # 2.5 passes CHECK_LT(2.5, 4) and casts to 2
    y = net.forward(data=x, permut=permut)["t"].detach().numpy()
    assert y.shape == (6, 3, 2)                            # Reshape: (permut count,) + data.shape[1:]
    np.testing.assert_array_equal(y, x[[3, 0, 0, 2, 3, 1]])
    # Backward_cpu: zero bottom_diff, then bot_diff[permut[n]] += top_diff[n]
    _, _, m = one_layer("BatchReindex", "", [(4, 3, 2), (6,)])
    g = RNG.standard_normal((6, 3, 2))
    ref = np.zeros((4, 3, 2))
    for n, k in enumerate([3, 0, 0, 2, 3, 1]):
        ref[k] += g[n]
    np.testing.assert_allclose(input_grad(m, [x, permut], g), ref, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda d: m(d, torch.tensor(permut, dtype=torch.float64)),
                                    (torch.tensor(x, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("bad", [4, -1, -0.5, np.nan])
def test_batch_reindex_bad_index_is_one_line(bad, tmp_path):
    net = net_from(tmp_path, {"data": (4, 3), "permut": (2,)}, REINDEX)
    with pytest.raises(CaffeFileError) as e:
        net.forward(data=np.zeros((4, 3), np.float32), permut=np.array([0, bad], np.float32))
    one_line_error(e, "'t'", "BatchReindex", "0..3")


def test_batch_reindex_needs_a_1d_permutation(tmp_path):
    with pytest.raises(CaffeFileError) as e:
        net_from(tmp_path, {"data": (4, 3), "permut": (2, 1)}, REINDEX)
    one_line_error(e, "'t'", "BatchReindex", "1-D")


# ---- Filter (filter_layer.cpp) -------------------------------------------------------------------------------

FILTER = ('layer { name: "t" type: "Filter" bottom: "data" bottom: "extra" bottom: "sel" top: "t" top: "u" }')


def test_filter_forward_backward_and_shapes(tmp_path):
    net = net_from(tmp_path, {"data": (5, 3, 2), "extra": (5, 4), "sel": (5, 1)}, FILTER)
    # Reshape at setup (first_reshape_): each top has its bottom's shape
    assert net.graph.layers[-1].top_shapes == [(5, 3, 2), (5, 4)]
    x, e = RNG.standard_normal((5, 3, 2)).astype(np.float32), RNG.standard_normal((5, 4)).astype(np.float32)
    sel = np.array([[0], [2], [-0.0], [np.nan], [-1]], np.float32)   # `if (*sel)`: NaN is true, -0 false
    res = net.forward(data=x, extra=e, sel=sel)
    keep = [1, 3, 4]
    np.testing.assert_array_equal(res["t"].detach().numpy(), x[keep])
    np.testing.assert_array_equal(res["u"].detach().numpy(), e[keep])
    # Backward_cpu: forwarded items get their top row's diff, the others zero
    _, _, m = one_layer("Filter", "", [(5, 3, 2), (5, 4), (5, 1)], ntop=2)
    xs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, e)]
    t, u = m(*xs, torch.tensor(sel, dtype=torch.float64))
    gt, gu = RNG.standard_normal(t.shape), RNG.standard_normal(u.shape)
    dx, de = torch.autograd.grad((t * torch.tensor(gt)).sum() + (u * torch.tensor(gu)).sum(), xs)
    rx, re = np.zeros(x.shape), np.zeros(e.shape)
    rx[keep], re[keep] = gt, gu
    np.testing.assert_array_equal(dx.numpy(), rx)
    np.testing.assert_array_equal(de.numpy(), re)


def test_filter_nothing_selected(tmp_path):
    net = net_from(tmp_path, {"data": (3, 2), "sel": (3,)},
                   'layer { name: "t" type: "Filter" bottom: "data" bottom: "sel" top: "t" }')
    assert net.forward(data=np.ones((3, 2), np.float32), sel=np.zeros(3, np.float32))["t"].shape == (0, 2)


@pytest.mark.parametrize("inputs,tops,words", [
    ({"data": (5, 3), "sel": (4, 1)}, 1, ("first dimension 4",)),
    ({"data": (5, 3), "sel": (5, 2)}, 1, ("selector",)),
    ({"data": (5, 3), "sel": (5, 1)}, 2, ("one top per filtered bottom",)),
])
def test_filter_bad_shapes(inputs, tops, words, tmp_path):
    t = " ".join(f'top: "t{j}"' for j in range(tops))
    with pytest.raises(CaffeFileError) as e:
        net_from(tmp_path, inputs, f'layer {{ name: "t" type: "Filter" bottom: "data" bottom: "sel" {t} }}')
    one_line_error(e, "'t'", "Filter", *words)


# ---- Parameter (parameter_layer.hpp) -------------------------------------------------------------------------

def test_parameter_top_is_the_blob_and_learns():
    c, lay, m = one_layer("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", [])
    assert c.top_shapes(lay, []) == [(2, 3)] and c.param_shapes(lay, []) == [(2, 3)]
    assert torch.all(m() == 0)                          # Caffe allocates the blob without a filler: zeros
    blob = RNG.standard_normal((2, 3)).astype(np.float32)
    c.load(m, [blob])
    top = m()
    assert top is m.weight and np.array_equal(c.save(m)[0], blob)   # ShareData / ShareDiff
    g = RNG.standard_normal((2, 3))
    (top.double() * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(m.weight.grad.numpy(), g, rtol=1e-6)


def test_parameter_in_a_net(tmp_path):
    blob = RNG.standard_normal((2, 3)).astype(np.float32)
    net = net_from(tmp_path, {"data": (2, 3)}, 'layer { name: "p" type: "Parameter" top: "p" parameter_param { '
                   'shape { dim: 2 dim: 3 } } }', weights={"p": [blob]})
    np.testing.assert_array_equal(net.forward(data=np.zeros((2, 3), np.float32))["p"].detach().numpy(), blob)


def test_parameter_feeds_later_layers(tmp_path):
    blob = RNG.standard_normal((2, 3)).astype(np.float32)
    net = net_from(tmp_path, {"data": (2, 3)}, 'layer { name: "p" type: "Parameter" top: "p" parameter_param { '
                   'shape { dim: 2 dim: 3 } } }\nlayer { name: "s" type: "Eltwise" bottom: "data" bottom: "p" '
                   'top: "s" }', weights={"p": [blob]})
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(net.forward(data=x)["s"].detach().numpy(), x + blob, rtol=1e-6)


# ---- ArgMax (argmax_layer.cpp) -------------------------------------------------------------------------------

def _argmax_caffe(x, top_k, out_max_val, axis=None):
    """Forward_cpu with Reshape's top shape: partial_sort of (value, index) pairs by std::greater - Python's
    tuple order reversed is the same order (on equal values the larger index first)."""
    if axis is None:
        top_shape = [1] * max(x.ndim, 3)
        top_shape[0], top_shape[1], top_shape[2] = x.shape[0], 2 if out_max_val else 1, top_k
        y = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k))
        for i, row in enumerate(x.reshape(x.shape[0], -1)):
            best = sorted(((v, j) for j, v in enumerate(row)), reverse=True)[:top_k]
            y[i, 0] = [j for _, j in best]
            if out_max_val:
                y[i, 1] = [v for v, _ in best]
        return y.reshape(top_shape)
    xt = np.moveaxis(x, axis, -1)
    y = np.zeros(xt.shape[:-1] + (top_k,))
    for pos in np.ndindex(xt.shape[:-1]):
        best = sorted(((v, j) for j, v in enumerate(xt[pos])), reverse=True)[:top_k]
        y[pos] = [v if out_max_val else j for v, j in best]
    return np.moveaxis(y, -1, axis)


def test_argmax_ties_take_the_larger_index_first():
    _, _, m = one_layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }", [(1, 5)])
    y = fwd(m, [[1, 3, 3, 0, 3]])
    assert y.shape == (1, 2, 3)
    assert y[0, 0].tolist() == [4, 2, 1] and y[0, 1].tolist() == [3, 3, 3]
    _, _, m = one_layer("ArgMax", "argmax_param { top_k: 2 axis: 1 }", [(1, 4, 2)])
    y = fwd(m, np.array([[[5, 1], [5, 1], [2, 1], [5, 0]]]))
    assert y[0].tolist() == [[3, 2], [1, 1]]


@pytest.mark.parametrize("shape,extra", [
    ((3, 4, 2, 3), "argmax_param { top_k: 3 out_max_val: true }"),
    ((3, 4, 2, 3), "argmax_param { top_k: 1 }"),
    ((3, 7), "argmax_param { top_k: 7 out_max_val: true }"),
    ((2, 2, 2, 2, 3), "argmax_param { top_k: 2 }"),
    ((3, 4, 2, 3), "argmax_param { top_k: 2 axis: 1 }"),
    ((3, 4, 2, 3), "argmax_param { top_k: 3 axis: -1 out_max_val: true }"),
    ((3, 4, 2, 3), "argmax_param { top_k: 1 axis: 0 }"),
])
def test_argmax_against_caffe_loops(shape, extra, tmp_path):
    net, _, _ = build(tmp_path, shape, layer("t", "ArgMax", ["data"], ["t"], extra))
    x = RNG.integers(0, 3, shape).astype(np.float32)    # many ties
    net.forward(data=x)
    lay = text_format.Parse(extra, caffe_pb2.LayerParameter()).argmax_param
    ref = _argmax_caffe(x.astype(np.float64), lay.top_k, lay.out_max_val,
                        lay.axis if lay.HasField("axis") else None)
    assert net.graph.layers[-1].top_shapes == [ref.shape]
    np.testing.assert_array_equal(out(net), ref)


@pytest.mark.parametrize("extra,words", [
    ("argmax_param { top_k: 61 }", ("top_k 61",)),
    ("argmax_param { top_k: 5 axis: 1 }", ("top_k 5",)),
    ("argmax_param { top_k: 0 }", ("top_k",)),
    ("argmax_param { axis: 4 }", ("axis 4",)),
])
def test_argmax_bad_parameters(extra, words, tmp_path):
    e = bad_net(tmp_path, (1, 3, 4, 5), layer("t", "ArgMax", ["data"], ["t"], extra))
    one_line_error(e, "'t'", "ArgMax", *words)


def test_shapes_infer_states_the_catalogue_tops():
    """Shape inference without running: Filter's first axis is its bottom's (Caffe's setup Reshape)."""
    body = (layer("sel", "Reduction", ["data"], ["sel"], "reduction_param { axis: 1 }")
            + layer("f", "Filter", ["data", "sel"], ["f"])
            + layer("tl", "Tile", ["f"], ["tl"], "tile_param { tiles: 2 }"))
    net = text_format.Parse(prototxt((4, 3, 2), body), caffe_pb2.NetParameter())
    tops = [ls.tops for ls in shapes.infer(net)]
    assert tops[1:] == [[(4,)], [(4, 3, 2)], [(4, 6, 2)]]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit.trace and the TorchScript ONNX exporter
@pytest.mark.parametrize("extra,shape", [("argmax_param { top_k: 3 out_max_val: true }", (3, 2, 5)),
                                         ("argmax_param { top_k: 2 axis: 1 }", (3, 4, 5))])
def test_argmax_tie_order_survives_trace_and_onnx(extra, shape, tmp_path):
    """TorchScript traces the stable sort; ONNX gets TopK (ties by lower index, per its specification) of the
    reversed axis - the same order as Caffe's."""
    _, _, m = one_layer("ArgMax", extra, [shape])
    x = torch.tensor(RNG.integers(0, 2, shape), dtype=torch.float32)
    lay = text_format.Parse(extra, caffe_pb2.LayerParameter()).argmax_param
    ref = _argmax_caffe(x.double().numpy(), lay.top_k, lay.out_max_val, lay.axis if lay.HasField("axis") else None)
    np.testing.assert_array_equal(torch.jit.trace(m, (x,))(x).numpy(), ref)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "argmax.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(got, ref)
