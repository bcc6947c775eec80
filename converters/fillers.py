"""Caffe's fillers (filler.hpp): the initial values of a parameter blob from its ``FillerParameter``.

The distributions are Caffe's; the random numbers are torch's (Caffe's Boost RNG stream is not reproduced),
so a filled net has the same statistics as Caffe's, not the same values. Fan-in and fan-out are Caffe's:
``fan_in = count / shape[0]``, ``fan_out = count / shape[1]`` (for an (N, K) InnerProduct weight, K and N).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sfport.protos import caffe_pb2

if TYPE_CHECKING:
    import torch

TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _fans(shape) -> tuple[int, int]:
    count = math.prod(shape) if shape else 1
    fan_in = count // shape[0] if len(shape) >= 1 and shape[0] else count
    fan_out = count // shape[1] if len(shape) >= 2 and shape[1] else count
    return fan_in, fan_out


def _norm_n(p, shape) -> float:
    fan_in, fan_out = _fans(shape)
    if p.variance_norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if p.variance_norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def describe(p) -> str:
    """A short text for reports: 'xavier', 'constant 0.1', 'gaussian std 0.01'."""
    t = p.type
    if t == "constant":
        return f"constant {p.value:g}"
    if t == "gaussian":
        return f"gaussian mean {p.mean:g} std {p.std:g}"
    if t == "uniform":
        return f"uniform [{p.min:g}, {p.max:g}]"
    return t


def fill(tensor: torch.Tensor, p, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` in place as Caffe's filler ``p`` (a FillerParameter) would, without recording gradients;
    returns it."""
    import torch   # when a net is filled, not when a file is read
    with torch.no_grad():
        t = p.type
        shape = tuple(tensor.shape)
        g = generator
        if t == "constant":
            tensor.fill_(p.value)
        elif t == "uniform":
            tensor.uniform_(p.min, p.max, generator=g)
        elif t == "gaussian":
            tensor.normal_(p.mean, p.std, generator=g)
            if p.sparse >= 0:  # each output keeps on average `sparse` non-zero inputs
                fan_in = _fans(shape)[0] if len(shape) >= 2 else 1
                keep = min(1.0, p.sparse / max(fan_in, 1))
                tensor.mul_((torch.rand(shape, generator=g) < keep).to(tensor.dtype))
        elif t == "positive_unitball":
            tensor.uniform_(0, 1, generator=g)
            flat = tensor.view(shape[0], -1) if shape else tensor.view(1, -1)
            flat.div_(flat.sum(dim=1, keepdim=True))
        elif t == "xavier":
            scale = math.sqrt(3.0 / _norm_n(p, shape))
            tensor.uniform_(-scale, scale, generator=g)
        elif t == "msra":
            tensor.normal_(0.0, math.sqrt(2.0 / _norm_n(p, shape)), generator=g)
        elif t == "bilinear":
            if len(shape) != 4 or shape[2] != shape[3]:
                raise ValueError("the bilinear filler needs a square 4-D blob")
            k = shape[3]
            f = math.ceil(k / 2.0)
            c = (2 * f - 1 - f % 2) / (2.0 * f)
            idx = torch.arange(k * k, dtype=torch.float64)
            x, y = idx % k, (idx // k) % k
            kernel = ((1 - (x / f - c).abs()) * (1 - (y / f - c).abs())).reshape(k, k)
            tensor.copy_(kernel.expand(shape))
        else:
            raise ValueError(f"unknown filler type '{t}' (Caffe has {', '.join(TYPES)})")
        return tensor


def constant(value: float):
    return caffe_pb2.FillerParameter(type="constant", value=value)
