"""The brocolli fork's own small layers (brocolli-caffe 9.0.2, the oracle pycaffe of
``../shared/tools/build-caffe-oracle.sh``): HardSigmoid (hardsigmoid_layer.cpp), HardSwish (hardswish_layer.cpp),
Pad (pad_layer.cpp) and Unsqueeze (unsqueeze.cpp).

The fork gives HardSigmoid, HardSwish and Pad no Backward_cpu (Pad's is empty): no gradient passes them, here as in
the fork. Their float arithmetic is the fork's: ``std::min`` / ``std::max`` as ``(b < a) ? b : a``, so a NaN
input gives HardSigmoid 1 and HardSwish NaN, as the C++ does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sfport.protos import caffe_pb2
from .base import NoBlobs, NoParams, SameShape, register


def _clamp01(v: torch.Tensor) -> torch.Tensor:
    """``std::max(Dtype(0), std::min(Dtype(1), v))`` with the C++ operand order (a NaN becomes 1)."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    w = torch.where(v < one, v, one)
    return torch.where(zero < w, w, zero)


class HardSigmoid(NoBlobs):
    """HardSigmoidLayer::Forward_cpu: ``max(0, min(1, x * alpha + beta))`` in float."""

    def __init__(self, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x):
        with torch.no_grad():
            return _clamp01(x * self.alpha + self.beta)


class HardSwish(NoBlobs):
    """HardSwishLayer::Forward_cpu: ``x * max(0, min(1, x / 6 + 0.5))`` in float."""

    def forward(self, x):
        with torch.no_grad():
            return x * _clamp01(x / 6.0 + 0.5)


class Pad(NoBlobs):
    """PadLayer::Forward_cpu on N x C x H x W: all four pads negative crop (the copy from ``(|u|, |l|)``); else
    CONSTANT (``pad_value``), REPLICATE (the edge row / column) or REFLECT (mirrored without the edge), the rows
    after the columns, which is numpy's and torch's per-axis padding."""

    MODES = {caffe_pb2.PadParameter.CONSTANT: "constant", caffe_pb2.PadParameter.REPLICATE: "replicate",
             caffe_pb2.PadParameter.REFLECT: "reflect"}

    def __init__(self, u: int, d: int, l: int, r: int, mode: int, value: float):
        super().__init__()
        self.pads, self.mode, self.value = (u, d, l, r), self.MODES[mode], value

    def forward(self, x):
        u, d, l, r = self.pads
        with torch.no_grad():
            if min(self.pads) < 0:   # all four negative (checked): a crop
                h, w = x.shape[2] + u + d, x.shape[3] + l + r
                return x[:, :, -u:-u + h, -l:-l + w].clone()
            if self.mode == "constant":
                return F.pad(x, (l, r, u, d), value=self.value)
            return F.pad(x, (l, r, u, d), mode=self.mode)


def _pads(layer) -> tuple[int, int, int, int]:
    p = layer.pad_param
    return p.pad_u, p.pad_d, p.pad_l, p.pad_r


@register("HardSigmoid")
class HardSigmoidConverter(SameShape):
    def build(self, layer, bottom_shapes):
        p = layer.hardsigmoid_param
        return HardSigmoid(p.alpha, p.beta)


@register("HardSwish")
class HardSwishConverter(SameShape):
    def build(self, layer, bottom_shapes):
        return HardSwish()


@register("Pad")
class PadConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """PadLayer::Reshape, for the 4-D bottoms its Forward_cpu handles; the fork's own sign rules made
        explicit (its forward writes outside the blob otherwise)."""
        (shape,) = bottom_shapes
        if len(shape) != 4:
            raise ValueError(f"Pad handles N x C x H x W bottoms (the fork's Forward_cpu), not {len(shape)}-D")
        u, d, l, r = _pads(layer)
        if min(u, d, l, r) < 0 and max(u, d, l, r) >= 0:
            raise ValueError(f"pads {u}, {d}, {l}, {r} (u, d, l, r): negative pads crop only when all four are "
                             f"negative (the fork's Forward_cpu)")
        h, w = shape[2] + u + d, shape[3] + l + r
        if h <= 0 or w <= 0:   # Reshape: CHECK_GE(top_shape, 0)
            raise ValueError(f"pads {u}, {d}, {l}, {r} leave a {h} x {w} top of a {shape[2]} x {shape[3]} bottom")
        if layer.pad_param.pad_type == caffe_pb2.PadParameter.REFLECT and (max(u, d) >= shape[2] or
                                                                            max(l, r) >= shape[3]):
            raise ValueError(f"REFLECT pads {u}, {d}, {l}, {r} must be smaller than the bottom's {shape[2]} x "
                             f"{shape[3]} (the fork reads outside it)")
        return [(shape[0], shape[1], h, w)]

    def build(self, layer, bottom_shapes):
        self.top_shapes(layer, bottom_shapes)
        p = layer.pad_param
        return Pad(*_pads(layer), p.pad_type, p.pad_value)


class Unsqueeze(NoBlobs):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x):
        return x.unsqueeze(self.index)


@register("Unsqueeze")
class UnsqueezeConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """UnsqueezeLayer::LayerSetUp: a 1 inserted at ``dim`` (negative: from the end, ``dim + num_axes + 1``)."""
        (shape,) = bottom_shapes
        p = layer.unsqueeze_param
        if not p.HasField("dim"):
            raise ValueError("unsqueeze_param.dim must be set")
        n = len(shape)
        index = p.dim + n + 1 if p.dim < 0 else p.dim
        if not 0 <= index <= n:
            raise ValueError(f"dim {p.dim} is outside the {n} axes of the bottom")
        return [tuple(shape[:index]) + (1,) + tuple(shape[index:])]

    def build(self, layer, bottom_shapes):
        (top,) = self.top_shapes(layer, bottom_shapes)
        p = layer.unsqueeze_param
        return Unsqueeze(p.dim + len(bottom_shapes[0]) + 1 if p.dim < 0 else p.dim)
