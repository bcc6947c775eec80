"""Layers that resize feature maps: Upsample (the nearest form; see each class)."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Converter, NoBlobs, register


class Upsample(NoBlobs):
    def __init__(self, sh: int, sw: int):
        super().__init__()
        self.sh, self.sw = sh, sw

    def forward(self, x):
        return F.interpolate(x, scale_factor=(float(self.sh), float(self.sw)), mode="nearest")



class _Shapeless(Converter):
    def param_shapes(self, layer, bottom_shapes):
        return []


def _upsample_scales(layer) -> tuple[int, int]:
    p = layer.upsample_param
    return (p.scale_h if p.HasField("scale_h") else p.scale), (p.scale_w if p.HasField("scale_w") else p.scale)


@register("Upsample")
class UpsampleConverter(_Shapeless):
    def top_shapes(self, layer, bottom_shapes):
        sh, sw = _upsample_scales(layer)
        b0 = bottom_shapes[0]
        return [tuple(b0[:-2]) + (b0[-2] * sh, b0[-1] * sw)]

    def build(self, layer, bottom_shapes):
        if len(layer.bottom) != 1:
            raise ValueError(f"layer '{layer.name}': Upsample with a mask bottom (SegNet unpooling) is not supported")
        return Upsample(*_upsample_scales(layer))
