"""Pooling: MAX / AVE / global, as Caffe's PoolingLayer (pooling_layer.cpp): ceil rounding (or round_mode FLOOR,
or the ceil-mode forks' ``ceil_mode: false``: :func:`~.geometry.pooling_ceil`),
with padding a last window that would start past the input dropped, AVE dividing by the window clipped to
[-pad, H + pad); a MAX layer with two tops also gives the mask (the argmax's flat index in the input plane,
which SegNet's Upsample takes). The modules take every size from the input tensor at run time and never read a
shape into a Python number, so a trace (TorchScript, ONNX) runs at any input size with Caffe's result at that
size. SPP (spp_layer.cpp) is a pyramid of these poolings whose windows depend on the input size: it builds its
levels for each size it meets (a trace keeps the geometry of the size it was traced at). The modules are
:mod:`.modules.pooling`."""
from __future__ import annotations

import numpy as np

from .base import Converter, NoParams, register
from .geometry import coord_window, pooling_ceil, pooling_geometry, spp_levels
from .geometry import pooled_size, spp_level  # noqa: F401 (this family's rules, also importable from here)


def _check_geometry(name: str, kernel, stride, pad) -> None:
    """PoolingLayer::LayerSetUp: kernel and stride nonzero, ``CHECK_LT(pad_h_, kernel_h_)``."""
    if any(k < 1 for k in kernel):
        raise ValueError(f"layer '{name}': pooling kernel {list(kernel)} must be nonzero")
    if any(s < 1 for s in stride):
        raise ValueError(f"layer '{name}': pooling stride {list(stride)} must be nonzero")
    if any(q >= k for k, q in zip(kernel, pad)):
        raise ValueError(f"layer '{name}': pad {list(pad)} must be smaller than the kernel {list(kernel)}")


@register("Pooling")
class PoolingConverter(NoParams):
    per_image = True
    fresh_top = True

    def coord_map(self, layer):
        """pycaffe coord_map.py: pooling maps coordinates as a convolution of its window does."""
        window = coord_window(layer.pooling_param, dilated=False)
        if window is None:
            return None
        axis, stride, extent, pad = window
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride

    def align_reference_tops(self, layer, bottoms, ours, ref, tol):
        """MAX pooling's mask top (Forward_cpu: the first maximum of the window, ``bottom_data[index] >
        top_data[pool_index]``): where the reference's index differs from ours and the bottom holds the same value
        at both within ``tol``, the two windows' maxima tie up to the arithmetic of the layers before, and the
        reference's index counts as ours."""
        if len(ours) < 2 or len(ref) < 2 or ref[1] is None or ours[1] is None or ours[1].shape != ref[1].shape:
            return ref
        mine, theirs = ours[1], ref[1]
        differ = np.argwhere(mine != theirs)
        if not len(differ):
            return ref
        x = bottoms[0]
        planes = x.reshape(x.shape[0] * x.shape[1], -1)
        limit = tol * max(1.0, float(np.abs(x).max()))
        aligned = theirs.copy()
        for n, c, h, w in differ:
            a, b = int(mine[n, c, h, w]), int(theirs[n, c, h, w])
            plane = planes[n * x.shape[1] + c]
            if 0 <= b < plane.size and abs(float(plane[a]) - float(plane[b])) <= limit:
                aligned[n, c, h, w] = mine[n, c, h, w]
        return [ref[0], aligned] + list(ref[2:])

    def top_shapes(self, layer, bottom_shapes):
        """PoolingLayer::Reshape: global pooling gives 1x1; else :func:`pooled_size`."""
        p = layer.pooling_param
        n, c, h, w = bottom_shapes[0]
        if p.global_pooling:
            return [(n, c, 1, 1)] * len(layer.top)
        kernel, stride, pad = pooling_geometry(p)
        _check_geometry(layer.name, kernel, stride, pad)
        return [(n, c) + pooled_size(h, w, kernel, stride, pad, pooling_ceil(layer))] * len(layer.top)

    def build(self, layer, bottom_shapes):
        p = layer.pooling_param
        method = {0: "MAX", 1: "AVE"}.get(p.pool)
        if method is None:
            raise ValueError(f"layer '{layer.name}': STOCHASTIC pooling is not supported")
        if len(bottom_shapes[0]) != 4:
            raise ValueError(f"layer '{layer.name}': pooling needs a 4-D input, got {list(bottom_shapes[0])}")
        # PoolingLayer::MaxTopBlobs: MAX may have a second top, the mask; AVE has one top
        ntop, most = len(layer.top), 2 if method == "MAX" else 1
        if not 1 <= ntop <= most:
            raise ValueError(f"layer '{layer.name}': {method} pooling takes at most {most} top(s) (a second top is "
                             f"the MAX mask), got {ntop}")
        mask = ntop == 2
        from .modules.pooling import GlobalAvePool, GlobalMaxPool, make_pool
        if p.global_pooling:
            return GlobalMaxPool(mask) if method == "MAX" else GlobalAvePool()
        kernel, stride, pad = pooling_geometry(p)
        _check_geometry(layer.name, kernel, stride, pad)
        return make_pool(method, kernel, stride, pad, pooling_ceil(layer), mask)


# ---- SPP ------------------------------------------------------------------------------------------------------


@register("SPP")
class SPPConverter(Converter):
    per_image = True
    def _setup(self, layer, bottom_shapes):
        p = layer.spp_param
        method = {0: "MAX", 1: "AVE"}.get(p.pool)
        if method is None:
            raise ValueError(f"layer '{layer.name}': STOCHASTIC pooling is not supported")
        if p.pyramid_height < 1:  # no level: Caffe's concat of no bottoms fails
            raise ValueError(f"layer '{layer.name}': SPP pyramid_height must be at least 1, got {p.pyramid_height}")
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4 or shape[2] < 1 or shape[3] < 1:  # Reshape: CHECK_EQ(4, num_axes); LayerSetUp: CHECK_GT
            raise ValueError(f"layer '{layer.name}': SPP needs a 4-D input of nonzero height and width, got "
                             f"{list(shape)}")
        return method, p.pyramid_height, spp_levels(layer.name, p.pyramid_height, shape[2], shape[3])

    def param_shapes(self, layer, bottom_shapes):
        return []

    def top_shapes(self, layer, bottom_shapes):
        _, levels, geometry = self._setup(layer, bottom_shapes)
        n, c, h, w = bottom_shapes[0]
        sizes = [pooled_size(h, w, *g) for g in geometry]
        if levels == 1:
            return [(n, c) + sizes[0]]
        return [(n, c * sum(ph * pw for ph, pw in sizes))]

    def build(self, layer, bottom_shapes):
        method, levels, _ = self._setup(layer, bottom_shapes)
        from .modules.pooling import SPP
        return SPP(layer.name, levels, method)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.pooling`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import pooling
    return getattr(pooling, name)
