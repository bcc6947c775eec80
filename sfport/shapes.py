"""Blob and parameter shapes of a Caffe net, inferred from its definition as Caffe's Reshape/LayerSetUp do.

``infer(net, phase)`` walks the layers active in ``phase`` and returns, per layer, the shapes of its tops and of
the parameter blobs Caffe would allocate. A layer type it does not know, or an input of unknown shape, leaves
``None`` there (and downstream) instead of failing: shapes are a check, not a requirement for reading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Shape = tuple  # of ints

# Types whose tops have the shape of their first bottom.
_SAME_SHAPE = {
    "ReLU", "PReLU", "Sigmoid", "TanH", "ELU", "AbsVal", "Power", "Exp", "Log", "BNLL", "Threshold", "Dropout",
    "BatchNorm", "Scale", "Bias", "LRN", "Softmax", "MVN", "Normalize", "Eltwise", "Clip", "Swish", "Sign",
}
_LOSSES = {"SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
           "MultinomialLogisticLoss", "ContrastiveLoss", "Accuracy", "InterClass"}


@dataclass
class LayerShapes:
    index: int                       # position in net.layer
    bottoms: list                    # shapes (or None) of the bottoms
    tops: list                       # shapes (or None) of the tops
    params: list | None              # expected parameter blob shapes, None when unknown


def layer_included(layer, phase: int, level: int = 0, stages: tuple = ()) -> bool:
    """Caffe's Net::FilterNet / StateMeetsRule for one layer (phase given as caffe_pb2.TRAIN/TEST)."""
    def meets(rule) -> bool:
        if rule.HasField("phase") and rule.phase != phase:
            return False
        if rule.HasField("min_level") and level < rule.min_level:
            return False
        if rule.HasField("max_level") and level > rule.max_level:
            return False
        if any(s not in stages for s in rule.stage):
            return False
        if any(s in stages for s in rule.not_stage):
            return False
        return True

    if len(layer.include):
        return any(meets(r) for r in layer.include)
    return not any(meets(r) for r in layer.exclude)


def canonical_axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


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


def pooling_output_size(size: int, kernel: int, pad: int, stride: int, ceil: bool = True) -> int:
    """Caffe pooling: ceil (or floor) rounding; with padding, a last window that starts in the padding is dropped."""
    num = size + 2 * pad - kernel
    out = (-(-num // stride) if ceil else num // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _reshape(bottom: Shape, p) -> Shape:
    """Caffe ReshapeLayer: 0 copies a dim, one -1 is inferred; axis/num_axes select the replaced range."""
    ndim = len(bottom)
    start = p.axis if p.axis >= 0 else p.axis + ndim + 1
    end = ndim if p.num_axes == -1 else start + p.num_axes
    dims = list(p.shape.dim)
    new = []
    for i, d in enumerate(dims):
        new.append(bottom[start + i] if d == 0 else d)
    shape = list(bottom[:start]) + new + list(bottom[end:])
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = math.prod(bottom) // known if known else 0
    return tuple(shape)


def _tops_and_params(layer, bottoms: list) -> tuple[list, list | None]:
    t = layer.type
    ntop = len(layer.top)
    b0 = bottoms[0] if bottoms else None

    if t == "Input":
        shapes = [tuple(s.dim) for s in layer.input_param.shape]
        if len(shapes) == 1:
            shapes = shapes * ntop
        return (shapes + [None] * ntop)[:ntop], []
    if t == "DummyData":
        p = layer.dummy_data_param
        shapes = [tuple(s.dim) for s in p.shape] or [
            (n, c, h, w) for n, c, h, w in zip(p.num, p.channels, p.height, p.width)]
        if len(shapes) == 1:
            shapes = shapes * ntop
        return (shapes + [None] * ntop)[:ntop], []
    if t == "MemoryData":
        p = layer.memory_data_param
        return [(p.batch_size, p.channels, p.height, p.width), (p.batch_size,)][:ntop], []
    if t == "Parameter":
        return [tuple(layer.parameter_param.shape.dim)], [tuple(layer.parameter_param.shape.dim)]
    if t in ("Silence",):
        return [], []
    if t in _LOSSES:
        params = None
        if t == "InterClass" and b0 is not None:
            p = layer.inter_class_param
            params = [(p.num_output, math.prod(b0[canonical_axis(p.axis, len(b0)):]))]
        elif t != "InterClass":
            params = []
        tops = [()] * ntop
        if t == "Accuracy" and ntop > 1 and bottoms[0] is not None:
            tops = [(), (bottoms[0][canonical_axis(layer.accuracy_param.axis, len(bottoms[0]))],)]
        return tops, params
    if b0 is None or any(b is None for b in bottoms):
        return [None] * ntop, None

    if t in ("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "Deconvolution"):
        p = layer.convolution_param
        axis = canonical_axis(p.axis, len(b0))
        n_sp = len(b0) - axis - 1
        kernel, pad, stride, dil = conv_geometry(p, n_sp)
        if kernel[0] is None:
            return [None] * ntop, None
        cin = b0[axis]
        group = p.group if p.HasField("group") or t in ("Convolution", "Deconvolution") else cin
        if t == "Deconvolution":
            out_sp = [s * (i - 1) + d * (k - 1) + 1 - 2 * pd
                      for i, k, pd, s, d in zip(b0[axis + 1:], kernel, pad, stride, dil)]
            weight = (cin, p.num_output // max(group, 1), *kernel)
        else:
            out_sp = [(i + 2 * pd - (d * (k - 1) + 1)) // s + 1
                      for i, k, pd, s, d in zip(b0[axis + 1:], kernel, pad, stride, dil)]
            weight = (p.num_output, cin // max(group, 1), *kernel)
        params = [weight] + ([(p.num_output,)] if p.bias_term else [])
        top = tuple(b0[:axis]) + (p.num_output,) + tuple(out_sp)
        return [top] * ntop, params
    if t == "Pooling":
        p = layer.pooling_param
        n, c, h, w = b0
        if p.global_pooling:
            return [(n, c, 1, 1)] * ntop, []
        (kh, kw), (sh, sw), (ph, pw) = pooling_geometry(p)
        ceil = p.round_mode == 0
        top = (n, c, pooling_output_size(h, kh, ph, sh, ceil), pooling_output_size(w, kw, pw, sw, ceil))
        return [top] * ntop, []
    if t in ("InnerProduct", "MarginInnerProduct"):
        p = layer.inner_product_param if t == "InnerProduct" else layer.margin_inner_product_param
        axis = canonical_axis(p.axis, len(b0))
        k = math.prod(b0[axis:])
        top = tuple(b0[:axis]) + (p.num_output,)
        if t == "MarginInnerProduct":
            return [top, (1,)][:ntop], [(p.num_output, k)]
        weight = (k, p.num_output) if p.transpose else (p.num_output, k)
        return [top] * ntop, [weight] + ([(p.num_output,)] if p.bias_term else [])
    if t == "Embed":
        p = layer.embed_param
        return [tuple(b0) + (p.num_output,)], [(p.input_dim, p.num_output)] + (
            [(p.num_output,)] if p.bias_term else [])
    if t in _SAME_SHAPE:
        params: list = []
        if t == "PReLU":
            params = [()] if layer.prelu_param.channel_shared else [(b0[1],)]
        elif t == "BatchNorm":
            params = [(b0[1],), (b0[1],), (1,)]
        elif t in ("Scale", "Bias"):
            p = layer.scale_param if t == "Scale" else layer.bias_param
            if len(bottoms) == 1:
                axis = canonical_axis(p.axis, len(b0))
                end = len(b0) if p.num_axes == -1 else axis + p.num_axes
                params = [tuple(b0[axis:end])]
                if t == "Scale" and p.bias_term:
                    params.append(tuple(b0[axis:end]))
            elif t == "Scale" and p.bias_term:
                params = [tuple(bottoms[1])]
        elif t == "Normalize":
            params = [(1,)] if layer.norm_param.channel_shared else [(b0[1],)]
        return [tuple(b0)] * ntop, params
    if t == "Split":
        return [tuple(b0)] * ntop, []
    if t == "Concat":
        p = layer.concat_param
        axis = canonical_axis(p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, len(b0))
        top = list(b0)
        top[axis] = sum(b[axis] for b in bottoms)
        return [tuple(top)], []
    if t == "Slice":
        p = layer.slice_param
        axis = canonical_axis(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim, len(b0))
        points = [0] + list(p.slice_point) + [b0[axis]]
        if not p.slice_point:
            step = b0[axis] // max(ntop, 1)
            points = [i * step for i in range(ntop + 1)]
        tops = []
        for a, b in zip(points[:-1], points[1:]):
            s = list(b0)
            s[axis] = b - a
            tops.append(tuple(s))
        return tops, []
    if t == "Flatten":
        p = layer.flatten_param
        a, e = canonical_axis(p.axis, len(b0)), canonical_axis(p.end_axis, len(b0))
        return [tuple(b0[:a]) + (math.prod(b0[a:e + 1]),) + tuple(b0[e + 1:])], []
    if t == "Reshape":
        return [_reshape(tuple(b0), layer.reshape_param)], []
    if t == "Permute":
        order = list(layer.permute_param.order)
        order += [i for i in range(len(b0)) if i not in order]
        return [tuple(b0[i] for i in order)], []
    if t == "Crop":
        if len(bottoms) < 2:
            return [None], []
        axis = canonical_axis(layer.crop_param.axis, len(b0))
        return [tuple(b0[:axis]) + tuple(bottoms[1][axis:])], []
    if t == "Upsample":
        p = layer.upsample_param
        sh = p.scale_h if p.HasField("scale_h") else p.scale
        sw = p.scale_w if p.HasField("scale_w") else p.scale
        return [tuple(b0[:-2]) + (b0[-2] * sh, b0[-1] * sw)], []
    if t == "ArgMax":
        p = layer.argmax_param
        if p.HasField("axis"):
            s = list(b0)
            s[canonical_axis(p.axis, len(b0))] = p.top_k
            return [tuple(s)], []
        return [(b0[0], 2 if p.out_max_val else 1, p.top_k)], []
    return [None] * ntop, None


# Layers that feed the net from a data source (not Input): their tops' shapes come from the data.
DATA_SOURCES = {"Data", "ImageData", "HDF5Data", "WindowData", "AnnotatedData", "Python"}


def _data_tops(layer, given: dict) -> list:
    """Shapes of a data layer's tops: as given, else what its parameters fix (ImageData with new_height/
    new_width or crop_size); a label top takes the batch size of the data."""
    tops = [given.get(t) for t in layer.top]
    if tops and tops[0] is None and layer.type == "ImageData":
        p, tp = layer.image_data_param, layer.transform_param
        h = tp.crop_size or p.new_height
        w = tp.crop_size or p.new_width
        if h and w:
            tops[0] = (p.batch_size, 3 if p.is_color else 1, h, w)
    if len(tops) > 1 and tops[0] is not None and tops[1] is None:
        tops[1] = (tops[0][0],)
    return tops


def infer(net, phase: int = 1, input_shapes: dict | None = None) -> list[LayerShapes]:
    """Shapes of every layer's tops and parameter blobs for the layers active in ``phase`` (1 = TEST).
    ``input_shapes`` gives blob shapes by name (for Input layers' and data layers' tops)."""
    given = dict(input_shapes or {})
    blobs: dict[str, tuple | None] = dict(given)
    out = []
    for i, layer in enumerate(net.layer):
        if not layer_included(layer, phase):
            continue
        bottoms = [blobs.get(b) for b in layer.bottom]
        try:
            if layer.type in DATA_SOURCES:
                tops, params = _data_tops(layer, given), []
            else:
                tops, params = _tops_and_params(layer, bottoms)
        except (ValueError, IndexError, ZeroDivisionError, TypeError):
            tops, params = [None] * len(layer.top), None
        for name, shape in zip(layer.top, tops):
            blobs[name] = None if shape is None else tuple(int(d) for d in shape)
        out.append(LayerShapes(i, bottoms, list(tops), params))
    return out
