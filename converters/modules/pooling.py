"""The torch side of :mod:`sfport.converters.pooling`: Caffe's MAX / AVE / global pooling modules and SPP's
pyramid of them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import spp_levels


FLT_MAX = 3.4028234663852886e38   # float's largest value, PoolingLayer::Forward_cpu's start value of a MAX output


def _tail(k: int, s: int, p: int, ceil: bool, any_pad: bool) -> int:
    """Padding after the input (before it: ``p``) for which PyTorch's own pooling of the padded input, with
    no padding of its own, makes exactly Caffe's windows. Window i starts at ``i*s`` in the padded input;
    Caffe keeps i while ``i*s < H + 2p - k + s`` (ceil) and, with padding, ``i*s < H + p`` (the window starts
    inside the input); PyTorch's ceil mode keeps i while ``i*s < L - k + s`` and ``i*s < L`` for a padded
    length L = H + p + tail (pooling_shape.h, pooling_output_shape_pad_lr), and its floor mode while
    ``i*s <= L - k``."""
    if not ceil:
        return p                      # floor: i*s <= H + 2p - k, no drop (p < k)
    if any_pad:
        return max(0, min(p, k - s))  # bound min(H + 2p - k + s, H + p), as Caffe's
    return max(0, s - k)              # no padding, no drop: bound H - k + s


class GlobalMaxPool(nn.Module):
    """Global MAX; with ``mask`` also Caffe's second top, the flat index ``h * W + w`` of the first maximum
    (PoolingLayer::Forward_cpu scans the plane row by row and keeps a later value only when it is larger)."""
    caffe_blobs: tuple = ()

    def __init__(self, mask: bool = False):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        if self.mask:
            y, idx = F.max_pool2d(x, x.shape[-2:], return_indices=True)
            return y, idx.to(x.dtype)
        return torch.amax(x, dim=(-2, -1), keepdim=True)


class GlobalAvePool(nn.Module):
    caffe_blobs: tuple = ()

    def forward(self, x):
        return torch.mean(x, dim=(-2, -1), keepdim=True)


class _CaffePool(nn.Module):
    """Caffe PoolingLayer (2-D).

    Where PyTorch's pooling is Caffe's (``pad <= kernel // 2``, which PyTorch requires, and in ceil mode
    without padding ``stride <= kernel``: PyTorch always drops a last window that starts past the input,
    Caffe only with padding) the module is ``max_pool2d`` / ``avg_pool2d(count_include_pad=True)``: the same
    output size (pooling_shape.h applies Caffe's last-window rule) and the same AVE divisor, the window
    clipped to ``H + pad`` before it is clipped to the input (AvgPoolKernel.cpp). Otherwise (Caffe allows any
    ``pad < kernel``) the input is padded explicitly by ``pad`` before and ``_tail`` after it and pooled with
    no padding of PyTorch's, which gives Caffe's windows for every input size; AVE then rescales from
    PyTorch's divisor (the window clipped to the padded input) to Caffe's, computed from the run-time shape."""

    caffe_blobs: tuple = ()

    def __init__(self, kernel, stride, pad, ceil: bool):
        super().__init__()
        self.kernel, self.stride, self.pad, self.ceil = tuple(kernel), tuple(stride), tuple(pad), ceil
        any_pad = any(self.pad)
        self.native = all(p <= k // 2 for k, p in zip(self.kernel, self.pad)) and \
            (not ceil or any_pad or all(s <= k for k, s in zip(self.kernel, self.stride)))
        self.tail = tuple(_tail(k, s, p, ceil, any_pad) for k, s, p in zip(self.kernel, self.stride, self.pad))

    def _padded(self, x, value: float):
        (ph, pw), (th, tw) = self.pad, self.tail
        return F.pad(x, (pw, tw, ph, th), value=value) if ph or pw or th or tw else x


class MaxPool(_CaffePool):
    """MAX (padding never wins: -inf). With ``mask`` the module also returns Caffe's second top (the layer has
    two tops): per output, the flat index ``h * W + w`` in the input plane of the window's maximum, the first one
    in Caffe's scan order on ties (PoolingLayer::Forward_cpu, ``if (bottom_data[index] > top_data[pool_index])``
    over h, then w; PyTorch's kernel also keeps the first of equal values), as the blob's float type. The mask
    carries no gradient; the gradient of the data top goes to the argmax, as Backward_cpu routes it by the mask."""

    def __init__(self, kernel, stride, pad, ceil: bool, mask: bool = False):
        super().__init__(kernel, stride, pad, ceil)
        self.mask = mask

    def forward(self, x):
        if self.native:
            y, idx = F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, return_indices=True)
        else:
            xp = self._padded(x, float("-inf"))
            y, idx = F.max_pool2d(xp, self.kernel, self.stride, ceil_mode=self.ceil, return_indices=True)
            if self.mask:  # an index into the padded plane -> the index into the input plane
                wp = xp.shape[-1]
                idx = (idx // wp - self.pad[0]) * x.shape[-1] + (idx % wp - self.pad[1])
            if any(self.tail) and not any(self.pad):
                # ceil without padding keeps a last window that starts at the input's end (stride > kernel): it is
                # empty, and Forward_cpu leaves its -FLT_MAX start value and mask -1 (no value is larger)
                empty = y == float("-inf")
                y = torch.where(empty, torch.full_like(y, -FLT_MAX), y)
                if self.mask:
                    idx = torch.where(empty, torch.full_like(idx, -1), idx)
        if not self.mask:
            return y
        return y, idx.to(x.dtype)


class AvePool(_CaffePool):
    """AVE: padded with 0; Caffe divides by the window clipped to [-pad, H + pad), before clipping to the input
    (PoolingLayer::Forward_cpu, ``pool_size``)."""

    def forward(self, x):
        if self.native:
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        y = F.avg_pool2d(self._padded(x, 0.0), self.kernel, self.stride, ceil_mode=self.ceil)
        if self.tail == self.pad:  # the padded input ends at H + pad: PyTorch's divisor is Caffe's
            return y
        ratio = None
        for axis, k, s, p, t in zip((-2, -1), self.kernel, self.stride, self.pad, self.tail):
            start = torch.arange(y.shape[axis], device=x.device) * s  # window starts in the padded input
            torch_size = torch.clamp(x.shape[axis] + p + t - start, max=k)
            caffe_size = torch.clamp(x.shape[axis] + 2 * p - start, max=k)  # may be <= 0 without padding, as in Caffe
            r = torch_size.to(x.dtype) / caffe_size.to(x.dtype)
            ratio = r[:, None] if ratio is None else ratio * r[None, :]
        return y * ratio


def make_pool(method: str, kernel, stride, pad, ceil: bool = True, mask: bool = False) -> nn.Module:
    """The module of one Caffe PoolingLayer of this geometry (``method`` "MAX" or "AVE"); SPP builds its
    levels with it."""
    if method == "MAX":
        return MaxPool(kernel, stride, pad, ceil, mask)
    return AvePool(kernel, stride, pad, ceil)


class SPP(nn.Module):
    """Caffe SPPLayer (BVLC spp_layer.cpp): one Caffe Pooling per level (:func:`make_pool`, ceil rounding) of the
    geometry :func:`~sfport.converters.geometry.spp_level` gives for the run-time input size, each flattened to
    (N, C * bins) and concatenated in level order; with pyramid_height 1 the top is that single pooling's (N, C, 1,
    1). The backward (the split's sum of the levels' pooling backwards) is autograd's."""

    caffe_blobs: tuple = ()

    def __init__(self, name: str, levels: int, method: str):
        super().__init__()
        self.name, self.levels, self.method = name, levels, method
        self._pools: dict = {}

    def pools(self, height: int, width: int) -> list[nn.Module]:
        key = (int(height), int(width))
        if key not in self._pools:  # SPPLayer::Reshape rebuilds its pooling layers when the input size changes
            self._pools[key] = [make_pool(self.method, *g) for g in spp_levels(self.name, self.levels, *key)]
        return self._pools[key]

    def forward(self, x):
        pools = self.pools(x.shape[-2], x.shape[-1])
        if self.levels == 1:
            return pools[0](x)
        return torch.cat([pool(x).flatten(1) for pool in pools], dim=1)

