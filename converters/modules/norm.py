"""The torch side of :mod:`sfport.converters.norm`: BatchNorm, Scale, Bias, LRN, MVN, Normalize and the forks' BN
as modules."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base import in_export_form
from .base import set_fields
from ..norm import stored_factor


class CaffeBatchNorm(nn.Module):
    """Caffe BatchNormLayer. Blobs: mean_sum, var_sum, s; statistics are ``sums / s`` (0 when s == 0).

    With global stats (the default at test time) it normalises by the stored statistics. Otherwise it uses the
    batch's mean and biased variance and, when training, updates the sums as Caffe does:
    ``s = beta*s + 1; mean_sum = mean + beta*mean_sum; var_sum = m/(m-1)*var + beta*var_sum``.
    The blobs are parameters (in Caffe order) that never take gradients: Caffe gives them lr_mult 0."""

    def __init__(self, channels: int, eps: float, beta: float, use_global_stats: bool | None):
        super().__init__()
        set_fields(self, {"mean_sum": nn.Parameter(torch.zeros(channels), requires_grad=False),
                          "var_sum": nn.Parameter(torch.zeros(channels), requires_grad=False),
                          "scale_factor": nn.Parameter(torch.zeros(1), requires_grad=False)},
                   caffe_blobs=["mean_sum", "var_sum", "scale_factor"], eps=eps, beta=beta,
                   use_global_stats=use_global_stats)

    def global_stats(self) -> bool:
        return (not self.training) if self.use_global_stats is None else self.use_global_stats

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.global_stats():
            if x.device.type == "cpu" and not in_export_form() and not torch.jit.is_tracing() \
                    and not torch.jit.is_scripting():
                # eager on the CPU (no device to wait for): Caffe's float factor as a number, three ops in place
                # of eight (what a net of many BatchNorms spends its time on at batch 1); the same values
                factor = stored_factor(self.scale_factor)
                return F.batch_norm(x, self.mean_sum * factor, self.var_sum * factor, None, None, False, 0.0,
                                    self.eps)
            s = self.scale_factor[0]
            factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            # one fused kernel (and ONNX BatchNormalization, which onnxruntime folds into a preceding Conv). The
            # weight 1 and bias 0 are given (the kernel computes the same: invstd * 1, 0 - mean * invstd) because
            # the ONNX exporter otherwise needs the input's channel count, unknown after a dynamic-shape op
            one = torch.ones_like(self.mean_sum)
            return F.batch_norm(x, self.mean_sum * factor, self.var_sum * factor, one, torch.zeros_like(one), False,
                                0.0, self.eps)
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims)
            var = ((x - mean.reshape(view)) ** 2).mean(dim=dims)
            if self.training:
                m = x.numel() // x.shape[1]
                with torch.no_grad():
                    self.scale_factor.mul_(self.beta).add_(1.0)
                    self.mean_sum.mul_(self.beta).add_(mean.detach())
                    self.var_sum.mul_(self.beta).add_(var.detach() * (m / (m - 1) if m > 1 else 1.0))
        return (x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + self.eps)


class CaffeScale(nn.Module):
    """Caffe ScaleLayer: x * scale [+ bias]. With a second bottom, that bottom is the scale; otherwise it is a
    learned blob covering ``num_axes`` axes from ``axis``."""

    init = 1.0

    def __init__(self, axis: int, param_shape, learned: bool, bias_term: bool):
        super().__init__()
        params, plain = {}, {}
        if learned:
            params["weight"] = nn.Parameter(torch.full(tuple(param_shape), self.init))
        else:
            plain["weight"] = None
        if bias_term:
            params["bias"] = nn.Parameter(torch.zeros(tuple(param_shape)))
        else:
            plain["bias"] = None
        set_fields(self, params, axis=axis, caffe_blobs=list(params), **plain)

    def _view(self, t, x):
        return t.reshape(tuple(t.shape) + (1,) * (x.dim() - self.axis - t.dim()))

    def forward(self, x, other=None):
        y = x * self._view(self.weight if other is None else other, x)
        return y + self._view(self.bias, x) if self.bias is not None else y


class CaffeBias(CaffeScale):
    """Caffe BiasLayer: x + bias (a second bottom, or a learned blob as Scale's)."""

    init = 0.0

    def forward(self, x, other=None):
        return x + self._view(self.weight if other is None else other, x)


class CaffeLRN(nn.Module):
    """Caffe LRNLayer. ACROSS_CHANNELS: x / (k + alpha/n * sum_window x^2)^beta over n channels;
    WITHIN_CHANNEL: x / (1 + alpha * mean_{n x n window, zero padded} x^2)^beta (k unused, as in Caffe)."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, within: bool):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.within = size, alpha, beta, k, within
        self.caffe_blobs = []

    def forward(self, x):
        sq = x * x
        pad = (self.size - 1) // 2
        if self.within:
            avg = F.avg_pool2d(F.pad(sq, (pad, pad, pad, pad)), self.size, 1)
            return x * torch.pow(1.0 + self.alpha * avg, -self.beta)
        summed = F.avg_pool3d(F.pad(sq.unsqueeze(1), (0, 0, 0, 0, pad, pad)), (self.size, 1, 1), 1).squeeze(1)
        return x * torch.pow(self.k + self.alpha * summed, -self.beta)


class CaffeMVN(nn.Module):
    """Caffe MVNLayer: subtract the mean (per channel, or across channels) and optionally divide by
    sqrt(biased variance) + eps."""

    def __init__(self, normalize_variance: bool, across_channels: bool, eps: float):
        super().__init__()
        self.normalize_variance, self.across_channels, self.eps = normalize_variance, across_channels, eps
        self.caffe_blobs = []

    def forward(self, x):
        dims = tuple(range(1, x.dim())) if self.across_channels else tuple(range(2, x.dim()))
        y = x - x.mean(dim=dims, keepdim=True)
        if self.normalize_variance:
            y = y / (torch.sqrt((y * y).mean(dim=dims, keepdim=True)) + self.eps)
        return y


class SSDNormalize(nn.Module):
    """SSD NormalizeLayer: x / sqrt(sum x^2 + eps) over (C, H, W) (across_spatial) or over C at each position,
    times a learned scale per channel (or one shared)."""

    def __init__(self, channels: int, across_spatial: bool, channel_shared: bool, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1 if channel_shared else channels))
        self.caffe_blobs = ["weight"]
        self.across_spatial, self.channel_shared, self.eps = across_spatial, channel_shared, eps

    def forward(self, x):
        dims = tuple(range(1, x.dim())) if self.across_spatial else (1,)
        y = x / torch.sqrt((x * x).sum(dim=dims, keepdim=True) + self.eps)
        w = self.weight if self.channel_shared else self.weight.reshape((-1,) + (1,) * (x.dim() - 2))
        return y * w


class _StoredStatsGrad(torch.autograd.Function):
    """``(x - mean) * inv_std`` with the stored statistics, differentiated as BNLayer::Backward_cpu does when the
    layer is not frozen: that backward always treats the statistics as the batch's (``x_norm_``, ``x_inv_std_`` are
    what Forward_cpu saved, the stored ones in the TEST phase), ``dx = inv_std * (g - mean(g) - x_norm *
    mean(g * x_norm))`` with the means over all axes but the channel, ``g`` the gradient of ``x_norm``. In the
    TRAIN phase this is autograd's gradient of the batch normalisation; here, in the TEST phase, it is not the
    derivative of the forward, but it is Caffe's. The statistics get no gradient (Backward_cpu writes no diff of
    blobs 2 and 3)."""

    @staticmethod
    def forward(ctx, x, mean, inv_std):
        x_norm = (x - mean) * inv_std
        ctx.save_for_backward(x_norm, inv_std)
        return x_norm

    @staticmethod
    def backward(ctx, g):
        x_norm, inv_std = ctx.saved_tensors
        dims = [0] + list(range(2, g.dim()))
        dx = g - g.mean(dim=dims, keepdim=True) - x_norm * (g * x_norm).mean(dim=dims, keepdim=True)
        return dx * inv_std, None, None


class CaffeBN(nn.Module):
    """The forks' BNLayer (brocolli-caffe 9.0.2 src/caffe/layers/bn_layer.cpp, from yjxiong's caffe). Blobs, each
    1 x C: slope, bias, the moving mean and the moving *inverse standard deviation* (not a variance: Forward_cpu
    multiplies by it as it is, with no eps).

    Forward_cpu: frozen or in the TEST phase, ``(x - blob2) * blob3 * slope + bias``. In the TRAIN phase unless
    frozen, the batch's mean and ``(mean((x - mean)^2) + eps)^-0.5`` (over all axes but the channel) instead, and
    the moving blobs become ``(1 - momentum) * batch + momentum * blob`` (caffe_cpu_axpby) at every forward.
    Backward_cpu: frozen, only ``dx = dy * slope * blob3`` (it returns before the parameter diffs, so slope and
    bias get none); otherwise the slope and bias diffs and the batch-statistics ``dx`` (see
    :class:`_StoredStatsGrad`, which gives it in the TEST phase too). Blobs 2 and 3 never get a diff; they stay
    learnable blobs as in Caffe (param_propagate_down true: a solver with lr_mult != 0 weight-decays them)."""

    def __init__(self, channels: int, momentum: float, eps: float, frozen: bool):
        super().__init__()
        self.slope = nn.Parameter(torch.ones(1, channels))
        self.bias = nn.Parameter(torch.zeros(1, channels))
        self.mean = nn.Parameter(torch.zeros(1, channels))
        self.inv_std = nn.Parameter(torch.ones(1, channels))
        self.caffe_blobs = ["slope", "bias", "mean", "inv_std"]
        # the layer's Dtype values: bn_momentum_, 1 - bn_momentum_ and bn_eps_ as float
        self.momentum = float(np.float32(momentum))
        self.rest = float(np.float32(1) - np.float32(momentum))
        self.eps, self.frozen = float(np.float32(eps)), frozen

    def stored_stats(self) -> bool:
        """Forward_cpu: ``if (frozen_ || this->phase_ == TEST)``: the moving blobs, not the batch's statistics."""
        return self.frozen or not self.training

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        slope, bias = self.slope.reshape(view), self.bias.reshape(view)
        if self.stored_stats():
            mean, inv_std = self.mean.detach().reshape(view), self.inv_std.detach().reshape(view)
            if self.frozen:
                return (x - mean) * inv_std * slope.detach() + bias.detach()
            if torch.is_grad_enabled() and not in_export_form() and not torch.jit.is_tracing():
                return _StoredStatsGrad.apply(x, mean, inv_std) * slope + bias
            return (x - mean) * inv_std * slope + bias
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        inv_std = torch.pow((centred * centred).mean(dim=dims, keepdim=True) + self.eps, -0.5)
        with torch.no_grad():
            self.mean.mul_(self.momentum).add_(mean.detach().reshape(1, -1), alpha=self.rest)
            self.inv_std.mul_(self.momentum).add_(inv_std.detach().reshape(1, -1), alpha=self.rest)
        return centred * inv_std * slope + bias


class SegNetBN(nn.Module):
    """caffe-segnet's BNLayer (alexgkendall/caffe-segnet src/caffe/layers/bn_layer.cpp). Two blobs, each
    1 x C x 1 x 1: scale and shift. It does not look at the phase, only at ``bn_mode``:

    INFERENCE: ``scale * x + shift`` (the statistics folded into the blobs by SegNet's compute_bn_statistics.py).
    LEARN: the batch's statistics, every time, as Forward_cpu computes them: the mean over H, W then over N, the
    variance as ``E(x^2) - (E x)^2`` (not ``E((x - E x)^2)``), then ``(x - mean) / sqrt(var + 1e-9) * scale +
    shift``; tops 1 and 2, when present, are that batch mean and variance (1 x C x 1 x 1). Backward_cpu is, in
    both modes, the derivative of that forward (``dx = (g - mean(g) - x_norm mean(g x_norm)) / sqrt(var + eps)``
    with ``g = dy * scale`` in LEARN), so autograd gives it."""

    EPS = 1e-9   # LayerSetUp: var_eps_ = 1e-9

    def __init__(self, channels: int, learn: bool):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.caffe_blobs = ["scale", "shift"]
        self.learn = learn

    def forward(self, x):
        if not self.learn:
            return x * self.scale + self.shift
        n, hw = x.shape[0], x.shape[2] * x.shape[3]
        # caffe_cpu_gemv with 1/(H W) over the spatial axes, then with 1/N over the batch
        mean = (x.sum(dim=(2, 3), keepdim=True) * (1.0 / hw)).sum(dim=0, keepdim=True) * (1.0 / n)
        square = ((x * x).sum(dim=(2, 3), keepdim=True) * (1.0 / hw)).sum(dim=0, keepdim=True) * (1.0 / n)
        var = square - mean * mean
        y = (x - mean) / torch.sqrt(var + self.EPS) * self.scale + self.shift
        return y, mean, var

