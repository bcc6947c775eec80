"""Layers that resize or reorder feature maps: Upsample (the nearest form of the YOLO forks and SegNet's unpooling
form with a mask bottom), Interp (DeepLab / PSPNet bilinear), ShuffleChannel (ShuffleNet), and the brocolli fork's
MaxUnPool (unpooling to a stated size with a pooling mask) and PixelShuffle. Each class names the C++ it follows;
the modules (:mod:`.modules.resize`) take every size from their inputs at run time."""
from __future__ import annotations

from .base import NoParams, register


def _has(msg, field: str) -> bool:
    """Whether a message of sfport's schema has the field and it is set (the forks' extra fields may be absent
    from the schema: then they are unset)."""
    return field in msg.DESCRIPTOR.fields_by_name and msg.HasField(field)


# ---- Upsample --------------------------------------------------------------------------------------------------


def _upsample_setup(layer):
    """UpsampleLayer::LayerSetUp of either form: (scale_h, scale_w), (pad_out_h, pad_out_w) and the explicit
    output size (upsample_h, upsample_w) or None. The nearest form reads scale_h / scale_w where set, else scale.
    SegNet's form needs upsample_h & upsample_w, or scale_h & scale_w without scale, or neither scale_h nor
    scale_w; its scales are > 1 and pad_out needs scale 2 (pad_out_* and upsample_* are read where the schema has
    SegNet's fields; sfport's has scale, scale_h and scale_w)."""
    p, name = layer.upsample_param, layer.name
    sh = p.scale_h if p.HasField("scale_h") else p.scale
    sw = p.scale_w if p.HasField("scale_w") else p.scale
    if len(layer.bottom) != 2:
        if sh < 1 or sw < 1:
            raise ValueError(f"layer '{name}': upsample scale must be positive, got {sh} x {sw}")
        return (sh, sw), (0, 0), None
    if _has(p, "upsample_h") and _has(p, "upsample_w"):
        oh, ow = p.upsample_h, p.upsample_w
        if oh <= 1 or ow <= 1:  # CHECK_GT(upsample_h_, 1)
            raise ValueError(f"layer '{name}': upsample_h and upsample_w must be > 1, got {oh}, {ow}")
        return (1, 1), (0, 0), (oh, ow)
    if p.HasField("scale_h") != p.HasField("scale_w") or (p.HasField("scale_h") and p.HasField("scale")):
        raise ValueError(f"layer '{name}': give upsample_h and upsample_w, or scale, or scale_h and scale_w "
                         f"without scale")
    if sh <= 1 or sw <= 1:  # CHECK_GT(scale_h_, 1)
        raise ValueError(f"layer '{name}': upsample scale must be > 1, got {sh} x {sw}")
    pad = tuple(int(getattr(p, f)) if f in p.DESCRIPTOR.fields_by_name else 0 for f in ("pad_out_h", "pad_out_w"))
    if (pad[0] and sh != 2) or (pad[1] and sw != 2):
        raise ValueError(f"layer '{name}': output padding compensation (pad_out_h/pad_out_w) requires scale 2")
    return (sh, sw), pad, None


@register("Upsample")
class UpsampleConverter(NoParams):
    """One bottom: the nearest form; two bottoms (data, mask): SegNet's unpooling."""
    per_image = True

    def top_shapes(self, layer, bottom_shapes):
        (sh, sw), pad, size = _upsample_setup(layer)
        b0 = tuple(bottom_shapes[0])
        if len(layer.bottom) == 2:
            self._check_mask(layer, bottom_shapes)
            oh, ow = size if size is not None else (b0[2] * sh - pad[0], b0[3] * sw - pad[1])
            return [b0[:2] + (oh, ow)]
        return [b0[:-2] + (b0[-2] * sh, b0[-1] * sw)]

    @staticmethod
    def _check_mask(layer, bottom_shapes):
        b0, b1 = (tuple(s) for s in bottom_shapes)
        if len(b0) != 4 or b0 != b1:  # UpsampleLayer::Reshape: 4 axes each, CHECK_EQ num/channels/height/width
            raise ValueError(f"layer '{layer.name}': Upsample needs a 4-D data bottom and a mask of the same shape, "
                             f"got {list(b0)} and {list(b1)}")

    def build(self, layer, bottom_shapes):
        from .modules.resize import Unpool, Upsample
        if len(layer.bottom) not in (1, 2):
            raise ValueError(f"layer '{layer.name}': Upsample takes 1 bottom (nearest) or 2 (data and pooling mask), "
                             f"got {len(layer.bottom)}")
        scale, pad, size = _upsample_setup(layer)
        if len(layer.bottom) == 2:
            self._check_mask(layer, bottom_shapes)
            return Unpool(layer.name, size, scale, pad)
        return Upsample(*scale)


# ---- Interp ----------------------------------------------------------------------------------------------------


def interp_size(name, h_eff, w_eff, zoom, shrink, size, like):
    """InterpLayer::Reshape's output size from the effective (cropped) input size."""
    if h_eff <= 0 or w_eff <= 0:
        raise ValueError(f"layer '{name}': the cropped input is {h_eff} x {w_eff}; it must be positive")
    if shrink is not None:
        h_eff, w_eff = (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
    if zoom is not None:
        oh, ow = h_eff + (h_eff - 1) * (zoom - 1), w_eff + (w_eff - 1) * (zoom - 1)
    elif shrink is not None:
        oh, ow = h_eff, w_eff
    elif size is not None:
        oh, ow = size
    else:
        oh, ow = like
    if oh <= 0 or ow <= 0:
        raise ValueError(f"layer '{name}': the output size {oh} x {ow} must be positive")
    return oh, ow


def _interp_setup(layer, bottom_shapes):
    p, name = layer.interp_param, layer.name
    if p.pad_beg > 0 or p.pad_end > 0:  # LayerSetUp: CHECK_LE(pad_beg_, 0), "Only supports non-pos padding"
        raise ValueError(f"layer '{name}': Interp supports only non-positive pad_beg/pad_end (cropping), got "
                         f"{p.pad_beg}, {p.pad_end}")
    zoom = p.zoom_factor if p.HasField("zoom_factor") else None
    shrink = p.shrink_factor if p.HasField("shrink_factor") else None
    for what, v in (("zoom_factor", zoom), ("shrink_factor", shrink)):
        if v is not None and v < 1:
            raise ValueError(f"layer '{name}': Interp {what} must be positive, got {v}")
    size = (p.height, p.width) if p.HasField("height") and p.HasField("width") else None
    # Reshape's order: shrink only, zoom only, height and width, both factors, the second bottom
    if size is not None and zoom is not None and shrink is not None:
        zoom = shrink = None
    elif zoom is not None or shrink is not None:
        size = None
    elif size is None and len(layer.bottom) != 2:
        raise ValueError(f"layer '{name}': Interp needs zoom_factor, shrink_factor, height and width, or a second "
                         f"bottom to take the size of")
    if len(layer.bottom) not in (1, 2) or len(bottom_shapes[0]) != 4:
        raise ValueError(f"layer '{name}': Interp takes a 4-D bottom (and optionally a second one for the size)")
    return p.pad_beg, p.pad_end, zoom, shrink, size


@register("Interp")
class InterpConverter(NoParams):
    per_image = True
    def top_shapes(self, layer, bottom_shapes):
        pad_beg, pad_end, zoom, shrink, size = _interp_setup(layer, bottom_shapes)
        n, c, h, w = bottom_shapes[0]
        like = tuple(bottom_shapes[1])[-2:] if len(bottom_shapes) > 1 else None
        return [(n, c) + interp_size(layer.name, h + pad_beg + pad_end, w + pad_beg + pad_end, zoom, shrink, size,
                                     like)]

    def build(self, layer, bottom_shapes):
        from .modules.resize import Interp
        return Interp(layer.name, *_interp_setup(layer, bottom_shapes))


# ---- ShuffleChannel --------------------------------------------------------------------------------------------


def _legacy_shape(shape) -> tuple:
    """Reshape(num(), channels(), height(), width()): the legacy accessors, 1 past the blob's axes."""
    return tuple(shape[:4]) + (1,) * (4 - len(shape))


@register("ShuffleChannel")
class ShuffleChannelConverter(NoParams):
    per_image = True
    def _group(self, layer, bottom_shapes):
        g, shape = layer.shuffle_channel_param.group, tuple(bottom_shapes[0])
        if g < 1:  # LayerSetUp: CHECK_GT(group_, 0)
            raise ValueError(f"layer '{layer.name}': ShuffleChannel group must be greater than 0, got {g}")
        if not 2 <= len(shape) <= 4:
            raise ValueError(f"layer '{layer.name}': ShuffleChannel takes a blob of 2 to 4 axes, got {list(shape)}")
        if shape[1] % g:
            raise ValueError(f"layer '{layer.name}': {shape[1]} channels do not split into {g} groups")
        return g

    def top_shapes(self, layer, bottom_shapes):
        self._group(layer, bottom_shapes)
        return [_legacy_shape(bottom_shapes[0])]

    def build(self, layer, bottom_shapes):
        from .modules.resize import ShuffleChannel
        return ShuffleChannel(layer.name, self._group(layer, bottom_shapes))


# ---- MaxUnPool and PixelShuffle (brocolli-caffe 9.0.2) ------------------------------------------------------------


def _max_unpool_setup(layer, bottom_shapes) -> tuple[int, int]:
    """MaxUnPoolLayer::LayerSetUp / Reshape: two bottoms, dst_h and dst_w both given (CHECK), a 4-D data bottom
    (CHECK_EQ(4, num_axes)); the mask is read plane by plane with the data's offsets, so it must have the data's
    shape (the fork does not check it and reads past a smaller one)."""
    p, name = layer.max_unpool_param, layer.name
    if len(layer.bottom) != 2:
        raise ValueError(f"layer '{name}': MaxUnPool takes 2 bottoms (data and the pooling mask), got "
                         f"{len(layer.bottom)}")
    if not (p.HasField("dst_h") and p.HasField("dst_w")):
        raise ValueError(f"layer '{name}': MaxUnPool needs max_unpool_param dst_h and dst_w (both are required)")
    if p.dst_h < 1 or p.dst_w < 1:
        raise ValueError(f"layer '{name}': MaxUnPool dst_h and dst_w must be positive, got {p.dst_h} x {p.dst_w}")
    data, mask = (tuple(s) for s in bottom_shapes[:2])
    if len(data) != 4 or data != mask:
        raise ValueError(f"layer '{name}': MaxUnPool needs a 4-D data bottom and a mask of the same shape, got "
                         f"{list(data)} and {list(mask)}")
    return p.dst_h, p.dst_w


@register("MaxUnPool")
class MaxUnPoolConverter(NoParams):
    per_image = True
    def top_shapes(self, layer, bottom_shapes):
        dst_h, dst_w = _max_unpool_setup(layer, bottom_shapes)
        return [tuple(bottom_shapes[0][:2]) + (dst_h, dst_w)]

    def build(self, layer, bottom_shapes):
        from .modules.resize import MaxUnPool
        return MaxUnPool(layer.name, *_max_unpool_setup(layer, bottom_shapes))


def _pixel_shuffle_setup(layer, bottom_shapes) -> int:
    """PixelShuffleLayer::LayerSetUp / Reshape: upscale_factor (``required`` in the fork's schema), ``CHECK_EQ(C %
    r, 0)``; Forward_cpu indexes (n, c, h, w), so a 4-D bottom."""
    r, shape, name = layer.pixelshuffle_param.upscale_factor, tuple(bottom_shapes[0]), layer.name
    if r < 1:
        raise ValueError(f"layer '{name}': PixelShuffle needs a positive pixelshuffle_param upscale_factor, got {r}")
    if len(shape) != 4:
        raise ValueError(f"layer '{name}': PixelShuffle takes a 4-D bottom, got {list(shape)}")
    if shape[1] % r:
        raise ValueError(f"layer '{name}': PixelShuffle needs channels divisible by upscale_factor {r}, got "
                         f"{shape[1]}")
    return r


@register("PixelShuffle")
class PixelShuffleConverter(NoParams):
    per_image = True
    def top_shapes(self, layer, bottom_shapes):
        r = _pixel_shuffle_setup(layer, bottom_shapes)
        n, c, h, w = bottom_shapes[0]
        return [(n, c // (r * r), h * r, w * r)]

    def build(self, layer, bottom_shapes):
        from .modules.resize import PixelShuffle
        return PixelShuffle(_pixel_shuffle_setup(layer, bottom_shapes))


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.resize`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import resize
    return getattr(resize, name)
