"""Element-wise layers: ReLU (negative_slope), PReLU (channel_shared), ELU, Sigmoid, TanH, AbsVal, Power, Exp,
Log, BNLL, Threshold, Dropout (identity at test time, Caffe's inverted scaling when training)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Converter, register
from sfport.fillers import constant


class Elementwise(nn.Module):
    """A parameter-free element-wise Caffe layer; ``fn`` names the formula."""

    def __init__(self, fn: str, **args):
        super().__init__()
        self.fn, self.args = fn, args
        self.caffe_blobs = []

    def forward(self, x):
        a = self.args
        if self.fn == "relu":
            return F.relu(x) if a["slope"] == 0 else F.leaky_relu(x, a["slope"])
        if self.fn == "elu":
            return torch.where(x > 0, x, a["alpha"] * (torch.exp(x) - 1))
        if self.fn == "sigmoid":
            return torch.sigmoid(x)
        if self.fn == "tanh":
            return torch.tanh(x)
        if self.fn == "abs":
            return torch.abs(x)
        if self.fn == "power":  # (shift + scale * x) ^ power
            y = x * a["scale"] + a["shift"] if (a["scale"] != 1 or a["shift"] != 0) else x
            return y if a["power"] == 1 else torch.pow(y, a["power"])
        if self.fn == "exp":    # base ^ (shift + scale * x), base e when -1
            y = x * (a["scale"] * a["log_base"]) + a["shift"] * a["log_base"]
            return torch.exp(y)
        if self.fn == "log":    # log_base(shift + scale * x)
            return torch.log(x * a["scale"] + a["shift"]) / a["log_base"]
        if self.fn == "bnll":   # log(1 + exp(x)), Caffe's stable form
            return torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))
        if self.fn == "threshold":
            return (x > a["threshold"]).to(x.dtype)
        if self.fn == "dropout":
            if self.training and a["ratio"] > 0:
                keep = (torch.rand_like(x) >= a["ratio"]).to(x.dtype)
                return x * keep / (1.0 - a["ratio"])
            return x
        raise AssertionError(self.fn)


class PReLU(nn.Module):
    """Caffe PReLULayer: one slope per channel (axis 1), or one for all with channel_shared."""

    def __init__(self, channels: int, shared: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.full((() if shared else (channels,)), 0.25))
        self.caffe_blobs = ["weight"]
        self.shared = shared

    def forward(self, x):
        if x.dim() >= 2:
            return F.prelu(x, self.weight.reshape(1) if self.shared else self.weight)
        return torch.where(x > 0, x, x * self.weight)


def _log_base(base: float) -> float:
    return 1.0 if base == -1 else math.log(base)


@register("ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL", "Threshold", "Dropout")
class ElementwiseConverter(Converter):
    def build(self, layer, bottom_shapes):
        t = layer.type
        if t == "ReLU":
            return Elementwise("relu", slope=layer.relu_param.negative_slope)
        if t == "ELU":
            return Elementwise("elu", alpha=layer.elu_param.alpha)
        if t == "Power":
            p = layer.power_param
            return Elementwise("power", power=p.power, scale=p.scale, shift=p.shift)
        if t == "Exp":
            p = layer.exp_param
            return Elementwise("exp", log_base=_log_base(p.base), scale=p.scale, shift=p.shift)
        if t == "Log":
            p = layer.log_param
            return Elementwise("log", log_base=_log_base(p.base), scale=p.scale, shift=p.shift)
        if t == "Threshold":
            return Elementwise("threshold", threshold=layer.threshold_param.threshold)
        if t == "Dropout":
            return Elementwise("dropout", ratio=layer.dropout_param.dropout_ratio)
        return Elementwise({"Sigmoid": "sigmoid", "TanH": "tanh", "AbsVal": "abs", "BNLL": "bnll"}[t])


@register("PReLU")
class PReLUConverter(Converter):
    def build(self, layer, bottom_shapes):
        return PReLU(bottom_shapes[0][1], layer.prelu_param.channel_shared)

    def fillers(self, layer):
        p = layer.prelu_param
        return [p.filler if p.HasField("filler") else constant(0.25)]
