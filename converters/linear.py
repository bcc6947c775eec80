"""InnerProduct (axis, transpose) - Caffe flattens every axis from ``axis`` on."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Converter, register
from .geometry import canonical_axis


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


def _axis_and_k(p, shape) -> tuple[int, int]:
    """InnerProductLayer::LayerSetUp: the axis, and K = the product of the bottom's dims from it on."""
    axis = canonical_axis(p.axis, len(shape))
    return axis, math.prod(shape[axis:])


@register("InnerProduct")
class InnerProductConverter(Converter):
    def param_shapes(self, layer, bottom_shapes):
        p = layer.inner_product_param
        _, k = _axis_and_k(p, bottom_shapes[0])
        return [(k, p.num_output) if p.transpose else (p.num_output, k)] + ([(p.num_output,)] if p.bias_term else [])

    def top_shapes(self, layer, bottom_shapes):
        p = layer.inner_product_param
        axis, _ = _axis_and_k(p, bottom_shapes[0])
        return [tuple(bottom_shapes[0][:axis]) + (p.num_output,)] * len(layer.top)

    def build(self, layer, bottom_shapes):
        p = layer.inner_product_param
        axis, k = _axis_and_k(p, bottom_shapes[0])
        return CaffeInnerProduct(p.num_output, k, axis, p.bias_term, p.transpose)

    def fillers(self, layer):
        p = layer.inner_product_param
        return [p.weight_filler, p.bias_filler]
