"""The torch side of :mod:`sfport.converters.linear`: InnerProduct's and Embed's modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sfport.errors import CaffeFileError


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

