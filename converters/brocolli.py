"""The brocolli fork's own layers (brocolli-caffe 9.0.2, the oracle pycaffe of
``../shared/tools/build-caffe-oracle.sh``): HardSigmoid (hardsigmoid_layer.cpp), HardSwish (hardswish_layer.cpp),
Pad (pad_layer.cpp), Unsqueeze (unsqueeze.cpp), Resize (resize_layer.cpp with util_img.cpp), BilinearInterpolate
(bilinear_interpolate_layer.cpp) and BatchNormKyle (batch_norm_kyle_layer.cpp).

The fork gives HardSigmoid, HardSwish and Pad no Backward_cpu (Pad's and BilinearInterpolate's are empty): no gradient
passes them, here as in the fork. Their float arithmetic is the fork's: ``std::min`` / ``std::max`` as ``(b < a) ?
b : a``, so a NaN input gives HardSigmoid 1 and HardSwish NaN, as the C++ does. Resize and BilinearInterpolate
compute their source positions and weights in float (BilinearInterpolate's half-pixel offset in double) from the
bottom's run-time size, so an export keeps the size dynamic. BatchNormKyle's use_alpha_beta (the fork's
BatchNormParameter field 9) is in sfport's schema. The modules are :mod:`.modules.brocolli`.
"""
from __future__ import annotations

import numpy as np

from sfport.protos import caffe_pb2
from .base import NoParams, SameShape, register
from .norm import BatchNormConverter


def _pads(layer) -> tuple[int, int, int, int]:
    p = layer.pad_param
    return p.pad_u, p.pad_d, p.pad_l, p.pad_r


@register("HardSigmoid")
class HardSigmoidConverter(SameShape):
    per_image = True
    def build(self, layer, bottom_shapes):
        from .modules.brocolli import HardSigmoid
        p = layer.hardsigmoid_param
        return HardSigmoid(p.alpha, p.beta)


@register("HardSwish")
class HardSwishConverter(SameShape):
    per_image = True
    def build(self, layer, bottom_shapes):
        from .modules.brocolli import HardSwish
        return HardSwish()


@register("Pad")
class PadConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """PadLayer::Reshape, for the 4-D bottoms its Forward_cpu handles; the fork's own sign rules made
        explicit (its forward writes outside the blob otherwise)."""
        (shape,) = bottom_shapes
        if len(shape) != 4:
            raise ValueError(f"Pad handles N x C x H x W bottoms (the fork's Forward_cpu), not {len(shape)}-D")
        u, d, l, r = _pads(layer)
        if min(u, d, l, r) < 0 and max(u, d, l, r) >= 0:
            raise ValueError(f"pads {u}, {d}, {l}, {r} (u, d, l, r): negative pads crop only when all four are "
                             f"negative (the fork's Forward_cpu)")
        h, w = shape[2] + u + d, shape[3] + l + r
        if h <= 0 or w <= 0:   # Reshape: CHECK_GE(top_shape, 0)
            raise ValueError(f"pads {u}, {d}, {l}, {r} leave a {h} x {w} top of a {shape[2]} x {shape[3]} bottom")
        if layer.pad_param.pad_type == caffe_pb2.PadParameter.REFLECT and (max(u, d) >= shape[2] or
                                                                            max(l, r) >= shape[3]):
            raise ValueError(f"REFLECT pads {u}, {d}, {l}, {r} must be smaller than the bottom's {shape[2]} x "
                             f"{shape[3]} (the fork reads outside it)")
        return [(shape[0], shape[1], h, w)]

    def build(self, layer, bottom_shapes):
        from .modules.brocolli import Pad
        self.top_shapes(layer, bottom_shapes)
        p = layer.pad_param
        return Pad(*_pads(layer), p.pad_type, p.pad_value)


@register("Unsqueeze")
class UnsqueezeConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """UnsqueezeLayer::LayerSetUp: a 1 inserted at ``dim`` (negative: from the end, ``dim + num_axes + 1``)."""
        (shape,) = bottom_shapes
        p = layer.unsqueeze_param
        if not p.HasField("dim"):
            raise ValueError("unsqueeze_param.dim must be set")
        n = len(shape)
        index = p.dim + n + 1 if p.dim < 0 else p.dim
        if not 0 <= index <= n:
            raise ValueError(f"dim {p.dim} is outside the {n} axes of the bottom")
        return [tuple(shape[:index]) + (1,) + tuple(shape[index:])]

    def build(self, layer, bottom_shapes):
        from .modules.brocolli import Unsqueeze
        (top,) = self.top_shapes(layer, bottom_shapes)
        p = layer.unsqueeze_param
        return Unsqueeze(p.dim + len(bottom_shapes[0]) + 1 if p.dim < 0 else p.dim)


# ---- Resize and BilinearInterpolate ------------------------------------------------------------------------------

def _legacy_shape(kind: str, shape) -> tuple[int, int, int, int]:
    """Blob::LegacyShape as num(), channels(), height(), width() read it: at most 4 axes (CHECK_LE), an axis past
    the blob's last one is 1."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > 4:
        raise ValueError(f"{kind} reads its bottom as num x channels x height x width (Blob::LegacyShape): at most "
                         f"4 axes, got {len(shape)}")
    return shape + (1,) * (4 - len(shape))


def _truncated_product(size: int, scale: float) -> int:
    """``int(size * scale)`` of the C++ with ``scale`` a float: the product in float, truncated toward zero."""
    v = np.float32(size) * np.float32(scale)
    if not np.isfinite(v):
        raise ValueError(f"the scaled size {size} x {scale} is not finite")
    return int(v)


def _resize_setup(layer) -> tuple:
    """ResizeLayer::LayerSetUp: without is_pyramid_test, height and width (CHECK has_height / has_width); with
    it, out_height_scale and out_width_scale (CHECK has_...). (size, None) or (None, scales)."""
    p = layer.resize_param
    if not p.is_pyramid_test:
        if not (p.HasField("height") and p.HasField("width")):
            raise ValueError("Resize needs resize_param height and width (without is_pyramid_test)")
        if p.height < 1 or p.width < 1:
            raise ValueError(f"Resize height and width must be positive, got {p.height} x {p.width}")
        return (int(p.height), int(p.width)), None
    if not (p.HasField("out_height_scale") and p.HasField("out_width_scale")):
        raise ValueError("Resize with is_pyramid_test needs resize_param out_height_scale and out_width_scale")
    return None, (p.out_height_scale, p.out_width_scale)


@register("Resize")
class ResizeConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """ResizeLayer::Reshape: num x channels x out_height x out_width of the bottom's legacy shape."""
        n, c, h, w = _legacy_shape("Resize", bottom_shapes[0])
        size, scale = _resize_setup(layer)
        if size is None:
            size = (_truncated_product(h, scale[0]), _truncated_product(w, scale[1]))
            if min(size) < 1:
                raise ValueError(f"Resize out_height_scale {scale[0]:g} and out_width_scale {scale[1]:g} make a "
                                 f"{size[0]} x {size[1]} top of a {h} x {w} bottom; it must be positive")
        return [(n, c) + tuple(size)]

    def build(self, layer, bottom_shapes):
        from .modules.brocolli import Resize
        self.top_shapes(layer, bottom_shapes)
        return Resize(*_resize_setup(layer))


def _bilinear_setup(layer) -> tuple:
    """BilinearInterpolateLayer::LayerSetUp: dst_h and / or dst_w without scale_factor (a missing one is the
    bottom's), or scale_factor alone; with both or neither the fork leaves the size uninitialized. (size, scale,
    align_corners)."""
    p = layer.bilinear_interpolate_param
    dst = p.HasField("dst_h") or p.HasField("dst_w")
    if dst == p.HasField("scale_factor"):
        raise ValueError("BilinearInterpolate needs bilinear_interpolate_param dst_h and/or dst_w, or scale_factor, "
                         f"not {'both' if dst else 'neither'} (the fork leaves its output size uninitialized)")
    if dst:
        size = tuple(getattr(p, f) if p.HasField(f) else None for f in ("dst_h", "dst_w"))
        if any(d is not None and d < 1 for d in size):
            raise ValueError(f"BilinearInterpolate dst_h and dst_w must be positive, got "
                             f"{', '.join('-' if d is None else str(d) for d in size)}")
        return size, None, p.align_corners
    return None, p.scale_factor, p.align_corners


@register("BilinearInterpolate")
class BilinearInterpolateConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """BilinearInterpolateLayer::Reshape: num x channels x dst_h x dst_w of the bottom's legacy shape."""
        n, c, h, w = _legacy_shape("BilinearInterpolate", bottom_shapes[0])
        size, scale, _ = _bilinear_setup(layer)
        if scale is not None:
            size = (_truncated_product(h, scale), _truncated_product(w, scale))
            if min(size) < 1:
                raise ValueError(f"BilinearInterpolate scale_factor {scale:g} makes a {size[0]} x {size[1]} top of "
                                 f"a {h} x {w} bottom; it must be positive")
        return [(n, c, h if size[0] is None else size[0], w if size[1] is None else size[1])]

    def build(self, layer, bottom_shapes):
        from .modules.brocolli import BilinearInterpolate
        self.top_shapes(layer, bottom_shapes)
        return BilinearInterpolate(*_bilinear_setup(layer))


# ---- BatchNormKyle -----------------------------------------------------------------------------------------------

def _alpha_beta(layer) -> bool:
    """batch_norm_param.use_alpha_beta (field 9 of the fork's BatchNormParameter, in sfport's schema; a fork's
    caffe.proto given with ``--proto`` may renumber it, so it is looked up by name)."""
    p = layer.batch_norm_param
    return "use_alpha_beta" in p.DESCRIPTOR.fields_by_name and bool(p.use_alpha_beta)


@register("BatchNormKyle")
class BatchNormKyleConverter(BatchNormConverter):
    """BatchNorm's converter (its blobs, random statistics, the references' zero scale factor, the affine form with
    global statistics) with alpha and beta added where use_alpha_beta says so."""
    param_field = "batch_norm_param"
    coord_identity = False   # not one of pycaffe coord_map.py's PASS_THROUGH_LAYERS

    def top_shapes(self, layer, bottom_shapes):
        """BatchNormKyleLayer::Reshape: the bottom's shape; it reads the channels at axis 1 (CHECK_EQ(shape(1),
        channels_)), so at least 2 axes."""
        if len(bottom_shapes[0]) < 2:
            raise ValueError(f"BatchNormKyle needs a bottom of at least 2 axes (channels at axis 1), got "
                             f"{len(bottom_shapes[0])}")
        return super().top_shapes(layer, bottom_shapes)

    def param_shapes(self, layer, bottom_shapes):
        """LayerSetUp: mean and variance sums (C), the scale factor (1), and alpha, beta (C) with use_alpha_beta."""
        self.top_shapes(layer, bottom_shapes)
        c = bottom_shapes[0][1]
        return [(c,), (c,), (1,)] + ([(c,), (c,)] if _alpha_beta(layer) else [])

    def build(self, layer, bottom_shapes):
        from .modules.brocolli import BatchNormKyle
        self.top_shapes(layer, bottom_shapes)
        p = layer.batch_norm_param
        return BatchNormKyle(bottom_shapes[0][1], p.eps, p.moving_average_fraction,
                             p.use_global_stats if p.HasField("use_global_stats") else None, _alpha_beta(layer))

    def random_blobs(self, layer, shapes, rng):
        """BatchNorm's statistics; alpha near 1, beta small."""
        blobs = super().random_blobs(layer, shapes[:3], rng)
        if len(shapes) == 5:
            c = shapes[0][0]
            blobs += [rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32)]
        return blobs

    def for_reference(self, layer, graph_layer):
        """Without alpha and beta the layer is the fork's BatchNorm (batch_norm_layer.cpp: the same LayerSetUp,
        Forward_cpu and Backward_cpu less alpha and beta): the references read it under that name."""
        if _alpha_beta(layer):
            return
        layer.type = "BatchNorm"
        p = layer.batch_norm_param
        for f in ("use_alpha_beta", "do_all_reduce", "weight_filler", "bias_filler"):
            if f in p.DESCRIPTOR.fields_by_name:
                p.ClearField(f)

    def affine(self, layer, module, bottom_shape):
        """With global statistics: Forward_cpu's ``alpha * (x - f * mean_sum) / sqrt(f * var_sum + eps) + beta``
        with ``f = s == 0 ? 0 : 1 / s`` in float."""
        ab = super().affine(layer, module, bottom_shape)
        if ab is None:
            return None
        a, b = ab
        if module.alpha is not None:
            alpha = module.alpha.detach().double().numpy()
            a, b = alpha * a, alpha * b + module.beta.detach().double().numpy()
        return a, b


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.brocolli`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import brocolli
    return getattr(brocolli, name)
