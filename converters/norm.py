"""Normalisation layers: BatchNorm (three blobs: mean_sum, var_sum, scale factor), Scale, Bias, LRN (across and
within channels), MVN, the SSD fork's Normalize, and the forks' BN: caffe-segnet's (two blobs: scale and shift, ``bn_mode``) and the
brocolli / yjxiong forks' (four blobs: slope, bias, the moving mean and the moving inverse standard deviation)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import SameShape, in_export_form, register
from sfport.converters.fillers import constant
from .geometry import canonical_axis


class CaffeBatchNorm(nn.Module):
    """Caffe BatchNormLayer. Blobs: mean_sum, var_sum, s; statistics are ``sums / s`` (0 when s == 0).

    With global stats (the default at test time) it normalises by the stored statistics. Otherwise it uses the
    batch's mean and biased variance and, when training, updates the sums as Caffe does:
    ``s = beta*s + 1; mean_sum = mean + beta*mean_sum; var_sum = m/(m-1)*var + beta*var_sum``.
    The blobs are parameters (in Caffe order) that never take gradients: Caffe gives them lr_mult 0."""

    def __init__(self, channels: int, eps: float, beta: float, use_global_stats: bool | None):
        super().__init__()
        self.mean_sum = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.var_sum = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.scale_factor = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.caffe_blobs = ["mean_sum", "var_sum", "scale_factor"]
        self.eps, self.beta, self.use_global_stats = eps, beta, use_global_stats

    def global_stats(self) -> bool:
        return (not self.training) if self.use_global_stats is None else self.use_global_stats

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.global_stats():
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
        self.axis = axis
        self.caffe_blobs = []
        self.weight = None
        if learned:
            self.weight = nn.Parameter(torch.full(tuple(param_shape), self.init))
            self.caffe_blobs.append("weight")
        self.bias = None
        if bias_term:
            self.bias = nn.Parameter(torch.zeros(tuple(param_shape)))
            self.caffe_blobs.append("bias")

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


@register("BatchNorm")
class BatchNormConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    fresh_top = True

    def param_shapes(self, layer, bottom_shapes):
        c = bottom_shapes[0][1]
        return [(c,), (c,), (1,)]

    def build(self, layer, bottom_shapes):
        p = layer.batch_norm_param
        return CaffeBatchNorm(bottom_shapes[0][1], p.eps, p.moving_average_fraction,
                              p.use_global_stats if p.HasField("use_global_stats") else None)

    def random_blobs(self, layer, shapes, rng):
        """Statistics with a positive variance and a scale factor of 1."""
        c = shapes[0][0]
        return [rng.normal(0, 0.1, c).astype(np.float32), rng.uniform(0.5, 1.5, c).astype(np.float32),
                np.ones(shapes[2], np.float32)]

    def affine(self, layer, module, bottom_shape):
        """With global statistics: batch_norm_layer.cpp Forward_cpu, ``(x - mean_sum * f) / sqrt(var_sum * f +
        eps)`` with ``f = blob[2] == 0 ? 0 : 1 / blob[2]`` computed in float (for BatchNorm and the modules of its
        forks that keep its three blobs and ``global_stats()``: brocolli's BatchNormKyle)."""
        if not module.global_stats():
            return None
        s = float(module.scale_factor.detach().double()[0])
        factor = 0.0 if s == 0 else float(np.float32(1) / np.float32(s))
        mean = module.mean_sum.detach().double().numpy() * factor
        var = module.var_sum.detach().double().numpy() * factor
        inv = 1.0 / np.sqrt(var + float(np.float32(module.eps)))
        return inv, -mean * inv

    def reference_blobs(self, layer, arrays):
        """A scale factor of 0 (batch_norm_layer.cpp Forward_cpu: the statistics then count as 0) as zero
        statistics with factor 1: the same layer for Caffe, which OpenCV would otherwise divide by 0."""
        if len(arrays) != 3:
            return arrays
        mean, var, factor = arrays
        if float(np.asarray(factor).ravel()[0]) != 0:
            return arrays
        return [np.zeros_like(mean), np.zeros_like(var), np.ones_like(factor)]


def _scale_axes(layer, shape) -> tuple[int, tuple]:
    """ScaleLayer / BiasLayer::LayerSetUp: the first axis and the shape of the learned blob (num_axes axes)."""
    p = layer.scale_param if layer.type == "Scale" else layer.bias_param
    axis = canonical_axis(p.axis, len(shape))
    end = len(shape) if p.num_axes == -1 else axis + p.num_axes
    return axis, tuple(shape[axis:end])


def _random_scales(shapes, rng) -> list[np.ndarray]:
    """A learned scale near 1 first, then small offsets (matrices: N(0, 1/fan_in))."""
    out = []
    for j, s in enumerate(shapes):
        if len(s) >= 2:
            out.append(rng.normal(0, 1 / np.sqrt(max(int(np.prod(s[1:])), 1)), s).astype(np.float32))
        else:
            out.append(((1 if j == 0 else 0) + 0.1 * rng.standard_normal(s)).astype(np.float32))
    return out


@register("Scale", "Bias")
class ScaleBiasConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    fresh_top = True

    def param_shapes(self, layer, bottom_shapes):
        bias_term = layer.type == "Scale" and layer.scale_param.bias_term
        if len(bottom_shapes) > 1:
            return [tuple(bottom_shapes[1])] if bias_term else []
        _, shape = _scale_axes(layer, bottom_shapes[0])
        return [shape] + ([shape] if bias_term else [])

    def build(self, layer, bottom_shapes):
        axis, shape = _scale_axes(layer, bottom_shapes[0])
        bias_term = layer.type == "Scale" and layer.scale_param.bias_term
        module = CaffeScale if layer.type == "Scale" else CaffeBias
        if len(bottom_shapes) > 1:
            return module(axis, bottom_shapes[1], False, bias_term)
        return module(axis, shape, True, bias_term)

    def fillers(self, layer):
        if len(layer.bottom) > 1:
            return [layer.scale_param.bias_filler] if layer.type == "Scale" else []
        if layer.type == "Bias":
            p = layer.bias_param
            return [p.filler if p.HasField("filler") else constant(0.0)]
        p = layer.scale_param
        return [p.filler if p.HasField("filler") else constant(1.0), p.bias_filler]

    def random_blobs(self, layer, shapes, rng):
        return _random_scales(shapes, rng) if layer.type == "Scale" else super().random_blobs(layer, shapes, rng)

    def affine(self, layer, module, bottom_shape):
        """A learned blob over exactly the channel axis 1 (scale_layer.cpp / bias_layer.cpp LayerSetUp: ``axis``
        1, ``num_axes`` 1): Scale's ``x * scale [+ bias]``, Bias's ``x + bias``."""
        p = layer.scale_param if layer.type == "Scale" else layer.bias_param
        axis = p.axis + len(bottom_shape) if p.axis < 0 else p.axis
        c = int(bottom_shape[1])
        if axis != 1 or p.num_axes != 1 or module.weight is None or tuple(module.weight.shape) != (c,):
            return None
        w = module.weight.detach().double().numpy()
        if layer.type == "Bias":
            return np.ones(c), w
        b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(c)
        return w, b


def affine_layer(layer) -> None:
    """Rewrite ``layer`` (a LayerParameter being written, of any type) in place into the one Scale layer over the
    channel axis 1 with a bias (scale_layer.cpp: ``top = bottom * blob[0] + blob[1]``) that computes an affine
    chain ``a * bottom + b`` from the blobs [a, b]."""
    layer.type = "Scale"
    layer.ClearField("batch_norm_param")
    layer.ClearField("bias_param")
    layer.scale_param.Clear()
    layer.scale_param.axis = 1
    layer.scale_param.num_axes = 1
    layer.scale_param.bias_term = True


@register("LRN")
class LRNConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    def build(self, layer, bottom_shapes):
        p = layer.lrn_param
        if p.local_size % 2 == 0:
            raise ValueError(f"layer '{layer.name}': LRN local_size must be odd, as in Caffe")
        return CaffeLRN(p.local_size, p.alpha, p.beta, p.k, p.norm_region == p.WITHIN_CHANNEL)


@register("MVN")
class MVNConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    def build(self, layer, bottom_shapes):
        p = layer.mvn_param
        return CaffeMVN(p.normalize_variance, p.across_channels, p.eps)


@register("Normalize")
class NormalizeConverter(SameShape):
    def param_shapes(self, layer, bottom_shapes):
        return [(1,)] if layer.norm_param.channel_shared else [(bottom_shapes[0][1],)]

    def build(self, layer, bottom_shapes):
        p = layer.norm_param
        return SSDNormalize(bottom_shapes[0][1], p.across_spatial, p.channel_shared, p.eps)

    def random_blobs(self, layer, shapes, rng):
        return _random_scales(shapes, rng)


# ---- BN (the SegNet / ENet / yjxiong forks; the brocolli fork's bn_layer.cpp) -------------------------------------

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


def _is_segnet_bn(layer) -> bool:
    """A BN layer is caffe-segnet's when its bn_param names one of that fork's fields (scale_filler, shift_filler,
    bn_mode: every published SegNet prototxt does), the brocolli / yjxiong fork's otherwise. A layer that names
    fields of both is refused: sfport cannot know which layer its author meant."""
    p = layer.bn_param
    segnet = [f for f in ("scale_filler", "shift_filler", "bn_mode") if p.HasField(f)]
    other = [f for f in ("slope_filler", "bias_filler", "momentum", "eps", "frozen") if p.HasField(f)]
    if segnet and other:
        raise ValueError(f"layer '{layer.name}': bn_param mixes caffe-segnet's BN fields ({', '.join(segnet)}) "
                         f"with the brocolli/yjxiong BN's ({', '.join(other)}): no fork's BN has both")
    return bool(segnet)


@register("BN")
class BNConverter(SameShape):
    """The forks' BN: caffe-segnet's two-blob layer (:class:`SegNetBN`) or the brocolli / yjxiong forks' four-blob
    one (:class:`CaffeBN`), told apart by the fields of bn_param (:func:`_is_segnet_bn`)."""
    fresh_top = True

    def _check(self, layer, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if _is_segnet_bn(layer):
            if len(shape) != 4:   # bn_layer.cpp reads num/channels/height/width and gemms over H x W
                raise ValueError(f"layer '{layer.name}': caffe-segnet's BN takes a 4-D blob, got {list(shape)}")
            learn = layer.bn_param.bn_mode == layer.bn_param.LEARN
            if len(layer.top) > (3 if learn else 1):
                raise ValueError(f"layer '{layer.name}': caffe-segnet's BN has tops 1 and 2 (the batch mean and "
                                 f"variance) in bn_mode LEARN only; it has {len(layer.top)} tops")
        elif not 2 <= len(shape) <= 4:   # Reshape reads num/channels/height/width, the legacy accessors
            raise ValueError(f"layer '{layer.name}': BN takes a blob of 2 to 4 axes, got {list(shape)}")
        elif len(layer.top) != 1:
            raise ValueError(f"layer '{layer.name}': BN has one top, not {len(layer.top)}")
        return shape[1]

    def top_shapes(self, layer, bottom_shapes):
        c = self._check(layer, bottom_shapes)
        return [tuple(bottom_shapes[0])] + [(1, c, 1, 1)] * (len(layer.top) - 1)

    def param_shapes(self, layer, bottom_shapes):
        """LayerSetUp: caffe-segnet's two blobs of shape (1, C, 1, 1), or four of shape (1, C)."""
        c = self._check(layer, bottom_shapes)
        return [(1, c, 1, 1)] * 2 if _is_segnet_bn(layer) else [(1, c)] * 4

    def build(self, layer, bottom_shapes):
        p = layer.bn_param
        c = self._check(layer, bottom_shapes)
        if _is_segnet_bn(layer):
            return SegNetBN(c, p.bn_mode == p.LEARN)
        return CaffeBN(c, p.momentum, p.eps, p.frozen)

    def fillers(self, layer):
        """LayerSetUp: scale_filler and shift_filler (caffe-segnet), or slope_filler, bias_filler (each Caffe's
        default filler, constant 0, when not given), the moving mean 0 and the moving inverse std 1."""
        p = layer.bn_param
        if _is_segnet_bn(layer):
            return [p.scale_filler, p.shift_filler]
        return [p.slope_filler, p.bias_filler, constant(0.0), constant(1.0)]

    def random_blobs(self, layer, shapes, rng):
        """A slope (scale) near 1, a small bias (shift) and mean, an inverse std in [0.5, 1.5]."""
        c = int(np.prod(shapes[0]))
        blobs = [(1 + 0.1 * rng.standard_normal(c)).astype(np.float32), (0.1 * rng.standard_normal(c)).astype(
            np.float32), (0.1 * rng.standard_normal(c)).astype(np.float32), rng.uniform(0.5, 1.5, c).astype(
            np.float32)]
        return [b.reshape(s) for b, s in zip(blobs, shapes)]

    def for_reference(self, layer, graph_layer):
        """caffe-segnet's INFERENCE-mode BN is BVLC's Scale with a bias (``scale * x + shift`` per channel), which
        OpenCV and BVLC pycaffe run; its blobs follow (:meth:`reference_blobs`)."""
        if _is_segnet_bn(layer) and layer.bn_param.bn_mode == layer.bn_param.INFERENCE:
            layer.type = "Scale"
            layer.ClearField("bn_param")
            layer.scale_param.bias_term = True

    def reference_blobs(self, layer, arrays):
        """For the Scale of :meth:`for_reference`: the two 1 x C x 1 x 1 blobs as vectors of C."""
        if layer.type == "Scale" or (_is_segnet_bn(layer) and layer.bn_param.bn_mode == layer.bn_param.INFERENCE):
            return [np.asarray(a).reshape(-1) for a in arrays]
        return arrays

    def affine(self, layer, module, bottom_shape):
        """caffe-segnet's INFERENCE mode: ``scale * x + shift``; the four-blob BN with the stored statistics
        (frozen or TEST): ``(x - mean) * inv_std * slope + bias``. None where the batch's statistics are used."""
        if isinstance(module, SegNetBN):
            if module.learn:
                return None
            return tuple(getattr(module, n).detach().double().numpy().reshape(-1) for n in module.caffe_blobs)
        if not module.stored_stats():
            return None
        slope, bias, mean, inv = (getattr(module, n).detach().double().numpy().reshape(-1) for n in module.caffe_blobs)
        a = inv * slope
        return a, bias - mean * a
