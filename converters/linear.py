"""InnerProduct (axis, transpose) - Caffe flattens every axis from ``axis`` on - and Embed (a lookup table)."""
from __future__ import annotations

import math

from .base import Converter, folded_blobs, register
from .geometry import canonical_axis


def _axis_and_k(p, shape) -> tuple[int, int]:
    """InnerProductLayer::LayerSetUp: the axis, and K = the product of the bottom's dims from it on."""
    axis = canonical_axis(p.axis, len(shape))
    return axis, math.prod(shape[axis:])


@register("InnerProduct")
class InnerProductConverter(Converter):
    fresh_top = True

    def images_apart(self, layer, bottom_shapes):
        """Every axis from ``axis`` on is one input vector: each image on its own where the axis is not 0."""
        return _axis_and_k(layer.inner_product_param, bottom_shapes[0])[0] > 0

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
        from .modules.linear import CaffeInnerProduct
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
    per_image = True   # a lookup per index
    def param_shapes(self, layer, bottom_shapes):
        p = _embed_param(layer)   # weight "transposed from InnerProductLayer for spatial locality": (K, N)
        return [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])

    def top_shapes(self, layer, bottom_shapes):
        p = _embed_param(layer)   # EmbedLayer::Reshape: bottom's shape with num_output appended
        return [tuple(bottom_shapes[0]) + (p.num_output,)]

    def build(self, layer, bottom_shapes):
        p = _embed_param(layer)
        from .modules.linear import CaffeEmbed
        return CaffeEmbed(layer.name, p.input_dim, p.num_output, p.bias_term)

    def fillers(self, layer):
        p = layer.embed_param
        return [p.weight_filler] + ([p.bias_filler] if p.bias_term else [])

    def fan_in(self, layer, weight_shape):
        return 1   # one row of the table reaches each output


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.linear`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import linear
    return getattr(linear, name)
