"""How Caffe resolves axes and window geometry from a layer's parameters (shared by the converters)."""
from __future__ import annotations

import numpy as np


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe Blob::CanonicalAxisIndex with its CHECKs (blob.hpp): -ndim <= axis < ndim, a negative axis
    counting from the end."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}-D bottom (axis_index must be in "
                         f"[-{ndim}, {ndim}))")
    return axis + ndim if axis < 0 else axis


def coord_window(p, dilated: bool = True) -> tuple:
    """pycaffe coord_map.py conv_params: (axis, stride, extent, pad) of a convolution_param or pooling_param as
    numpy vectors (one value, or one per spatial axis as given), ``extent = (kernel - 1) * dilation + 1``; None
    without a kernel size. Legacy ``*_h`` / ``*_w`` fields are refused as coord_map.py refuses them."""
    if any(p.HasField(f) for f in ("pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w")):
        raise AssertionError("cropping does not support legacy _h/_w params")
    def vector(value, default):
        value = list(value) if hasattr(value, "extend") else ([value] if value else [])
        return np.array(value or [default], ndmin=1)
    kernel = list(p.kernel_size) if hasattr(p.kernel_size, "extend") else \
        ([p.kernel_size] if p.HasField("kernel_size") else [])
    if not kernel:
        return None
    dilation = vector(p.dilation, 1) if dilated else np.array([1])
    axis = p.axis if hasattr(p, "axis") else 1
    return axis, vector(p.stride, 1), (np.array(kernel, ndmin=1) - 1) * dilation + 1, vector(p.pad, 0)


def _spatial(values, h, w, n, default):
    """Caffe's kernel/pad/stride resolution: *_h/*_w, else repeated value (one for all, or one per axis)."""
    if h is not None and w is not None and n == 2:
        return [h, w]
    vals = list(values)
    if not vals:
        return [default] * n
    if len(vals) == 1:
        return vals * n
    return vals[:n]


def conv_geometry(p, ndim_spatial):
    """(kernel, pad, stride, dilation) per spatial axis of a ConvolutionParameter, as BaseConvolutionLayer::
    LayerSetUp reads them (base_conv_layer.cpp)."""
    kernel = _spatial(p.kernel_size, p.kernel_h if p.HasField("kernel_h") else None,
                      p.kernel_w if p.HasField("kernel_w") else None, ndim_spatial, None)
    pad = _spatial(p.pad, p.pad_h if p.HasField("pad_h") else None,
                   p.pad_w if p.HasField("pad_w") else None, ndim_spatial, 0)
    stride = _spatial(p.stride, p.stride_h if p.HasField("stride_h") else None,
                      p.stride_w if p.HasField("stride_w") else None, ndim_spatial, 1)
    dilation = _spatial(p.dilation, None, None, ndim_spatial, 1)
    return kernel, pad, stride, dilation


def pooling_geometry(p) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, pad) as (h, w) pairs of a PoolingParameter: *_h/*_w override the square values."""
    kh = p.kernel_h if p.HasField("kernel_h") else p.kernel_size
    kw = p.kernel_w if p.HasField("kernel_w") else p.kernel_size
    sh = p.stride_h if p.HasField("stride_h") else p.stride
    sw = p.stride_w if p.HasField("stride_w") else p.stride
    ph = p.pad_h if p.HasField("pad_h") else p.pad
    pw = p.pad_w if p.HasField("pad_w") else p.pad
    return (kh, kw), (sh, sw), (ph, pw)


def pooling_ceil(layer) -> bool:
    """Whether a Pooling layer rounds its output size up (ceil) rather than down (floor). BVLC 2018's
    ``round_mode`` (pooling_layer.cpp Reshape: ``case PoolingParameter_RoundMode_CEIL``) and the ceil-mode forks'
    (and OpenCV's) ``ceil_mode`` (their pooling_layer.cpp Reshape: ``if (ceil_mode_)``; sfport's field 2005) say
    the same thing; neither set: ceil, both forms' default. A fork never has both: where both are set they must
    agree, else the layer is refused (sfport cannot know which one its author meant)."""
    p = layer.pooling_param
    has_ceil = "ceil_mode" in p.DESCRIPTOR.fields_by_name and p.HasField("ceil_mode")
    if not has_ceil:
        return p.round_mode == p.CEIL
    if p.HasField("round_mode") and p.ceil_mode != (p.round_mode == p.CEIL):
        said = p.DESCRIPTOR.fields_by_name["round_mode"].enum_type.values_by_number[p.round_mode].name
        raise ValueError(f"layer '{layer.name}': round_mode {said} and ceil_mode {str(p.ceil_mode).lower()} "
                         f"disagree; give one of them (round_mode is BVLC's field, ceil_mode the ceil-mode forks' "
                         f"and OpenCV's)")
    return p.ceil_mode


def pooled_size(height: int, width: int, kernel, stride, pad, ceil: bool = True) -> tuple[int, int]:
    """PoolingLayer::Reshape (pooling_layer.cpp): ``ceil`` (or ``floor``) of ``(H + 2 pad - k) / stride`` + 1,
    then, if either pad is nonzero (``if (pad_h_ || pad_w_)``, so for both axes), a last window that starts at
    or past the end of the input (``(pooled - 1) * stride >= H + pad``) is dropped."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad

    def rounded(size, k, s, p):
        num = size + 2 * p - k
        return (-(-num // s) if ceil else num // s) + 1

    oh, ow = rounded(height, kh, sh, ph), rounded(width, kw, sw, pw)
    if ph or pw:
        if (oh - 1) * sh >= height + ph:
            oh -= 1
        if (ow - 1) * sw >= width + pw:
            ow -= 1
    return oh, ow


def spp_level(level: int, height: int, width: int) -> tuple[tuple, tuple, tuple]:
    """SPPLayer::GetPoolingParam (BVLC spp_layer.cpp): (kernel, stride, pad) of pyramid level ``level`` with
    ``2^level`` bins per axis: kernel = stride = ceil(H / bins), pad = (kernel * bins - H + 1) / 2 (integer)."""
    bins = 2 ** level
    kh, kw = -(-height // bins), -(-width // bins)
    ph, pw = (kh * bins - height + 1) // 2, (kw * bins - width + 1) // 2
    return (kh, kw), (kh, kw), (ph, pw)


def spp_levels(name: str, levels: int, height: int, width: int) -> list[tuple[tuple, tuple, tuple]]:
    """Every level's :func:`spp_level` for this input size, each checked as its PoolingLayer checks it (SPP's
    shapes and its module, which builds its levels for each size it meets)."""
    geometry = [spp_level(i, height, width) for i in range(levels)]
    for i, (kernel, stride, pad) in enumerate(geometry):
        if any(q >= k for k, q in zip(kernel, pad)):  # the level's PoolingLayer::LayerSetUp: CHECK_LT(pad, kernel)
            raise ValueError(f"layer '{name}': SPP level {i} of a {height} x {width} input needs pad {list(pad)} "
                             f"with kernel {list(kernel)}; Caffe's pooling requires pad < kernel (the input is too "
                             f"small for pyramid_height {levels})")
    return geometry
