"""Caffe's loss layers and Accuracy, as Caffe computes them: SoftmaxWithLoss (loss_layer.cpp, softmax_loss_layer.cpp),
Accuracy (accuracy_layer.cpp), EuclideanLoss, SigmoidCrossEntropyLoss, ContrastiveLoss, HingeLoss, InfogainLoss and
MultinomialLogisticLoss (BVLC master's <name>_loss_layer.cpp; see each class of :mod:`.modules.loss`)."""
from __future__ import annotations

import math

import numpy as np

from .base import NoParams, layer_error as _bad, register
from sfport.formats import caffe_files
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2
from .geometry import canonical_axis

FLT_MIN = 1.1754943508222875e-38
# SoftmaxWithLoss's cap: -log(FLT_MIN) = 87.3365, the loss of a sample whose label has probability 0 (a training
# loss stuck there has diverged).
LOSS_CAP = -math.log(FLT_MIN)


def _normalization(p) -> int:
    """Caffe's LossLayer: the legacy ``normalize`` bool, when set, overrides ``normalization``."""
    lp = p.loss_param
    if lp.HasField("normalize"):
        return caffe_pb2.LossParameter.VALID if lp.normalize else caffe_pb2.LossParameter.BATCH_SIZE
    return lp.normalization


@register("SoftmaxWithLoss")
class SoftmaxWithLossConverter(NoParams):
    loss = True

    def top_shapes(self, layer, bottom_shapes):
        """The loss (a scalar) and, as a second top, the softmax probabilities."""
        _check_label_count(layer, bottom_shapes, layer.softmax_param.axis)
        return [(), tuple(bottom_shapes[0])][:len(layer.top)]

    def build(self, layer, bottom_shapes):
        from .modules.loss import SoftmaxWithLoss, _weight_source
        lp = layer.loss_param
        classes = bottom_shapes[0][canonical_axis(layer.softmax_param.axis, len(bottom_shapes[0]))]
        if layer.HasField("softmaxloss_param"):
            # DeepLab v1's SOFTMAX_LOSS (its softmax_loss_layer.cpp LayerSetUp): the weights of weight_source, one
            # non-negative number per class, else 1; any number of ignored labels; the loss over the weights' sum
            if lp.HasField("ignore_label") or lp.weight_by_label_freqs:
                raise _bad(layer, "softmaxloss_param (DeepLab) and loss_param's ignore_label / class weighting "
                                  "are two forks' fields; give one")
            sp = layer.softmaxloss_param
            weights = _weight_source(layer, sp.weight_source, classes) if sp.HasField("weight_source") else None
            return SoftmaxWithLoss(layer.softmax_param.axis, _normalization(layer), tuple(sp.ignore_label),
                                   len(layer.top) > 1, weights, by_weight=True)
        weights = None
        if lp.weight_by_label_freqs:
            # caffe-segnet softmax_loss_layer.cpp LayerSetUp: CHECK_EQ(class_weighting_size, channels)
            if len(lp.class_weighting) != classes:
                raise _bad(layer, f"weight_by_label_freqs needs one class_weighting per class: "
                                  f"{len(lp.class_weighting)} given for {classes} classes")
            weights = list(lp.class_weighting)
        return SoftmaxWithLoss(layer.softmax_param.axis, _normalization(layer),
                               lp.ignore_label if lp.HasField("ignore_label") else None, len(layer.top) > 1,
                               weights)

    def class_count(self, graph_layer):
        return _scores_width(graph_layer.bottom_shapes[0])

    def loss_plateau(self, layer):
        """softmax_loss_layer.cpp Forward_cpu: ``loss -= log(std::max(prob, Dtype(FLT_MIN)))``."""
        return LOSS_CAP


def _scores_width(shape) -> int | None:
    """The classes of a scores blob: its axis 1 (None when it has none)."""
    return int(shape[1]) if shape and len(shape) >= 2 else None


@register("Accuracy")
class AccuracyConverter(NoParams):
    training_only = True

    def top_shapes(self, layer, bottom_shapes):
        """The accuracy (a scalar) and, as a second top, one accuracy per class."""
        b0 = bottom_shapes[0]
        axis = _check_label_count(layer, bottom_shapes, layer.accuracy_param.axis)
        if layer.accuracy_param.top_k > b0[axis]:   # accuracy_layer.cpp Reshape: CHECK_LE(top_k_, classes)
            raise _bad(layer, f"top_k {layer.accuracy_param.top_k} must be less than or equal to the number of "
                              f"classes ({b0[axis]})")
        return [(), (b0[canonical_axis(layer.accuracy_param.axis, len(b0))],)][:len(layer.top)]

    def build(self, layer, bottom_shapes):
        from .modules.loss import Accuracy
        p = layer.accuracy_param
        return Accuracy(p.axis, p.top_k, p.ignore_label if p.HasField("ignore_label") else None, len(layer.top) > 1)

    def class_count(self, graph_layer):
        return _scores_width(graph_layer.bottom_shapes[0])


# ---------------------------------------------------------------------------------------------------------
# The other BVLC loss layers (BVLC/caffe master, src/caffe/layers/*_loss_layer.cpp). Every one is a LossLayer:
# its loss top is a scalar (LossLayer::Reshape: shape ()), weight 1 by default, and its labels take no gradient
# (Backward_cpu: "cannot backpropagate to label inputs"), so sfport detaches them.
# ---------------------------------------------------------------------------------------------------------

# MultinomialLogisticLoss and InfogainLoss clamp probabilities at kLOG_THRESHOLD (loss.hpp) before the log.
LOG_THRESHOLD = 1e-20
def _count(shape, start: int = 0, end: int | None = None) -> int:
    return math.prod(tuple(shape)[start:end])


def _num(shape) -> int:
    """Blob::num(): the legacy first axis (1 for a 0-d blob)."""
    return shape[0] if len(shape) else 1


def _check_same_num(layer, bottom_shapes) -> None:
    """LossLayer::Reshape: 'The data and label should have the same first dimension.'"""
    a, b = bottom_shapes[0], bottom_shapes[1]
    if _num(a) != _num(b):
        raise _bad(layer, f"bottoms '{layer.bottom[0]}' {list(a)} and '{layer.bottom[1]}' {list(b)} must have the "
                          f"same first dimension (LossLayer: data and label)")


def _check_label_count(layer, bottom_shapes, axis: int) -> int:
    """SoftmaxWithLossLayer::Reshape and AccuracyLayer::Reshape: the axis in range, and one label per prediction,
    CHECK_EQ(outer_num_ * inner_num_, bottom[1]->count()) "Number of labels must match number of predictions"
    (a label blob of the data's size - the data top given as the label - fails here). Returns the axis."""
    if len(bottom_shapes) < 2:
        raise _bad(layer, f"takes a prediction and a label bottom, got {len(bottom_shapes)} bottom(s)")
    b0, b1 = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
    if not -len(b0) <= axis < len(b0):
        raise _bad(layer, f"axis {axis} is out of range for a {len(b0)}-D bottom")
    axis = axis + len(b0) if axis < 0 else axis
    predictions = _count(b0, 0, axis) * _count(b0, axis + 1)
    if predictions != _count(b1):
        raise _bad(layer, f"number of labels must match number of predictions: '{layer.bottom[1]}' {list(b1)} holds "
                          f"{_count(b1)} labels, '{layer.bottom[0]}' {list(b0)} makes {predictions} predictions "
                          f"along axis {axis}")
    return axis


def _check_labels_per_sample(layer, bottom_shapes) -> None:
    """The label blob holds one value per sample (CHECK_EQ(bottom[1]->channels/height/width(), 1))."""
    _check_same_num(layer, bottom_shapes)
    lab = bottom_shapes[1]
    if _count(lab) != _num(lab):
        raise _bad(layer, f"label '{layer.bottom[1]}' {list(lab)} must hold one value per sample "
                          f"({_num(bottom_shapes[0])} labels)")


def _normalizer(mode: int, outer: int, inner: int, valid: int) -> float:
    """get_normalizer of sigmoid_cross_entropy_loss_layer.cpp / infogain_loss_layer.cpp (never below 1)."""
    if mode == caffe_pb2.LossParameter.FULL:
        n = outer * inner
    elif mode == caffe_pb2.LossParameter.VALID:
        n = valid
    elif mode == caffe_pb2.LossParameter.BATCH_SIZE:
        n = outer
    else:
        n = 1
    return max(1.0, float(n))


class _LossConverter(NoParams):
    loss = True
    label_bottoms = (1,)

    def check(self, layer, bottom_shapes) -> None:
        _check_same_num(layer, bottom_shapes)

    def top_shapes(self, layer, bottom_shapes):
        self.check(layer, bottom_shapes)
        return [()]

    def _need(self, layer, n_bottoms: tuple, n_tops: tuple = (1,)) -> None:
        if len(layer.bottom) not in n_bottoms:
            raise _bad(layer, f"takes {' or '.join(map(str, n_bottoms))} bottoms, not {len(layer.bottom)}")
        if len(layer.top) not in n_tops:
            raise _bad(layer, f"takes {' or '.join(map(str, n_tops))} tops, not {len(layer.top)}")


@register("EuclideanLoss")
class EuclideanLossConverter(_LossConverter):
    def check(self, layer, bottom_shapes):
        self._need(layer, (2,))
        _check_same_num(layer, bottom_shapes)
        a, b = bottom_shapes
        if _count(a, 1) != _count(b, 1):   # EuclideanLossLayer::Reshape: "Inputs must have the same dimension."
            raise _bad(layer, f"bottoms {list(a)} and {list(b)} must have the same dimension")

    def build(self, layer, bottom_shapes):
        from .modules.loss import EuclideanLoss
        self.check(layer, bottom_shapes)
        return EuclideanLoss(layer.name, layer.type)


def _sigmoid_ce_normalization(layer) -> int:
    """SigmoidCrossEntropyLossLayer::LayerSetUp: ``normalization`` when set, else the legacy ``normalize``
    (true: VALID, false: BATCH_SIZE), else BATCH_SIZE (not the schema's VALID)."""
    lp = layer.loss_param
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        return caffe_pb2.LossParameter.VALID if lp.normalize else caffe_pb2.LossParameter.BATCH_SIZE
    return caffe_pb2.LossParameter.BATCH_SIZE


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossConverter(_LossConverter):
    def check(self, layer, bottom_shapes):
        self._need(layer, (2,))
        _check_same_num(layer, bottom_shapes)
        a, b = bottom_shapes
        if _count(a) != _count(b):
            raise _bad(layer, f"input {list(a)} and target {list(b)} must have the same count")

    def build(self, layer, bottom_shapes):
        from .modules.loss import SigmoidCrossEntropyLoss
        self.check(layer, bottom_shapes)
        lp = layer.loss_param
        return SigmoidCrossEntropyLoss(layer.name, layer.type, _sigmoid_ce_normalization(layer),
                                       lp.ignore_label if lp.HasField("ignore_label") else None)


@register("ContrastiveLoss")
class ContrastiveLossConverter(_LossConverter):
    label_bottoms = (2,)

    def check(self, layer, bottom_shapes):
        self._need(layer, (3,))
        a, b, y = bottom_shapes
        _check_same_num(layer, bottom_shapes)
        # ContrastiveLossLayer::LayerSetUp: a and b are (N, C, 1, 1), y (N, 1, 1, 1)
        if tuple(a[2:]) not in ((), (1,), (1, 1)) or tuple(b) != tuple(a):
            raise _bad(layer, f"bottoms a {list(a)} and b {list(b)} must both be (N, C) (or N x C x 1 x 1)")
        if _count(y) != _num(a):
            raise _bad(layer, f"the similarity bottom {list(y)} must hold one value per pair ({_num(a)})")

    def build(self, layer, bottom_shapes):
        from .modules.loss import ContrastiveLoss
        self.check(layer, bottom_shapes)
        p = layer.contrastive_loss_param
        return ContrastiveLoss(layer.name, layer.type, float(p.margin), bool(p.legacy_version))


@register("HingeLoss")
class HingeLossConverter(_LossConverter):
    def check(self, layer, bottom_shapes):
        self._need(layer, (2,))
        _check_labels_per_sample(layer, bottom_shapes)

    def build(self, layer, bottom_shapes):
        from .modules.loss import HingeLoss
        self.check(layer, bottom_shapes)
        return HingeLoss(layer.name, layer.type, layer.hinge_loss_param.norm)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossConverter(_LossConverter):
    def check(self, layer, bottom_shapes):
        self._need(layer, (2,))
        _check_labels_per_sample(layer, bottom_shapes)

    def build(self, layer, bottom_shapes):
        from .modules.loss import MultinomialLogisticLoss
        self.check(layer, bottom_shapes)
        return MultinomialLogisticLoss(layer.name, layer.type)


def read_infogain(layer) -> np.ndarray:
    """The H matrix of ``infogain_loss_param.source``: a binary BlobProto (Blob::FromProto's shape rule), read
    as Caffe's ReadProtoFromBinaryFile does, relative to the working directory."""
    path = layer.infogain_loss_param.source
    try:
        data = caffe_files.read_bytes(path)
    except CaffeFileError as e:
        raise _bad(layer, f"infogain_loss_param.source: {e.message}", path) from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except Exception:  # noqa: BLE001 - any decode failure is bad input
        raise _bad(layer, "infogain_loss_param.source is not a binary BlobProto", path) from None
    shape = caffe_files.blob_shape(blob)
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if values.size != _count(shape):
        raise _bad(layer, f"the infogain blob holds {values.size} values for its shape {list(shape)}", path)
    return values.reshape(shape)


@register("InfogainLoss")
class InfogainLossConverter(_LossConverter):
    label_bottoms = (1, 2)

    def check(self, layer, bottom_shapes, h_shape=None):
        self._need(layer, (2, 3), (1, 2))
        if layer.loss_param.HasField("normalize"):   # InfogainLossLayer::LayerSetUp CHECKs this
            raise _bad(layer, "loss_param.normalize is deprecated for InfogainLoss; use normalization")
        s = bottom_shapes[0]
        axis = canonical_axis(layer.infogain_loss_param.axis, len(s))
        if not 0 <= axis < len(s):
            raise _bad(layer, f"axis {layer.infogain_loss_param.axis} is out of range for {list(s)}")
        _check_same_num(layer, bottom_shapes)
        outer, inner, c = _count(s, 0, axis), _count(s, axis + 1), s[axis]
        if _count(bottom_shapes[1]) != outer * inner:
            raise _bad(layer, f"number of labels {_count(bottom_shapes[1])} must match number of predictions "
                              f"{outer * inner} (outer x inner of {list(s)} at axis {axis})")
        if len(bottom_shapes) > 2:
            h_shape = bottom_shapes[2]
        elif h_shape is None and not layer.infogain_loss_param.source:
            raise _bad(layer, "Infogain matrix source must be specified (infogain_loss_param.source or a third "
                              "bottom)")
        if h_shape is not None and _count(h_shape) != c * c:
            raise _bad(layer, f"H {list(h_shape)} must be {c} x {c}")

    def top_shapes(self, layer, bottom_shapes):
        self.check(layer, bottom_shapes)
        return [(), tuple(bottom_shapes[0])][:len(layer.top)]

    def build(self, layer, bottom_shapes):
        from .modules.loss import InfogainLoss
        h = read_infogain(layer) if len(bottom_shapes) < 3 else None
        self.check(layer, bottom_shapes, None if h is None else h.shape)
        lp, p = layer.loss_param, layer.infogain_loss_param
        return InfogainLoss(layer.name, layer.type, p.axis, lp.normalization,
                            lp.ignore_label if lp.HasField("ignore_label") else None, h, len(layer.top) > 1)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.loss`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import loss
    return getattr(loss, name)
