"""Caffe's loss layers and Accuracy, as Caffe computes them: SoftmaxWithLoss (loss_layer.cpp, softmax_loss_layer.cpp),
Accuracy (accuracy_layer.cpp), EuclideanLoss, SigmoidCrossEntropyLoss, ContrastiveLoss, HingeLoss, InfogainLoss and
MultinomialLogisticLoss (BVLC master's <name>_loss_layer.cpp; see each class)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .base import NoParams, layer_error as _bad, register
from sfport.formats import caffe_files
from sfport.data.imagedata import read_list_text
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


class SoftmaxWithLoss(nn.Module):
    """``forward(scores, label) -> loss`` (and the softmax as a second top when asked). The loss of one sample is
    ``-log(max(p_y, FLT_MIN))`` (so at most 87.3365); its gradient is Caffe's ``p - onehot`` even where the
    value was clamped. Normalizer: FULL = all, VALID = non-ignored labels, BATCH_SIZE = outer count, NONE = 1,
    never below 1.

    The forks' class weights (``class_weights``, one per class): a sample's loss and gradient are multiplied by
    its label's weight. caffe-segnet (``loss_param { weight_by_label_freqs: true class_weighting: ... }``, its
    softmax_loss_layer.cpp) keeps the normalizer above; DeepLab v1 (``softmaxloss_param { weight_source }``, its
    softmax_loss_layer.cpp) divides by the sum of the weights of the samples counted (``by_weight``) and may
    ignore several labels (``ignore_label`` a tuple)."""

    def __init__(self, axis: int, normalization: int, ignore_label, with_prob: bool,
                 class_weights=None, by_weight: bool = False):
        super().__init__()
        self.caffe_blobs: list[str] = []
        self.axis, self.normalization, self.with_prob = axis, normalization, with_prob
        if ignore_label is None or isinstance(ignore_label, int):
            ignore_label = () if ignore_label is None else (ignore_label,)
        self.ignore_labels = tuple(int(v) for v in ignore_label)
        self.class_weights = None if class_weights is None else [float(np.float32(w)) for w in class_weights]
        self.by_weight = by_weight

    def forward(self, scores, label):
        axis = canonical_axis(self.axis, scores.dim())
        logp = torch.log_softmax(scores, dim=axis)
        outer = math.prod(scores.shape[:axis])
        inner = math.prod(scores.shape[axis + 1:])
        label = label.reshape(outer, inner).long()
        logp_f = logp.movedim(axis, -1).reshape(outer, inner, -1)
        valid = torch.ones_like(label, dtype=torch.bool)
        for v in self.ignore_labels:
            valid = valid & (label != v)
        safe = torch.where(valid, label, torch.zeros_like(label))
        if bool(((safe < 0) | (safe >= logp_f.shape[-1])).any()):
            raise ValueError(f"SoftmaxWithLoss: a label is outside 0..{logp_f.shape[-1] - 1}")
        picked = logp_f.gather(2, safe.unsqueeze(2)).squeeze(2)
        # value: -log(max(p, FLT_MIN)); gradient: that of -log p (Caffe's p - 1 for the label)
        clamped = torch.clamp(picked.detach(), min=-LOSS_CAP)
        nll = -(picked + (clamped - picked.detach()))
        w = None
        if self.class_weights is not None:
            w = torch.tensor(self.class_weights, dtype=nll.dtype, device=nll.device)[safe]
            nll = nll * w
        total = torch.where(valid, nll, torch.zeros_like(nll)).sum()
        n = self.normalization
        if self.by_weight:
            # DeepLab: loss / batch_weight, the sum of the counted samples' weights (no floor at 1)
            norm = float(valid.sum()) if w is None else float(torch.where(valid, w, torch.zeros_like(w)).sum())
            loss = total / norm
            return (loss, logp.exp()) if self.with_prob else loss
        if n == caffe_pb2.LossParameter.FULL:
            norm = float(outer * inner)
        elif n == caffe_pb2.LossParameter.VALID:
            norm = float(valid.sum()) if self.ignore_labels else float(outer * inner)
        elif n == caffe_pb2.LossParameter.BATCH_SIZE:
            norm = float(outer)
        else:
            norm = 1.0
        loss = total / max(1.0, norm)
        if self.with_prob:
            return loss, logp.exp()
        return loss


class Accuracy(nn.Module):
    """``forward(scores, label) -> accuracy`` (top_k, ignore_label; a second top gives per-class accuracy).
    Like Caffe, a sample counts when fewer than ``top_k`` scores are strictly greater than its label's."""

    def __init__(self, axis: int, top_k: int, ignore_label: int | None, per_class: bool):
        super().__init__()
        self.caffe_blobs: list[str] = []
        self.axis, self.top_k, self.ignore_label, self.per_class = axis, top_k, ignore_label, per_class

    @torch.no_grad()
    def forward(self, scores, label):
        axis = canonical_axis(self.axis, scores.dim())
        num_labels = scores.shape[axis]
        s = scores.movedim(axis, -1).reshape(-1, num_labels)
        label = label.reshape(-1).long()
        valid = torch.ones_like(label, dtype=torch.bool) if self.ignore_label is None else label != self.ignore_label
        safe = torch.where(valid, label, torch.zeros_like(label))
        target = s.gather(1, safe.unsqueeze(1))
        correct = ((s > target).sum(dim=1) < self.top_k) & valid
        count = int(valid.sum())
        acc = correct.sum().to(scores.dtype) / max(count, 1) if count else torch.zeros((), dtype=scores.dtype)
        acc = acc.reshape(())
        if not self.per_class:
            return acc
        per = torch.zeros(num_labels, dtype=scores.dtype, device=scores.device)
        hits = torch.zeros_like(per).index_add_(0, safe[valid], correct[valid].to(scores.dtype))
        seen = torch.zeros_like(per).index_add_(0, safe[valid], torch.ones_like(safe[valid], dtype=scores.dtype))
        per = torch.where(seen > 0, hits / seen.clamp_min(1), per)
        return acc, per


@register("SoftmaxWithLoss")
class SoftmaxWithLossConverter(NoParams):
    loss = True

    def top_shapes(self, layer, bottom_shapes):
        """The loss (a scalar) and, as a second top, the softmax probabilities."""
        _check_label_count(layer, bottom_shapes, layer.softmax_param.axis)
        return [(), tuple(bottom_shapes[0])][:len(layer.top)]

    def build(self, layer, bottom_shapes):
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


def _weight_source(layer, path: str, classes: int) -> list[float]:
    """DeepLab's weight_source: whitespace-separated numbers, read until the first that is not one (its
    ``while (infile >> tmp_val)``), each >= 0, as many as classes."""
    values = []
    for token in read_list_text(path, "class weights file", "a class weights file").split():
        try:
            values.append(float(np.float32(float(token))))
        except ValueError:
            break
    if any(v < 0 for v in values):
        raise _bad(layer, "Weights cannot be negative", path)
    if len(values) != classes:
        raise _bad(layer, f"weight_source holds {len(values)} weights for {classes} classes", path)
    return values


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


def _check_label_range(layer_name: str, type_name: str, label: torch.Tensor, n: int, ignore=None) -> None:
    bad = (label < 0) | (label >= n)
    if ignore is not None:
        bad &= label != ignore
    if bool(bad.any()):
        raise CaffeFileError(None, f"layer '{layer_name}' ({type_name}): a label is outside 0..{n - 1}")


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


class _LossModule(nn.Module):
    caffe_blobs: tuple = ()

    def __init__(self, name: str, type_name: str):
        super().__init__()
        self.caffe_blobs = []
        self.layer_name, self.type_name = name, type_name


class EuclideanLoss(_LossModule):
    """``sum((a - b)^2) / num / 2`` (euclidean_loss_layer.cpp Forward_cpu); both bottoms get the gradient
    ``+-(a - b) / num`` (Backward_cpu), the true derivative."""

    def forward(self, a, b):
        d = a - b.reshape(a.shape)
        return (d * d).sum() / _num(a.shape) / 2


class SigmoidCrossEntropyLoss(_LossModule):
    """sigmoid_cross_entropy_loss_layer.cpp (master) Forward_cpu: the stable form
    ``-(x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])))`` summed over the targets whose ``int(t)`` is not
    ``ignore_label``, divided by get_normalizer (VALID counts those targets). Backward_cpu's
    ``(sigmoid(x) - t) / normalizer``, 0 at ignored targets, is this function's derivative."""

    def __init__(self, name, type_name, normalization: int, ignore_label):
        super().__init__(name, type_name)
        self.normalization, self.ignore_label = normalization, ignore_label

    def forward(self, x, target):
        t = target.detach().reshape(x.shape).to(x.dtype)
        pos = (x >= 0).to(x.dtype)
        per = -(x * (t - pos) - torch.log(1 + torch.exp(x - 2 * x * pos)))
        if self.ignore_label is not None:
            valid = t.trunc() != self.ignore_label     # static_cast<int>(target[i]) == ignore_label_
            per = torch.where(valid, per, torch.zeros_like(per))
            count = int(valid.sum())
        else:
            count = x.numel()
        outer = _num(x.shape)
        return per.sum() / _normalizer(self.normalization, outer, x.numel() // max(outer, 1), count)


class _ContrastiveFn(torch.autograd.Function):
    """contrastive_loss_layer.cpp: Forward_cpu and Backward_cpu. The non-legacy dissimilar gradient is Caffe's
    ``-(margin - d) / (d + 1e-4) * (a - b) / num``, not the true derivative (which has no 1e-4)."""

    @staticmethod
    def forward(ctx, a, b, sim, margin: float, legacy: bool):
        diff = a - b
        dist_sq = (diff * diff).sum(dim=1)
        num = a.shape[0]
        if legacy:
            dis = torch.clamp(margin - dist_sq, min=0)
        else:
            dis = torch.clamp(margin - torch.sqrt(dist_sq), min=0) ** 2
        loss = torch.where(sim, dist_sq, dis).sum() / num / 2
        ctx.save_for_backward(diff, dist_sq, sim)
        ctx.margin, ctx.legacy = margin, legacy
        return loss

    @staticmethod
    def backward(ctx, g):
        diff, dist_sq, sim = ctx.saved_tensors
        num = diff.shape[0]
        alpha = g / num
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        coef = torch.where(sim, alpha * torch.ones_like(dist_sq), torch.where(mdist > 0, beta, torch.zeros_like(beta)))
        da = coef.unsqueeze(1) * diff
        return da, -da, None, None, None


class ContrastiveLoss(_LossModule):
    """``forward(a, b, similar) -> loss`` (contrastive_loss_layer.cpp): per pair ``d^2`` when ``int(y)`` != 0,
    else ``max(margin - d^2, 0)`` (legacy_version) or ``max(margin - d, 0)^2``; summed, / num / 2. Gradients as
    Backward_cpu (see :class:`_ContrastiveFn`)."""

    def __init__(self, name, type_name, margin: float, legacy: bool):
        super().__init__(name, type_name)
        self.margin, self.legacy = margin, legacy

    def forward(self, a, b, y):
        n = _num(a.shape)
        sim = y.detach().reshape(n).trunc() != 0      # static_cast<int>(bottom[2]->cpu_data()[i])
        return _ContrastiveFn.apply(a.reshape(n, -1), b.reshape(n, -1), sim, self.margin, self.legacy)


class HingeLoss(_LossModule):
    """hinge_loss_layer.cpp: ``h = max(0, 1 + s x)`` for every class with ``s = -1`` at the true class and
    ``+1`` elsewhere; L1 ``sum(h) / num``, L2 ``sum(h^2) / num``. Backward_cpu (sign(s h) / num, 2 s h / num)
    is the derivative, 0 where h = 0 (relu's)."""

    def __init__(self, name, type_name, norm: int):
        super().__init__(name, type_name)
        self.norm = norm

    def forward(self, x, label):
        num = _num(x.shape)
        xf = x.reshape(num, -1)
        lab = label.detach().reshape(num).long()
        _check_label_range(self.layer_name, self.type_name, lab, xf.shape[1])
        sign = torch.ones_like(xf).scatter_(1, lab.unsqueeze(1), -1.0)
        h = torch.relu(1 + sign * xf)
        if self.norm == caffe_pb2.HingeLossParameter.L2:
            return (h * h).sum() / num
        return h.sum() / num


class MultinomialLogisticLoss(_LossModule):
    """multinomial_logistic_loss_layer.cpp: ``-sum log(max(p_label, 1e-20)) / num`` over the samples; Backward_cpu
    gives ``-1 / (num * max(p_label, 1e-20))`` at the label (also where p was clamped, where the true derivative
    is 0) and 0 elsewhere."""

    def forward(self, prob, label):
        num = _num(prob.shape)
        pf = prob.reshape(num, -1)
        lab = label.detach().reshape(num).long()
        _check_label_range(self.layer_name, self.type_name, lab, pf.shape[1])
        p = pf.gather(1, lab.unsqueeze(1)).squeeze(1)
        clamped = p + (torch.clamp(p.detach(), min=LOG_THRESHOLD) - p.detach())  # value max(p, thr), d/dp 1
        return -torch.log(clamped).sum() / num


class InfogainLoss(_LossModule):
    """infogain_loss_layer.cpp as in BVLC master (since 2017): a softmax over ``axis`` first, then
    ``-sum_l H[y, l] log(max(p_l, 1e-20))`` over the non-ignored labels, divided by get_normalizer (VALID by
    default). Backward_cpu's ``(p_l * sum_k H[y, k] - H[y, l]) / normalizer`` is the derivative without the
    clamp, which sfport gives. H is ``infogain_loss_param.source`` or the third bottom (no gradient); a second
    top is the softmax."""

    def __init__(self, name, type_name, axis: int, normalization: int, ignore_label, infogain, with_prob: bool):
        super().__init__(name, type_name)
        self.axis, self.normalization, self.ignore_label, self.with_prob = axis, normalization, ignore_label, with_prob
        if infogain is not None:
            self.register_buffer("infogain", torch.as_tensor(infogain, dtype=torch.float32), persistent=False)
        else:
            self.infogain = None

    def forward(self, scores, label, h=None):
        axis = canonical_axis(self.axis, scores.dim())
        c = scores.shape[axis]
        outer, inner = _count(scores.shape, 0, axis), _count(scores.shape, axis + 1)
        hm = (self.infogain if h is None else h).detach().to(scores.dtype).reshape(c, c)
        logp = torch.log_softmax(scores, dim=axis)
        logp_f = logp.reshape(outer, c, inner)
        lab = label.detach().reshape(outer, inner).long()
        _check_label_range(self.layer_name, self.type_name, lab, c, self.ignore_label)
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore_label is None else lab != self.ignore_label
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        rows = hm[safe].permute(0, 2, 1)                        # (outer, c, inner): H[y_ij, l]
        # value log(max(p, thr)); gradient that of log p (Backward_cpu)
        lc = logp_f + (torch.clamp(logp_f.detach(), min=math.log(LOG_THRESHOLD)) - logp_f.detach())
        per = -(rows * lc).sum(dim=1)
        total = torch.where(valid, per, torch.zeros_like(per)).sum()
        loss = total / _normalizer(self.normalization, outer, inner, int(valid.sum()))
        if self.with_prob:
            return loss, logp.exp()
        return loss


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
        self.check(layer, bottom_shapes)
        p = layer.contrastive_loss_param
        return ContrastiveLoss(layer.name, layer.type, float(p.margin), bool(p.legacy_version))


@register("HingeLoss")
class HingeLossConverter(_LossConverter):
    def check(self, layer, bottom_shapes):
        self._need(layer, (2,))
        _check_labels_per_sample(layer, bottom_shapes)

    def build(self, layer, bottom_shapes):
        self.check(layer, bottom_shapes)
        return HingeLoss(layer.name, layer.type, layer.hinge_loss_param.norm)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossConverter(_LossConverter):
    def check(self, layer, bottom_shapes):
        self._need(layer, (2,))
        _check_labels_per_sample(layer, bottom_shapes)

    def build(self, layer, bottom_shapes):
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
        h = read_infogain(layer) if len(bottom_shapes) < 3 else None
        self.check(layer, bottom_shapes, None if h is None else h.shape)
        lp, p = layer.loss_param, layer.infogain_loss_param
        return InfogainLoss(layer.name, layer.type, p.axis, lp.normalization,
                            lp.ignore_label if lp.HasField("ignore_label") else None, h, len(layer.top) > 1)
