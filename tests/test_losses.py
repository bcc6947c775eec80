"""The BVLC loss layers against Caffe's formulas written here from the .cpp files (BVLC/caffe master,
src/caffe/layers/<name>_loss_layer.cpp), in float64: the loss (Forward_cpu) and the gradient (Backward_cpu,
and central finite differences where Backward_cpu is the true derivative)."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2


def make(t, extra="", nb=2, ntop=1):
    layer = text_format.Parse(extra, caffe_pb2.LayerParameter(name="l", type=t))
    layer.bottom.extend(f"b{i}" for i in range(nb))
    layer.top.extend(f"t{i}" for i in range(ntop))
    return layer


def run(t, extra, arrays, ntop=1, grad_of=(0,)):
    """Loss and gradients (w.r.t. the bottoms in grad_of) of the converter's module in float64."""
    layer = make(t, extra, len(arrays), ntop)
    mod = converters.get(t).build(layer, [a.shape for a in arrays])
    xs = [torch.tensor(a, dtype=torch.float64, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    out = mod(*xs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return float(loss.detach()), [xs[i].grad.numpy() for i in grad_of], out


def fd(fn, x, eps=1e-6):
    """Central finite differences of a scalar numpy function."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (fn(xp) - fn(xm)) / (2 * eps)
    return g


rng = np.random.default_rng(7)


# euclidean_loss_layer.cpp: Forward_cpu loss = dot(diff, diff) / num / 2; Backward_cpu +-diff / num
def test_euclidean_loss_and_both_gradients():
    a, b = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 6))
    num = a.shape[0]
    loss, (ga, gb), _ = run("EuclideanLoss", "", [a, b], grad_of=(0, 1))
    diff = a.reshape(num, -1) - b
    assert loss == pytest.approx(np.sum(diff ** 2) / num / 2, rel=1e-12)
    np.testing.assert_allclose(ga.reshape(num, -1), diff / num, rtol=1e-12)
    np.testing.assert_allclose(gb, -diff / num, rtol=1e-12)


def test_euclidean_loss_dimension_mismatch_names_the_layer():
    layer = make("EuclideanLoss")
    with pytest.raises(CaffeFileError, match="layer 'l'.*same dimension"):
        converters.get("EuclideanLoss").top_shapes(layer, [(4, 6), (4, 5)])


def _sigmoid_ce(x, t, ignore=None, norm="BATCH_SIZE"):
    """sigmoid_cross_entropy_loss_layer.cpp Forward_cpu (master), per element, then get_normalizer."""
    x, t = x.ravel(), t.ravel()
    total, valid = 0.0, 0
    for xi, ti in zip(x, t):
        if ignore is not None and int(ti) == ignore:
            continue
        total -= xi * (ti - (xi >= 0)) - math.log(1 + math.exp(xi - 2 * xi * (xi >= 0)))
        valid += 1
    n = {"FULL": x.size, "VALID": valid, "BATCH_SIZE": 4, "NONE": 1}[norm]
    return total / max(1.0, n)


@pytest.mark.parametrize("extra,ignore,norm", [
    ("", None, "BATCH_SIZE"),                                          # LayerSetUp's default is BATCH_SIZE
    ("loss_param { normalize: true }", None, "VALID"),                 # the legacy bool
    ("loss_param { normalization: FULL }", None, "FULL"),
    ("loss_param { ignore_label: -1 normalization: VALID }", -1, "VALID"),
    ("loss_param { ignore_label: 1 normalization: NONE }", 1, "NONE"),
])
def test_sigmoid_cross_entropy(extra, ignore, norm):
    x = rng.normal(scale=3, size=(4, 5))
    t = rng.integers(0, 2, size=(4, 5)).astype(np.float64)
    if ignore is not None:
        t[rng.random((4, 5)) < 0.3] = ignore
    loss, (g,), _ = run("SigmoidCrossEntropyLoss", extra, [x, t])
    assert loss == pytest.approx(_sigmoid_ce(x, t, ignore, norm), rel=1e-12)
    # Backward_cpu: (sigmoid(x) - t) / normalizer, 0 at ignored targets - also the finite differences
    np.testing.assert_allclose(g, fd(lambda v: _sigmoid_ce(v, t, ignore, norm), x), atol=1e-8)


def _contrastive(a, b, y, margin, legacy):
    """contrastive_loss_layer.cpp Forward_cpu."""
    loss = 0.0
    for i in range(a.shape[0]):
        d2 = np.sum((a[i] - b[i]) ** 2)
        if int(y[i]):
            loss += d2
        elif legacy:
            loss += max(margin - d2, 0.0)
        else:
            loss += max(margin - math.sqrt(d2), 0.0) ** 2
    return loss / a.shape[0] / 2


def _contrastive_backward(a, b, y, margin, legacy):
    """contrastive_loss_layer.cpp Backward_cpu for bottom[0] (bottom[1] gets the negative)."""
    num = a.shape[0]
    g = np.zeros_like(a)
    for i in range(num):
        diff = a[i] - b[i]
        d2 = np.sum(diff ** 2)
        alpha = 1.0 / num
        if int(y[i]):
            g[i] = alpha * diff
        else:
            if legacy:
                mdist, beta = margin - d2, -alpha
            else:
                dist = math.sqrt(d2)
                mdist = margin - dist
                beta = -alpha * mdist / (dist + 1e-4)
            if mdist > 0:
                g[i] = beta * diff
    return g


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_both_versions(legacy):
    a, b = rng.normal(scale=0.5, size=(6, 3)), rng.normal(scale=0.5, size=(6, 3))
    y = np.array([1, 0, 0, 1, 0, 0], np.float64)
    margin = 1.5
    extra = f"contrastive_loss_param {{ margin: {margin} legacy_version: {str(legacy).lower()} }}"
    loss, (ga, gb), _ = run("ContrastiveLoss", extra, [a, b, y], grad_of=(0, 1))
    assert loss == pytest.approx(_contrastive(a, b, y, margin, legacy), rel=1e-12)
    ref = _contrastive_backward(a, b, y, margin, legacy)
    np.testing.assert_allclose(ga, ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gb, -ref, rtol=1e-12, atol=1e-15)
    if legacy:   # the legacy gradient is the true derivative
        np.testing.assert_allclose(ga, fd(lambda v: _contrastive(v, b, y, margin, True), a), atol=1e-8)
    else:        # Caffe's 1e-4 in the denominator makes it differ from the derivative, slightly
        true = fd(lambda v: _contrastive(v, b, y, margin, False), a)
        assert not np.allclose(ga, true, rtol=1e-9, atol=0)
        np.testing.assert_allclose(ga, true, rtol=1e-3, atol=1e-6)


def _hinge(x, label, l2):
    """hinge_loss_layer.cpp Forward_cpu."""
    num = x.shape[0]
    xf = x.reshape(num, -1).copy()
    for i in range(num):
        xf[i, int(label[i])] *= -1
    h = np.maximum(0, 1 + xf)
    return np.sum(h ** 2 if l2 else h) / num


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x = rng.normal(scale=2, size=(5, 4))
    label = np.array([0, 3, 1, 1, 2], np.float64)
    loss, (g,), _ = run("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}", [x, label])
    assert loss == pytest.approx(_hinge(x, label, norm == "L2"), rel=1e-12)
    np.testing.assert_allclose(g, fd(lambda v: _hinge(v, label, norm == "L2"), x), atol=1e-7)


def test_multinomial_logistic_loss_with_a_zero_probability():
    p = rng.uniform(0.05, 1, size=(4, 3))
    p /= p.sum(1, keepdims=True)
    p[2, 1] = 0.0
    label = np.array([0, 2, 1, 1], np.float64)
    loss, (g,), _ = run("MultinomialLogisticLoss", "", [p, label])
    num = 4
    # Forward_cpu: -sum log(max(p_label, kLOG_THRESHOLD)) / num
    ref = -sum(math.log(max(p[i, int(label[i])], 1e-20)) for i in range(num)) / num
    assert loss == pytest.approx(ref, rel=1e-12)
    # Backward_cpu: -1 / num / max(p_label, kLOG_THRESHOLD) at the label, 0 elsewhere
    want = np.zeros_like(p)
    for i in range(num):
        want[i, int(label[i])] = -1 / num / max(p[i, int(label[i])], 1e-20)
    np.testing.assert_allclose(g, want, rtol=1e-12)


def _infogain(s, label, H, ignore=None, norm="VALID"):
    """infogain_loss_layer.cpp (master) Forward_cpu: softmax over axis 1, then -sum_l H[y,l] log(max(p_l, 1e-20))."""
    e = np.exp(s - s.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    total, valid = 0.0, 0
    for i in range(s.shape[0]):
        y = int(label[i])
        if ignore is not None and y == ignore:
            continue
        total -= sum(H[y, l] * math.log(max(p[i, l], 1e-20)) for l in range(s.shape[1]))
        valid += 1
    n = {"VALID": valid, "BATCH_SIZE": s.shape[0], "FULL": s.shape[0], "NONE": 1}[norm]
    return total / max(1.0, n), p


@pytest.mark.parametrize("extra,ignore,norm", [
    ("", None, "VALID"), ("loss_param { ignore_label: 2 }", 2, "VALID"),
    ("loss_param { normalization: NONE }", None, "NONE")])
def test_infogain_loss_third_bottom(extra, ignore, norm):
    s = rng.normal(size=(6, 4))
    label = np.array([0, 2, 3, 1, 2, 0], np.float64)
    H = rng.uniform(0, 1, size=(4, 4))
    loss, (g,), out = run("InfogainLoss", extra, [s, label, H], ntop=2)
    ref, p = _infogain(s, label, H, ignore, norm)
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(out[1].detach().numpy(), p, rtol=1e-12)
    # Backward_cpu: (p_l * sum_k H[y,k] - H[y,l]) / normalizer
    n = max(1.0, {"VALID": sum(int(v) != ignore for v in label), "NONE": 1}[norm])
    want = np.zeros_like(s)
    for i in range(6):
        y = int(label[i])
        if ignore is not None and y == ignore:
            continue
        want[i] = (p[i] * H[y].sum() - H[y]) / n
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g, fd(lambda v: _infogain(v, label, H, ignore, norm)[0], s), atol=1e-7)


def test_infogain_matrix_from_source(tmp_path, monkeypatch):
    H = rng.uniform(0, 1, size=(3, 3)).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 1, 3, 3])
    blob.data.extend(H.ravel().tolist())
    (tmp_path / "H.binaryproto").write_bytes(blob.SerializeToString())
    monkeypatch.chdir(tmp_path)   # Caffe reads source relative to the working directory
    s = rng.normal(size=(5, 3))
    label = np.array([0, 1, 2, 2, 1], np.float64)
    loss, _, _ = run("InfogainLoss", 'infogain_loss_param { source: "H.binaryproto" }', [s, label])
    assert loss == pytest.approx(_infogain(s, label, H.astype(np.float64))[0], rel=1e-6)


def test_infogain_bad_source_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "H.binaryproto").write_bytes(b"\xff\xff\xff")
    monkeypatch.chdir(tmp_path)
    layer = make("InfogainLoss", 'infogain_loss_param { source: "H.binaryproto" }')
    with pytest.raises(CaffeFileError, match="H.binaryproto|BlobProto"):
        converters.get("InfogainLoss").build(layer, [(5, 3), (5,)])


def test_labels_out_of_range_are_errors():
    with pytest.raises(CaffeFileError, match="outside 0..3"):
        run("HingeLoss", "", [rng.normal(size=(2, 4)), np.array([0, 4.0])])


def test_the_losses_are_losses_with_label_bottoms():
    for t in ("EuclideanLoss", "SigmoidCrossEntropyLoss", "ContrastiveLoss", "HingeLoss", "InfogainLoss",
              "MultinomialLogisticLoss"):
        assert converters.is_loss(t) and converters.is_training_only(t)
    assert converters.label_bottoms("ContrastiveLoss") == (2,)


@pytest.mark.parametrize("norm", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_loss_without_ignored_labels(norm):
    """SoftmaxWithLoss with every label counted (its short path) against softmax_loss_layer.cpp's formulas in
    float64 (loss: sum of -log(max(p_y, FLT_MIN)) over the normalizer; gradient: (p - onehot) over it), over axis
    1 of a 4-D blob; and, in float32, exactly the values and gradient of the masked path (an ignore_label no
    sample has)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 5, 2, 2)) * 3
    x[0, :, 0, 0] = [-200, 0, 0, 0, 0]        # p_y below FLT_MIN: the loss is capped, the gradient is not
    y = rng.integers(0, 5, (3, 1, 2, 2)).astype(np.float64)
    y[0, 0, 0, 0] = 0
    loss, (g,), _ = run("SoftmaxWithLoss", f"loss_param {{ normalization: {norm} }}", [x, y])
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = (np.arange(5)[None, :, None, None] == y).astype(np.float64)
    py = (p * onehot).sum(1)
    n = {"FULL": 12, "VALID": 12, "BATCH_SIZE": 3, "NONE": 1}[norm]
    assert loss == pytest.approx(-np.log(np.maximum(py, np.finfo(np.float32).tiny)).sum() / n, rel=1e-12)
    np.testing.assert_allclose(g, (p - onehot) / n, rtol=0, atol=1e-12)
    mods = [converters.get("SoftmaxWithLoss").build(make("SoftmaxWithLoss", f"loss_param {{ normalization: {norm} "
                                                         f"{extra} }}"), [x.shape, y.shape])
            for extra in ("", "ignore_label: 99")]
    got = []
    for mod in mods:
        xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        value = mod(xt, torch.tensor(y, dtype=torch.float32))
        value.backward()
        got.append((value.detach(), xt.grad))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


@pytest.mark.parametrize("top_k", [1, 2])
def test_accuracy_without_ignored_labels(top_k):
    """Accuracy with every label counted (its short path): accuracy_layer.cpp's rule, a sample is right when fewer
    than top_k scores are strictly greater than its label's (ties count for it), over axis 1 of a 4-D blob."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, (4, 5, 3, 2)).astype(np.float32)   # small integers: many ties
    y = rng.integers(0, 5, (4, 1, 3, 2)).astype(np.float32)
    mod = converters.get("Accuracy").build(make("Accuracy", f"accuracy_param {{ top_k: {top_k} }}"),
                                           [x.shape, y.shape])
    target = np.take_along_axis(x, y.astype(int), axis=1)
    want = ((x > target).sum(1) < top_k).mean()
    got = mod(torch.from_numpy(x), torch.from_numpy(y))
    assert got.shape == () and float(got) == pytest.approx(want, abs=1e-7)


def test_softmax_loss_of_no_samples_is_zero():
    """A batch of no samples (a net reshaped to batch 0) gives loss 0, as Caffe's sum over nothing over the
    normalizer's floor of 1, with every label counted and with an ignore_label."""
    for extra in ("", "loss_param { ignore_label: 2 }"):
        mod = converters.get("SoftmaxWithLoss").build(make("SoftmaxWithLoss", extra), [(0, 5), (0,)])
        assert float(mod(torch.zeros(0, 5), torch.zeros(0))) == 0.0
