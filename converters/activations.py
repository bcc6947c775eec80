"""Element-wise layers: ReLU (negative_slope), PReLU (channel_shared), ELU, Sigmoid, TanH, AbsVal, Power, Exp,
Log, BNLL, Threshold, Dropout (identity at test time, Caffe's inverted scaling when training), Clip, Swish and the
mobile forks' ReLU6. Each formula is its own small module (:mod:`.modules.activations`), chosen once when the net
is built."""
from __future__ import annotations

import math

import numpy as np

from .base import SameShape, register
from sfport.converters.fillers import constant


def _log_base(base: float) -> float:
    return 1.0 if base == -1 else math.log(base)


_BUILD = {
    "ReLU": lambda l, m: m.ReLU(l.relu_param.negative_slope),
    "ELU": lambda l, m: m.ELU(l.elu_param.alpha),
    "Sigmoid": lambda l, m: m.Sigmoid(),
    "TanH": lambda l, m: m.TanH(),
    "AbsVal": lambda l, m: m.AbsVal(),
    "Power": lambda l, m: m.Power(l.power_param.power, l.power_param.scale, l.power_param.shift),
    "Exp": lambda l, m: m.Exp(_log_base(l.exp_param.base), l.exp_param.scale, l.exp_param.shift),
    "Log": lambda l, m: m.Log(_log_base(l.log_param.base), l.log_param.scale, l.log_param.shift),
    "BNLL": lambda l, m: m.BNLL(),
    "Threshold": lambda l, m: m.Threshold(l.threshold_param.threshold),
}


@register(*_BUILD)
class ElementwiseConverter(SameShape):
    per_image = True
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    def build(self, layer, bottom_shapes):
        from .modules import activations
        return _BUILD[layer.type](layer, activations)


@register("Dropout")
class DropoutConverter(SameShape):
    per_image = True
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    def build(self, layer, bottom_shapes):
        p = layer.dropout_param
        if p.sample_weights_test and not p.scale_train:
            raise ValueError(f"layer '{layer.name}': sample_weights_test (caffe-segnet) and scale_train: false "
                             f"(caffe-fast-rcnn) are fields of two forks; no Dropout has both")
        from .modules.activations import Dropout
        return Dropout(p.dropout_ratio, p.scale_train, p.sample_weights_test)

    def identity_at_inference(self, layer):
        """dropout_layer.cpp Forward_cpu at TEST: caffe_copy (BVLC); with py-faster-rcnn's ``scale_train: false``
        it scales by ``1 / scale_`` instead (caffe-fast-rcnn), and with caffe-segnet's ``sample_weights_test`` it
        draws masks: neither is an identity."""
        return layer.dropout_param.scale_train and not layer.dropout_param.sample_weights_test

    def differs_in_training(self, layer, module):
        """dropout_layer.cpp Forward_cpu in TRAIN: a random mask."""
        return "a random part of the input is dropped there" if module.training and module.ratio > 0 else None


@register("Clip")
class ClipConverter(SameShape):
    per_image = True
    def build(self, layer, bottom_shapes):
        p = layer.clip_param
        # both fields are `required` in caffe.proto: a layer without them does not parse in Caffe
        if not (p.HasField("min") and p.HasField("max")):
            raise ValueError(f"layer '{layer.name}' (Clip): clip_param needs both min and max")
        from .modules.activations import Clip
        return Clip(p.min, p.max)


@register("Swish")
class SwishConverter(SameShape):
    per_image = True
    def build(self, layer, bottom_shapes):
        from .modules.activations import Swish
        return Swish(layer.swish_param.beta)


@register("ReLU6")
class ReLU6Converter(SameShape):
    per_image = True
    def build(self, layer, bottom_shapes):
        # forks that give ReLU6 a negative slope differ in where they put it and how it combines with the cap
        if layer.HasField("relu_param") and layer.relu_param.negative_slope != 0:
            raise ValueError(f"layer '{layer.name}' (ReLU6): a negative_slope is not supported "
                             f"(min(max(x, 0), 6) only)")
        from .modules.activations import ReLU6
        return ReLU6()


@register("PReLU")
class PReLUConverter(SameShape):
    per_image = True
    coord_identity = True   # pycaffe coord_map.py PASS_THROUGH_LAYERS
    def param_shapes(self, layer, bottom_shapes):
        return [()] if layer.prelu_param.channel_shared else [(bottom_shapes[0][1],)]

    def build(self, layer, bottom_shapes):
        from .modules.activations import PReLU
        return PReLU(bottom_shapes[0][1], layer.prelu_param.channel_shared)

    def fillers(self, layer):
        p = layer.prelu_param
        return [p.filler if p.HasField("filler") else constant(0.25)]

    def random_blobs(self, layer, shapes, rng):
        return [(0.25 + 0.05 * rng.standard_normal(s)).astype(np.float32) for s in shapes]


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.activations`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import activations
    return getattr(activations, name)
