"""Convolution, DepthwiseConvolution (grouped, as in the mobile forks) and Deconvolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Converter, register
from sfport.shapes import canonical_axis, conv_geometry

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


@register("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "Deconvolution")
class ConvolutionConverter(Converter):
    def build(self, layer, bottom_shapes):
        p = layer.convolution_param
        shape = bottom_shapes[0]
        axis = canonical_axis(p.axis, len(shape))
        if axis != 1:
            raise ValueError(f"layer '{layer.name}': convolution axis {p.axis} is not supported (only 1)")
        nd = len(shape) - 2
        kernel, pad, stride, dilation = conv_geometry(p, nd)
        cin = shape[1]
        depthwise = layer.type != "Convolution" and layer.type != "Deconvolution"
        groups = cin if depthwise and not p.HasField("group") else p.group
        if layer.type == "Deconvolution":
            wshape = (cin, p.num_output // groups, *kernel)
        else:
            wshape = (p.num_output, cin // groups, *kernel)
        return CaffeConv(wshape, p.bias_term, stride, pad, dilation, groups, layer.type == "Deconvolution")

    def fillers(self, layer):
        p = layer.convolution_param
        return [p.weight_filler, p.bias_filler]
