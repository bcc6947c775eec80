"""The torch side of :mod:`sfport.converters.resize`: Upsample (nearest and unpooling), Interp, ShuffleChannel,
MaxUnPool and PixelShuffle as modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..resize import _legacy_shape, interp_size
from .base import NoBlobs


class Upsample(NoBlobs):
    """The nearest form (one bottom; the YOLOv3 forks' upsample_layer.cpp, e.g. eric612/MobileNet-YOLO):
    ``top[h, w] = bottom[h / scale, w / scale]`` (Forward_cpu), so each value is repeated scale_h x scale_w
    times; Backward_cpu sums the gradient over each block, which is autograd's gradient of the repeat."""

    def __init__(self, sh: int, sw: int):
        super().__init__()
        self.sh, self.sw = sh, sw

    def forward(self, x):
        *lead, h, w = x.shape
        y = x.reshape(*lead, h, 1, w, 1).expand(*lead, h, self.sh, w, self.sw)
        return y.reshape(*lead, h * self.sh, w * self.sw)


def last_write(x, idx, like):
    """``top[p, idx[p, i]] = x[p, i]`` for i in order into a zeroed top of ``like``'s shape (planes, out_h * out_w;
    a tensor, so that a trace keeps the size dynamic): of two positions with the same index the later one wins,
    as the C++ loops of the unpooling layers write them."""
    pos = torch.arange(x.shape[1], device=x.device).expand_as(idx)
    last = torch.full_like(like, -1, dtype=torch.long)
    last = last.scatter_reduce(1, idx, pos, reduce="amax", include_self=True)  # the last i writing each place
    return torch.where(last >= 0, x.gather(1, last.clamp(min=0)), torch.zeros((), dtype=x.dtype, device=x.device))


class _Unpool(torch.autograd.Function):
    """SegNet's UpsampleLayer (alexgkendall/caffe-segnet, src/caffe/layers/upsample_layer.cpp) on planes
    flattened to (planes, positions): Forward_cpu zeroes the top and writes ``top[mask[i]] = bottom[i]`` for i in
    order, so of two positions with the same index the later one wins; Backward_cpu sets ``bottom_diff[i] =
    top_diff[mask[i]]`` for every i (both of such a pair get the gradient, which is not the derivative of the
    forward: this is Caffe's backward, kept as it is)."""

    @staticmethod
    def forward(ctx, x, idx, like):
        ctx.save_for_backward(idx)
        return last_write(x, idx, like)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        return grad.gather(1, idx), None, None


class Unpool(NoBlobs):
    """The mask form of Upsample (two bottoms: the data and the mask top of a MAX Pooling): the top is
    ``out_h x out_w`` per plane (``upsample_h``/``upsample_w``, else ``H * scale_h - pad_out_h``: the Reshape of
    upsample_layer.cpp), zeros except the data at the mask's flat indices. An index past the plane is Caffe's
    LOG(FATAL) ("upsample top index ... out of range"), here a ValueError naming the layer."""

    def __init__(self, name: str, size, scale, pad_out):
        super().__init__()
        self.name, self.size, self.scale, self.pad_out = name, size, tuple(scale), tuple(pad_out)

    def out_size(self, h, w):
        if self.size is not None:
            return self.size
        return h * self.scale[0] - self.pad_out[0], w * self.scale[1] - self.pad_out[1]

    def forward(self, x, mask):
        n, c, h, w = x.shape
        oh, ow = self.out_size(h, w)
        idx = mask.detach().reshape(n * c, h * w).to(torch.long)  # static_cast<int>: toward zero
        if not torch.jit.is_tracing() and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= oh * ow):
            bad = int(idx.max()) if int(idx.max()) >= oh * ow else int(idx.min())
            raise ValueError(f"layer '{self.name}': upsample top index {bad} out of range [0, {oh * ow}) - check "
                             f"scale settings match input pooling layer's downsample setup")
        y = _Unpool.apply(x.reshape(n * c, h * w), idx, x.new_empty(n * c, oh * ow))
        return y.reshape(n, c, oh, ow)


class Interp(NoBlobs):
    """DeepLab's InterpLayer (interp_layer.cpp; PSPNet's adds the size of a second bottom): the input cropped by
    ``-pad_beg`` at the top and left (both axes are offset by pad_beg) to ``H + pad_beg + pad_end`` x ``W +
    pad_beg + pad_end``, resized bilinearly with aligned corners (util/interp.cpp, caffe_cpu_interp2: ratio
    ``(in - 1) / (out - 1)``, source ``ratio * o`` truncated, the neighbour clamped at the last row; the same size
    is a copy). PyTorch's ``align_corners=True`` is that formula; its backward is caffe_cpu_interp2_backward's
    adjoint. The output size follows Reshape: shrink_factor, zoom_factor, height and width, both factors, or the
    second bottom's size (computed from the run-time shapes)."""

    def __init__(self, name: str, pad_beg: int, pad_end: int, zoom, shrink, size):
        super().__init__()
        self.name, self.pad_beg, self.pad_end = name, pad_beg, pad_end
        self.zoom, self.shrink, self.size = zoom, shrink, size

    def forward(self, x, like=None):
        h_eff, w_eff = x.shape[-2] + self.pad_beg + self.pad_end, x.shape[-1] + self.pad_beg + self.pad_end
        oh, ow = interp_size(self.name, h_eff, w_eff, self.zoom, self.shrink, self.size,
                             None if like is None else like.shape[-2:])
        b = -self.pad_beg
        if b or self.pad_end:
            x = x[..., b:b + h_eff, b:b + w_eff]
        if (oh, ow) == (h_eff, w_eff):  # caffe_cpu_interp2's special case: a copy
            return x.clone()
        return F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=True)


class ShuffleChannel(NoBlobs):
    """ShuffleNet's ShuffleChannelLayer (farmingyard/ShuffleNet, shuffle_channel_layer.cpp, Resize_cpu): the
    channels as a (group, C / group) matrix, transposed: input channel ``i * (C / group) + j`` goes to ``j *
    group + i``. Backward_cpu applies the inverse permutation, autograd's gradient of it."""

    def __init__(self, name: str, group: int):
        super().__init__()
        self.name, self.group = name, group

    def forward(self, x):
        n, c = x.shape[0], x.shape[1]
        if c % self.group:  # Forward_cpu: CHECK_EQ(chs, group_column * group_row) << "Wrong group size."
            raise ValueError(f"layer '{self.name}': {c} channels do not split into {self.group} groups")
        y = x.reshape(n, self.group, c // self.group, -1).transpose(1, 2)
        return y.reshape(_legacy_shape(x.shape))


class MaxUnPool(NoBlobs):
    """MaxUnPoolLayer (brocolli-caffe 9.0.2 src/caffe/layers/maxunpool_layer.cpp): per plane a zeroed ``dst_h x
    dst_w`` top and, for i in order, ``top[static_cast<int>(mask[i])] = bottom[i]`` (Forward_cpu; a later i wins
    an index it shares). An index past the plane is Caffe's LOG(FATAL) ("uppool top index ... out of range"), a
    negative one its write before the buffer: both a ValueError naming the layer. Backward_cpu is empty (``{}`` in
    maxunpool_layer.hpp): no gradient reaches either bottom, as in the fork."""

    def __init__(self, name: str, dst_h: int, dst_w: int):
        super().__init__()
        self.name, self.dst_h, self.dst_w = name, dst_h, dst_w

    def forward(self, x, mask):
        n, c, h, w = x.shape
        size = self.dst_h * self.dst_w
        idx = mask.detach().reshape(n * c, h * w).to(torch.long)   # static_cast<int>: toward zero
        if not torch.jit.is_tracing() and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
            bad = int(idx.max()) if int(idx.max()) >= size else int(idx.min())
            raise ValueError(f"layer '{self.name}': uppool top index {bad} out of range [0, {size}) (dst_h x dst_w "
                             f"{self.dst_h} x {self.dst_w}: the mask must come from a pooling of that size)")
        y = last_write(x.detach().reshape(n * c, h * w), idx, x.new_empty(n * c, size))
        return y.reshape(n, c, self.dst_h, self.dst_w)


class PixelShuffle(NoBlobs):
    """PixelShuffleLayer (brocolli-caffe 9.0.2 src/caffe/layers/pixelshuffle_layer.cpp), Forward_cpu: ``top[n, p,
    i*r + sh, j*r + sw] = bottom[n, p*r*r + sh*r + sw, i, j]`` for the ``C / (r*r)`` top channels p (integer
    division: Reshape checks only ``C % r == 0``, so channels past ``(C / (r*r)) * r*r`` are not read). That is
    PyTorch's pixel_shuffle (ONNX DepthToSpace, mode CRD). Backward_cpu is empty (``{}`` in pixelshuffle_layer.hpp):
    no gradient reaches the bottom, as in the fork."""

    def __init__(self, r: int):
        super().__init__()
        self.r = r

    def forward(self, x):
        used = (x.shape[1] // (self.r * self.r)) * self.r * self.r
        if used != x.shape[1]:
            x = x[:, :used]
        return F.pixel_shuffle(x.detach(), self.r)

