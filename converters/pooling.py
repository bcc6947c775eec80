"""Pooling: MAX / AVE / global, as Caffe's PoolingLayer (pooling_layer.cpp): ceil rounding (or round_mode FLOOR),
with padding a last window that would start past the input dropped, AVE dividing by the window clipped to
[-pad, H + pad). The modules take every size from the input tensor at run time and never read a shape into a
Python number, so a trace (TorchScript, ONNX) runs at any input size with Caffe's result at that size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Converter, register
from .geometry import pooled_size, pooling_geometry  # noqa: F401 (pooled_size: this family's rule)


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
    caffe_blobs: tuple = ()

    def forward(self, x):
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
    """MAX (padding never wins: -inf)."""

    def forward(self, x):
        if self.native:
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil)
        return F.max_pool2d(self._padded(x, float("-inf")), self.kernel, self.stride, ceil_mode=self.ceil)


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


@register("Pooling")
class PoolingConverter(Converter):
    def param_shapes(self, layer, bottom_shapes):
        return []

    def top_shapes(self, layer, bottom_shapes):
        """PoolingLayer::Reshape: global pooling gives 1x1; else :func:`pooled_size`."""
        p = layer.pooling_param
        n, c, h, w = bottom_shapes[0]
        if p.global_pooling:
            return [(n, c, 1, 1)] * len(layer.top)
        kernel, stride, pad = pooling_geometry(p)
        return [(n, c) + pooled_size(h, w, kernel, stride, pad, p.round_mode == 0)] * len(layer.top)

    def build(self, layer, bottom_shapes):
        p = layer.pooling_param
        method = {0: "MAX", 1: "AVE"}.get(p.pool)
        if method is None:
            raise ValueError(f"layer '{layer.name}': STOCHASTIC pooling is not supported")
        if len(bottom_shapes[0]) != 4:
            raise ValueError(f"layer '{layer.name}': pooling needs a 4-D input, got {list(bottom_shapes[0])}")
        if p.global_pooling:
            return GlobalMaxPool() if method == "MAX" else GlobalAvePool()
        kernel, stride, pad = pooling_geometry(p)
        if any(q >= k for k, q in zip(kernel, pad)):  # PoolingLayer::LayerSetUp: CHECK_LT(pad_h_, kernel_h_)
            raise ValueError(f"layer '{layer.name}': pad {list(pad)} must be smaller than the kernel {list(kernel)}")
        return (MaxPool if method == "MAX" else AvePool)(kernel, stride, pad, p.round_mode == 0)
