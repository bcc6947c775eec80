"""MarginInnerProduct (A-Softmax) and InterClass (SphereFace+) against the forks' C++ (margin_inner_product_layer.cpp, inter_class_layer.cpp) evaluated
independently in numpy, against real Caffe (golden/margin, the fork's own layers) and gradcheck."""
import math

import numpy as np
import pytest
import torch

import sfport
from sfport.converters import margin as mg
from sfport.formats.caffe_files import read_prototxt
from sfport.protos import caffe_pb2

from conftest import GOLDEN, UPSTREAM

MARGIN = GOLDEN / "margin"
TYPES = {1: "single", 2: "double", 3: "triple", 4: "quadruple"}


# ---------------------------------------------------------------------------------------------------------
# independent references (numpy, float64) written from the forks' C++
# ---------------------------------------------------------------------------------------------------------

def np_psi_signs(m, c):
    """MarginInnerProductLayer::Forward_cpu, the fork's sign formulas."""
    s0 = np.sign(c)
    if m == 2:
        return 2 * s0 * c ** 2 - 1
    if m == 3:
        s1 = np.sign(abs(c) - 0.5)
        s2 = s0 * (1 + s1) - 2
        return s1 * (4 * c ** 3 - 3 * c) + s2
    s3 = s0 * np.sign(2 * c ** 2 - 1)
    s4 = 2 * s0 + s3 - 3
    return s3 * (8 * c ** 4 - 8 * c ** 2 + 1) + s4


def np_psi_angle(m, c):
    """(-1)^k cos(m theta) - 2k, theta = arccos(c), k = floor(m theta / pi)."""
    theta = np.arccos(np.clip(c, -1, 1))
    k = np.minimum(np.floor(m * theta / np.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def np_forward(x, w_raw, y, lam, m):
    w = w_raw / np.sqrt((w_raw ** 2).sum(1, keepdims=True))
    out = x @ w.T
    if m == 1:
        return out, w
    xn = np.sqrt((x ** 2).sum(1))
    for i, yi in enumerate(y):
        c = out[i, yi] / xn[i]
        out[i, yi] = (lam * out[i, yi] + xn[i] * np_psi_signs(m, c)) / (1 + lam)
    return out, w


def np_backward(x, w, y, g, lam, m):
    """MarginInnerProductLayer::Backward_cpu: normalized target-column coefficients; dW = g^T x."""
    dx = np.zeros_like(x)
    for i, yi in enumerate(y):
        xn = np.sqrt(x[i] @ x[i])
        c = (x[i] @ w[yi]) / xn
        for j in range(w.shape[0]):
            if j != yi or m == 1:
                dx[i] += g[i, j] * w[j]
                continue
            s0 = np.sign(c)
            if m == 2:
                cw, cx = 4 * s0 * c, -(2 * s0 * c * c + 1) / xn
            elif m == 3:
                s1 = np.sign(abs(c) - 0.5)
                s2 = s0 * (1 + s1) - 2
                cw, cx = s1 * (12 * c * c - 3), -(8 * s1 * c ** 3 - s2) / xn
            else:
                s3 = s0 * np.sign(2 * c * c - 1)
                s4 = 2 * s0 + s3 - 3
                cw, cx = s3 * (32 * c ** 3 - 16 * c), -(s3 * (24 * c ** 4 - 8 * c * c - 1) - s4) / xn
            n = math.hypot(cw, cx)
            cw, cx = cw / n, cx / n
            dx[i] += g[i, j] / (1 + lam) * (cw * w[j] + cx * x[i]) + lam / (1 + lam) * g[i, j] * w[j]
    return dx, g.T @ x


def boundary_case(seed, m_samples=64, k=16, n=10):
    """x, W (row norms from 0.01 to 100), labels; target cosines include values within 1e-4 of every sign
    switch point (0, +-0.5, +-1/sqrt2) and of +-1, and random ones."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)) * np.exp(rng.uniform(np.log(0.01), np.log(100), (n, 1)))
    y = rng.integers(0, n, m_samples)
    special = [0.0, 0.5, -0.5, 1 / math.sqrt(2), -1 / math.sqrt(2), 1.0, -1.0]
    cs = []
    for s in special:
        cs += [s + 1e-4, s - 1e-4]
    cs = np.clip(np.array(cs + list(rng.uniform(-1, 1, m_samples - len(cs)))), -0.99999, 0.99999)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    x = np.zeros((m_samples, k))
    for i in range(m_samples):
        u = wn[y[i]]
        v = rng.standard_normal(k)
        v -= (v @ u) * u
        v /= np.linalg.norm(v)
        x[i] = (cs[i] * u + math.sqrt(1 - cs[i] ** 2) * v) * rng.uniform(0.05, 50)
    return x, w, y, cs


def relerr(a, b):
    a = a.detach().cpu().double().numpy() if torch.is_tensor(a) else np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def module(m, **kw):
    args = dict(base=1000, gamma=0.12, power=1, lambda_min=5, iteration=0)
    args.update(kw)
    return mg.MarginInnerProduct(10, 16, 1, m, **args)


# ---------------------------------------------------------------------------------------------------------
# 1. forward
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_forward_matches_spec_fp64(m):
    x, w, y, cs = boundary_case(m)
    mod = module(m, iteration=7).double()
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(w))
    out, lam = mod(torch.from_numpy(x), torch.from_numpy(y.astype(np.float64)))
    lam_ref = max(1000 / (1 + 0.12 * 8), 5)
    assert float(lam) == pytest.approx(lam_ref, rel=1e-12)
    ref, wn = np_forward(x, w, y, lam_ref, m)
    assert relerr(out, ref) <= 1e-9
    # W renormalized in place
    assert relerr(mod.weight, wn) <= 1e-12
    assert np.allclose(np.linalg.norm(mod.weight.detach().numpy(), axis=1), 1, atol=1e-12)
    # non-target logits are exactly x.w (not rescaled)
    mask = np.ones_like(ref, dtype=bool)
    mask[np.arange(len(y)), y] = m == 1
    assert relerr(out.detach().numpy()[mask], (x @ wn.T)[mask]) <= 1e-12


@pytest.mark.parametrize("m", [2, 3, 4])
def test_psi_is_the_angle_formula(m):
    _, _, _, cs = boundary_case(10 + m)
    c = np.concatenate([cs, np.linspace(-1, 1, 2001)])
    psi, _, _ = mg.psi_terms(m, torch.from_numpy(c), torch.ones(len(c), dtype=torch.float64))
    assert np.abs(psi.numpy() - np_psi_angle(m, c)).max() <= 1e-9
    # and psi is monotone decreasing in theta (the point of the k terms)
    theta = np.linspace(0, np.pi, 1001)
    p = mg.psi_terms(m, torch.from_numpy(np.cos(theta)), torch.ones(1001, dtype=torch.float64))[0].numpy()
    assert np.all(np.diff(p) <= 1e-12)


# ---------------------------------------------------------------------------------------------------------
# 2. backward
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_fork_backward_matches_spec(m):
    x, w, y, _ = boundary_case(20 + m)
    g = np.random.default_rng(m).standard_normal((len(y), w.shape[0]))
    mod = module(m, iteration=100).double()
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(w))
    xt = torch.from_numpy(x).requires_grad_()
    out, lam = mod(xt, torch.from_numpy(y))
    out.backward(torch.from_numpy(g))
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    dx_ref, dw_ref = np_backward(x, wn, y, g, float(lam), m)
    assert relerr(xt.grad, dx_ref) <= 1e-9
    assert relerr(mod.weight.grad, g.T @ x) <= 1e-12
    assert relerr(mod.weight.grad, dw_ref) <= 1e-12


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_true_gradient_gradcheck(m):
    rng = np.random.default_rng(30 + m)
    x = torch.from_numpy(rng.standard_normal((6, 5)) * 3).requires_grad_()
    w = torch.from_numpy(rng.standard_normal((4, 5)) * rng.uniform(0.3, 3, (4, 1))).requires_grad_()
    y = torch.from_numpy(rng.integers(0, 4, 6))
    assert torch.autograd.gradcheck(lambda a, b: mg.margin_inner_product(a, b, y, 7.5, m, grad="true"), (x, w))
    # the true forward equals the fork's forward, but (for m > 1) not its gradient
    wn = (w / w.norm(dim=1, keepdim=True)).detach()
    f_true = mg.margin_inner_product(x, w, y, 7.5, m, grad="true")
    f_fork = mg.margin_inner_product(x, wn, y, 7.5, m, grad="caffe")
    assert relerr(f_true, f_fork.detach().numpy()) <= 1e-12
    gx_true = torch.autograd.grad(f_true.sum(), x)[0]
    gx_fork = torch.autograd.grad(f_fork.sum(), x)[0]
    assert (relerr(gx_true, gx_fork.numpy()) > 1e-3) == (m > 1)


def test_true_gradient_through_the_layer_setting():
    net = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text = (MARGIN / "margin_quadruple.prototxt").read_text().replace("iteration: 40", 'iteration: 40\n    margin_grad: "true"')
    text_format.Parse(text, net)
    n = sfport.TorchNet(sfport.formats.caffe_files.CaffeModel.from_net(net, None), phase="train")
    mod = n.module.module_of("fc6")
    assert mod.grad_mode == "true"
    bad = text.replace('margin_grad: "true"', 'margin_grad: "exact"')
    net2 = caffe_pb2.NetParameter()
    text_format.Parse(bad, net2)
    with pytest.raises(sfport.errors.CaffeFileError, match="margin_grad must be one of caffe, true"):
        sfport.TorchNet(sfport.formats.caffe_files.CaffeModel.from_net(net2, None), phase="train")


# ---------------------------------------------------------------------------------------------------------
# 3. lambda schedule and counters
# ---------------------------------------------------------------------------------------------------------

def test_lambda_over_3000_forwards():
    mod = module(4)
    x, y = torch.randn(2, 16), torch.tensor([1.0, 2.0])
    seen, exact = [], []
    with torch.no_grad():
        for _ in range(3000):
            seen.append(float(mod(x, y)[1]))
            exact.append(mod.current_lambda)
    ref = [max(1000 * (1 + 0.12 * i) ** -1, 5) for i in range(1, 3001)]
    assert np.abs(np.array(exact) / ref - 1).max() <= 1e-12
    assert np.abs(np.array(seen) / ref - 1).max() <= 2 ** -24  # the top is float32, like x
    assert int(mod.iteration) == 3000
    assert seen.index(5.0) == 1658  # lambda reaches 5 at layer iteration 1659 (margin_inner_product_layer.cpp)


def _sphereface20_fc6():
    net = read_prototxt(UPSTREAM / "sphereface/train/code/sphereface_model.prototxt").net
    layer = next(l for l in net.layer if l.type == "MarginInnerProduct")
    assert layer.margin_inner_product_param.num_output == 10572
    layer.margin_inner_product_param.num_output = 10  # the schedule does not depend on the width; CI time does
    return sfport.converters.get("MarginInnerProduct").build(layer, [(2, 512), (2,)])


def test_lambda_at_solver_iteration_600():
    """Solver iterations 0..600 with iter_size 1 are 601 forwards; with iter_size 2 the counter advances twice
    per update (each forward/backward of the accumulation is a forward of the layer)."""
    torch.manual_seed(0)
    for iter_size in (1, 2):
        fc6 = _sphereface20_fc6()
        opt = torch.optim.SGD(fc6.parameters(), lr=0.01)
        for _ in range(601):
            opt.zero_grad()
            for _ in range(iter_size):
                out, lam = fc6(torch.randn(2, 512), torch.tensor([3.0, 7.0]))
                out.sum().backward()
            opt.step()
        expected = max(1000 / (1 + 0.12 * 601 * iter_size), 5)
        assert float(lam) == pytest.approx(expected, rel=1e-6)
        if iter_size == 1:
            assert round(float(lam), 4) == 13.6761
        assert int(fc6.iteration) == 601 * iter_size


def test_counters_are_saved_and_restored(tmp_path):
    n = sfport.TorchNet(MARGIN / "interclass_among.prototxt", phase="train", seed=1)
    for _ in range(5):
        n.forward(fc5=torch.randn(8, 16), label=torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8]))
    state = n.module.state_dict()
    assert int(state["layers.fc6.iteration"]) == 2005
    assert int(state["layers.inter_class_dist_output.iteration"]) == 16005
    assert float(state["layers.inter_class_dist_output.alpha"]) == 10.0
    n.save(tmp_path / "n.pt")
    back = sfport.TorchNet(tmp_path / "n.pt", phase="train")
    assert int(back.module.module_of("fc6").iteration) == 2005
    ic = back.module.module_of("inter_class_dist_output")
    assert int(ic.iteration) == 16005 and float(ic.alpha) == 10.0
    assert back.module.module_of("fc6").weight is ic.weight  # still one shared parameter
    # the caffemodel holds no counters: a net built from it starts again at the prototxt's values (as Caffe)
    n.save_caffemodel(tmp_path / "n.caffemodel")
    again = sfport.TorchNet(MARGIN / "interclass_among.prototxt", weights=tmp_path / "n.caffemodel", phase="train")
    assert int(again.module.module_of("fc6").iteration) == 2000


# ---------------------------------------------------------------------------------------------------------
# 4. InterClass
# ---------------------------------------------------------------------------------------------------------

def np_interclass(w, y, alpha, among, normalize):
    mean = w.mean(0)
    wbar = mean / math.sqrt(mean @ mean + 1e-5) if normalize else mean
    M, N = len(y), w.shape[0]
    dW = np.zeros_like(w)
    if among:
        D = sum(((w[i] - w[y[j]]) ** 2).sum() for i in range(N) for j in range(M)) / N
        for j in range(M):
            dW[y[j]] += -4 * alpha / (M * D * D + 1e-5) * (w[y[j]] - wbar)
    else:
        D = 1 - np.mean([wbar @ w[y[j]] for j in range(M)])
        for j in range(M):
            dW[y[j]] += alpha * wbar / M
    return D, dW


@pytest.mark.parametrize("among", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_interclass_matches_spec(among, normalize):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((10, 16))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    y = np.array([3, 3, 7, 0, 9, 3, 1, 7, 2, 2, 5])
    mod = mg.InterClass(10, 16, among, iteration=0, alpha_start_iter=3, alpha_start_value=2.5,
                        normalize=normalize).double()
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(w))
    feats = torch.from_numpy(rng.standard_normal((len(y), 16))).requires_grad_()
    for step in range(1, 5):
        mod.weight.grad = None
        d = mod(feats, torch.from_numpy(y))
        (d * 3.0).backward()  # the top's gradient is ignored by the fork's backward
        alpha = 2.5 if step >= 3 else 0.0
        assert float(mod.alpha) == alpha
        D_ref, dW_ref = np_interclass(w, y, alpha, among, normalize)
        assert float(d.detach()) == pytest.approx(D_ref, rel=1e-12)
        assert relerr(mod.weight.grad, dW_ref) <= 1e-12
        touched = np.zeros(10, bool)
        touched[y] = True
        assert np.all(mod.weight.grad.numpy()[~touched] == 0)
        if alpha:
            assert np.abs(mod.weight.grad.numpy()).max() > 1e-4
        assert feats.grad is None  # nothing into fc5


def test_alpha_switches_on_once():
    mod = mg.InterClass(10, 16, True, iteration=16000, alpha_start_iter=16001, alpha_start_value=10)
    assert float(mod.alpha) == 0
    for _ in range(3):
        mod(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
        assert float(mod.alpha) == 10
    late = mg.InterClass(10, 16, True, iteration=16001, alpha_start_iter=16001, alpha_start_value=10)
    late(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
    assert float(late.alpha) == 0  # the counter passed the start without equalling it: alpha stays 0 (as Caffe)


def np_mhe(w, y, s):
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    total = 0.0
    for i in y:
        for j in range(w.shape[0]):
            if j != i:
                r = np.linalg.norm(wn[i] - wn[j])
                total += -math.log(r) if s == 0 else r ** -s
    return total / (len(y) * (w.shape[0] - 1))


@pytest.mark.parametrize("s", [0, 1, 2])
def test_mhe_energy_option(s):
    rng = np.random.default_rng(s)
    w = torch.from_numpy(rng.standard_normal((6, 4))).requires_grad_()
    y = torch.tensor([0, 0, 3, 5, 2])
    e = mg.mhe_energy(w, y, s)
    assert float(e.detach()) == pytest.approx(np_mhe(w.detach().numpy(), y.numpy(), s), rel=1e-12)
    assert torch.autograd.gradcheck(lambda a: mg.mhe_energy(a, y, s), (w,))
    mod = mg.InterClass(6, 4, True, iteration=0, alpha_start_iter=1, alpha_start_value=0.5, energy=f"s{s}").double()
    with torch.no_grad():
        mod.weight.copy_(w)
    out = mod(torch.zeros(5, 4, dtype=torch.float64), y)
    assert float(out.detach()) == pytest.approx(0.5 * float(e.detach()), rel=1e-12)


def test_shared_weight_gets_both_gradients():
    """fc6 and InterClass share fc6_w: its gradient is the sum of both layers' gradients."""
    torch.manual_seed(0)
    n = sfport.TorchNet(MARGIN / "interclass_among.prototxt", phase="train", seed=2)
    fc6, ic = n.module.module_of("fc6"), n.module.module_of("inter_class_dist_output")
    assert fc6.weight is ic.weight and len(list(n.module.parameters())) == 1
    x, y = torch.randn(8, 16), torch.tensor([3.0, 3, 7, 0, 9, 3, 1, 7])
    n.forward_backward(fc5=x, label=y)
    both = fc6.weight.grad.clone()
    w = fc6.weight.detach().double().numpy()
    # fc6 alone: the softmax loss's gradient g through dW = g^T x
    logits = n.blobs["fc6"].detach().double()
    p = torch.softmax(logits, 1).numpy()
    g = p.copy()
    g[np.arange(8), y.long().numpy()] -= 1
    g /= 8
    _, dW_ic = np_interclass(w, y.long().numpy(), 10.0, True, True)
    assert relerr(both, g.T @ x.double().numpy() + dW_ic) <= 2e-6


# ---------------------------------------------------------------------------------------------------------
# 6. real Caffe (the fork's layers)
# ---------------------------------------------------------------------------------------------------------

TOL = 1e-6


@pytest.mark.parametrize("kind", ["single", "double", "triple", "quadruple"])
def test_golden_margin(kind):
    d = np.load(MARGIN / f"margin_{kind}.npz")
    net = sfport.TorchNet(MARGIN / f"margin_{kind}.prototxt", phase="train")
    mod = net.module.module_of("fc6")
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(d["W_before"][0]))
    for s in range(3):
        assert relerr(mod.weight, d["W_before"][s]) <= TOL
        x = torch.from_numpy(d["x"][s]).requires_grad_()
        mod.weight.grad = None
        out = net.forward(x=x, label=torch.from_numpy(d["label"][s]))
        assert int(mod.iteration) == d["layer_iter"][s]
        assert relerr(mod.weight, d["W_after"][s]) <= TOL
        assert relerr(out["fc6"], d["fc6"][s]) <= TOL
        assert relerr(out["lambda"], d["lambda"][s]) <= TOL
        out["fc6"].backward(torch.from_numpy(d["g"][s]))
        assert relerr(x.grad, d["dx"][s]) <= TOL
        assert relerr(mod.weight.grad, d["dW"][s]) <= TOL


@pytest.mark.parametrize("kind", ["among", "mean"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_golden_interclass(kind, accumulate):
    d = np.load(MARGIN / f"interclass_{kind}.npz")
    net = sfport.TorchNet(MARGIN / f"interclass_{kind}.prototxt", phase="train")
    fc6, ic = net.module.module_of("fc6"), net.module.module_of("inter_class_dist_output")
    with torch.no_grad():
        fc6.weight.copy_(torch.from_numpy(d["W_before"][0]))
    for s in range(2):
        if not accumulate:
            fc6.weight.grad = None
        fc5 = torch.from_numpy(d["fc5"][s]).requires_grad_()
        net.forward(fc5=fc5, label=torch.from_numpy(d["label"][s]))
        net.blobs["fc6"].retain_grad()
        net.backward()
        assert (int(fc6.iteration), int(ic.iteration)) == (d["mip_layer_iter"][s], d["interclass_layer_iter"][s])
        checks = {"W_before": None, "W_after": fc6.weight, "fc6": net.blobs["fc6"], "lambda": net.blobs["lambda"],
                  "inter_class_dist": net.blobs["maximize_inter_class_dist"],
                  "softmax_loss": net.blobs["softmax_loss"], "net_loss": net.loss,
                  "fc6_diff": net.blobs["fc6"].grad, "fc5_diff": fc5.grad,
                  "W_diff_accumulated" if accumulate else "W_diff_per_pass": fc6.weight.grad}
        for key, value in checks.items():
            if value is not None:
                assert relerr(value, d[key][s]) <= TOL, (key, s)
