"""The SphereFace layers: MarginInnerProduct (A-Softmax) and SphereFace+'s InterClass (MHE term).

Both follow the forks' own C++ (wy1iu/sphereface ``margin_inner_product_layer.cpp``, wy1iu/sphereface-plus
``inter_class_layer.cpp``), not the papers:

* MarginInnerProduct advances its own counter at every forward call (train or test), computes
  ``lambda = max(base * (1 + gamma*iter)^-power, lambda_min)``, renormalizes the rows of W *in place*, outputs
  ``x W^T`` with the target logit replaced by ``(lambda*x.w_y + |x|*psi(c)) / (1 + lambda)``, and a second top
  holding lambda. Its default backward is the fork's (normalized input gradient, ``dW = g^T x``); the layer
  parameter ``margin_grad: "true"`` (an sfport extension) or ``module.grad_mode = "true"`` gives the exact
  gradient instead.
* InterClass (AMONG or MEAN) outputs the distance D; its backward ignores the top's gradient, gives nothing to
  its feature bottom and adds only to the rows of W of the batch's labels. ``energy: "s0"|"s1"|"s2"`` (an sfport
  extension) replaces it with the hyperspherical energy of Liu et al. (NeurIPS 2018) and its true gradient.

The counters (``iteration`` and InterClass's ``alpha``) are buffers: they are in ``state_dict()``, so an sfport
checkpoint resumes them exactly, where Caffe restarts them from the prototxt's ``iteration`` on resume. The
modules are :mod:`.modules.margin`.
"""
from __future__ import annotations

import math

from .base import Converter, register
from sfport.protos import caffe_pb2
from .geometry import canonical_axis

_M = {caffe_pb2.MarginInnerProductParameter.SINGLE: 1, caffe_pb2.MarginInnerProductParameter.DOUBLE: 2,
      caffe_pb2.MarginInnerProductParameter.TRIPLE: 3, caffe_pb2.MarginInnerProductParameter.QUADRUPLE: 4}


def _feature_axis(layer, p, bottom_shapes) -> tuple[int, int]:
    """(axis, feature width K) of a (features, labels) layer, checking that both bottoms are there."""
    if len(layer.bottom) < 2:
        raise ValueError(f"layer '{layer.name}' ({layer.type}) needs two bottoms: features and labels")
    shape = bottom_shapes[0]
    axis = canonical_axis(p.axis, len(shape))
    return axis, math.prod(shape[axis:])


@register("MarginInnerProduct")
class MarginInnerProductConverter(Converter):
    label_bottoms = (1,)

    def param_shapes(self, layer, bottom_shapes):
        _, k = _feature_axis(layer, layer.margin_inner_product_param, bottom_shapes)
        return [(layer.margin_inner_product_param.num_output, k)]

    def top_shapes(self, layer, bottom_shapes):
        """The logits (the bottom's leading axes, then num_output) and, as a second top, lambda."""
        p = layer.margin_inner_product_param
        axis, _ = _feature_axis(layer, p, bottom_shapes)
        return [tuple(bottom_shapes[0][:axis]) + (p.num_output,), (1,)][:len(layer.top)]

    def build(self, layer, bottom_shapes):
        from .modules.margin import MarginInnerProduct
        p = layer.margin_inner_product_param
        axis, k = _feature_axis(layer, p, bottom_shapes)
        return MarginInnerProduct(p.num_output, k, axis, _M[p.type], p.base, p.gamma, p.power, p.lambda_min,
                                  p.iteration, p.margin_grad)

    def fillers(self, layer):
        return [layer.margin_inner_product_param.weight_filler]

    def class_count(self, graph_layer):
        shape = graph_layer.top_shapes[0]       # the logits: one per class
        return int(shape[1]) if shape and len(shape) >= 2 else None


# ------------------------------------------------------------------------------------------------------------
# InterClass
# ------------------------------------------------------------------------------------------------------------


@register("InterClass")
class InterClassConverter(Converter):
    loss = True
    label_bottoms = (1,)

    def param_shapes(self, layer, bottom_shapes):
        _, k = _feature_axis(layer, layer.inter_class_param, bottom_shapes)
        return [(layer.inter_class_param.num_output, k)]

    def top_shapes(self, layer, bottom_shapes):
        return [()] * len(layer.top)

    def build(self, layer, bottom_shapes):
        from .modules.margin import InterClass
        p = layer.inter_class_param
        _, k = _feature_axis(layer, p, bottom_shapes)
        return InterClass(p.num_output, k, p.type == caffe_pb2.InterClassParameter.AMONG, p.iteration,
                          p.alpha_start_iter, p.alpha_start_value, p.normalize, p.energy)

    def fillers(self, layer):
        return [layer.inter_class_param.weight_filler]


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.margin`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import margin
    return getattr(margin, name)
