"""The segmentation forks' layers and fields, as their C++ defines them, against numpy transcriptions written here
from that C++ (neither fork builds in this project's oracle):

- caffe-segnet (alexgkendall/caffe-segnet): the two-blob BN (bn_layer.cpp, INFERENCE and LEARN), SoftmaxWithLoss's
  class weighting (softmax_loss_layer.cpp, ``weight_by_label_freqs`` / ``class_weighting``), Dropout's
  ``sample_weights_test`` (dropout_layer.cpp);
- DeepLab v1 (TheLegendAli/DeepLab-Context): ``hole`` (conv_layer.cpp), the V1 types IMAGE_SEG_DATA, INTERP,
  SEG_ACCURACY, MAT_WRITE, the SegAccuracy confusion matrix (seg_accuracy_layer.cpp, util/confusion_matrix.cpp),
  MatWrite's MAT-files (mat_write_layer.cpp, Blob::ToMat) and SOFTMAX_LOSS's ``softmaxloss_param``.

The criterion is the project's: max |ours - ref| <= 1e-5 * max(1, max |ref|)."""
import numpy as np
import pytest
import scipy.io
import torch
from google.protobuf import text_format

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files, upgrade
from sfport.netdef import shapes
from sfport.protos import caffe_pb2
from sfport.runtime.net import Net

from netcases import one_layer


def _close(ours, ref, what=""):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"
    return err


RNG = np.random.default_rng(7)


# ---- caffe-segnet's BN -------------------------------------------------------------------------------------------

SEGNET_BN = "bn_param { bn_mode: %s scale_filler { type: 'constant' value: 1 } shift_filler { type: 'constant' value: 0.001 } }"


def _segnet_bn_learn(x, scale, shift):
    """bn_layer.cpp Forward_cpu, LEARN: E over H W then N, var = E(x^2) - (E x)^2, + 1e-9, sqrt."""
    x = x.astype(np.float64)
    mean = x.mean(axis=(2, 3)).mean(axis=0)
    var = (x * x).mean(axis=(2, 3)).mean(axis=0) - mean * mean
    std = np.sqrt(var + 1e-9)
    xn = (x - mean[None, :, None, None]) / std[None, :, None, None]
    return xn * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1), xn, mean, var, std


def _segnet_bn_learn_backward(dy, xn, std, scale):
    """bn_layer.cpp Backward_cpu, LEARN, step by step: scale diff = sum(x_norm dy), shift diff = sum(dy),
    g = dy * scale; bottom diff = (g - (x_norm sum(g x_norm) + sum(g)) / (N H W)) / std."""
    dims = (0, 2, 3)
    g = dy * scale.reshape(1, -1, 1, 1)
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dx = (g - (xn * (g * xn).sum(axis=dims, keepdims=True) + g.sum(axis=dims, keepdims=True)) / m) \
        / std.reshape(1, -1, 1, 1)
    return dx, (xn * dy).sum(axis=dims), dy.sum(axis=dims)


def _with_blobs(mod, scale, shift):
    with torch.no_grad():
        mod.scale.copy_(torch.tensor(scale, dtype=torch.float32).reshape(mod.scale.shape))
        mod.shift.copy_(torch.tensor(shift, dtype=torch.float32).reshape(mod.shift.shape))
    return mod


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 6, 3), (3, 2, 1, 1)])
def test_segnet_bn_inference_is_scale_and_shift(shape):
    c, lay, mod = one_layer("BN", SEGNET_BN % "INFERENCE", [shape])
    assert c.param_shapes(lay, [shape]) == [(1, shape[1], 1, 1)] * 2
    scale, shift = RNG.normal(1, 0.3, shape[1]), RNG.normal(0, 0.5, shape[1])
    _with_blobs(mod, scale, shift)
    x = RNG.normal(2, 3, shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y = mod(xt)
    _close(y.detach().numpy(), x * np.float32(scale).reshape(1, -1, 1, 1) + np.float32(shift).reshape(1, -1, 1, 1))
    dy = RNG.normal(size=shape)
    y.backward(torch.tensor(dy, dtype=torch.float32))
    # Backward_cpu, INFERENCE: scale diff sum(x dy), shift diff sum(dy), bottom diff dy * scale
    _close(xt.grad.numpy(), dy * scale.reshape(1, -1, 1, 1), "dx")
    _close(mod.scale.grad.numpy().reshape(-1), (x * dy).sum(axis=(0, 2, 3)), "dscale")
    _close(mod.shift.grad.numpy().reshape(-1), dy.sum(axis=(0, 2, 3)), "dshift")
    # the optimized net folds it as the affine map it is
    a, b = c.affine(lay, mod, shape)
    _close(a, np.float32(scale)), _close(b, np.float32(shift))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 2, 3, 3), (1, 3, 8, 8)])
def test_segnet_bn_learn_uses_the_batch_statistics_in_every_phase(shape):
    c, lay, mod = one_layer("BN", SEGNET_BN % "LEARN", [shape], ntop=3)
    assert c.top_shapes(lay, [shape]) == [shape, (1, shape[1], 1, 1), (1, shape[1], 1, 1)]
    scale, shift = RNG.normal(1, 0.3, shape[1]), RNG.normal(0, 0.5, shape[1])
    _with_blobs(mod, scale, shift)
    x = (RNG.normal(0.5, 2, shape) + RNG.normal(0, 3, (1, shape[1], 1, 1))).astype(np.float32)
    want, xn, mean, var, std = _segnet_bn_learn(x, np.float32(scale), np.float32(shift))
    for training in (True, False):   # bn_layer.cpp never reads the phase
        mod.train(training)
        xt = torch.tensor(x, requires_grad=True)
        y, m, v = mod(xt)
        _close(y.detach().numpy(), want, "top")
        _close(m.detach().numpy().reshape(-1), mean, "batch mean")
        _close(v.detach().numpy().reshape(-1), var, "batch variance")
        dy = RNG.normal(size=shape)
        mod.zero_grad()
        y.backward(torch.tensor(dy, dtype=torch.float32))
        dx, dscale, dshift = _segnet_bn_learn_backward(dy, xn, std, np.float32(scale))
        _close(xt.grad.numpy(), dx, "dx")
        _close(mod.scale.grad.numpy().reshape(-1), dscale, "dscale")
        _close(mod.shift.grad.numpy().reshape(-1), dshift, "dshift")
    assert c.affine(lay, mod, shape) is None


def test_bn_fields_of_two_forks_are_refused_and_the_four_blob_bn_stays():
    with pytest.raises(ValueError, match="mixes caffe-segnet's BN fields"):
        one_layer("BN", "bn_param { bn_mode: INFERENCE momentum: 0.9 }", [(1, 2, 3, 3)])
    with pytest.raises(ValueError, match="tops 1 and 2"):
        one_layer("BN", SEGNET_BN % "INFERENCE", [(1, 2, 3, 3)], ntop=2)
    with pytest.raises(ValueError, match="4-D"):
        one_layer("BN", SEGNET_BN % "INFERENCE", [(2, 3)])
    c, lay, _ = one_layer("BN", "bn_param { momentum: 0.8 }", [(1, 2, 3, 3)])
    assert c.param_shapes(lay, [(1, 2, 3, 3)]) == [(1, 2)] * 4


def test_the_published_segnet_syntax_parses_as_text_and_survives_binary(tmp_path):
    """Text names caffe-segnet's fields (bn_mode, scale_filler, sample_weights_test, weight_by_label_freqs,
    class_weighting); sfport's binary form keeps them (at sfport's numbers) and its random weights fill two blobs
    per BN from the fillers' shapes."""
    text = """name: "segnet"
input: "data" input_dim: 1 input_dim: 3 input_dim: 12 input_dim: 16
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { bottom: "conv1" top: "conv1" name: "conv1_bn" type: "BN"
  bn_param {
\tbn_mode: INFERENCE
\tscale_filler { type: "constant" value: 1 }
\tshift_filler { type: "constant" value: 0.001 }
 } }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" dropout_param { dropout_ratio: 0.5 sample_weights_test: true } }
layer { name: "prob" type: "Softmax" bottom: "conv1" top: "prob" softmax_param { engine: CAFFE } }
"""
    p = tmp_path / "segnet.prototxt"
    p.write_text(text)
    m = caffe_files.read_prototxt(p)
    bn = m.net.layer[2]
    assert bn.bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE and bn.bn_param.shift_filler.value == np.float32(0.001)
    b = tmp_path / "segnet.binaryproto"
    b.write_bytes(m.net.SerializeToString())
    again = caffe_pb2.NetParameter.FromString(b.read_bytes())
    assert again.layer[2].bn_param == bn.bn_param and again.layer[3].dropout_param.sample_weights_test
    from sfport.netdef.weight_match import with_random_weights
    w = tmp_path / "segnet.caffemodel"
    caffe_files.write_caffemodel(w, with_random_weights(m, seed=0))
    blobs = Net(str(p), str(w)).params["conv1_bn"]
    assert [tuple(x.data.shape) for x in blobs] == [(1, 4, 1, 1)] * 2


def test_monte_carlo_dropout_draws_masks_at_test_time():
    """caffe-segnet dropout_layer.cpp: TEST with sample_weights_test draws a Bernoulli(1 - ratio) mask and scales
    by 1 / (1 - ratio); without it TEST is a copy."""
    x = torch.ones(4, 8, 16, 16)
    _, _, mc = one_layer("Dropout", "dropout_param { dropout_ratio: 0.25 sample_weights_test: true }", [x.shape])
    _, _, plain = one_layer("Dropout", "dropout_param { dropout_ratio: 0.25 }", [x.shape])
    mc.eval(), plain.eval()
    torch.manual_seed(0)
    y = mc(x).numpy()
    assert set(np.unique(y).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02       # 8192 draws: 0.25 +- 4.8 sigma
    assert not np.array_equal(y, mc(x).numpy())     # a new mask at every forward
    assert np.array_equal(plain(x).numpy(), x.numpy())
    from sfport import converters
    assert not converters.get("Dropout").identity_at_inference(
        text_format.Parse("dropout_param { sample_weights_test: true }", caffe_pb2.LayerParameter()))


# ---- weighted SoftmaxWithLoss ------------------------------------------------------------------------------------

def _weighted_softmax_loss(scores, label, weights, ignore, by_weight):
    """caffe-segnet's and DeepLab v1's Forward_cpu and Backward_cpu (loss weight 1): -w[y] log max(p_y, FLT_MIN)
    summed over the counted pixels, over their count (segnet) or their weights' sum (DeepLab); the diff
    w[y] (p - onehot) over the same normalizer, 0 at ignored pixels."""
    s = scores.astype(np.float64)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n, c = s.shape[:2]
    lab = label.reshape(n, -1).astype(int)
    pf = p.reshape(n, c, -1)
    loss, norm, diff = 0.0, 0.0, np.zeros_like(pf)
    for i in range(n):
        for j in range(lab.shape[1]):
            y = lab[i, j]
            if y in ignore:
                continue
            w = weights[y]
            loss -= w * np.log(max(pf[i, y, j], 1.1754943508222875e-38))
            norm += w if by_weight else 1.0
            diff[i, :, j] = w * pf[i, :, j]
            diff[i, y, j] -= w
    return loss / norm, (diff / norm).reshape(s.shape)


@pytest.mark.parametrize("fork", ["segnet", "deeplab", "deeplab_two_ignored"])
def test_class_weighted_softmax_loss(fork, tmp_path):
    shape, classes = (2, 4, 5, 6), 4
    scores = RNG.normal(0, 2, shape).astype(np.float32)
    label = RNG.integers(0, classes, (2, 1, 5, 6)).astype(np.float32)
    label[0, 0, 0, :3] = 255
    label[1, 0, 2, 1] = 3
    weights = [0.2, 1.5, 3.0, 0.7]
    if fork == "segnet":
        extra = ("loss_param { ignore_label: 255 weight_by_label_freqs: true "
                 + " ".join(f"class_weighting: {w}" for w in weights) + " }")
        ignore, by_weight = (255,), False
    else:
        src = tmp_path / "weights.txt"
        src.write_text("\n".join(str(w) for w in weights) + "\n")
        ignore = (255,) if fork == "deeplab" else (255, 3)
        extra = (f"softmaxloss_param {{ weight_source: '{src}' "
                 + " ".join(f"ignore_label: {v}" for v in ignore) + " }")
        by_weight = True
    _, _, mod = one_layer("SoftmaxWithLoss", extra, [shape, label.shape])
    want, want_diff = _weighted_softmax_loss(scores, label, weights, ignore, by_weight)
    st = torch.tensor(scores, requires_grad=True)
    loss = mod(st, torch.tensor(label))
    loss.backward()
    _close(float(loss.detach()), want, "loss")
    _close(st.grad.numpy(), want_diff, "diff")


def test_class_weighting_checks():
    with pytest.raises(CaffeFileError, match="one class_weighting per class: 2 given for 4 classes"):
        one_layer("SoftmaxWithLoss", "loss_param { weight_by_label_freqs: true class_weighting: 1 class_weighting: 2 }",
                  [(1, 4, 2, 2), (1, 1, 2, 2)])
    with pytest.raises(CaffeFileError, match="no such file|not found"):
        one_layer("SoftmaxWithLoss", "softmaxloss_param { weight_source: '/nonexistent/w.txt' }",
                  [(1, 4, 2, 2), (1, 1, 2, 2)])


# ---- DeepLab v1: hole, its V1 types ------------------------------------------------------------------------------

V1_NET = """name: "deeplab"
input: "data" input_dim: 1 input_dim: 3 input_dim: 41 input_dim: 37
layers { bottom: "data" top: "conv" name: "conv" type: CONVOLUTION strict_dim: false
  blobs_lr: 1 blobs_lr: 2 convolution_param { num_output: 4 pad: 6 hole: 6 kernel_size: 3 } }
layers { bottom: "conv" top: "conv2" name: "conv2" type: CONVOLUTION
  convolution_param { num_output: 5 pad_h: 2 pad_w: 4 hole_h: 2 hole_w: 4 kernel_size: 3 } }
layers { bottom: "conv2" top: "interp" name: "interp" type: INTERP interp_param { zoom_factor: 3 } }
"""


def test_hole_is_the_dilation_and_the_v1_names_upgrade(tmp_path):
    p = tmp_path / "deeplab.prototxt"
    p.write_text(V1_NET)
    m = caffe_files.read_prototxt(p)
    conv, conv2, interp = m.net.layer[1], m.net.layer[2], m.net.layer[3]
    assert list(conv.convolution_param.dilation) == [6] and list(conv2.convolution_param.dilation) == [2, 4]
    assert not conv.convolution_param.HasField("hole") and interp.type == "Interp"
    assert interp.interp_param.zoom_factor == 3
    assert any("hole -> dilation (2 layers)" in u for u in m.upgrades)
    assert any("strict_dim: false is not kept" in u for u in m.upgrades)
    # the effective kernel k + (k - 1)(hole - 1) (conv_layer.cpp): 41 + 12 - 13 + 1 = 41; then 41 + 4 - 5 + 1,
    # 37 + 8 - 9 + 1; Interp zoom 3: 3 (n - 1) + 1
    got = {m.net.layer[ls.index].name: ls.tops[0] for ls in shapes.infer(m.net, caffe_pb2.TEST, path=str(p))}
    assert got["conv"] == (1, 4, 41, 37) and got["conv2"] == (1, 5, 41, 37) and got["interp"] == (1, 5, 121, 109)


@pytest.mark.parametrize("conv, what", [
    ("hole: 2 hole_h: 2 hole_w: 2", "hole is hole OR hole_h and hole_w are required"),
    ("hole_h: 2", "hole is hole OR hole_h and hole_w are required"),
    ("hole: 2 dilation: 3", "hole \\[2\\] and dilation \\[3\\] disagree"),
])
def test_impossible_holes_are_one_line(tmp_path, conv, what):
    p = tmp_path / "bad.prototxt"
    p.write_text(V1_NET.replace("pad: 6 hole: 6", f"pad: 6 {conv}"))
    with pytest.raises(CaffeFileError, match=what):
        caffe_files.read_prototxt(p)


@pytest.mark.parametrize("v1, v2", [("IMAGE_SEG_DATA", "ImageSegData"), ("SEG_ACCURACY", "SegAccuracy"),
                                    ("MAT_WRITE", "MatWrite"), ("INTERP", "Interp"), ("DECONVOLUTION", "Deconvolution")])
def test_deeplab_v1_type_names(v1, v2):
    net = text_format.Parse(f'layers {{ name: "x" type: {v1} }}', caffe_pb2.NetParameter())
    upgrade.upgrade_net(net)
    assert net.layer[0].type == v2


# ---- SegAccuracy ---------------------------------------------------------------------------------------------------

def _seg_accuracy(scores, label, ignore):
    """seg_accuracy_layer.cpp + confusion_matrix.cpp, pixel by pixel: top-1 by std::greater on (score, channel)
    (ties: the higher channel), then accuracy(), avgRecall(false), avgJaccard()."""
    n, c, h, w = scores.shape
    m = np.zeros((c, c))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                pred = max((float(scores[i, k, y, x]), k) for k in range(c))[1]
                gt = int(label[i, 0, y, x])
                if gt in ignore:
                    continue
                m[gt, pred] += 1
    total, diag = m.sum(), np.trace(m)
    acc = diag / total if total else 0.0
    recalls = [m[k, k] / m[k].sum() for k in range(c) if m[k].sum() > 0]
    recall = sum(recalls) / len(recalls) if recalls else 0.0
    jac = 0.0
    for k in range(c):
        inter, union = m[k, k], m[k].sum() + m[:, k].sum() - m[k, k]
        jac += 1.0 if inter == union else inter / union
    return np.array([acc, recall, jac / c], np.float32).reshape(1, 1, 1, 3)


@pytest.mark.parametrize("case", ["random", "ties", "absent_classes", "all_ignored"])
def test_seg_accuracy_equals_the_confusion_matrix(case):
    shape = (2, 5, 6, 7)
    scores = RNG.normal(size=shape).astype(np.float32)
    label = RNG.integers(0, 5, (2, 1, 6, 7)).astype(np.float32)
    label[0, 0, :2] = 255
    if case == "ties":
        scores = np.round(scores).astype(np.float32)   # many equal scores: the higher channel wins
    elif case == "absent_classes":
        label[label == 4] = 0
        scores[:, 3] -= 10
    elif case == "all_ignored":
        label[:] = 255
    _, _, mod = one_layer("SegAccuracy", "seg_accuracy_param { ignore_label: 255 }", [shape, label.shape])
    got = mod(torch.tensor(scores), torch.tensor(label)).numpy()
    want = _seg_accuracy(scores, label, {255})
    _close(got, want, case)
    if case == "all_ignored":
        assert got.reshape(-1).tolist() == [0.0, 0.0, 1.0]


def test_seg_accuracy_refuses_an_unexpected_label():
    _, _, mod = one_layer("SegAccuracy", "", [(1, 3, 2, 2), (1, 1, 2, 2)])
    with pytest.raises(CaffeFileError, match="unexpected label 7"):
        mod(torch.zeros(1, 3, 2, 2), torch.full((1, 1, 2, 2), 7.0))
    with pytest.raises(CaffeFileError, match="must be N x 1 x H x W"):
        one_layer("SegAccuracy", "", [(1, 3, 2, 2), (1, 1, 2, 3)])


# ---- MatWrite ------------------------------------------------------------------------------------------------------

def test_mat_write_writes_matlab_column_major_files(tmp_path, monkeypatch):
    """mat_write_layer.cpp: <prefix><id>_blob_<i>.mat at forwards 0, period, ...; the ids from source (first field,
    strip characters off its end); Blob::ToMat: 'data', single, dims W x H x C x N of the blob's memory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ids.txt").write_text("2007_000033.jpg extra\n2007_000042.jpg\n2007_000061.jpg\n")
    extra = "mat_write_param { prefix: 'out/fc8/' source: 'ids.txt' strip: 4 period: 2 }"
    c, lay, mod = one_layer("MatWrite", extra, [(1, 3, 4, 5)], ntop=0)
    assert c.training_only and c.top_shapes(lay, [(1, 3, 4, 5)]) == []
    blobs = [RNG.normal(size=(1, 3, 4, 5)).astype(np.float32) for _ in range(3)]
    for b in blobs:
        assert mod(torch.tensor(b)) == ()
    written = sorted(p.name for p in (tmp_path / "out" / "fc8").iterdir())
    assert written == ["2007_000033_blob_0.mat", "2007_000061_blob_0.mat"]
    mat = scipy.io.loadmat(tmp_path / "out" / "fc8" / "2007_000061_blob_0.mat")
    data = mat["data"]
    assert data.dtype == np.float32 and data.shape == (5, 4, 3, 1)   # the four dims matio writes, N = 1 kept
    for n, ch, y, x in [(0, 0, 0, 0), (0, 2, 3, 4), (0, 1, 2, 0)]:
        assert data[x, y, ch, n] == blobs[2][n, ch, y, x]
    # the raw column-major order: the blob's row-major memory
    assert np.array_equal(data.reshape(-1, order="F"), blobs[2].reshape(-1))
    mod(torch.tensor(blobs[0]))       # forward 3: period 2 writes nothing, and checks nothing
    with pytest.raises(CaffeFileError, match="more iterations than it was supposed to"):
        mod(torch.tensor(blobs[0]))   # forward 4 writes: past the 3 ids


def test_mat_write_without_source_and_its_checks(tmp_path):
    _, _, mod = one_layer("MatWrite", f"mat_write_param {{ prefix: '{tmp_path}/x_' }}", [(2, 1, 2, 2)], ntop=0)
    mod(torch.ones(2, 1, 2, 2)), mod(torch.zeros(2, 1, 2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_iter_0_blob_0.mat", "x_iter_1_blob_0.mat"]
    assert scipy.io.loadmat(tmp_path / "x_iter_0_blob_0.mat")["data"].shape == (2, 2, 1, 2)
    with pytest.raises(CaffeFileError, match="period must be positive"):
        one_layer("MatWrite", "mat_write_param { prefix: 'x' period: 0 }", [(1, 1, 2, 2)], ntop=0)
    (tmp_path / "ids.txt").write_text("ab\n")
    _, _, mod = one_layer("MatWrite", f"mat_write_param {{ prefix: 'x' source: '{tmp_path}/ids.txt' strip: 2 }}",
                          [(1, 1, 2, 2)], ntop=0)
    with pytest.raises(CaffeFileError, match="too much stripping"):
        mod(torch.ones(1, 1, 2, 2))
    _, _, mod = one_layer("MatWrite", "mat_write_param { prefix: 'x' source: '/nonexistent/ids.txt' }",
                          [(1, 1, 2, 2)], ntop=0)   # built where the list is not: read at the first forward
    with pytest.raises(CaffeFileError, match="MatWrite source list not found"):
        mod(torch.ones(1, 1, 2, 2))


def test_segnet_bn_net_verifies_against_opencv(tmp_path):
    """The published SegNet syntax (a deploy header, BN INFERENCE after each convolution) against OpenCV 4, which
    runs the BN as the Scale with bias it is (BNConverter.for_reference)."""
    from sfport.netdef.weight_match import with_random_weights
    from sfport.runtime import verify

    bn = ' bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } }'
    text = 'name: "segnet"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 23\ninput_dim: 30\n'
    bottom = "data"
    for k in (1, 2):
        text += (f'layer {{ name: "conv{k}" type: "Convolution" bottom: "{bottom}" top: "conv{k}" convolution_param {{ '
                 f'num_output: 6 kernel_size: 7 pad: 3 }} }}\n'
                 f'layer {{ bottom: "conv{k}" top: "conv{k}" name: "conv{k}_bn" type: "BN"{bn} }}\n'
                 f'layer {{ name: "relu{k}" type: "ReLU" bottom: "conv{k}" top: "conv{k}" }}\n')
        bottom = f"conv{k}"
    p, w = tmp_path / "segnet.prototxt", tmp_path / "segnet.caffemodel"
    p.write_text(text)
    caffe_files.write_caffemodel(w, with_random_weights(caffe_files.read_prototxt(p), seed=1))
    v = verify.run(str(w), str(p), "opencv")
    assert [c.name for c in v.checks] == ["conv1", "conv2"] or {"conv1", "conv2"} <= {c.name for c in v.checks}
    assert v.passed and v.worst.rel_err <= 1e-5, verify.format_table(v.checks)


@pytest.mark.parametrize("beg, end", [(2, 3), (-2, -3), (0, -1), (0, 0)])
def test_padding_pads_with_zeros_or_crops(beg, end):
    """padding_layer.cpp Forward_cpu: top[n, c, h, w] = bottom[n, c, h - pad_beg, w - pad_beg] where in range, 0
    elsewhere; Backward_cpu the same copy of the diff back."""
    x = RNG.normal(size=(2, 3, 7, 6)).astype(np.float32)
    _, _, mod = one_layer("Padding", f"padding_param {{ pad_beg: {beg} pad_end: {end} }}", [x.shape])
    xt = torch.tensor(x, requires_grad=True)
    y = mod(xt)
    ho, wo = 7 + beg + end, 6 + beg + end
    want = np.zeros((2, 3, ho, wo), np.float32)
    for h in range(ho):
        for w in range(wo):
            if 0 <= h - beg < 7 and 0 <= w - beg < 6:
                want[:, :, h, w] = x[:, :, h - beg, w - beg]
    assert np.array_equal(y.detach().numpy(), want)
    dy = RNG.normal(size=want.shape).astype(np.float32)
    y.backward(torch.tensor(dy))
    back = np.zeros_like(x)
    for h in range(ho):
        for w in range(wo):
            if 0 <= h - beg < 7 and 0 <= w - beg < 6:
                back[:, :, h - beg, w - beg] = dy[:, :, h, w]
    assert np.array_equal(xt.grad.numpy(), back)


@pytest.mark.parametrize("extra, what", [("padding_param { pad_beg: 1 pad_end: -1 }", "both positive or negative"),
                                         ("padding_param { pad_beg: -4 pad_end: -3 }", "height or width <= 0")])
def test_impossible_padding_is_one_line(extra, what):
    with pytest.raises(CaffeFileError, match=what):
        one_layer("Padding", extra, [(1, 2, 7, 6)])


def test_verify_takes_a_mask_index_at_a_tie_as_equal(tmp_path):
    """A MAX pooling mask (SegNet's) is a choice: where the reference picked another place of the window holding
    the same value (up to the arithmetic before it), verify counts it as equal; any other index still fails."""
    from sfport.runtime import verify

    text = ('name: "m"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 '
            'dim: 4 } } }\nlayer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')
    p = tmp_path / "m.prototxt"
    p.write_text(text)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = 20.0                 # window (0, 0): a tie between flat indices 0 and 5
    x[0, 0, 2, 2] = 15.0 + 1e-4                           # window (1, 1): 15.0001 vs 15, a tie within 2e-4
    np.save(tmp_path / "x.npy", x)
    ref = tmp_path / "ref"
    ref.mkdir()
    np.save(ref / "data.npy", x)
    np.save(ref / "pool.npy", np.array([[[[20, 7], [13, 15]]]], np.float32))
    mask = np.array([[[[5, 7], [13, 15]]]], np.float32)   # the reference took the ties' other places
    np.save(ref / "mask.npy", mask)
    v = verify.run(str(p), None, str(ref), input=str(tmp_path / "x.npy"))
    assert v.passed, verify.format_table(v.checks)
    mask[0, 0, 1, 1] = 14                                   # 14 against 15.0001: a real difference
    np.save(ref / "mask.npy", mask)
    v = verify.run(str(p), None, str(ref), input=str(tmp_path / "x.npy"))
    assert not v.passed and [c.name for c in v.checks if not c.ok] == ["mask"]
