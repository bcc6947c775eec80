"""Layers that route, reshape or combine blobs: Eltwise, Concat, Slice, Split, Flatten, Reshape, Crop, Permute,
Softmax, ArgMax, Silence, Tile, Reduction, BatchReindex, Filter, Parameter. Each operation is its own small
module (:mod:`.modules.structure`), chosen once at build."""
from __future__ import annotations

import math

import numpy as np

from .base import Converter, NoParams, SameShape, register
from .geometry import canonical_axis


def _checked_axis(layer, axis: int, ndim: int) -> int:
    """Blob::CanonicalAxisIndex with its CHECKs: -ndim <= axis < ndim, a negative axis counting from the end."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"layer '{layer.name}' ({layer.type}): axis {axis} is out of range for a {ndim}-D bottom")
    return canonical_axis(axis, ndim)


@register("Eltwise")
class EltwiseConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    per_image = True
    @staticmethod
    def _check(layer, bottom_shapes) -> None:
        """EltwiseLayer::LayerSetUp / Reshape (eltwise_layer.cpp): at least two bottoms (MinBottomBlobs), coeff
        only for SUM and then one per bottom, and every bottom of the first one's shape."""
        p = layer.eltwise_param
        if len(bottom_shapes) < 2:
            raise ValueError(f"Eltwise takes at least 2 bottoms, got {len(bottom_shapes)}")
        if p.operation == p.PROD and len(p.coeff):
            raise ValueError("Eltwise layer only takes coefficients for summation (operation PROD with coeff)")
        if len(p.coeff) and len(p.coeff) != len(bottom_shapes):
            raise ValueError(f"Eltwise Layer takes one coefficient per bottom blob: {len(p.coeff)} coeff for "
                             f"{len(bottom_shapes)} bottoms")
        for name, shape in zip(layer.bottom[1:], bottom_shapes[1:]):
            if tuple(shape) != tuple(bottom_shapes[0]):
                raise ValueError(f"bottom '{name}' {list(shape)} must have the shape of '{layer.bottom[0]}' "
                                 f"{list(bottom_shapes[0])}")

    def top_shapes(self, layer, bottom_shapes):
        self._check(layer, bottom_shapes)
        return super().top_shapes(layer, bottom_shapes)

    def build(self, layer, bottom_shapes):
        from .modules.structure import EltwiseMax, EltwiseProd, EltwiseSum
        self._check(layer, bottom_shapes)
        p = layer.eltwise_param
        if p.operation == p.PROD:
            return EltwiseProd()
        if p.operation == p.MAX:
            return EltwiseMax()
        return EltwiseSum(list(p.coeff) or [1.0] * len(bottom_shapes))


def _concat_axis(layer, ndim: int) -> int:
    p = layer.concat_param
    return canonical_axis(p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, ndim)


@register("Concat")
class ConcatConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        return _concat_axis(layer, len(bottom_shapes[0])) > 0   # along axis 0 it joins batches

    def top_shapes(self, layer, bottom_shapes):
        axis = _concat_axis(layer, len(bottom_shapes[0]))
        top = list(bottom_shapes[0])
        top[axis] = sum(b[axis] for b in bottom_shapes)
        return [tuple(top)]

    def build(self, layer, bottom_shapes):
        from .modules.structure import Concat
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
class SliceConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        return _slice_sizes(layer, bottom_shapes[0])[0] > 0   # along axis 0 it parts the batch

    def top_shapes(self, layer, bottom_shapes):
        axis, sizes = _slice_sizes(layer, bottom_shapes[0])
        return [tuple(bottom_shapes[0][:axis]) + (n,) + tuple(bottom_shapes[0][axis + 1:]) for n in sizes]

    def build(self, layer, bottom_shapes):
        from .modules.structure import Slice
        return Slice(*_slice_sizes(layer, bottom_shapes[0]))


@register("Split")
class SplitConverter(SameShape):
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    per_image = True
    copies_bottom = True    # split_layer.cpp: each top a copy of the one bottom (what insert_splits.cpp inserts)

    def build(self, layer, bottom_shapes):
        from .modules.structure import Split
        return Split(len(layer.top))

    def identity_at_inference(self, layer):
        return True     # split_layer.cpp Forward_cpu: every top ShareData()s the bottom


def _flatten_axes(layer, ndim: int) -> tuple[int, int]:
    p = layer.flatten_param
    return canonical_axis(p.axis, ndim), canonical_axis(p.end_axis, ndim)


@register("Flatten")
class FlattenConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        return _flatten_axes(layer, len(bottom_shapes[0]))[0] > 0   # from axis 0 it merges the batch

    def top_shapes(self, layer, bottom_shapes):
        b0 = bottom_shapes[0]
        a, e = _flatten_axes(layer, len(b0))
        return [tuple(b0[:a]) + (math.prod(b0[a:e + 1]),) + tuple(b0[e + 1:])]

    def build(self, layer, bottom_shapes):
        from .modules.structure import Flatten
        return Flatten(*_flatten_axes(layer, len(bottom_shapes[0])))


def _reshape_range(p, ndim: int) -> tuple[int, int | None]:
    start = p.axis if p.axis >= 0 else p.axis + ndim + 1
    return start, (None if p.num_axes == -1 else start + p.num_axes)


@register("Reshape")
class ReshapeConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        """Axis 0 kept: the reshaped range starts after it, or at it with a first dim of 0 (a copy)."""
        p = layer.reshape_param
        start, end = _reshape_range(p, len(bottom_shapes[0]))
        return start > 0 or (end != 0 and len(p.shape.dim) > 0 and p.shape.dim[0] == 0)

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
        from .modules.structure import Reshape
        p = layer.reshape_param
        return Reshape(*_reshape_range(p, len(bottom_shapes[0])), [int(d) for d in p.shape.dim])


@register("Crop")
class CropConverter(NoParams):
    coord_bottoms = 1   # coord_map.py: only the cropped bottom maps; the second gives the size

    def images_apart(self, layer, bottom_shapes):
        return canonical_axis(layer.crop_param.axis, len(bottom_shapes[0])) > 0   # from axis 0 it crops the batch

    def coord_map(self, layer):
        """pycaffe coord_map.py: a crop shifts coordinates by its offsets, from the axis before ``axis``."""
        offset = np.array(list(layer.crop_param.offset) or [0], ndmin=1)
        return layer.crop_param.axis - 1, 1, -offset
    def top_shapes(self, layer, bottom_shapes):
        if len(bottom_shapes) < 2:
            return None
        axis = canonical_axis(layer.crop_param.axis, len(bottom_shapes[0]))
        return [tuple(bottom_shapes[0][:axis]) + tuple(bottom_shapes[1][axis:])]

    def build(self, layer, bottom_shapes):
        from .modules.structure import Crop
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
class PermuteConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        return _permute_order(layer, len(bottom_shapes[0]))[0] == 0   # the batch stays first

    def top_shapes(self, layer, bottom_shapes):
        b0 = bottom_shapes[0]
        return [tuple(b0[i] for i in _permute_order(layer, len(b0)))]

    def build(self, layer, bottom_shapes):
        from .modules.structure import Permute
        return Permute(_permute_order(layer, len(bottom_shapes[0])))


@register("Softmax")
class SoftmaxConverter(SameShape):
    def images_apart(self, layer, bottom_shapes):
        return canonical_axis(layer.softmax_param.axis, len(bottom_shapes[0])) > 0   # over axis 0: the batch

    def top_shapes(self, layer, bottom_shapes):
        canonical_axis(layer.softmax_param.axis, len(bottom_shapes[0]))
        return super().top_shapes(layer, bottom_shapes)

    def build(self, layer, bottom_shapes):
        from .modules.structure import Softmax
        return Softmax(canonical_axis(layer.softmax_param.axis, len(bottom_shapes[0])))


def _argmax_setup(layer, shape) -> tuple[int | None, tuple]:
    """ArgMaxLayer::LayerSetUp CHECKs (1 <= top_k <= the dimension ranked) and ArgMaxLayer::Reshape: with axis,
    the bottom's shape with top_k on the axis; without, (N, 1 or 2, top_k) padded with 1s to the bottom's number
    of axes (at least 3) - so (N, 1, top_k, 1) for a 4-D bottom."""
    p, shape = layer.argmax_param, tuple(shape)
    if p.top_k < 1:
        raise ValueError(f"layer '{layer.name}' (ArgMax): top_k must be at least 1")
    if p.HasField("axis"):
        axis = _checked_axis(layer, p.axis, len(shape))
        if p.top_k > shape[axis]:
            raise ValueError(f"layer '{layer.name}' (ArgMax): top_k {p.top_k} exceeds the dimension {shape[axis]} "
                             f"of axis {axis}")
        top = list(shape)
        top[axis] = p.top_k
        return axis, tuple(top)
    dim = math.prod(shape[1:])
    if p.top_k > dim:
        raise ValueError(f"layer '{layer.name}' (ArgMax): top_k {p.top_k} exceeds the {dim} values of a sample")
    top = [1] * max(len(shape), 3)
    top[0], top[1], top[2] = shape[0], 2 if p.out_max_val else 1, p.top_k
    return None, tuple(top)


@register("ArgMax")
class ArgMaxConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        axis, _ = _argmax_setup(layer, bottom_shapes[0])   # no axis: over each sample's values
        return axis is None or axis > 0

    def top_shapes(self, layer, bottom_shapes):
        return [_argmax_setup(layer, bottom_shapes[0])[1]]

    def build(self, layer, bottom_shapes):
        from .modules.structure import ArgMax
        axis, top = _argmax_setup(layer, bottom_shapes[0])
        p = layer.argmax_param
        return ArgMax(p.top_k, p.out_max_val, axis, top)


@register("Silence")
class SilenceConverter(NoParams):
    per_image = True
    training_only = True
    computes_nothing = True     # silence_layer.cpp Forward_cpu does nothing

    def top_shapes(self, layer, bottom_shapes):
        return []

    def build(self, layer, bottom_shapes):
        from .modules.structure import Silence
        return Silence()


# ---- Tile, Reduction, BatchReindex, Filter, Parameter ----------------------------------------------------------


def _tile_setup(layer, shape) -> tuple[int, int]:
    """TileLayer::Reshape CHECKs: tiles given and positive; the axis in range."""
    p = layer.tile_param
    axis = _checked_axis(layer, p.axis, len(shape))
    if not p.HasField("tiles"):
        raise ValueError(f"layer '{layer.name}' (Tile): tile_param.tiles must be given")
    if p.tiles <= 0:
        raise ValueError(f"layer '{layer.name}' (Tile): tiles must be positive, not {p.tiles}")
    return axis, p.tiles


@register("Tile")
class TileConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        return _tile_setup(layer, bottom_shapes[0])[0] > 0   # along axis 0 it repeats the batch

    def top_shapes(self, layer, bottom_shapes):
        axis, tiles = _tile_setup(layer, bottom_shapes[0])
        top = list(bottom_shapes[0])
        top[axis] *= tiles
        return [tuple(top)]

    def build(self, layer, bottom_shapes):
        from .modules.structure import Tile
        return Tile(*_tile_setup(layer, bottom_shapes[0]))


_REDUCTION_OPS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}


def _reduction_setup(layer, shape) -> tuple[str, int, float]:
    p = layer.reduction_param
    if p.operation not in _REDUCTION_OPS:
        raise ValueError(f"layer '{layer.name}' (Reduction): unknown operation {p.operation}")
    op = _REDUCTION_OPS[p.operation]
    axis = _checked_axis(layer, p.axis, len(shape))
    coeff = np.float32(p.coeff)                     # ReductionLayer::Reshape: Dtype coeff_, /= dim_ for MEAN
    if op == "MEAN":
        coeff = coeff / np.float32(math.prod(shape[axis:]))
    return op, axis, float(np.float32(coeff))


@register("Reduction")
class ReductionConverter(NoParams):
    def images_apart(self, layer, bottom_shapes):
        return _reduction_setup(layer, bottom_shapes[0])[1] > 0   # from axis 0 (the default) over the batch

    def top_shapes(self, layer, bottom_shapes):
        _, axis, _ = _reduction_setup(layer, bottom_shapes[0])
        return [tuple(bottom_shapes[0][:axis])]     # the axes before the reduced one; () for axis 0

    def build(self, layer, bottom_shapes):
        from .modules.structure import Reduction
        return Reduction(*_reduction_setup(layer, bottom_shapes[0]))


@register("BatchReindex")
class BatchReindexConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """BatchReindexLayer::Reshape: (permut's length,) + the data's shape after the first axis."""
        if len(bottom_shapes) != 2:
            raise ValueError(f"layer '{layer.name}' (BatchReindex): needs two bottoms (data, permutation), "
                             f"not {len(bottom_shapes)}")
        data, permut = bottom_shapes
        if len(permut) != 1:
            raise ValueError(f"layer '{layer.name}' (BatchReindex): the permutation must be 1-D, not "
                             f"{list(permut)}")
        return [(permut[0],) + tuple(data[1:])]

    def build(self, layer, bottom_shapes):
        from .modules.structure import BatchReindex
        self.top_shapes(layer, bottom_shapes)
        return BatchReindex(layer.name)


@register("Filter")
class FilterConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """FilterLayer::Reshape. The first axis of a top is data-dependent: the number of nonzero selector
        values, known only at forward. At setup (``first_reshape_``) Caffe gives each top its bottom's shape,
        the most it can keep, and so does this; a forward then gives the first axis from the values."""
        name = f"layer '{layer.name}' (Filter)"
        if len(bottom_shapes) < 2:
            raise ValueError(f"{name}: needs the blobs to filter and a selector as the last bottom")
        if len(layer.top) != len(bottom_shapes) - 1:   # FilterLayer::LayerSetUp
            raise ValueError(f"{name}: needs one top per filtered bottom ({len(bottom_shapes) - 1}), not "
                             f"{len(layer.top)}")
        selector = tuple(bottom_shapes[-1])
        if not selector or any(d != 1 for d in selector[1:]):
            raise ValueError(f"{name}: the selector's dimensions must be 1 except the first, not {list(selector)}")
        for b in bottom_shapes[:-1]:
            if not b or b[0] != selector[0]:
                raise ValueError(f"{name}: each bottom must have the selector's first dimension {selector[0]}, not "
                                 f"{list(b)}")
        return [tuple(b) for b in bottom_shapes[:-1]]

    def build(self, layer, bottom_shapes):
        from .modules.structure import Filter
        self.top_shapes(layer, bottom_shapes)
        return Filter()


def _parameter_shape(layer) -> tuple:
    shape = tuple(int(d) for d in layer.parameter_param.shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"layer '{layer.name}' (Parameter): negative dimension in shape {list(shape)}")
    return shape


@register("Parameter")
class ParameterConverter(Converter):
    def top_shapes(self, layer, bottom_shapes):
        return [_parameter_shape(layer)]

    def param_shapes(self, layer, bottom_shapes):
        return [_parameter_shape(layer)]

    def build(self, layer, bottom_shapes):
        from .modules.structure import ParameterBlob
        if bottom_shapes:
            raise ValueError(f"layer '{layer.name}' (Parameter): takes no bottoms, not {len(bottom_shapes)}")
        return ParameterBlob(_parameter_shape(layer))


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.structure`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import structure
    return getattr(structure, name)
