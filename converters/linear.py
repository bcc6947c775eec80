"""InnerProduct (axis, transpose) - Caffe flattens every axis from ``axis`` on."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Converter, register
from sfport.shapes import canonical_axis


class CaffeInnerProduct(nn.Module):
    def __init__(self, num_output: int, k: int, axis: int, bias: bool, transpose: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros((k, num_output) if transpose else (num_output, k)))
        self.caffe_blobs = ["weight"]
        self.bias = nn.Parameter(torch.zeros(num_output)) if bias else None
        if bias:
            self.caffe_blobs.append("bias")
        self.axis, self.transpose = axis, transpose

    def forward(self, x):
        x = torch.flatten(x, self.axis)
        w = self.weight.t() if self.transpose else self.weight
        return F.linear(x, w, self.bias)


@register("InnerProduct")
class InnerProductConverter(Converter):
    def build(self, layer, bottom_shapes):
        p = layer.inner_product_param
        shape = bottom_shapes[0]
        axis = canonical_axis(p.axis, len(shape))
        return CaffeInnerProduct(p.num_output, math.prod(shape[axis:]), axis, p.bias_term, p.transpose)

    def fillers(self, layer):
        p = layer.inner_product_param
        return [p.weight_filler, p.bias_filler]
