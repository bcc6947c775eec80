"""Convolution, DepthwiseConvolution (grouped, as in the mobile forks), Deconvolution and Im2col."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Converter, folded_blobs, register
from .geometry import canonical_axis, conv_geometry, coord_window


@dataclass
class _Setup:
    axis: int
    kernel: list
    pad: list
    stride: list
    dilation: list
    groups: int
    weight: tuple
    transpose: bool


def _setup(layer, shape) -> _Setup:
    """BaseConvolutionLayer::LayerSetUp (base_conv_layer.cpp) with its CHECKs: geometry given once or once per
    spatial axis, nonzero kernel, stride and dilation, num_output > 0 and both channel counts multiples of group
    (the depthwise forks default to one group per channel), and the weight blob's shape, (out, in/group, *k) or
    for Deconvolution (in, out/group, *k)."""
    p = layer.convolution_param
    if not -len(shape) <= p.axis < len(shape):
        raise ValueError(f"axis {p.axis} is out of range for a {len(shape)}-D bottom")
    axis = canonical_axis(p.axis, len(shape))
    n = len(shape) - axis - 1
    if n < 1:
        raise ValueError(f"a {len(shape)}-D bottom has no spatial axis after axis {p.axis}")
    for name, values in (("kernel_size", p.kernel_size), ("stride", p.stride), ("pad", p.pad),
                         ("dilation", p.dilation)):
        if len(values) not in (0, 1, n):
            raise ValueError(f"{name} must be specified once, or once per spatial dimension ({name}_size="
                             f"{len(values)}, spatial dims={n})")
    kernel, pad, stride, dilation = conv_geometry(p, n)
    if kernel[0] is None:
        raise ValueError(f"layer '{layer.name}': convolution without kernel_size")
    _check_positive((("kernel", kernel), ("stride", stride), ("dilation", dilation)), p.num_output)
    cin = shape[axis]
    depthwise = layer.type not in ("Convolution", "Deconvolution")
    groups = cin if depthwise and not p.HasField("group") else p.group
    if groups < 1 or cin % groups or p.num_output % groups:
        raise ValueError(f"group {groups} must divide both the input channels ({cin}) and num_output "
                         f"({p.num_output})")
    transpose = layer.type == "Deconvolution"
    weight = (cin, p.num_output // groups, *kernel) if transpose else (p.num_output, cin // groups, *kernel)
    return _Setup(axis, kernel, pad, stride, dilation, groups, weight, transpose)


def conv_out(size: int, k: int, p: int, s: int, d: int) -> int:
    """ConvolutionLayer::compute_output_shape (and Im2colLayer::Reshape) in C++ integers: ``(input + 2 pad - (dilation (kernel - 1) + 1)) /
    stride + 1``, the division truncating toward zero (a kernel up to stride - 1 past the padded input still
    gives one output, which reads zeros there, as im2col_cpu does). Sizes past Caffe's int arithmetic (a padded
    input or a dilated kernel over INT_MAX, where Caffe's own computation overflows) are a ValueError."""
    if size + 2 * p > 2 ** 31 - 1 or d * (k - 1) + 1 > 2 ** 31 - 1:
        raise ValueError(f"the padded input ({size} + 2 x {p}) or the dilated kernel ({d} x ({k} - 1) + 1) is past "
                         f"INT_MAX: Caffe's int arithmetic overflows there")
    return _c_div(size + 2 * p - (d * (k - 1) + 1), s) + 1


def _check_positive(geometry, num_output: int) -> None:
    """base_conv_layer.cpp LayerSetUp: CHECK_GT of every kernel, stride and dilation value (``geometry``: (name,
    values) pairs) and of num_output."""
    for name, values in geometry:
        if any(v < 1 for v in values):
            raise ValueError(f"{name} {list(values)} must be nonzero (Filter dimensions, stride and dilation must be "
                             f"positive)")
    if num_output < 1:
        raise ValueError("num_output must be positive (CHECK_GT(num_output_, 0))")


@register("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "Deconvolution")
class ConvolutionConverter(Converter):
    def check_parameters(self, layer):
        """The CHECKs of :func:`_setup` that need no bottom shape, on the values as given (a definition whose
        input shapes are unknown is checked too)."""
        p = layer.convolution_param
        given = lambda field, h, w: list(getattr(p, field)) + [getattr(p, f) for f in (h, w) if p.HasField(f)]  # noqa: E731
        _check_positive((("kernel", given("kernel_size", "kernel_h", "kernel_w")),
                         ("stride", given("stride", "stride_h", "stride_w")), ("dilation", list(p.dilation))),
                        p.num_output)

    fresh_top = True
    param_field = "convolution_param"

    def images_apart(self, layer, bottom_shapes):
        """Channels on ``axis``, the spatial axes after it: each image on its own where the axis is not 0."""
        return canonical_axis(layer.convolution_param.axis, len(bottom_shapes[0])) > 0

    def coord_map(self, layer):
        """pycaffe coord_map.py: output coordinate i of a convolution is input i * stride + (extent - 1) / 2 -
        pad, so scale 1 / stride and shift (pad - (extent - 1) / 2) / stride; a deconvolution is the inverse."""
        window = coord_window(layer.convolution_param)
        if window is None:
            return None
        axis, stride, extent, pad = window
        if layer.type == "Deconvolution":
            return axis, stride, (extent - 1) / 2 - pad
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride

    def param_shapes(self, layer, bottom_shapes):
        p = layer.convolution_param
        return [_setup(layer, bottom_shapes[0]).weight] + ([(p.num_output,)] if p.bias_term else [])

    def top_shapes(self, layer, bottom_shapes):
        """ConvolutionLayer::compute_output_shape (and Deconvolution's inverse of it)."""
        b0, s = bottom_shapes[0], _setup(layer, bottom_shapes[0])
        sizes = zip(b0[s.axis + 1:], s.kernel, s.pad, s.stride, s.dilation)
        if s.transpose:
            out = [st * (i - 1) + d * (k - 1) + 1 - 2 * pd for i, k, pd, st, d in sizes]
        else:
            out = [conv_out(i, k, pd, st, d) for i, k, pd, st, d in sizes]
        return [tuple(b0[:s.axis]) + (layer.convolution_param.num_output,) + tuple(out)] * len(layer.top)

    def build(self, layer, bottom_shapes):
        s = _setup(layer, bottom_shapes[0])
        if s.axis != 1:
            raise ValueError(f"layer '{layer.name}': convolution axis {layer.convolution_param.axis} is not "
                             f"supported (only 1)")
        from .modules.conv import CaffeConv
        return CaffeConv(s.weight, layer.convolution_param.bias_term, s.stride, s.pad, s.dilation, s.groups,
                         s.transpose)

    def fillers(self, layer):
        p = layer.convolution_param
        return [p.weight_filler, p.bias_filler]

    def fan_in(self, layer, weight_shape):
        if layer.type == "Deconvolution":  # a transposed weight (in, out/group, *k)
            return weight_shape[0] * math.prod(weight_shape[2:])
        return math.prod(weight_shape[1:])

    def fold_affine(self, layer, module, a, b):
        """``a * conv + b`` per output channel: base_conv_layer.cpp forward_cpu_gemm / forward_cpu_bias (output
        channel o reads weight[o], shape out x in/group x k); Deconvolution (deconv_layer.cpp, backward_cpu_gemm)
        has the weight in x out/group x k, group g's output channels in the second axis of its rows."""
        def scaled(w):
            if layer.type == "Deconvolution":
                groups = module.groups
                cin, per = w.shape[0], w.shape[1]
                return (w.reshape(groups, cin // groups, per, -1) * a.reshape(groups, 1, per, 1)).reshape(w.shape)
            return w * a.reshape((-1,) + (1,) * (w.ndim - 1))
        return folded_blobs(module, a, b, scaled)

    def with_bias(self, layer):
        layer.convolution_param.bias_term = True

    def for_reference(self, layer, graph_layer):
        """The mobile forks' depthwise types as BVLC's grouped Convolution, one group per input channel unless
        ``group`` says otherwise (as :func:`_setup` reads them)."""
        if layer.type in ("Convolution", "Deconvolution"):
            return
        layer.type = "Convolution"
        if not layer.convolution_param.HasField("group") and graph_layer is not None:
            layer.convolution_param.group = int(graph_layer.bottom_shapes[0][1])


# ---- Im2col ---------------------------------------------------------------------------------------------------

def _c_div(a: int, b: int) -> int:
    """C++ integer division (toward zero), as Caffe's shape arithmetic."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


@register("Im2col")
class Im2colConverter(Converter):
    param_field = "convolution_param"
    coord_map = ConvolutionConverter.coord_map
    images_apart = ConvolutionConverter.images_apart
    def _setup(self, layer, shape):
        p = layer.convolution_param
        axis = canonical_axis(p.axis, len(shape))
        n = len(shape) - axis - 1
        if not 0 <= axis < len(shape) or n < 1:  # LayerSetUp: CHECK_GE(num_spatial_axes_, 1)
            raise ValueError(f"layer '{layer.name}': Im2col needs at least one spatial axis after axis {p.axis} of a "
                             f"{len(shape)}-D input")
        kernel, pad, stride, dilation = conv_geometry(p, n)
        if kernel[0] is None or len(kernel) != n or any(k < 1 for k in kernel):
            raise ValueError(f"layer '{layer.name}': Im2col needs a nonzero kernel_size (once, or once per spatial "
                             f"axis), got {list(p.kernel_size)}")
        if len(stride) != n or any(s < 1 for s in stride) or len(pad) != n or len(dilation) != n \
                or any(d < 1 for d in dilation):
            raise ValueError(f"layer '{layer.name}': Im2col stride and dilation must be nonzero, and stride, pad and "
                             f"dilation given once or once per spatial axis")
        out = [conv_out(*g) for g in zip(shape[axis + 1:], kernel, pad, stride, dilation)]
        if any(o < 0 for o in out):  # a negative dimension: Blob::Reshape's CHECK_GE fails
            raise ValueError(f"layer '{layer.name}': Im2col of a {list(shape[axis + 1:])} input with kernel "
                             f"{list(kernel)}, pad {list(pad)}, dilation {list(dilation)} gives the size {out}")
        return axis, kernel, stride, pad, dilation, out

    def param_shapes(self, layer, bottom_shapes):
        return []

    def top_shapes(self, layer, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, kernel, _, _, _, out = self._setup(layer, shape)
        return [shape[:axis] + (shape[axis] * math.prod(kernel),) + tuple(out)]

    def build(self, layer, bottom_shapes):
        axis, kernel, stride, pad, dilation, _ = self._setup(layer, tuple(bottom_shapes[0]))
        from .modules.conv import Im2col
        return Im2col(layer.name, axis, kernel, stride, pad, dilation)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.conv`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import conv
    return getattr(conv, name)
