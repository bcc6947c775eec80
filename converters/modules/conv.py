"""The torch side of :mod:`sfport.converters.conv`: the convolution module and Im2col's windows."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import in_export_form
from .base import NoBlobs, set_fields


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

# A dense 2-D convolution of fewer multiply-adds than this runs on PyTorch's own im2col + GEMM kernel
# (thnn_conv2d, Caffe's own method) on the CPU, not on oneDNN, whose set-up dominates so small a call: forward +
# backward 1.25-2.6x and forward 1.3-1.8x as fast from 0.2 to 0.55 M multiply-adds (the golden tiny net's
# convolutions, batch 8); at 1.7 M level forward + backward but forward alone at 0.5x; slower from 4 M (2-core AMD
# EPYC, PyTorch 2.13).
SMALL_CONV_MACS = 1 << 20


class CaffeConv(nn.Module):
    """Caffe ConvolutionLayer / DeconvolutionLayer: weight (out, in/group, *k) or (in, out/group, *k), bias."""

    def __init__(self, weight_shape, bias: bool, stride, pad, dilation, groups: int, transpose: bool):
        super().__init__()
        params = {"weight": nn.Parameter(torch.zeros(weight_shape))}
        plain = {}
        if bias:
            n_out = weight_shape[1] * groups if transpose else weight_shape[0]
            params["bias"] = nn.Parameter(torch.zeros(n_out))
        else:
            plain["bias"] = None
        set_fields(self, params, caffe_blobs=list(params), stride=tuple(stride), pad=tuple(pad),
                   dilation=tuple(dilation), groups=groups, transpose=transpose, nd=len(weight_shape) - 2, **plain)

    # set by sfport.runtime.backend.prepack_convolutions on the Runner's own optimized net: at inference on the
    # CPU, a float32 input (NCHW or NHWC) runs oneDNN's convolution with the weight reordered once into its blocked
    # layout, not at every call as F.conv2d reorders it (SphereFace-20's 256- and 512-channel 3x3 convolutions at
    # batch 1: 0.82 and 0.74 ms against 1.0); the top comes out NHWC; the same sums in another order (the tests:
    # within 1e-5 relative of the plain net)
    prepacked = False
    _packed = None     # ((the weight's version, its data pointer), the reordered weight)

    def __getstate__(self):   # the reordered weight is a cache of the CPU's own layout: never saved or copied
        state = dict(self.__dict__)   # nn.Module's own __getstate__ is its __dict__
        state.pop("_packed", None)
        return state

    def _packed_weight(self, x):
        """The reordered weight, made again when the weight changed; None where this input does not take it."""
        w = self.weight
        if not (_cpu_float32_images(x, w) and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
                and not torch.is_grad_enabled() and not _traced()):
            return None
        key = (w._version, w.data_ptr())
        if self._packed is None or self._packed[0] != key:
            try:
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(w.detach().to_mkldnn(), list(self.pad),
                                                                   list(self.stride), list(self.dilation),
                                                                   self.groups)
            except (RuntimeError, AttributeError):   # a build without oneDNN: F.conv2d from now on
                self.__dict__["prepacked"] = False
                return None
            self.__dict__["_packed"] = (key, packed)
        return self._packed[1]

    def forward(self, x):
        if self.transpose:
            return _DECONV[self.nd](x, self.weight, self.bias, self.stride, self.pad, 0, self.groups, self.dilation)
        stride, pad = self.stride, self.pad
        spatial = [int(v) for v in x.shape[-self.nd:]]
        room = [size + 2 * p - (d * (k - 1) + 1) for size, p, d, k in
                zip(spatial, pad, self.dilation, self.weight.shape[2:])]
        overhangs = any(r < 0 or s > r + 1 for r, s in zip(room, stride))
        if self.prepacked and not overhangs:
            packed = self._packed_weight(x)
            if packed is not None:
                return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, list(pad), list(stride),
                                                               list(self.dilation), self.groups, "none", [], "")
        elif (self.nd == 2 and self.groups == 1 and self.stride == (1, 1) and self.pad == (0, 0)
                and not torch.is_grad_enabled() and not _traced() and tuple(self.weight.shape[2:]) == (1, 1)):
            y = _pointwise_one(x, self.weight, self.bias)
            if y is not None:
                return y
        if overhangs:
            # one output position along an axis (conv_out): a stride past it changes nothing in Caffe but
            # overflows PyTorch's kernels (2^31 - 1 crashes the backward), and a window that overhangs the padded
            # input by less than the stride reads zeros there (im2col_cpu)
            stride = tuple(min(s, max(r, 0) + 1) for r, s in zip(room, stride))
            if any(r < 0 for r in room):
                widths = [(p, p - min(r, 0)) for p, r in zip(pad, room)]
                x = F.pad(x, [v for w in reversed(widths) for v in w])
                pad = (0,) * self.nd
        if self.nd == 2 and self.groups == 1 and self.dilation == (1, 1) and _small_dense(x, self.weight, room,
                                                                                          stride):
            return torch._C._nn.thnn_conv2d(x, self.weight, tuple(self.weight.shape[2:]), self.bias, stride, pad)
        return _CONV[self.nd](x, self.weight, self.bias, stride, pad, self.dilation, self.groups)


def _cpu_float32_images(x, w) -> bool:
    """A 4-D float32 input on the CPU with a float32 weight: what the CPU-only kernels below take."""
    return x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32


def _pointwise_one(x, w, bias):
    """A 1x1 convolution (stride 1, no padding, one group) of a batch of one float32 NCHW or NHWC image on the
    CPU at inference as the one matrix product it is, W (out x in) times the image's in x (h * w) pixels (NHWC:
    pixels x in times W transposed), the output in the input's layout; None where the input is neither.
    oneDNN's set-up dominates a call this small: MobileFaceNet's 1x1 convolutions at batch 1, NHWC, 5-28% faster
    (318 against 295 us at 64 x 56 x 56 -> 128, 78 against 56 at 512 x 7 x 7 -> 128), NCHW 1.5-4x (2-core AMD
    EPYC, PyTorch 2.13); at batch 64 it is no faster, so a batch of one only, and a prepacked
    convolution keeps oneDNN (as fast at these sizes). The same sums in another order (the tests: within 1e-5
    relative of F.conv2d). Never while traced, scripted or exported (the caller checks)."""
    if not _cpu_float32_images(x, w) or x.shape[0] != 1:
        return None
    c, h, wd = x.shape[1:]
    w2 = w.view(w.shape[0], c)
    if x.is_contiguous():
        flat = x.view(c, h * wd)
        y = torch.mm(w2, flat) if bias is None else torch.addmm(bias.view(-1, 1), w2, flat)
        return y.view(1, -1, h, wd)
    if x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).reshape(h * wd, c)   # a view: NHWC is pixels x channels
        y = torch.mm(flat, w2.t()) if bias is None else torch.addmm(bias, flat, w2.t())
        return y.view(1, h, wd, -1).permute(0, 3, 1, 2)
    return None


def _traced() -> bool:
    """Traced, scripted or exported: the files get the standard convolution, never a CPU-only kernel."""
    return in_export_form() or torch.jit.is_tracing() or torch.jit.is_scripting()


def _small_dense(x, w, room, stride) -> bool:
    """Whether a 2-D convolution of NCHW float32 ``x`` on the CPU is small enough for thnn_conv2d
    (SMALL_CONV_MACS); never while it is traced, scripted or exported."""
    if not (_cpu_float32_images(x, w) and x.is_contiguous()):
        return False
    macs = x.shape[0] * w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3]
    for r, s in zip(room, stride):
        macs *= r // s + 1
    return macs < SMALL_CONV_MACS and not _traced()


class Im2col(NoBlobs):
    """Caffe Im2colLayer (im2col_layer.cpp with util/im2col.cpp, im2col_cpu / im2col_nd_cpu): per image, row
    ``(c * kh + i) * kw + j`` of the top holds, at output position (y, x), the input at ``(y * stride - pad + i *
    dilation, x * stride - pad + j * dilation)`` of channel c, 0 outside the input; the top is
    (..., C * kh * kw, out_h, out_w). Any number of spatial axes (im2col_nd). Backward_cpu is col2im, the
    adjoint, which is autograd's gradient of these windows."""

    def __init__(self, name: str, axis: int, kernel, stride, pad, dilation):
        super().__init__()
        self.name, self.axis = name, axis
        self.kernel, self.stride, self.pad, self.dilation = tuple(kernel), tuple(stride), tuple(pad), tuple(dilation)

    def forward(self, x):
        lead, c, spatial = x.shape[:self.axis], x.shape[self.axis], x.shape[self.axis + 1:]
        n = len(spatial)
        widths = []
        for size, k, p, s, d in zip(spatial, self.kernel, self.pad, self.stride, self.dilation):
            extent, num = d * (k - 1) + 1, int(size) + 2 * p - (d * (k - 1) + 1)
            if num <= -s:  # C++ division gives no output position (Reshape's size <= 0)
                raise ValueError(f"layer '{self.name}': Im2col of a {[int(v) for v in spatial]} input with kernel "
                                 f"{list(self.kernel)}, pad {list(self.pad)}, dilation {list(self.dilation)} has no "
                                 f"output position")
            # padded by pad on both sides the windows are Caffe's (num // s + 1 of them); for -s < num < 0 C++'s
            # division toward zero still gives one, which reads zeros past the end
            widths.append((p, p if num >= 0 else extent - int(size) - p))
        y = F.pad(x.reshape(-1, c, *spatial), [v for w in reversed(widths) for v in w])
        for a, (k, s, d) in enumerate(zip(self.kernel, self.stride, self.dilation)):
            y = y.unfold(2 + a, d * (k - 1) + 1, s)  # windows along axis a, each appended as a last axis
        y = y[(Ellipsis,) + tuple(slice(None, None, d) for d in self.dilation)]  # each window's kernel taps
        y = y.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))  # (M, C, k..., out...)
        return y.reshape(*lead, c * math.prod(self.kernel), *y.shape[2 + n:])

