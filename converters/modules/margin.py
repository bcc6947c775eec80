"""The torch side of :mod:`sfport.converters.margin`: MarginInnerProduct (A-Softmax) and InterClass (MHE) as
modules, with the forks' backward passes."""
from __future__ import annotations

import math

import torch
from torch import nn

GRAD_MODES = ("caffe", "true")
ENERGIES = ("caffe", "s0", "s1", "s2")


def margin_lambda(iteration: int, base: float, gamma: float, power: float, lambda_min: float) -> float:
    """The fork's annealed lambda at layer counter ``iteration`` (the value after the forward's increment)."""
    return max(base * math.pow(1.0 + gamma * iteration, -power), lambda_min)


def psi_terms(m: int, c: torch.Tensor, xnorm: torch.Tensor):
    """``psi(c) = (-1)^k cos(m theta) - 2k`` by the fork's sign formulas, and the unnormalized backward
    coefficients ``cw, cx`` with ``cw*w + cx*x = d(|x| psi)/dx`` (MarginInnerProductLayer::Forward_cpu /
    Backward_cpu, the cos(m theta) sign forms). Signs carry no gradient."""
    s0 = torch.sign(c).detach()
    c2 = c * c
    if m == 2:
        psi = 2 * s0 * c2 - 1
        cw = 4 * s0 * c
        cx = -(2 * s0 * c2 + 1) / xnorm
    elif m == 3:
        s1 = torch.sign(c.abs() - 0.5).detach()
        s2 = s0 * (1 + s1) - 2
        psi = s1 * (4 * c2 * c - 3 * c) + s2
        cw = s1 * (12 * c2 - 3)
        cx = -(8 * s1 * c2 * c - s2) / xnorm
    elif m == 4:
        s3 = (s0 * torch.sign(2 * c2 - 1)).detach()
        s4 = 2 * s0 + s3 - 3
        psi = s3 * (8 * c2 * c2 - 8 * c2 + 1) + s4
        cw = s3 * (32 * c2 * c - 16 * c)
        cx = -(s3 * (24 * c2 * c2 - 8 * c2 - 1) - s4) / xnorm
    else:
        raise ValueError(f"margin m={m}: only 2, 3 and 4 replace the target logit")
    return psi, cw, cx


class _ForkMargin(torch.autograd.Function):
    """The target logit ``(lambda*x.w_y + |x| psi) / (1 + lambda)`` on already-normalized W
    (MarginInnerProductLayer::Forward_cpu); backward as the fork computes it (Backward_cpu)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # fp32 under --amp, as the fork
    def forward(ctx, x, w, label, lam: float, m: int):
        xw = x @ w.t()
        out = xw.clone()
        cw = cx = None
        if m > 1:
            rows = torch.arange(x.shape[0], device=x.device)
            xnorm = torch.sqrt((x * x).sum(dim=1))
            xw_y = xw[rows, label]
            psi, cw, cx = psi_terms(m, xw_y / xnorm, xnorm)
            out[rows, label] = (lam * xw_y + xnorm * psi) / (1 + lam)
        ctx.lam, ctx.m = lam, m
        ctx.save_for_backward(x, w, label, *(() if cw is None else (cw, cx)))
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):
        x, w, label, *coeff = ctx.saved_tensors
        g = g.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            if ctx.m == 1:
                dx = g @ w
            else:
                rows = torch.arange(x.shape[0], device=x.device)
                gy = g[rows, label]
                g_other = g.clone()
                g_other[rows, label] = 0
                dx = g_other @ w
                cw, cx = coeff
                n = torch.sqrt(cw * cw + cx * cx)
                safe = torch.where(n > 0, n, torch.ones_like(n))
                cw, cx = cw / safe, cx / safe
                lam = ctx.lam
                wy = w[label]
                a = (gy / (1 + lam)).unsqueeze(1)
                dx = dx + a * (cw.unsqueeze(1) * wy + cx.unsqueeze(1) * x) + (lam / (1 + lam) * gy).unsqueeze(1) * wy
        if ctx.needs_input_grad[1]:
            dw = g.t() @ x
        return dx, dw, None, None, None


def margin_inner_product(x: torch.Tensor, w: torch.Tensor, label: torch.Tensor, lam: float, m: int,
                         grad: str = "caffe") -> torch.Tensor:
    """The A-Softmax logits of x (M, K) against rows of w (N, K) for integer labels (M,), without side effects.

    ``grad="caffe"``: ``w`` must already have unit rows (the layer renormalizes them in place first); the backward
    is the fork's. ``grad="true"``: the rows are normalized here, differentiably, and autograd gives the exact
    gradient of the whole forward (fine for ``torch.autograd.gradcheck``)."""
    label = label.long().reshape(-1)
    if grad == "caffe":
        return _ForkMargin.apply(x, w, label, float(lam), int(m))
    if grad != "true":
        raise ValueError(f"margin_grad must be one of {GRAD_MODES}, not '{grad}'")
    wn = w / torch.sqrt((w * w).sum(dim=1, keepdim=True))
    xw = x @ wn.t()
    if m == 1:
        return xw
    rows = torch.arange(x.shape[0], device=x.device)
    xnorm = torch.sqrt((x * x).sum(dim=1))
    xw_y = xw[rows, label]
    psi, _, _ = psi_terms(m, xw_y / xnorm, xnorm)
    target = (lam * xw_y + xnorm * psi) / (1 + lam)
    onehot = torch.zeros_like(xw, dtype=torch.bool)
    onehot[rows, label] = True
    return torch.where(onehot, target.unsqueeze(1).expand_as(xw), xw)


class MarginInnerProduct(nn.Module):
    """The fork's MarginInnerProductLayer. ``forward(x, label) -> (logits, lambda)``; every call advances
    ``iteration`` and renormalizes ``weight`` in place (train or eval, as in Caffe)."""

    def __init__(self, num_output: int, k: int, axis: int = 1, m: int = 1, base: float = 1.0, gamma: float = 0.0,
                 power: float = 1.0, lambda_min: float = 0.0, iteration: int = 0, grad_mode: str = "caffe"):
        super().__init__()
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"margin_grad must be one of {', '.join(GRAD_MODES)}, not '{grad_mode}'")
        self.weight = nn.Parameter(torch.zeros(num_output, k))
        self.caffe_blobs = ["weight"]
        self.register_buffer("iteration", torch.tensor(int(iteration), dtype=torch.int64))
        self._count = int(iteration)  # host copy of the buffer: no device sync per forward
        self.axis, self.m = axis, m
        self.base, self.gamma, self.power, self.lambda_min = base, gamma, power, lambda_min
        self.grad_mode = grad_mode

    def extra_repr(self) -> str:
        return (f"num_output={self.weight.shape[0]}, m={self.m}, base={self.base:g}, gamma={self.gamma:g}, "
                f"power={self.power:g}, lambda_min={self.lambda_min:g}, iteration={self._count}, "
                f"grad={self.grad_mode}")

    def lambda_at(self, iteration: int) -> float:
        return margin_lambda(iteration, self.base, self.gamma, self.power, self.lambda_min)

    @property
    def current_lambda(self) -> float:
        """lambda of the most recent forward (of the next one minus one step)."""
        return self.lambda_at(self._count)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._count = int(self.iteration)

    @torch.no_grad()
    def normalize_(self) -> None:
        """``w_j *= 1/sqrt(w_j . w_j)`` for every row, in place (no epsilon, as the fork)."""
        w = self.weight
        w.mul_(1.0 / torch.sqrt((w * w).sum(dim=1, keepdim=True)))

    def forward(self, x, label):
        self._count += 1
        with torch.no_grad():
            self.iteration.fill_(self._count)
        lam = self.lambda_at(self._count)
        self.normalize_()
        x = torch.flatten(x, self.axis) if x.dim() > 2 else x
        label = label.reshape(-1)
        if label.numel() != x.shape[0]:
            raise ValueError(f"MarginInnerProduct: {x.shape[0]} samples but {label.numel()} labels")
        out = margin_inner_product(x, self.weight, label, lam, self.m, self.grad_mode)
        return out, torch.full((1,), lam, dtype=x.dtype, device=x.device)


def _mean_direction(w: torch.Tensor, normalize: bool) -> torch.Tensor:
    m = w.mean(dim=0)
    return m / torch.sqrt((m * m).sum() + 1e-5) if normalize else m


class _ForkInterClass(torch.autograd.Function):
    """D as the fork's CPU code; backward only into the rows of W of the batch's labels, ignoring D's grad."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, w, label, alpha: float, among: bool, normalize: bool):
        wbar = _mean_direction(w, normalize)
        wy = w[label]                                   # (M, K)
        if among:
            # sum_i sum_j |w_i - w_yj|^2 = M sum_i |w_i|^2 + N sum_j |w_yj|^2 - 2 (sum_i w_i).(sum_j w_yj),
            # in float64 (no (M, N, K) tensor: at SphereFace's size that would be 1.4e9 numbers)
            w64, wy64 = w.double(), wy.double()
            n, m = w.shape[0], wy.shape[0]
            total = m * (w64 * w64).sum() + n * (wy64 * wy64).sum() - 2 * (w64.sum(0) @ wy64.sum(0))
            d = (total / n).to(w.dtype)
        else:
            d = 1 - (wy @ wbar).mean()
        ctx.save_for_backward(w, label, wbar, d)
        ctx.alpha, ctx.among = alpha, among
        return d

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, _g):
        w, label, wbar, d = ctx.saved_tensors
        m = label.numel()
        if ctx.among:
            coeff = -4 * ctx.alpha / (m * d * d + 1e-5)
            rows = coeff * (w[label] - wbar)
        else:
            rows = (ctx.alpha / m * wbar).expand(m, -1)
        dw = torch.zeros_like(w).index_add_(0, label, rows)
        return dw, None, None, None, None


def mhe_energy(w: torch.Tensor, label: torch.Tensor, s: int) -> torch.Tensor:
    """The SphereFace+ MHE term of Liu et al. (NeurIPS 2018) on a mini-batch:
    ``1/(M (N-1)) sum_i sum_{j != y_i} f_s(|w^_{y_i} - w^_j|)`` over normalized rows w^, with
    ``f_0(r) = log(1/r)`` and ``f_s(r) = r^-s`` (s = 1, 2). Differentiable (true gradient)."""
    wn = w / torch.sqrt((w * w).sum(dim=1, keepdim=True))
    label = label.long().reshape(-1)
    r2 = (2 - 2 * (wn[label] @ wn.t())).clamp_min(0)              # |a - b|^2 of unit rows, (M, N)
    others = torch.ones_like(r2, dtype=torch.bool)
    others[torch.arange(label.numel(), device=w.device), label] = False
    r2 = torch.where(others, r2, torch.ones_like(r2)).clamp_min(1e-12)
    if s == 0:
        e = -0.5 * torch.log(r2)
    else:
        e = r2.pow(-s / 2.0)
    return (e * others).sum() / (label.numel() * (w.shape[0] - 1))


class InterClass(nn.Module):
    """The SphereFace+ InterClassLayer. ``forward(features, label) -> D`` (a loss, weight 1). ``weight`` is
    normally fc6's (``param { name: "fc6_w" }``); alpha is 0 until ``iteration`` reaches ``alpha_start_iter``."""

    def __init__(self, num_output: int, k: int, among: bool = True, iteration: int = 0, alpha_start_iter: int = 0,
                 alpha_start_value: float = 0.0, normalize: bool = True, energy: str = "caffe"):
        super().__init__()
        if energy not in ENERGIES:
            raise ValueError(f"InterClass energy must be one of {', '.join(ENERGIES)}, not '{energy}'")
        self.weight = nn.Parameter(torch.zeros(num_output, k))
        self.caffe_blobs = ["weight"]
        self.register_buffer("iteration", torch.tensor(int(iteration), dtype=torch.int64))
        self.register_buffer("alpha", torch.tensor(0.0, dtype=torch.float64))
        self._count, self._alpha = int(iteration), 0.0  # host copies of the buffers
        self.among, self.normalize, self.energy = among, normalize, energy
        self.alpha_start_iter, self.alpha_start_value = alpha_start_iter, alpha_start_value

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._count, self._alpha = int(self.iteration), float(self.alpha)

    def extra_repr(self) -> str:
        return (f"{'AMONG' if self.among else 'MEAN'}, energy={self.energy}, iteration={int(self.iteration)}, "
                f"alpha={float(self.alpha):g}, alpha_start_iter={self.alpha_start_iter}")

    def forward(self, x, label):
        self._count += 1
        if self._count == self.alpha_start_iter:
            self._alpha = float(self.alpha_start_value)
        with torch.no_grad():
            self.iteration.fill_(self._count)
            self.alpha.fill_(self._alpha)
        label = label.long().reshape(-1)
        if label.numel() != x.shape[0]:
            raise ValueError(f"InterClass: {x.shape[0]} samples but {label.numel()} labels")
        alpha = self._alpha
        if self.energy == "caffe":
            return _ForkInterClass.apply(self.weight, label, alpha, self.among, self.normalize)
        return alpha * mhe_energy(self.weight, label, int(self.energy[1]))

