"""Convolution, DepthwiseConvolution (grouped, as in the mobile forks) and Deconvolution."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Converter, register
from .geometry import canonical_axis, conv_geometry

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class CaffeConv(nn.Module):
    """Caffe ConvolutionLayer / DeconvolutionLayer: weight (out, in/group, *k) or (in, out/group, *k), bias."""

    def __init__(self, weight_shape, bias: bool, stride, pad, dilation, groups: int, transpose: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        self.caffe_blobs = ["weight"]
        if bias:
            n_out = weight_shape[1] * groups if transpose else weight_shape[0]
            self.bias = nn.Parameter(torch.zeros(n_out))
            self.caffe_blobs.append("bias")
        else:
            self.bias = None
        self.stride, self.pad, self.dilation = tuple(stride), tuple(pad), tuple(dilation)
        self.groups, self.transpose = groups, transpose
        self.nd = len(weight_shape) - 2

    def forward(self, x):
        if self.transpose:
            return _DECONV[self.nd](x, self.weight, self.bias, self.stride, self.pad, 0, self.groups, self.dilation)
        return _CONV[self.nd](x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.groups)


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
    """BaseConvolutionLayer::LayerSetUp: geometry, groups (the depthwise forks default to one per channel) and
    the weight blob's shape, (out, in/group, *k) or for Deconvolution (in, out/group, *k)."""
    p = layer.convolution_param
    axis = canonical_axis(p.axis, len(shape))
    kernel, pad, stride, dilation = conv_geometry(p, len(shape) - axis - 1)
    if kernel[0] is None:
        raise ValueError(f"layer '{layer.name}': convolution without kernel_size")
    cin = shape[axis]
    depthwise = layer.type not in ("Convolution", "Deconvolution")
    groups = cin if depthwise and not p.HasField("group") else p.group
    transpose = layer.type == "Deconvolution"
    weight = (cin, p.num_output // groups, *kernel) if transpose else (p.num_output, cin // groups, *kernel)
    return _Setup(axis, kernel, pad, stride, dilation, groups, weight, transpose)


@register("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "Deconvolution")
class ConvolutionConverter(Converter):
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
            out = [(i + 2 * pd - (d * (k - 1) + 1)) // st + 1 for i, k, pd, st, d in sizes]
        return [tuple(b0[:s.axis]) + (layer.convolution_param.num_output,) + tuple(out)] * len(layer.top)

    def build(self, layer, bottom_shapes):
        s = _setup(layer, bottom_shapes[0])
        if s.axis != 1:
            raise ValueError(f"layer '{layer.name}': convolution axis {layer.convolution_param.axis} is not "
                             f"supported (only 1)")
        return CaffeConv(s.weight, layer.convolution_param.bias_term, s.stride, s.pad, s.dilation, s.groups,
                         s.transpose)

    def fillers(self, layer):
        p = layer.convolution_param
        return [p.weight_filler, p.bias_filler]

    def fan_in(self, layer, weight_shape):
        if layer.type == "Deconvolution":  # a transposed weight (in, out/group, *k)
            return weight_shape[0] * math.prod(weight_shape[2:])
        return math.prod(weight_shape[1:])
