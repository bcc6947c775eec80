"""Normalisation layers: BatchNorm (three blobs: mean_sum, var_sum, scale factor), Scale, Bias, LRN (across and
within channels), MVN, the SSD fork's Normalize, and the forks' BN: caffe-segnet's (two blobs: scale and shift, ``bn_mode``) and the
brocolli / yjxiong forks' (four blobs: slope, bias, the moving mean and the moving inverse standard deviation).
The modules are :mod:`.modules.norm`."""
from __future__ import annotations

import numpy as np

from .base import SameShape, register
from sfport.converters.fillers import constant
from .geometry import canonical_axis


def stored_factor(scale_factor) -> float:
    """batch_norm_layer.cpp Forward_cpu's ``scale_factor = blob[2] == 0 ? 0 : 1 / blob[2]``, computed in float, as a
    number (``scale_factor``: the third blob, a tensor of one value)."""
    s = np.float32(scale_factor.detach().reshape(-1)[0].item())
    return 0.0 if s == 0 else float(np.float32(1) / s)


@register("BatchNorm")
class BatchNormConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    fresh_top = True

    def images_apart(self, layer, bottom_shapes):
        """batch_norm_layer.cpp: at TEST the stored statistics (use_global_stats defaults to phase == TEST); one
        set false normalizes by the batch's own."""
        p = layer.batch_norm_param
        return not p.HasField("use_global_stats") or p.use_global_stats

    def param_shapes(self, layer, bottom_shapes):
        c = bottom_shapes[0][1]
        return [(c,), (c,), (1,)]

    def build(self, layer, bottom_shapes):
        p = layer.batch_norm_param
        from .modules.norm import CaffeBatchNorm
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
        factor = stored_factor(module.scale_factor)
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

    def differs_in_training(self, layer, module):
        """batch_norm_layer.cpp: use_global_stats defaults to ``phase == TEST``: in TRAIN, unless it is set true,
        the batch's mean and variance normalize (the references use the stored ones)."""
        if module.global_stats():
            return None
        return "the batch's statistics normalize there (use_global_stats is not true), the stored ones in the reference"


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

    def images_apart(self, layer, bottom_shapes):
        """The scale (a blob, or the second bottom) spans the axes from ``axis`` on: from axis 0 it would pair
        image n with its row n."""
        return _scale_axes(layer, bottom_shapes[0])[0] > 0

    def param_shapes(self, layer, bottom_shapes):
        bias_term = layer.type == "Scale" and layer.scale_param.bias_term
        if len(bottom_shapes) > 1:
            return [tuple(bottom_shapes[1])] if bias_term else []
        _, shape = _scale_axes(layer, bottom_shapes[0])
        return [shape] + ([shape] if bias_term else [])

    def build(self, layer, bottom_shapes):
        axis, shape = _scale_axes(layer, bottom_shapes[0])
        bias_term = layer.type == "Scale" and layer.scale_param.bias_term
        from .modules.norm import CaffeBias, CaffeScale
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
    per_image = True
    def build(self, layer, bottom_shapes):
        p = layer.lrn_param
        if p.local_size % 2 == 0:
            raise ValueError(f"layer '{layer.name}': LRN local_size must be odd, as in Caffe")
        from .modules.norm import CaffeLRN
        return CaffeLRN(p.local_size, p.alpha, p.beta, p.k, p.norm_region == p.WITHIN_CHANNEL)


@register("MVN")
class MVNConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    per_image = True
    def build(self, layer, bottom_shapes):
        p = layer.mvn_param
        from .modules.norm import CaffeMVN
        return CaffeMVN(p.normalize_variance, p.across_channels, p.eps)


@register("Normalize")
class NormalizeConverter(SameShape):
    per_image = True
    def param_shapes(self, layer, bottom_shapes):
        return [(1,)] if layer.norm_param.channel_shared else [(bottom_shapes[0][1],)]

    def build(self, layer, bottom_shapes):
        p = layer.norm_param
        from .modules.norm import SSDNormalize
        return SSDNormalize(bottom_shapes[0][1], p.across_spatial, p.channel_shared, p.eps)

    def random_blobs(self, layer, shapes, rng):
        return _random_scales(shapes, rng)


# ---- BN (the SegNet / ENet / yjxiong forks; the brocolli fork's bn_layer.cpp) -------------------------------------


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
    """The forks' BN: caffe-segnet's two-blob layer (:class:`~.modules.norm.SegNetBN`) or the brocolli / yjxiong
    forks' four-blob one (:class:`~.modules.norm.CaffeBN`), told apart by the fields of bn_param
    (:func:`_is_segnet_bn`)."""
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
        from .modules.norm import CaffeBN, SegNetBN
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
        from .modules.norm import SegNetBN
        if isinstance(module, SegNetBN):
            if module.learn:
                return None
            return tuple(getattr(module, n).detach().double().numpy().reshape(-1) for n in module.caffe_blobs)
        if not module.stored_stats():
            return None
        slope, bias, mean, inv = (getattr(module, n).detach().double().numpy().reshape(-1) for n in module.caffe_blobs)
        a = inv * slope
        return a, bias - mean * a

    def differs_in_training(self, layer, module):
        """The four-blob BN (bn_layer.cpp Forward_cpu) in TRAIN, not frozen: the batch's statistics."""
        if not hasattr(module, "stored_stats") or module.stored_stats():
            return None
        return "the batch's statistics normalize there (frozen is not true), the stored ones in the reference"


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.norm`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import norm
    return getattr(norm, name)
