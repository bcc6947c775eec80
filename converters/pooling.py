"""Pooling: MAX / AVE / global, Caffe's ceil rounding (last window dropped when it starts in the padding),
AVE dividing by the window clipped to H + pad, and round_mode FLOOR."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Converter, register
from .geometry import pooling_geometry, pooling_output_size


def _extra(size: int, out: int, k: int, s: int, p: int) -> int:
    """Padding needed after the input so that ``out`` windows fit with no padding in the pooling call."""
    return max(0, (out - 1) * s + k - size - p)


class GlobalMaxPool(nn.Module):
    caffe_blobs: tuple = ()

    def forward(self, x):
        return torch.amax(x, dim=(-2, -1), keepdim=True)


class GlobalAvePool(nn.Module):
    caffe_blobs: tuple = ()

    def forward(self, x):
        return torch.mean(x, dim=(-2, -1), keepdim=True)


class _CaffePool(nn.Module):
    """Caffe PoolingLayer (2-D). The input is padded explicitly and pooled without implicit padding, so eager
    PyTorch, TorchScript and ONNX all see Caffe's window arithmetic."""

    caffe_blobs: tuple = ()

    def __init__(self, kernel, stride, pad, ceil: bool):
        super().__init__()
        self.kernel, self.stride, self.pad, self.ceil = tuple(kernel), tuple(stride), tuple(pad), ceil

    def _geometry(self, x):
        """Output size and the padding after the input that makes ``out`` windows fit."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        oh = pooling_output_size(h, kh, ph, sh, self.ceil)
        ow = pooling_output_size(w, kw, pw, sw, self.ceil)
        return h, w, oh, ow, _extra(h, oh, kh, sh, ph), _extra(w, ow, kw, sw, pw)


class MaxPool(_CaffePool):
    """MAX: padded with -inf."""

    def forward(self, x):
        _, _, oh, ow, eh, ew = self._geometry(x)
        (ph, pw) = self.pad
        if ph or pw or eh or ew:
            x = F.pad(x, (pw, ew, ph, eh), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)[..., :oh, :ow]


class AvePool(_CaffePool):
    """AVE: padded with 0; Caffe divides by the window clipped to [-pad, H + pad), before clipping to the input."""

    def forward(self, x):
        h, w, oh, ow, eh, ew = self._geometry(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        if ph or pw or eh or ew:
            x = F.pad(x, (pw, ew, ph, eh), value=0.0)
        out = F.avg_pool2d(x, (kh, kw), (sh, sw))[..., :oh, :ow]
        rows = [min(i * sh - ph + kh, h + ph) - (i * sh - ph) for i in range(oh)]
        cols = [min(j * sw - pw + kw, w + pw) - (j * sw - pw) for j in range(ow)]
        if all(r == kh for r in rows) and all(c == kw for c in cols):
            return out
        scale = torch.tensor([[kh * kw / (r * c) for c in cols] for r in rows], dtype=x.dtype, device=x.device)
        return out * scale


@register("Pooling")
class PoolingConverter(Converter):
    def param_shapes(self, layer, bottom_shapes):
        return []

    def top_shapes(self, layer, bottom_shapes):
        """PoolingLayer::Reshape: global pooling gives 1x1; else ceil (or floor) rounding, a last window that
        starts in the padding dropped."""
        p = layer.pooling_param
        n, c, h, w = bottom_shapes[0]
        if p.global_pooling:
            return [(n, c, 1, 1)] * len(layer.top)
        (kh, kw), (sh, sw), (ph, pw) = pooling_geometry(p)
        ceil = p.round_mode == 0
        return [(n, c, pooling_output_size(h, kh, ph, sh, ceil), pooling_output_size(w, kw, pw, sw, ceil))] \
            * len(layer.top)

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
        return (MaxPool if method == "MAX" else AvePool)(kernel, stride, pad, p.round_mode == 0)
