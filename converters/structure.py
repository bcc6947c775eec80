"""Layers that route, reshape or combine blobs: Eltwise, Concat, Slice, Split, Flatten, Reshape, Crop, Permute,
Softmax, ArgMax, Upsample (nearest), Silence."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Converter, register
from sfport.shapes import canonical_axis


class Op(nn.Module):
    """A parameter-free routing/shape layer; ``kind`` selects the operation, ``args`` its settings."""

    def __init__(self, kind: str, **args):
        super().__init__()
        self.kind, self.args = kind, args
        self.caffe_blobs = []

    def forward(self, *xs):
        a, x = self.args, xs[0] if xs else None
        k = self.kind
        if k == "eltwise":
            op, coeff = a["op"], a["coeff"]
            if op == "PROD":
                y = xs[0]
                for t in xs[1:]:
                    y = y * t
                return y
            if op == "MAX":
                y = xs[0]
                for t in xs[1:]:
                    y = torch.maximum(y, t)
                return y
            y = xs[0] if coeff[0] == 1 else xs[0] * coeff[0]
            for c, t in zip(coeff[1:], xs[1:]):
                y = y + (t if c == 1 else t * c)
            return y
        if k == "concat":
            return torch.cat(xs, dim=a["axis"])
        if k == "slice":
            return tuple(torch.split(x, a["sizes"], dim=a["axis"]))
        if k == "split":
            return tuple(x for _ in range(a["n"]))
        if k == "flatten":
            return torch.flatten(x, a["axis"], a["end_axis"])
        if k == "reshape":
            start, end, dims = a["start"], a["end"], a["dims"]
            end = x.dim() if end is None else end
            shape = list(x.shape[:start]) + [x.shape[start + i] if d == 0 else d for i, d in enumerate(dims)] \
                + list(x.shape[end:])
            return x.reshape(shape)
        if k == "crop":
            ref = xs[1]
            y = x
            for ax, off in zip(range(a["axis"], x.dim()), a["offsets"]):
                y = y.narrow(ax, off, ref.shape[ax])
            return y
        if k == "permute":
            return x.permute(a["order"])
        if k == "softmax":
            return F.softmax(x, dim=a["axis"])
        if k == "argmax":
            return _argmax(x, a["top_k"], a["out_max_val"], a["axis"])
        if k == "upsample":
            return F.interpolate(x, scale_factor=(float(a["sh"]), float(a["sw"])), mode="nearest")
        if k == "silence":
            return ()
        raise AssertionError(k)


def _argmax(x, top_k: int, out_max_val: bool, axis):
    """Caffe ArgMaxLayer: without axis, over each sample flattened, output (N, 1 or 2, top_k) with
    [indices; values]; with axis, the top_k indices (or values with out_max_val) along it."""
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        vals, idx = torch.topk(flat, top_k, dim=1)
        out = [idx.to(x.dtype)] + ([vals] if out_max_val else [])
        return torch.stack(out, dim=1)
    vals, idx = torch.topk(x, top_k, dim=axis)
    return vals if out_max_val else idx.to(x.dtype)


@register("Eltwise")
class EltwiseConverter(Converter):
    def build(self, layer, bottom_shapes):
        p = layer.eltwise_param
        op = {0: "PROD", 1: "SUM", 2: "MAX"}[p.operation]
        coeff = list(p.coeff) or [1.0] * len(bottom_shapes)
        if op == "SUM" and len(coeff) != len(bottom_shapes):
            raise ValueError(f"layer '{layer.name}': {len(coeff)} coeff for {len(bottom_shapes)} bottoms")
        return Op("eltwise", op=op, coeff=coeff)


@register("Concat")
class ConcatConverter(Converter):
    def build(self, layer, bottom_shapes):
        p = layer.concat_param
        axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
        return Op("concat", axis=canonical_axis(axis, len(bottom_shapes[0])))


@register("Slice")
class SliceConverter(Converter):
    def build(self, layer, bottom_shapes):
        p = layer.slice_param
        shape = bottom_shapes[0]
        axis = canonical_axis(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim, len(shape))
        n = len(layer.top)
        if p.slice_point:
            points = [0] + list(p.slice_point) + [shape[axis]]
        else:
            if shape[axis] % n:
                raise ValueError(f"layer '{layer.name}': {shape[axis]} does not split evenly into {n} tops")
            points = [i * shape[axis] // n for i in range(n + 1)]
        return Op("slice", axis=axis, sizes=[b - a for a, b in zip(points[:-1], points[1:])])


@register("Split")
class SplitConverter(Converter):
    def build(self, layer, bottom_shapes):
        return Op("split", n=len(layer.top))


@register("Flatten")
class FlattenConverter(Converter):
    def build(self, layer, bottom_shapes):
        p, nd = layer.flatten_param, len(bottom_shapes[0])
        return Op("flatten", axis=canonical_axis(p.axis, nd), end_axis=canonical_axis(p.end_axis, nd))


@register("Reshape")
class ReshapeConverter(Converter):
    def build(self, layer, bottom_shapes):
        p, nd = layer.reshape_param, len(bottom_shapes[0])
        start = p.axis if p.axis >= 0 else p.axis + nd + 1
        end = None if p.num_axes == -1 else start + p.num_axes
        return Op("reshape", start=start, end=end, dims=[int(d) for d in p.shape.dim])


@register("Crop")
class CropConverter(Converter):
    def build(self, layer, bottom_shapes):
        p, nd = layer.crop_param, len(bottom_shapes[0])
        axis = canonical_axis(p.axis, nd)
        offsets = list(p.offset) or [0]
        if len(offsets) == 1:
            offsets = offsets * (nd - axis)
        return Op("crop", axis=axis, offsets=offsets)


@register("Permute")
class PermuteConverter(Converter):
    def build(self, layer, bottom_shapes):
        nd = len(bottom_shapes[0])
        order = list(layer.permute_param.order)
        order += [i for i in range(nd) if i not in order]
        return Op("permute", order=order)


@register("Softmax")
class SoftmaxConverter(Converter):
    def build(self, layer, bottom_shapes):
        return Op("softmax", axis=canonical_axis(layer.softmax_param.axis, len(bottom_shapes[0])))


@register("ArgMax")
class ArgMaxConverter(Converter):
    def build(self, layer, bottom_shapes):
        p = layer.argmax_param
        axis = canonical_axis(p.axis, len(bottom_shapes[0])) if p.HasField("axis") else None
        return Op("argmax", top_k=p.top_k, out_max_val=p.out_max_val, axis=axis)


@register("Upsample")
class UpsampleConverter(Converter):
    def build(self, layer, bottom_shapes):
        if len(layer.bottom) != 1:
            raise ValueError(f"layer '{layer.name}': Upsample with a mask bottom (SegNet unpooling) is not supported")
        p = layer.upsample_param
        sh = p.scale_h if p.HasField("scale_h") else p.scale
        sw = p.scale_w if p.HasField("scale_w") else p.scale
        return Op("upsample", sh=sh, sw=sw)


@register("Silence")
class SilenceConverter(Converter):
    def build(self, layer, bottom_shapes):
        return Op("silence")
