"""InnerProduct (axis, transpose) - Caffe flattens every axis from ``axis`` on - and Embed (a lookup table)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sfport.errors import CaffeFileError

from .base import Converter, folded_blobs, register
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
    fresh_top = True

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

    def fold_affine(self, layer, module, a, b):
        """``a * ip + b`` per output: inner_product_layer.cpp Forward_cpu, ``top = bottom * W^T + bias`` with W
        N x K (K x N with ``transpose``); the outputs are axis 1's channels only when ``axis`` is 1."""
        if module.axis != 1:
            return None
        transpose = layer.inner_product_param.transpose
        return folded_blobs(module, a, b, lambda w: w * a[None, :] if transpose else w * a[:, None])

    def with_bias(self, layer):
        layer.inner_product_param.bias_term = True


class CaffeEmbed(nn.Module):
    """Caffe EmbedLayer (embed_layer.cpp): each bottom value is an index into the (input_dim, num_output) weight;
    top = weight[index] (+ bias), of shape bottom.shape + (num_output,).

    Forward_cpu takes ``index = static_cast<int>(bottom_data[n])`` (truncation toward zero) and only
    DCHECKs 0 <= index < input_dim and that the value was an integer (debug builds); a release build reads
    outside the table for a bad index, so here an index outside 0..input_dim-1 is a one-line error, and a
    non-integer value is truncated as the release build does. Backward_cpu accumulates top_diff into the
    weight rows of the indices (caffe_axpy per sample; the embedding's own gradient) and the summed top_diff
    into the bias; it CHECKs that the input is not back-propagated to: the index never gets a gradient."""

    def __init__(self, name: str, input_dim: int, num_output: int, bias: bool):
        super().__init__()
        self.name, self.input_dim = name, input_dim
        self.weight = nn.Parameter(torch.zeros(input_dim, num_output))
        self.caffe_blobs = ["weight"]
        self.bias = nn.Parameter(torch.zeros(num_output)) if bias else None
        if bias:
            self.caffe_blobs.append("bias")

    def forward(self, x):
        idx = x.detach().long()   # float -> int truncates toward zero, as static_cast<int>
        if not torch.jit.is_tracing() and idx.numel() and bool(((idx < 0) | (idx >= self.input_dim)).any()):
            bad = idx[(idx < 0) | (idx >= self.input_dim)].flatten()[0].item()
            raise CaffeFileError(None, f"layer '{self.name}' (Embed): index {bad} is outside 0..{self.input_dim - 1} "
                                       f"(input_dim {self.input_dim})")
        y = F.embedding(idx, self.weight)
        return y + self.bias if self.bias is not None else y


def _embed_param(layer):
    """EmbedLayer::LayerSetUp CHECKs: num_output and input_dim positive."""
    p = layer.embed_param
    if p.num_output <= 0:
        raise ValueError(f"layer '{layer.name}' (Embed): num_output must be positive")
    if p.input_dim <= 0:
        raise ValueError(f"layer '{layer.name}' (Embed): input_dim must be positive")
    return p


@register("Embed")
class EmbedConverter(Converter):
    def param_shapes(self, layer, bottom_shapes):
        p = _embed_param(layer)   # weight "transposed from InnerProductLayer for spatial locality": (K, N)
        return [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])

    def top_shapes(self, layer, bottom_shapes):
        p = _embed_param(layer)   # EmbedLayer::Reshape: bottom's shape with num_output appended
        return [tuple(bottom_shapes[0]) + (p.num_output,)]

    def build(self, layer, bottom_shapes):
        p = _embed_param(layer)
        return CaffeEmbed(layer.name, p.input_dim, p.num_output, p.bias_term)

    def fillers(self, layer):
        p = layer.embed_param
        return [p.weight_filler] + ([p.bias_filler] if p.bias_term else [])

    def fan_in(self, layer, weight_shape):
        return 1   # one row of the table reaches each output
