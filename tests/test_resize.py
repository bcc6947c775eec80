"""The resize family and its neighbours: Interp, ShuffleChannel, Upsample (nearest, and SegNet's unpooling with
Pooling's mask top), SPP and Im2col. Against OpenCV 4's Caffe layers where it has them (ShuffleChannel, Interp
with zoom_factor or height/width: OpenCV ignores pad_beg/pad_end and fails on shrink_factor), otherwise against
Caffe's Forward_cpu / Backward_cpu loops written out here in numpy float64 (from the C++ each helper names, not
from sfport), plus hand-computed cases, gradient checks and the one-line errors."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.formats import caffe_files
from sfport.netdef import shapes
from sfport.runtime import verify
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2

from netcases import input_grad, layer, one_layer, prototxt

FLT_MAX = float(np.finfo(np.float32).max)


def build(tmp_path, shape, body, name="case", x=None):
    """Write the one-input net, run it on x (default: random), return (net, x, prototxt path, caffemodel path)."""
    p = tmp_path / f"{name}.prototxt"
    p.write_text(prototxt(shape, body, name))
    from sfport.netdef import weight_match
    m = weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=0)
    w = tmp_path / f"{name}.caffemodel"
    caffe_files.write_caffemodel(w, m)
    net = Net(str(p), str(w))
    x = verify.make_input(shape, "random", seed=0) if x is None else np.asarray(x, np.float32)
    net.forward(data=x)
    return net, x, str(p), str(w)


def assert_parity(actual, ref):
    """The project's fp32 criterion: max |actual - ref| <= 1e-5 * max(1, max |ref|)."""
    actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
    assert actual.shape == ref.shape, (actual.shape, ref.shape)
    err, scale = float(np.abs(actual - ref).max()) if ref.size else 0.0, max(1.0, float(np.abs(ref).max(initial=0)))
    assert err <= 1e-5 * scale, f"max abs error {err:.3e} over 1e-5 * {scale:.3g}"


def out(net, name="t", k=0):
    return net.layer_outputs[name][k].detach().numpy().astype(np.float64)


def rng(seed=0):
    return np.random.default_rng(seed)


# ---- OpenCV 4 ------------------------------------------------------------------------------------------------

OPENCV = {
    "shuffle_g2": ((2, 6, 3, 4), layer("t", "ShuffleChannel", ["data"], ["t"], "shuffle_channel_param { group: 2 }")),
    "shuffle_g3": ((1, 12, 2, 5), layer("t", "ShuffleChannel", ["data"], ["t"], "shuffle_channel_param { group: 3 }")),
    "interp_zoom": ((2, 3, 5, 6), layer("t", "Interp", ["data"], ["t"], "interp_param { zoom_factor: 3 }")),
    "interp_hw_up": ((1, 2, 4, 5), layer("t", "Interp", ["data"], ["t"], "interp_param { height: 9 width: 7 }")),
    "interp_hw_down": ((1, 2, 9, 8), layer("t", "Interp", ["data"], ["t"], "interp_param { height: 4 width: 3 }")),
}


@pytest.mark.parametrize("case", sorted(OPENCV))
def test_matches_opencv(case, tmp_path):
    shape, body = OPENCV[case]
    net, x, p, w = build(tmp_path, shape, body, name=case)
    ref = verify.opencv_reference(p, w, {"data": x})
    assert_parity(out(net), ref["t"])


# ---- Interp (DeepLab interp_layer.cpp, util/interp.cpp) ------------------------------------------------------

def _interp2_taps(h_eff, w_eff, oh, ow):
    """The loops of caffe_cpu_interp2 and its backward (interp.cpp), which share them: per top position (h2, w2)
    the four source taps (row, col, weight) relative to the crop's corner, ratios and positions in float as the
    C++ computes them."""
    rh = np.float32(h_eff - 1) / np.float32(oh - 1) if oh > 1 else np.float32(0)
    rw = np.float32(w_eff - 1) / np.float32(ow - 1) if ow > 1 else np.float32(0)
    for h2 in range(oh):
        h1r = np.float32(rh * np.float32(h2))
        h1 = int(h1r)
        h1p = 1 if h1 < h_eff - 1 else 0
        l1 = float(h1r) - h1
        l0 = 1 - l1
        for w2 in range(ow):
            w1r = np.float32(rw * np.float32(w2))
            w1 = int(w1r)
            w1p = 1 if w1 < w_eff - 1 else 0
            m1 = float(w1r) - w1
            m0 = 1 - m1
            yield h2, w2, ((h1, w1, l0 * m0), (h1, w1 + w1p, l0 * m1), (h1 + h1p, w1, l1 * m0),
                           (h1 + h1p, w1 + w1p, l1 * m1))


def caffe_interp2(x, pad_beg, h_eff, w_eff, oh, ow):
    """caffe_cpu_interp2<Dtype, false> on each plane of x (N, C, H, W): the input cropped at (-pad_beg, -pad_beg)
    to h_eff x w_eff."""
    n, c, H, W = x.shape
    y0, x0 = -pad_beg, -pad_beg
    if (h_eff, w_eff) == (oh, ow):
        return x[:, :, y0:y0 + h_eff, x0:x0 + w_eff].astype(np.float64)
    top = np.zeros((n, c, oh, ow))
    for h2, w2, taps in _interp2_taps(h_eff, w_eff, oh, ow):
        (a, wa), (b, wb), (cc, wc), (d, wd) = [(x[:, :, y0 + r, x0 + q], w) for r, q, w in taps]
        top[:, :, h2, w2] = (wa * a + wb * b) + (wc * cc + wd * d)
    return top


def caffe_interp2_backward(shape, top_diff, pad_beg, h_eff, w_eff):
    """caffe_cpu_interp2_backward<Dtype, false>: the bottom diff accumulated from the top diff."""
    oh, ow = top_diff.shape[-2:]
    y0, x0 = -pad_beg, -pad_beg
    diff = np.zeros(shape)
    if (h_eff, w_eff) == (oh, ow):
        diff[:, :, y0:y0 + h_eff, x0:x0 + w_eff] += top_diff
        return diff
    for h2, w2, taps in _interp2_taps(h_eff, w_eff, oh, ow):
        for r, q, w in taps:
            diff[:, :, y0 + r, x0 + q] += w * top_diff[:, :, h2, w2]
    return diff


def test_interp_zoom_hand_computed(tmp_path):
    """2x3 zoomed by 2: 3x5, the input at even positions and midpoints between (align corners)."""
    x = np.array([[[[0, 2, 4], [6, 8, 10]]]], np.float32)
    net, _, _, _ = build(tmp_path, (1, 1, 2, 3), layer("t", "Interp", ["data"], ["t"],
                         "interp_param { zoom_factor: 2 }"), x=x)
    assert out(net)[0, 0].tolist() == [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [6, 7, 8, 9, 10]]


def test_interp_shrink_hand_computed(tmp_path):
    """5x7 shrunk by 2: (5-1)/2+1 = 3 x (7-1)/2+1 = 4; ratio (5-1)/(3-1) = 2 exactly: every other sample."""
    x = np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7)
    net, _, _, _ = build(tmp_path, (1, 1, 5, 7), layer("t", "Interp", ["data"], ["t"],
                         "interp_param { shrink_factor: 2 }"), x=x)
    np.testing.assert_array_equal(out(net), x[:, :, ::2, ::2])


INTERP = {  # extra, input shape, (pad_beg, h_eff, w_eff, out_h, out_w)
    "shrink3": ("interp_param { shrink_factor: 3 }", (2, 2, 8, 11), (0, 8, 11, 3, 4)),
    "zoom_shrink": ("interp_param { zoom_factor: 3 shrink_factor: 2 }", (1, 2, 7, 6), (0, 7, 6, 10, 7)),
    "pad_zoom": ("interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -2 }", (1, 2, 7, 8), (-1, 4, 5, 7, 9)),
    "pad_shrink": ("interp_param { shrink_factor: 2 pad_beg: -2 pad_end: 0 }", (1, 2, 9, 7), (-2, 7, 5, 4, 3)),
    "hw_over_factors": ("interp_param { zoom_factor: 2 shrink_factor: 3 height: 5 width: 1 }", (1, 2, 6, 6),
                        (0, 6, 6, 5, 1)),
    "same_size_copy": ("interp_param { height: 4 width: 5 }", (1, 2, 4, 5), (0, 4, 5, 4, 5)),
    "one_row": ("interp_param { height: 1 width: 6 }", (2, 1, 5, 4), (0, 5, 4, 1, 6)),
    "pad_only": ("interp_param { zoom_factor: 1 pad_beg: -1 pad_end: -1 }", (1, 1, 5, 6), (-1, 3, 4, 3, 4)),
}


@pytest.mark.parametrize("case", sorted(INTERP))
def test_interp_matches_caffe_loops(case, tmp_path):
    extra, shape, (pad_beg, h_eff, w_eff, oh, ow) = INTERP[case]
    net, x, _, _ = build(tmp_path, shape, layer("t", "Interp", ["data"], ["t"], extra), name=case)
    assert_parity(out(net), caffe_interp2(x.astype(np.float64), pad_beg, h_eff, w_eff, oh, ow))
    c, lp, m = one_layer("Interp", extra, [shape])
    assert c.top_shapes(lp, [shape]) == [shape[:2] + (oh, ow)]
    g = rng(1).standard_normal((shape[0], shape[1], oh, ow))
    assert_parity(input_grad(m, [x], g), caffe_interp2_backward(shape, g, pad_beg, h_eff, w_eff))


def test_interp_second_bottom_gives_the_size(tmp_path):
    """PSPNet's form: without a size parameter the top takes the second bottom's height and width."""
    body = (layer("p", "Pooling", ["data"], ["p"], "pooling_param { pool: AVE kernel_size: 2 stride: 2 }")
            + layer("t", "Interp", ["p", "data"], ["t"]))
    net, x, _, _ = build(tmp_path, (1, 2, 7, 9), body)
    p = out(net, "p")
    assert p.shape == (1, 2, 4, 5)
    assert_parity(out(net), caffe_interp2(p, 0, 4, 5, 7, 9))


def test_interp_gradcheck():
    _, _, m = one_layer("Interp", "interp_param { zoom_factor: 2 shrink_factor: 2 pad_beg: -1 }", [(1, 2, 6, 7)])
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("extra,msg", [
    ("interp_param { zoom_factor: 2 pad_beg: 1 }", "only non-positive pad_beg/pad_end"),
    ("interp_param { zoom_factor: 0 }", "zoom_factor must be positive"),
    ("interp_param { shrink_factor: -1 }", "shrink_factor must be positive"),
    ("interp_param { height: 4 }", "Interp needs zoom_factor, shrink_factor, height and width"),
    ("interp_param { zoom_factor: 2 pad_beg: -3 pad_end: -3 }", "the cropped input is"),
])
def test_interp_bad_parameters(extra, msg):
    lp = text_format.Parse(extra, caffe_pb2.LayerParameter(name="ip", type="Interp", bottom=["a"], top=["t"]))
    with pytest.raises(ValueError, match=f"layer 'ip': .*{msg}"):
        c = converters.get("Interp")
        c.top_shapes(lp, [(1, 2, 5, 5)])
        c.build(lp, [(1, 2, 5, 5)])


# ---- ShuffleChannel (ShuffleNet shuffle_channel_layer.cpp) ---------------------------------------------------

def caffe_resize(inp, group_row, group_column, length):
    """ShuffleChannelLayer::Resize_cpu on one image: block (i, j) of the row-major (row, column) grid moves to
    (j, i)."""
    flat, outp = inp.reshape(-1), np.zeros(inp.size)
    for i in range(group_row):
        for j in range(group_column):
            outp[(j * group_row + i) * length:(j * group_row + i + 1) * length] = \
                flat[(i * group_column + j) * length:(i * group_column + j + 1) * length]
    return outp.reshape(inp.shape)


@pytest.mark.parametrize("shape,group", [((2, 6, 3, 4), 2), ((2, 6, 3, 4), 3), ((1, 12, 2, 2), 4),
                                         ((3, 5, 2, 2), 1), ((2, 8), 4), ((2, 6, 5), 3)])
def test_shuffle_channel_matches_caffe_loops(shape, group):
    c, lp, m = one_layer("ShuffleChannel", f"shuffle_channel_param {{ group: {group} }}", [shape])
    x = rng().standard_normal(shape)
    legacy = tuple(shape) + (1,) * (4 - len(shape))  # Reshape(num, channels, height, width)
    assert c.top_shapes(lp, [shape]) == [legacy]
    ch, sp = shape[1], int(np.prod(legacy[2:]))
    ref = np.stack([caffe_resize(x[n].reshape(ch, sp), group, ch // group, sp) for n in range(shape[0])])
    y = m(torch.tensor(x)).numpy()
    assert y.shape == legacy
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)
    # Backward_cpu: Resize_cpu(top_diff) with group_row = C / group, group_column = group
    g = rng(2).standard_normal(legacy)
    ref_g = np.stack([caffe_resize(g[n].reshape(ch, sp), ch // group, group, sp) for n in range(shape[0])])
    np.testing.assert_array_equal(input_grad(m, [x], g).reshape(ref_g.shape), ref_g)


def test_shuffle_channel_hand_computed():
    _, _, m = one_layer("ShuffleChannel", "shuffle_channel_param { group: 2 }", [(1, 6, 1, 1)])
    y = m(torch.arange(6.0).reshape(1, 6, 1, 1))
    assert y.flatten().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("extra,shape,msg", [
    ("shuffle_channel_param { group: 0 }", (1, 4, 2, 2), "group must be greater than 0"),
    ("shuffle_channel_param { group: 3 }", (1, 4, 2, 2), "4 channels do not split into 3 groups"),
    ("shuffle_channel_param { group: 1 }", (1, 4, 2, 2, 2), "2 to 4 axes"),
])
def test_shuffle_channel_bad_parameters(extra, shape, msg):
    lp = text_format.Parse(extra, caffe_pb2.LayerParameter(name="sc", type="ShuffleChannel", bottom=["a"], top=["t"]))
    with pytest.raises(ValueError, match=f"layer 'sc': .*{msg}"):
        converters.get("ShuffleChannel").build(lp, [shape])


# ---- Pooling's mask top (pooling_layer.cpp) ------------------------------------------------------------------

def caffe_pool(x, k, s, p, ave=False, ceil=True):
    """PoolingLayer::Reshape + Forward_cpu on one plane (MAX: top and mask; AVE: top) and a backward closure
    (Backward_cpu: MAX routes each top diff to bottom[mask], AVE spreads top_diff / pool_size over the clipped
    window)."""
    H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p

    def rounded(size, kk, ss, pp):
        num = size + 2 * pp - kk
        return (-(-num // ss) if ceil else num // ss) + 1

    oh, ow = rounded(H, kh, sh, ph), rounded(W, kw, sw, pw)
    if ph or pw:
        if (oh - 1) * sh >= H + ph:
            oh -= 1
        if (ow - 1) * sw >= W + pw:
            ow -= 1
    top, mask, windows = np.zeros((oh, ow)), np.full((oh, ow), -1.0), {}
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if ave:
                he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                top[i, j] = x[hs:he, ws:we].sum() / size
                windows[i, j] = (hs, he, ws, we, size)
            else:
                he, we = min(hs + kh, H), min(ws + kw, W)
                hs, ws = max(hs, 0), max(ws, 0)
                top[i, j] = -FLT_MAX
                for h in range(hs, he):
                    for w in range(ws, we):
                        if x[h, w] > top[i, j]:
                            top[i, j], mask[i, j] = x[h, w], h * W + w

    def backward(top_diff):
        diff = np.zeros((H, W))
        for i in range(oh):
            for j in range(ow):
                if ave:
                    hs, he, ws, we, size = windows[i, j]
                    diff[hs:he, ws:we] += top_diff[i, j] / size
                else:
                    diff.flat[int(mask[i, j])] += top_diff[i, j]
        return diff

    return top, mask, backward


POOL_MASK = {  # pooling_param text, input (H, W): native (pad <= k // 2) and padded-by-hand (pad > k // 2) paths
    "k2s2": ("kernel_size: 2 stride: 2", (6, 7)),
    "k3s2p1": ("kernel_size: 3 stride: 2 pad: 1", (7, 6)),
    "k3s1p2": ("kernel_size: 3 stride: 1 pad: 2", (5, 6)),
    "k4s3p3_hw": ("kernel_h: 4 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 3 pad_w: 1", (8, 7)),
    "k2s3_floor": ("kernel_size: 2 stride: 3 round_mode: FLOOR", (8, 8)),
    "k2s3_ceil": ("kernel_size: 2 stride: 3", (8, 8)),
}


@pytest.mark.parametrize("case", sorted(POOL_MASK))
def test_pooling_mask_top_matches_caffe_loops(case, tmp_path):
    text, (h, w) = POOL_MASK[case]
    body = layer("t", "Pooling", ["data"], ["t", "mask"], f"pooling_param {{ pool: MAX {text} }}")
    net, x, _, _ = build(tmp_path, (2, 2, h, w), body, name=case)
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(f"pooling_param {{ {text} }}", lp)
    from sfport.converters.geometry import pooling_geometry
    kernel, stride, pad = pooling_geometry(lp.pooling_param)
    ceil = "FLOOR" not in text
    _, _, m = one_layer("Pooling", f"pooling_param {{ pool: MAX {text} }}", [(2, 2, h, w)], ntop=2)
    g = rng(3).standard_normal(out(net).shape)
    ours_g = input_grad(m, [x], g)
    for n in range(2):
        for c in range(2):
            top, mask, backward = caffe_pool(x[n, c].astype(np.float64), kernel, stride, pad, ceil=ceil)
            assert_parity(out(net)[n, c], top)
            np.testing.assert_array_equal(out(net, k=1)[n, c], mask)
            assert_parity(ours_g[n, c], backward(g[n, c]))


def test_pooling_mask_first_max_wins_on_ties():
    """All values equal: every window's mask is its first (clipped) position in the scan order, row then column."""
    _, _, m = one_layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", [(1, 1, 5, 5)], ntop=2)
    y, mask = m(torch.ones(1, 1, 5, 5))
    assert y.flatten().tolist() == [1.0] * 9
    assert mask[0, 0].tolist() == [[0, 1, 3], [5, 6, 8], [15, 16, 18]]
    _, _, m = one_layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 2 }", [(1, 1, 3, 3)], ntop=2)
    _, mask = m(torch.ones(1, 1, 3, 3))
    _, ref, _ = caffe_pool(np.ones((3, 3)), (3, 3), (1, 1), (2, 2))
    np.testing.assert_array_equal(mask[0, 0].numpy(), ref)


def test_global_max_pooling_mask():
    _, _, m = one_layer("Pooling", "pooling_param { pool: MAX global_pooling: true }", [(2, 3, 4, 5)], ntop=2)
    x = torch.tensor(rng().standard_normal((2, 3, 4, 5)))
    x[0, 0] = 1.0  # a tie: the first position
    y, mask = m(x)
    np.testing.assert_array_equal(mask.flatten().numpy(), x.flatten(2).argmax(2).flatten().numpy())
    assert mask[0, 0, 0, 0] == 0 and y.shape == mask.shape == (2, 3, 1, 1)


def test_pooling_mask_top_shapes_and_errors():
    c, lp, _ = one_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", [(1, 2, 5, 5)], ntop=2)
    assert c.top_shapes(lp, [(1, 2, 5, 5)]) == [(1, 2, 3, 3)] * 2
    with pytest.raises(ValueError, match="layer 't': AVE pooling takes at most 1 top"):
        one_layer("Pooling", "pooling_param { pool: AVE kernel_size: 2 }", [(1, 2, 5, 5)], ntop=2)
    with pytest.raises(ValueError, match="layer 't': MAX pooling takes at most 2 top"):
        one_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 }", [(1, 2, 5, 5)], ntop=3)
    with pytest.raises(ValueError, match="layer 't': pooling stride \\[0, 0\\] must be nonzero"):
        c.top_shapes(text_format.Parse("pooling_param { kernel_size: 2 stride: 0 }",
                                       caffe_pb2.LayerParameter(name="t", type="Pooling")), [(1, 2, 5, 5)])


# ---- Upsample: SegNet's unpooling (upsample_layer.cpp) and the nearest form ----------------------------------

def caffe_unpool(x, mask, oh, ow):
    """SegNet UpsampleLayer::Forward_cpu / Backward_cpu on (N, C, H, W) with the mask's flat indices."""
    n, c = x.shape[:2]
    top = np.zeros((n, c, oh * ow))
    for a in range(n):
        for b in range(c):
            for v, idx in zip(x[a, b].reshape(-1), mask[a, b].reshape(-1)):
                top[a, b, int(idx)] = v

    def backward(top_diff):
        diff = np.zeros(x.shape)
        for a in range(n):
            for b in range(c):
                flat = top_diff[a, b].reshape(-1)
                diff[a, b] = flat[mask[a, b].reshape(-1).astype(int)].reshape(x.shape[2:])
        return diff

    return top.reshape(n, c, oh, ow), backward


UNPOOL = 'upsample_param { scale: 2 }'


def test_unpool_after_pooling_hand_computed(tmp_path):
    """2x2 / 2 max pooling then unpooling: the maxima back in place, zeros elsewhere."""
    x = np.array([[[[1, 5, 2, 0], [3, 4, 8, 7], [9, 0, 1, 1], [2, 6, 1, 1]]]], np.float32)
    body = (layer("p", "Pooling", ["data"], ["p", "m"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("t", "Upsample", ["p", "m"], ["t"], UNPOOL))
    net, _, _, _ = build(tmp_path, (1, 1, 4, 4), body, x=x)
    assert out(net, "p", 1)[0, 0].tolist() == [[1, 6], [8, 10]]  # h * 4 + w; the tie of 1s: the first
    assert out(net)[0, 0].tolist() == [[0, 5, 0, 0], [0, 0, 8, 0], [9, 0, 1, 0], [0, 0, 0, 0]]


def test_unpool_index_pattern_and_duplicates():
    """A given mask: values land at its flat indices; of two positions with one index the later wins, and
    Caffe's backward gives both the gradient of that place (not the derivative of the forward)."""
    c, lp, m = one_layer("Upsample", UNPOOL, [(1, 2, 2, 2), (1, 2, 2, 2)])
    x = np.array([[[[1, 2], [3, 4]], [[5, 6], [7, 8]]]], np.float64)
    mask = np.array([[[[15, 0], [6, 9]], [[3, 3], [12, 3]]]], np.float64)
    y = m(torch.tensor(x), torch.tensor(mask)).numpy()
    ref, backward = caffe_unpool(x, mask, 4, 4)
    np.testing.assert_array_equal(y, ref)
    assert y[0, 1].reshape(-1)[3] == 8 and y[0, 0].reshape(-1).tolist() == [
        2, 0, 0, 0, 0, 0, 3, 0, 0, 4, 0, 0, 0, 0, 0, 1]
    g = rng().standard_normal((1, 2, 4, 4))
    ours = input_grad(m, [x, mask], g)
    np.testing.assert_array_equal(ours, backward(g))
    assert ours[0, 1, 0, 0] == ours[0, 1, 0, 1] == ours[0, 1, 1, 1] == g[0, 1, 0, 3]


@pytest.mark.parametrize("shape,text,scale", [((2, 3, 7, 6), "kernel_size: 2 stride: 2", (2, 2)),
                                              ((1, 2, 9, 8), "kernel_size: 3 stride: 3", (3, 3)),
                                              ((1, 2, 8, 9), "kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3",
                                               (2, 3))])
def test_unpool_after_pooling_matches_caffe_loops(shape, text, scale, tmp_path):
    """Odd sizes too: Caffe's index is h * W + w of the pooling input, written flat into the (H * scale) x (W *
    scale) plane of the top, whatever its width (without upsample_h/upsample_w)."""
    up = (f"upsample_param {{ scale: {scale[0]} }}" if scale[0] == scale[1] else
          f"upsample_param {{ scale_h: {scale[0]} scale_w: {scale[1]} }}")
    body = (layer("p", "Pooling", ["data"], ["p", "m"], f"pooling_param {{ pool: MAX {text} }}")
            + layer("t", "Upsample", ["p", "m"], ["t"], up))
    net, x, _, _ = build(tmp_path, shape, body)
    p, mask = out(net, "p"), out(net, "p", 1)
    oh, ow = p.shape[2] * scale[0], p.shape[3] * scale[1]
    ref, backward = caffe_unpool(p, mask, oh, ow)
    assert_parity(out(net), ref)
    _, _, m = one_layer("Upsample", up, [p.shape, p.shape])
    g = rng(5).standard_normal(ref.shape)
    np.testing.assert_array_equal(input_grad(m, [p, mask], g), backward(g))
    x2 = torch.tensor(p, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: m(v, torch.tensor(mask)), (x2,))  # distinct indices: the derivative


def test_unpool_trains_through_pooling(tmp_path):
    """Pooling (mask) -> Upsample in a net: the gradient of the data reaches each window's argmax only."""
    body = (layer("p", "Pooling", ["data"], ["p", "m"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("t", "Upsample", ["p", "m"], ["t"], UNPOOL))
    net, x, _, _ = build(tmp_path, (1, 2, 4, 6), body)
    xt = torch.tensor(x, requires_grad=True)
    res = net.module(xt)
    res["t"].sum().backward()
    _, mask, _ = caffe_pool(x[0, 0].astype(np.float64), (2, 2), (2, 2), (0, 0))
    ref = np.zeros(24)
    ref[mask.reshape(-1).astype(int)] = 1
    np.testing.assert_array_equal(xt.grad[0, 0].numpy().reshape(-1), ref)


def test_unpool_shape_inference():
    net = caffe_pb2.NetParameter()
    text_format.Parse('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 '
                      'dim: 6 } } } layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" '
                      'pooling_param { pool: MAX kernel_size: 2 stride: 2 } } layer { name: "u" type: "Upsample" '
                      'bottom: "p" bottom: "m" top: "u" upsample_param { scale_h: 2 scale_w: 3 } }', net)
    ls = shapes.infer(net)
    assert ls[1].tops == [(2, 3, 4, 3), (2, 3, 4, 3)] and ls[2].tops == [(2, 3, 8, 9)]


@pytest.mark.parametrize("extra,msg", [
    ("upsample_param { scale: 1 }", "upsample scale must be > 1"),
    ("upsample_param { scale_h: 2 }", "give upsample_h and upsample_w, or scale"),
    ("upsample_param { scale: 2 scale_h: 2 scale_w: 2 }", "give upsample_h and upsample_w, or scale"),
])
def test_unpool_bad_parameters(extra, msg):
    with pytest.raises(ValueError, match=f"layer 't': {msg}"):
        one_layer("Upsample", extra, [(1, 2, 3, 3), (1, 2, 3, 3)])


def test_unpool_bad_mask():
    with pytest.raises(ValueError, match="layer 't': Upsample needs a 4-D data bottom and a mask of the same shape"):
        one_layer("Upsample", UNPOOL, [(1, 2, 3, 3), (1, 2, 3, 2)])
    _, _, m = one_layer("Upsample", UNPOOL, [(1, 1, 2, 2), (1, 1, 2, 2)])
    with pytest.raises(ValueError, match="layer 't': upsample top index 16 out of range"):
        m(torch.ones(1, 1, 2, 2), torch.tensor([[[[0.0, 1], [16, 2]]]]))


def yolo_upsample(x, scale):
    """The YOLO forks' UpsampleLayer::Forward_cpu and Backward_cpu loops (one scale for both axes)."""
    n, c, h, w = x.shape
    top = np.zeros((n, c, h * scale, w * scale))
    for a in range(n):
        for b in range(c):
            for i in range(h * scale):
                for j in range(w * scale):
                    top[a, b, i, j] = x[a, b, i // scale, j // scale]

    def backward(top_diff):
        diff = np.zeros(x.shape)
        for a in range(n):
            for b in range(c):
                for i in range(h):
                    for j in range(w):
                        for u in range(scale):
                            for v in range(scale):
                                diff[a, b, i, j] += top_diff[a, b, i * scale + v, j * scale + u]
        return diff

    return top, backward


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upsample_nearest_matches_yolo_loops(scale):
    x = rng().standard_normal((2, 3, 3, 4))
    _, _, m = one_layer("Upsample", f"upsample_param {{ scale: {scale} }}", [x.shape])
    ref, backward = yolo_upsample(x, scale)
    np.testing.assert_array_equal(m(torch.tensor(x)).numpy(), ref)
    g = rng(1).standard_normal(ref.shape)
    assert_parity(input_grad(m, [x], g), backward(g))


def test_upsample_nearest_scale_hw():
    c, lp, m = one_layer("Upsample", "upsample_param { scale_h: 2 scale_w: 3 }", [(1, 2, 3, 4)])
    assert c.top_shapes(lp, [(1, 2, 3, 4)]) == [(1, 2, 6, 12)]
    x = torch.randn(1, 2, 3, 4)
    np.testing.assert_array_equal(m(x).numpy(), x.numpy().repeat(2, axis=2).repeat(3, axis=3))
    with pytest.raises(ValueError, match="layer 't': upsample scale must be positive"):
        one_layer("Upsample", "upsample_param { scale: 0 }", [(1, 2, 3, 4)])


# ---- SPP (BVLC spp_layer.cpp) --------------------------------------------------------------------------------

def caffe_spp(x, levels, ave):
    """SPPLayer::Forward_cpu on (N, C, H, W): GetPoolingParam's geometry per level, each level's pooling of every
    plane flattened and concatenated (pyramid_height 1: the pooling's own top); and the backward (the split sums
    the levels' pooling backwards)."""
    n, c, H, W = x.shape
    geometry = []
    for level in range(levels):
        bins = 2 ** level
        kh, kw = int(np.ceil(H / bins)), int(np.ceil(W / bins))
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        geometry.append(((kh, kw), (kh, kw), (ph, pw)))
    tops, backs = [], []
    for g in geometry:
        per = [[caffe_pool(x[a, b], *g, ave=ave) for b in range(c)] for a in range(n)]
        tops.append(np.array([[t for t, _, _ in row] for row in per]))
        backs.append(per)
    if levels == 1:
        top = tops[0]
    else:
        top = np.concatenate([t.reshape(n, -1) for t in tops], axis=1)

    def backward(top_diff):
        diff, off = np.zeros(x.shape), 0
        for t, per in zip(tops, backs):
            size = t[0].size
            part = top_diff.reshape(n, -1)[:, off:off + size].reshape(t.shape)
            off += size
            for a in range(n):
                for b in range(c):
                    diff[a, b] += per[a][b][2](part[a, b])
        return diff

    return top, backward


def test_spp_hand_computed(tmp_path):
    """3x3 (0..8), pyramid_height 2: level 0 one 3x3 window; level 1 kernel 2, pad 1: rows {0}, {1, 2}, the
    same columns; AVE divides each by 2 x 2 (the window clipped to H + pad)."""
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    net, _, _, _ = build(tmp_path, (1, 1, 3, 3), layer("t", "SPP", ["data"], ["t"], "spp_param { pyramid_height: 2 }"),
                         x=x)
    assert out(net).tolist() == [[8, 0, 2, 6, 8]]
    net, _, _, _ = build(tmp_path, (1, 1, 3, 3), layer("t", "SPP", ["data"], ["t"],
                         "spp_param { pyramid_height: 2 pool: AVE }"), x=x, name="ave")
    assert_parity(out(net), [[4, 0, 0.75, 2.25, 6]])


@pytest.mark.parametrize("shape,levels", [((2, 3, 7, 9), 3), ((1, 2, 13, 6), 2), ((2, 2, 5, 5), 1),
                                          ((1, 2, 10, 11), 3), ((1, 1, 15, 20), 4)])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_spp_matches_caffe_loops(shape, levels, method, tmp_path):
    extra = f"spp_param {{ pyramid_height: {levels} pool: {method} }}"
    net, x, _, _ = build(tmp_path, shape, layer("t", "SPP", ["data"], ["t"], extra), name="spp")
    ref, backward = caffe_spp(x.astype(np.float64), levels, method == "AVE")
    assert_parity(out(net), ref)
    c, lp, m = one_layer("SPP", extra, [shape])
    assert c.top_shapes(lp, [shape]) == [ref.shape]
    g = rng(4).standard_normal(ref.shape)
    assert_parity(input_grad(m, [x], g), backward(g))


def test_spp_follows_the_input_size_and_gradchecks():
    """Reshape recomputes the levels for a new input size; the backward is the derivative (AVE, and MAX on
    distinct values)."""
    _, _, m = one_layer("SPP", "spp_param { pyramid_height: 3 }", [(1, 2, 8, 8)])
    for shape in [(1, 2, 8, 8), (2, 2, 11, 7)]:
        x = rng().standard_normal(shape)
        ref, _ = caffe_spp(x, 3, False)
        assert_parity(m(torch.tensor(x)).numpy(), ref)
    for pool in ["MAX", "AVE"]:
        _, _, m = one_layer("SPP", f"spp_param {{ pyramid_height: 3 pool: {pool} }}", [(1, 2, 7, 6)])
        x = torch.tensor(rng(7).permutation(84).reshape(1, 2, 7, 6) / 10.0, requires_grad=True)
        assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("extra,shape,msg", [
    ("spp_param { pyramid_height: 3 }", (1, 2, 5, 8), "SPP level 2 of a 5 x 8 input needs pad \\[2, 0\\] with "
                                                      "kernel \\[2, 2\\]"),
    ("spp_param { }", (1, 2, 5, 8), "pyramid_height must be at least 1"),
    ("spp_param { pyramid_height: 2 pool: STOCHASTIC }", (1, 2, 5, 8), "STOCHASTIC pooling is not supported"),
    ("spp_param { pyramid_height: 2 }", (2, 10), "SPP needs a 4-D input"),
])
def test_spp_bad_parameters(extra, shape, msg):
    lp = text_format.Parse(extra, caffe_pb2.LayerParameter(name="spp", type="SPP", bottom=["a"], top=["t"]))
    with pytest.raises(ValueError, match=f"layer 'spp': .*{msg}"):
        converters.get("SPP").top_shapes(lp, [shape])


# ---- Im2col (BVLC im2col_layer.cpp, util/im2col.cpp) ---------------------------------------------------------

def caffe_im2col(x, kernel, pad, stride, dilation):
    """im2col_cpu / im2col_nd_cpu per image of x (N, C, *spatial): row (c, k_1, ..., k_n) in row-major order,
    zeros outside the input; the output size in C++ integer division; and col2im (Backward_cpu)."""
    n, c, *spatial = x.shape

    def c_div(a, b):
        return int(a / b)  # toward zero

    out = [c_div(s + 2 * p - (d * (k - 1) + 1), st) + 1 for s, k, p, st, d in zip(spatial, kernel, pad, stride,
                                                                                  dilation)]
    taps = list(np.ndindex(*kernel))
    positions = list(np.ndindex(*out))
    top = np.zeros((n, c * len(taps), *out))

    def source(tap, pos):
        where = [o * st - p + k * d for o, st, p, k, d in zip(pos, stride, pad, tap, dilation)]
        return tuple(where) if all(0 <= v < s for v, s in zip(where, spatial)) else None

    for ch in range(c):
        for t, tap in enumerate(taps):
            for pos in positions:
                src = source(tap, pos)
                if src is not None:
                    top[(slice(None), ch * len(taps) + t) + pos] = x[(slice(None), ch) + src]

    def backward(top_diff):  # col2im_cpu: accumulate each column entry into its source
        diff = np.zeros(x.shape)
        for ch in range(c):
            for t, tap in enumerate(taps):
                for pos in positions:
                    src = source(tap, pos)
                    if src is not None:
                        diff[(slice(None), ch) + src] += top_diff[(slice(None), ch * len(taps) + t) + pos]
        return diff

    return top, backward


IM2COL = {  # convolution_param, input shape, (kernel, pad, stride, dilation)
    "k3p1s2": ("kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6), ((3, 3), (1, 1), (2, 2), (1, 1))),
    "hw_dilated": ("kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 stride_h: 1 stride_w: 2 dilation: 2", (1, 2, 6, 7),
                   ((3, 2), (2, 0), (1, 2), (2, 2))),
    "per_axis": ("kernel_size: 2 kernel_size: 3 pad: 0 pad: 1 stride: 3 stride: 1 dilation: 1 dilation: 2",
                 (1, 2, 8, 6), ((2, 3), (0, 1), (3, 1), (1, 2))),
    "trunc_division": ("kernel_size: 3 stride: 2", (1, 2, 2, 5), ((3, 3), (0, 0), (2, 2), (1, 1))),
    "one_d": ("kernel_size: 3 pad: 1 stride: 2", (2, 3, 9), ((3,), (1,), (2,), (1,))),
    "three_d": ("kernel_size: 2 stride: 2 pad: 1 dilation: 1", (1, 2, 3, 4, 5), ((2, 2, 2), (1, 1, 1), (2, 2, 2),
                                                                               (1, 1, 1))),
}


@pytest.mark.parametrize("case", sorted(IM2COL))
def test_im2col_matches_caffe_loops(case):
    extra, shape, geo = IM2COL[case]
    c, lp, m = one_layer("Im2col", f"convolution_param {{ {extra} }}", [shape])
    x = rng().standard_normal(shape)
    ref, backward = caffe_im2col(x, *geo)
    assert c.top_shapes(lp, [shape]) == [ref.shape]
    np.testing.assert_array_equal(m(torch.tensor(x)).numpy(), ref)
    g = rng(1).standard_normal(ref.shape)
    assert_parity(input_grad(m, [x], g), backward(g))


def test_im2col_hand_computed(tmp_path):
    """2x3, kernel 2: rows (tap 0,0), (0,1), (1,0), (1,1) over the 1x2 output positions."""
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    net, _, _, _ = build(tmp_path, (1, 1, 2, 3), layer("t", "Im2col", ["data"], ["t"],
                         "convolution_param { kernel_size: 2 }"), x=x)
    assert out(net)[0, :, 0].tolist() == [[0, 1], [1, 2], [3, 4], [4, 5]]


def test_im2col_equals_convolution(tmp_path):
    """A Convolution is its weight times Im2col's columns (how ConvolutionLayer computes it)."""
    body = (layer("t", "Im2col", ["data"], ["t"], "convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 2 }")
            + layer("c", "Convolution", ["data"], ["c"], "convolution_param { num_output: 4 kernel_size: 3 pad: 1 "
                    "stride: 2 dilation: 2 bias_term: false }"))
    net, x, _, w = build(tmp_path, (2, 3, 9, 8), body)
    (weight,) = caffe_files.read_caffemodel(w).params["c"]
    cols = out(net)
    assert_parity(out(net, "c"), np.einsum("ok,nkhw->nohw", weight.reshape(4, -1).astype(np.float64), cols))


def test_im2col_gradcheck():
    _, _, m = one_layer("Im2col", "convolution_param { kernel_size: 3 pad: 2 stride: 2 dilation: 2 }", [(1, 2, 6, 5)])
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("extra,shape,msg", [
    ("convolution_param { stride: 2 }", (1, 2, 5, 5), "Im2col needs a nonzero kernel_size"),
    ("convolution_param { kernel_size: 3 stride: 0 }", (1, 2, 5, 5), "stride and dilation must be nonzero"),
    ("convolution_param { kernel_size: 7 }", (1, 2, 5, 5), "gives the size \\[-1, -1\\]"),
    ("convolution_param { kernel_size: 3 axis: 3 }", (1, 2, 5, 5), "needs at least one spatial axis"),
])
def test_im2col_bad_parameters(extra, shape, msg):
    lp = text_format.Parse(extra, caffe_pb2.LayerParameter(name="ic", type="Im2col", bottom=["a"], top=["t"]))
    with pytest.raises(ValueError, match=f"layer 'ic': .*{msg}"):
        converters.get("Im2col").top_shapes(lp, [shape])


# ---- traces ---------------------------------------------------------------------------------------------------

TRACED = [("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 2 }", 2),
          ("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", 2),
          ("Pooling", "pooling_param { pool: MAX global_pooling: true }", 2),
          ("Interp", "interp_param { zoom_factor: 2 pad_beg: -1 }", 1),
          ("ShuffleChannel", "shuffle_channel_param { group: 2 }", 1),
          ("Im2col", "convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 2 }", 1),
          ("Upsample", "upsample_param { scale_h: 2 scale_w: 3 }", 1)]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("type_,extra,ntop", TRACED, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(TRACED)])
def test_trace_runs_at_another_size(type_, extra, ntop):
    """A TorchScript trace at one size gives the module's own result at another."""
    _, _, m = one_layer(type_, extra, [(1, 4, 7, 8)], ntop)
    traced = torch.jit.trace(m, (torch.randn(1, 4, 7, 8),), check_trace=False)
    x = torch.randn(2, 4, 9, 11)
    ours, theirs = m(x), traced(x)
    ours, theirs = (ours if isinstance(ours, tuple) else (ours,)), (theirs if isinstance(theirs, tuple) else (theirs,))
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.filterwarnings("ignore")
def test_trace_of_pooling_and_unpooling_runs_at_another_size():
    _, _, pool = one_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", [(1, 4, 6, 8)], ntop=2)
    _, _, unpool = one_layer("Upsample", UNPOOL, [(1, 4, 3, 4), (1, 4, 3, 4)])

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.unpool = pool, unpool

        def forward(self, x):
            return self.unpool(*self.pool(x))

    both = Both()
    traced = torch.jit.trace(both, (torch.randn(1, 4, 6, 8),), check_trace=False)
    x = torch.randn(2, 3, 10, 12)
    assert torch.equal(both(x), traced(x))


def test_segnet_unpool_to_an_odd_size_with_upsample_h_w(tmp_path):
    """SegNet's upsample_h / upsample_w (its caffe.proto fields 6, 7): a 5 x 5 map pooled (2, stride 2, ceil) to
    3 x 3 unpools back to 5 x 5; every window's maximum returns to where it was (first maximum in scan order),
    zeros elsewhere - worked out here from the windows."""
    body = (layer("p", "Pooling", ["data"], ["p", "mask"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("t", "Upsample", ["p", "mask"], ["t"], "upsample_param { upsample_h: 5 upsample_w: 5 }"))
    net, x, _, _ = build(tmp_path, (1, 2, 5, 5), body)
    want = np.zeros_like(x)
    for c in range(2):
        for i in range(0, 5, 2):
            for j in range(0, 5, 2):
                win = x[0, c, i:i + 2, j:j + 2]
                a, b = np.unravel_index(int(np.argmax(win)), win.shape)
                want[0, c, i + a, j + b] = win[a, b]
    np.testing.assert_array_equal(out(net), want)
