"""The torch side of :mod:`sfport.converters.brocolli`: the brocolli fork's HardSigmoid, HardSwish, Pad, Unsqueeze,
Resize, BilinearInterpolate and BatchNormKyle as modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sfport.protos import caffe_pb2

from ..base import in_export_form
from .base import NoBlobs


def _clamp01(v: torch.Tensor) -> torch.Tensor:
    """``std::max(Dtype(0), std::min(Dtype(1), v))`` with the C++ operand order (a NaN becomes 1)."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    w = torch.where(v < one, v, one)
    return torch.where(zero < w, w, zero)


class HardSigmoid(NoBlobs):
    """HardSigmoidLayer::Forward_cpu: ``max(0, min(1, x * alpha + beta))`` in float."""

    def __init__(self, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x):
        with torch.no_grad():
            return _clamp01(x * self.alpha + self.beta)


class HardSwish(NoBlobs):
    """HardSwishLayer::Forward_cpu: ``x * max(0, min(1, x / 6 + 0.5))`` in float."""

    def forward(self, x):
        with torch.no_grad():
            return x * _clamp01(x / 6.0 + 0.5)


class Pad(NoBlobs):
    """PadLayer::Forward_cpu on N x C x H x W: all four pads negative crop (the copy from ``(|u|, |l|)``); else
    CONSTANT (``pad_value``), REPLICATE (the edge row / column) or REFLECT (mirrored without the edge), the rows
    after the columns, which is numpy's and torch's per-axis padding."""

    MODES = {caffe_pb2.PadParameter.CONSTANT: "constant", caffe_pb2.PadParameter.REPLICATE: "replicate",
             caffe_pb2.PadParameter.REFLECT: "reflect"}

    def __init__(self, u: int, d: int, l: int, r: int, mode: int, value: float):
        super().__init__()
        self.pads, self.mode, self.value = (u, d, l, r), self.MODES[mode], value

    def forward(self, x):
        u, d, l, r = self.pads
        with torch.no_grad():
            if min(self.pads) < 0:   # all four negative (checked): a crop
                h, w = x.shape[2] + u + d, x.shape[3] + l + r
                return x[:, :, -u:-u + h, -l:-l + w].clone()
            if self.mode == "constant":
                return F.pad(x, (l, r, u, d), value=self.value)
            return F.pad(x, (l, r, u, d), mode=self.mode)


class Unsqueeze(NoBlobs):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x):
        return x.unsqueeze(self.index)


def _as_legacy(x: torch.Tensor) -> torch.Tensor:
    """The bottom viewed as its legacy N x C x H x W (missing trailing axes of size 1)."""
    while x.dim() < 4:
        x = x.unsqueeze(-1)
    return x


def _spatial(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """H and W of a 4-D tensor as float32 scalars read from its shape at run time (an export keeps them dynamic)."""
    s = torch._shape_as_tensor(x).to(device=x.device, dtype=torch.float32)
    return s[2], s[3]


def _count(dst, device) -> tuple[torch.Tensor, object]:
    """An output size (an int, or a float32 scalar computed from the bottom's size) as (float32 scalar, count)."""
    if isinstance(dst, torch.Tensor):
        return dst, dst.to(torch.long)
    return torch.tensor(float(dst), device=device), dst


def _resize_axis(src: torch.Tensor, dst) -> tuple:
    """One axis of BiLinearResizeMat_cpu (brocolli util_img.cpp), in float: ``scale = src / dst``; output i reads
    ``s = floor(i * scale)`` with weight ``|1 - f|`` and ``s + 1`` with ``|f|`` (``f = i * scale - s``), that second
    one only where ``s + 1 < src`` (no clamp: at the last row or column its weight is dropped, not moved)."""
    dst, n = _count(dst, src.device)
    scale = src / dst
    f = torch.arange(n, dtype=torch.float32, device=src.device) * scale
    s = torch.floor(f)
    f = f - s
    inside = s + 1 < src
    last = src - 1
    i0 = torch.minimum(s, last).to(torch.long)
    i1 = torch.minimum(s + 1, last).to(torch.long)
    return i0, i1, torch.abs(1.0 - f), torch.abs(f), inside


class Resize(NoBlobs):
    """ResizeLayer::Forward_cpu (brocolli resize_layer.cpp; ResizeBlob_cpu and BiLinearResizeMat_cpu of
    util_img.cpp) on each legacy N x C plane: ``0 + (w_h0 * w_w0) * s00``, then ``+ (w_h0 * w_w1) * s01`` where
    the next column is inside, ``+ (w_h1 * w_w0) * s10`` where the next row is, ``+ (w_h1 * w_w1) * s11`` where
    both are, in that order in float. Backward_cpu (the same weights from GetBiLinearResizeMatRules_cpu, added at
    the same sources) is autograd's gradient of it. ``size``: (height, width); else ``scale``: out_height_scale and
    out_width_scale, the output ``int(scale * in)`` of the bottom's run-time size."""

    def __init__(self, size, scale):
        super().__init__()
        self.size, self.scale = size, scale

    def forward(self, x):
        x = _as_legacy(x)
        h, w = _spatial(x)
        if self.size is not None:
            dh, dw = self.size
        else:   # ResizeLayer::Reshape: int(out_height_scale * in_height), the product in float
            dh = torch.floor(h * torch.tensor(self.scale[0], dtype=torch.float32, device=x.device))
            dw = torch.floor(w * torch.tensor(self.scale[1], dtype=torch.float32, device=x.device))
        r0, r1, rw0, rw1, rin = _resize_axis(h, dh)
        c0, c1, cw0, cw1, cin = _resize_axis(w, dw)
        rw0, rw1, rin = rw0[:, None], rw1[:, None], rin[:, None]

        def at(rows, cols):
            return x.index_select(2, rows).index_select(3, cols)

        out = (rw0 * cw0) * at(r0, c0)
        out = torch.where(cin, out + (rw0 * cw1) * at(r0, c1), out)
        out = torch.where(rin, out + (rw1 * cw0) * at(r1, c0), out)
        return torch.where(rin & cin, out + (rw1 * cw1) * at(r1, c1), out)


def _bilinear_axis(src: torch.Tensor, dst, align: bool) -> tuple:
    """One axis of BilinearInterpolateLayer::Forward_cpu: the source position of output i, ``float(src) / dst *
    (i + 0.5) - 0.5`` (the ratio in float, the rest in double: 0.5 is a double literal, then stored in float) or,
    aligned, ``float(src - 1) / (dst - 1) * i`` in float (dst 1: 0 / 0 or x / 0, times 0: NaN, as the fork), then
    clamped to [0, src - 1]; the lower neighbour ``floor`` clamped to [0, src - 2] (``int(floor(NaN))`` is
    INT_MIN, so 0), the upper one above it. Returns (position, lower, upper) in float."""
    dst, n = _count(dst, src.device)
    i = torch.arange(n, dtype=torch.float32, device=src.device)
    if align:
        p = (src - 1) / (dst - 1) * i
    else:
        p = ((src / dst).to(torch.float64) * (i.to(torch.float64) + 0.5) - 0.5).to(torch.float32)
    p = torch.where(p > src - 1, src - 1, p)
    p = torch.where(p < 0, torch.zeros_like(p), p)
    t = torch.floor(p)
    t = torch.where((t < 0) | torch.isnan(t), torch.zeros_like(t), t)
    t = torch.where(t > src - 2, src - 2, t)
    return p, t, t + 1


class BilinearInterpolate(NoBlobs):
    """BilinearInterpolateLayer::Forward_cpu (brocolli bilinear_interpolate_layer.cpp) on each legacy N x C plane:
    ``r0 = (w1 - w) * q00 + (w - w0) * q01``, ``r1`` the same on row h1, ``top = (h1 - h) * r0 + (h - h0) * r1`` in
    float (its straight copy at the same size is overwritten by that). A bottom of one row (or column) has h0 = -1,
    a read before the plane with weight 0: here row 0 with weight 0. ``size``: (dst_h or None: the bottom's) or
    ``scale``: scale_factor, the output ``int(in * scale_factor)``. Backward_cpu is empty: no gradient passes."""

    def __init__(self, size, scale, align: bool):
        super().__init__()
        self.size, self.scale, self.align = size, scale, align

    def forward(self, x):
        with torch.no_grad():
            x = _as_legacy(x.detach())
            h, w = _spatial(x)
            if self.scale is not None:   # LayerSetUp: int(height * scale_factor), the product in float
                s = torch.tensor(self.scale, dtype=torch.float32, device=x.device)
                dh, dw = torch.floor(h * s), torch.floor(w * s)
            else:
                dh = h if self.size[0] is None else self.size[0]
                dw = w if self.size[1] is None else self.size[1]
            ph, h0, h1 = _bilinear_axis(h, dh, self.align)
            pw, w0, w1 = _bilinear_axis(w, dw, self.align)
            rows0, rows1 = h0.clamp(min=0).to(torch.long), h1.to(torch.long)
            cols0, cols1 = w0.clamp(min=0).to(torch.long), w1.to(torch.long)
            a, b = w1 - pw, pw - w0
            top, bottom = x.index_select(2, rows0), x.index_select(2, rows1)
            r0 = a * top.index_select(3, cols0) + b * top.index_select(3, cols1)
            r1 = a * bottom.index_select(3, cols0) + b * bottom.index_select(3, cols1)
            return (h1 - ph)[:, None] * r0 + (ph - h0)[:, None] * r1


class _ZeroDiffs(torch.autograd.Function):
    """The identity on ``t`` whose backward gives each of ``blobs`` a zero gradient: the fork's learnable blobs whose
    diff its Backward_cpu does not write (Caffe's cleared diff, 0). A solver then still updates them (weight decay)
    as the fork's does, and DistributedDataParallel sees every learnable parameter take part."""

    @staticmethod
    def forward(ctx, t, *blobs):
        ctx.shapes = [b.shape for b in blobs]
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return (grad,) + tuple(grad.new_zeros(s) for s in ctx.shapes)


class BatchNormKyle(nn.Module):
    """BatchNormKyleLayer (brocolli batch_norm_kyle_layer.cpp). Blobs: mean_sum, var_sum, the scale factor s and,
    with use_alpha_beta, alpha and beta (one per channel). Forward_cpu: with global statistics (the TEST phase by
    default) ``mean = f * mean_sum``, ``var = f * var_sum`` with ``f = s == 0 ? 0 : 1 / s``; otherwise the batch's
    mean and biased variance, and then (in either phase: the fork updates whenever it does not use the global
    statistics) ``s = fraction * s + 1``, ``mean_sum = mean + fraction * mean_sum``, ``var_sum = m / (m - 1) * var
    + fraction * var_sum``. The top is ``(x - mean) / sqrt(var + eps)``, then ``alpha * top + beta``.

    Backward_cpu is autograd's gradient of that: through the batch statistics (its ``dE/dY - mean(dE/dY) -
    mean(dE/dY . Y) . Y``, over the standard deviation); with global statistics only ``alpha * top_diff / std``,
    and then alpha and beta take no gradient (the fork returns before writing their diffs). The statistics blobs
    are learnable blobs of the fork (it sets no lr_mult 0, so a solver's weight decay reaches them) whose diff it
    never writes: in the TRAIN phase every such blob gets a zero gradient (:class:`_ZeroDiffs`), else none."""

    def __init__(self, channels: int, eps: float, fraction: float, use_global_stats: bool | None, alpha_beta: bool):
        super().__init__()
        self.mean_sum = nn.Parameter(torch.zeros(channels))
        self.var_sum = nn.Parameter(torch.zeros(channels))
        self.scale_factor = nn.Parameter(torch.zeros(1))
        self.caffe_blobs = ["mean_sum", "var_sum", "scale_factor"]
        self.alpha = self.beta = None
        if alpha_beta:   # LayerSetUp: alpha 1, beta 0
            self.alpha, self.beta = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
            self.caffe_blobs += ["alpha", "beta"]
        self.eps, self.fraction, self.use_global_stats = eps, fraction, use_global_stats

    def global_stats(self) -> bool:
        """LayerSetUp: ``use_global_stats_ = phase == TEST`` unless use_global_stats is set."""
        return (not self.training) if self.use_global_stats is None else self.use_global_stats

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        exported = in_export_form() or torch.jit.is_tracing()
        if self.global_stats():
            s = self.scale_factor.detach()[0]
            f = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            mean, var = f * self.mean_sum.detach(), f * self.var_sum.detach()
            alpha = None if self.alpha is None else self.alpha.detach()
            beta = None if self.beta is None else self.beta.detach()
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims)
            var = ((x - mean.reshape(view)) ** 2).mean(dim=dims)
            alpha, beta = self.alpha, self.beta
            if not exported:
                m = x.numel() // x.shape[1]
                with torch.no_grad():
                    self.scale_factor.mul_(self.fraction).add_(1.0)
                    self.mean_sum.mul_(self.fraction).add_(mean.detach())
                    self.var_sum.mul_(self.fraction).add_(var.detach() * (m / (m - 1) if m > 1 else 1.0))
        untouched = [p for p in self.parameters() if p.requires_grad and p is not alpha and p is not beta]
        if self.training and untouched and torch.is_grad_enabled() and not exported:
            mean = _ZeroDiffs.apply(mean, *untouched)
        top = (x - mean.reshape(view)) / torch.sqrt(var + self.eps).reshape(view)
        if alpha is not None:
            top = alpha.reshape(view) * top + beta.reshape(view)
        return top

