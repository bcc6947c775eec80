"""Layers that route, reshape or combine blobs: Eltwise, Concat, Slice, Split, Flatten, Reshape, Crop, Permute,
Softmax, ArgMax, Silence. Each operation is its own small module, chosen once at build."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Converter, NoBlobs, SameShape, register
from .geometry import canonical_axis


class EltwiseProd(NoBlobs):
    def forward(self, *xs):
        y = xs[0]
        for t in xs[1:]:
            y = y * t
        return y


class EltwiseMax(NoBlobs):
    def forward(self, *xs):
        y = xs[0]
        for t in xs[1:]:
            y = torch.maximum(y, t)
        return y


class EltwiseSum(NoBlobs):
    """Caffe EltwiseLayer SUM: sum of coeff_i * x_i (a coefficient of 1 multiplies nothing)."""

    def __init__(self, coeff: list[float]):
        super().__init__()
        self.coeff = coeff

    def forward(self, *xs):
        y = xs[0] if self.coeff[0] == 1 else xs[0] * self.coeff[0]
        for c, t in zip(self.coeff[1:], xs[1:]):
            y = y + (t if c == 1 else t * c)
        return y


class Concat(NoBlobs):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)


class Slice(NoBlobs):
    def __init__(self, axis: int, sizes: list[int]):
        super().__init__()
        self.axis, self.sizes = axis, sizes

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


class Split(NoBlobs):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return tuple(x for _ in range(self.n))


class Flatten(NoBlobs):
    def __init__(self, axis: int, end_axis: int):
        super().__init__()
        self.axis, self.end_axis = axis, end_axis

    def forward(self, x):
        return torch.flatten(x, self.axis, self.end_axis)


class Reshape(NoBlobs):
    """Caffe ReshapeLayer: dims replace axes [start, end); 0 copies the bottom's dim, one -1 is inferred."""

    def __init__(self, start: int, end: int | None, dims: list[int]):
        super().__init__()
        self.start, self.end, self.dims = start, end, dims

    def forward(self, x):
        end = x.dim() if self.end is None else self.end
        shape = list(x.shape[:self.start]) + [x.shape[self.start + i] if d == 0 else d
                                              for i, d in enumerate(self.dims)] + list(x.shape[end:])
        return x.reshape(shape)


class Crop(NoBlobs):
    """Caffe CropLayer: the first bottom cut to the second's shape from ``axis`` on, at ``offsets``."""

    def __init__(self, axis: int, offsets: list[int]):
        super().__init__()
        self.axis, self.offsets = axis, offsets

    def forward(self, x, ref):
        y = x
        for ax, off in zip(range(self.axis, x.dim()), self.offsets):
            y = y.narrow(ax, off, ref.shape[ax])
        return y


class Permute(NoBlobs):
    def __init__(self, order: list[int]):
        super().__init__()
        self.order = order

    def forward(self, x):
        return x.permute(self.order)


class Softmax(NoBlobs):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return F.softmax(x, dim=self.axis)


class ArgMax(NoBlobs):
    """Caffe ArgMaxLayer: without axis, over each sample flattened, output (N, 1 or 2, top_k) with
    [indices; values]; with axis, the top_k indices (or values with out_max_val) along it."""

    def __init__(self, top_k: int, out_max_val: bool, axis: int | None):
        super().__init__()
        self.top_k, self.out_max_val, self.axis = top_k, out_max_val, axis

    def forward(self, x):
        if self.axis is None:
            vals, idx = torch.topk(x.reshape(x.shape[0], -1), self.top_k, dim=1)
            return torch.stack([idx.to(x.dtype)] + ([vals] if self.out_max_val else []), dim=1)
        vals, idx = torch.topk(x, self.top_k, dim=self.axis)
        return vals if self.out_max_val else idx.to(x.dtype)


class Silence(NoBlobs):
    def forward(self, *xs):
        return ()


class _Shapeless(Converter):
    """A parameter-free layer whose tops are computed by ``top_shapes``."""

    def param_shapes(self, layer, bottom_shapes):
        return []


@register("Eltwise")
class EltwiseConverter(SameShape):
    def build(self, layer, bottom_shapes):
        p = layer.eltwise_param
        if p.operation == p.PROD:
            return EltwiseProd()
        if p.operation == p.MAX:
            return EltwiseMax()
        coeff = list(p.coeff) or [1.0] * len(bottom_shapes)
        if len(coeff) != len(bottom_shapes):
            raise ValueError(f"layer '{layer.name}': {len(coeff)} coeff for {len(bottom_shapes)} bottoms")
        return EltwiseSum(coeff)


def _concat_axis(layer, ndim: int) -> int:
    p = layer.concat_param
    return canonical_axis(p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, ndim)


@register("Concat")
class ConcatConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        axis = _concat_axis(layer, len(bottom_shapes[0]))
        top = list(bottom_shapes[0])
        top[axis] = sum(b[axis] for b in bottom_shapes)
        return [tuple(top)]

    def build(self, layer, bottom_shapes):
        return Concat(_concat_axis(layer, len(bottom_shapes[0])))


def _slice_sizes(layer, shape) -> tuple[int, list[int]]:
    """Caffe SliceLayer::Reshape: the axis and the size of each top (slice_point, else an even split)."""
    p = layer.slice_param
    axis = canonical_axis(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim, len(shape))
    n = len(layer.top)
    if p.slice_point:
        points = [0] + list(p.slice_point) + [shape[axis]]
    else:
        if shape[axis] % n:
            raise ValueError(f"layer '{layer.name}': {shape[axis]} does not split evenly into {n} tops")
        points = [i * shape[axis] // n for i in range(n + 1)]
    return axis, [b - a for a, b in zip(points[:-1], points[1:])]


@register("Slice")
class SliceConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        axis, sizes = _slice_sizes(layer, bottom_shapes[0])
        return [tuple(bottom_shapes[0][:axis]) + (n,) + tuple(bottom_shapes[0][axis + 1:]) for n in sizes]

    def build(self, layer, bottom_shapes):
        return Slice(*_slice_sizes(layer, bottom_shapes[0]))


@register("Split")
class SplitConverter(SameShape):
    def build(self, layer, bottom_shapes):
        return Split(len(layer.top))


def _flatten_axes(layer, ndim: int) -> tuple[int, int]:
    p = layer.flatten_param
    return canonical_axis(p.axis, ndim), canonical_axis(p.end_axis, ndim)


@register("Flatten")
class FlattenConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        b0 = bottom_shapes[0]
        a, e = _flatten_axes(layer, len(b0))
        return [tuple(b0[:a]) + (math.prod(b0[a:e + 1]),) + tuple(b0[e + 1:])]

    def build(self, layer, bottom_shapes):
        return Flatten(*_flatten_axes(layer, len(bottom_shapes[0])))


def _reshape_range(p, ndim: int) -> tuple[int, int | None]:
    start = p.axis if p.axis >= 0 else p.axis + ndim + 1
    return start, (None if p.num_axes == -1 else start + p.num_axes)


@register("Reshape")
class ReshapeConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        """Caffe ReshapeLayer::Reshape: 0 copies a dim, one -1 is inferred from the count."""
        bottom = tuple(bottom_shapes[0])
        p = layer.reshape_param
        start, end = _reshape_range(p, len(bottom))
        end = len(bottom) if end is None else end
        new = [bottom[start + i] if d == 0 else d for i, d in enumerate(p.shape.dim)]
        shape = list(bottom[:start]) + new + list(bottom[end:])
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            shape[shape.index(-1)] = math.prod(bottom) // known if known else 0
        return [tuple(shape)]

    def build(self, layer, bottom_shapes):
        p = layer.reshape_param
        return Reshape(*_reshape_range(p, len(bottom_shapes[0])), [int(d) for d in p.shape.dim])


@register("Crop")
class CropConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        if len(bottom_shapes) < 2:
            return None
        axis = canonical_axis(layer.crop_param.axis, len(bottom_shapes[0]))
        return [tuple(bottom_shapes[0][:axis]) + tuple(bottom_shapes[1][axis:])]

    def build(self, layer, bottom_shapes):
        p, nd = layer.crop_param, len(bottom_shapes[0])
        axis = canonical_axis(p.axis, nd)
        offsets = list(p.offset) or [0]
        if len(offsets) == 1:
            offsets = offsets * (nd - axis)
        return Crop(axis, offsets)


def _permute_order(layer, ndim: int) -> list[int]:
    order = list(layer.permute_param.order)
    return order + [i for i in range(ndim) if i not in order]


@register("Permute")
class PermuteConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        b0 = bottom_shapes[0]
        return [tuple(b0[i] for i in _permute_order(layer, len(b0)))]

    def build(self, layer, bottom_shapes):
        return Permute(_permute_order(layer, len(bottom_shapes[0])))


@register("Softmax")
class SoftmaxConverter(SameShape):
    def build(self, layer, bottom_shapes):
        return Softmax(canonical_axis(layer.softmax_param.axis, len(bottom_shapes[0])))


@register("ArgMax")
class ArgMaxConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        p, b0 = layer.argmax_param, bottom_shapes[0]
        if p.HasField("axis"):
            s = list(b0)
            s[canonical_axis(p.axis, len(b0))] = p.top_k
            return [tuple(s)]
        return [(b0[0], 2 if p.out_max_val else 1, p.top_k)]

    def build(self, layer, bottom_shapes):
        p = layer.argmax_param
        axis = canonical_axis(p.axis, len(bottom_shapes[0])) if p.HasField("axis") else None
        return ArgMax(p.top_k, p.out_max_val, axis)


@register("Silence")
class SilenceConverter(_Shapeless):
    training_only = True

    def top_shapes(self, layer, bottom_shapes):
        return []

    def build(self, layer, bottom_shapes):
        return Silence()
