"""The torch side of :mod:`sfport.converters.loss`: the loss layers' and Accuracy's modules (and DeepLab's
weight_source, read with the data room's list reader when the net is built)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sfport.data.imagedata import read_list_text
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

from ..base import layer_error as _bad
from ..geometry import canonical_axis
from ..loss import LOG_THRESHOLD, LOSS_CAP, _count, _normalizer, _num


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
        logp_f = logp.movedim(axis, -1).reshape(outer, inner, scores.shape[axis])
        valid = None   # every sample counts: no mask (the usual classifier; half the operations)
        safe = label
        if self.ignore_labels:
            valid = torch.ones_like(label, dtype=torch.bool)
            for v in self.ignore_labels:
                valid = valid & (label != v)
            safe = torch.where(valid, label, torch.zeros_like(label))
        lo, hi = torch.aminmax(safe) if safe.numel() else (0, 0)
        if int(lo) < 0 or int(hi) >= logp_f.shape[-1]:
            raise ValueError(f"SoftmaxWithLoss: a label is outside 0..{logp_f.shape[-1] - 1}")
        picked = logp_f.gather(2, safe.unsqueeze(2)).squeeze(2)
        # value: -log(max(p, FLT_MIN)); gradient: that of -log p (Caffe's p - 1 for the label)
        detached = picked.detach()
        nll = -(picked + (torch.clamp(detached, min=-LOSS_CAP) - detached))
        w = None
        if self.class_weights is not None:
            w = torch.tensor(self.class_weights, dtype=nll.dtype, device=nll.device)[safe]
            nll = nll * w
        if valid is not None:
            nll = torch.where(valid, nll, torch.zeros_like(nll))
        total = nll.sum()
        if self.by_weight:
            # DeepLab: loss / batch_weight, the sum of the counted samples' weights (no floor at 1)
            if w is None:
                norm = float(outer * inner) if valid is None else float(valid.sum())
            else:
                norm = float((w if valid is None else torch.where(valid, w, torch.zeros_like(w))).sum())
            loss = total / norm
        else:   # the count of valid samples is read only where the normalizer needs it
            count = outer * inner if valid is None or self.normalization != caffe_pb2.LossParameter.VALID \
                else int(valid.sum())
            loss = total / _normalizer(self.normalization, outer, inner, count)
        return (loss, logp.exp()) if self.with_prob else loss


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
        if self.ignore_label is None:   # every sample counts: no mask, no count to read back
            safe, counted, count = label, label, len(label)
        else:
            valid = label != self.ignore_label
            safe = torch.where(valid, label, torch.zeros_like(label))
            counted, count = safe[valid], int(valid.sum())
        target = s.gather(1, safe.unsqueeze(1))
        correct = (s > target).sum(dim=1) < self.top_k
        if self.ignore_label is not None:
            correct = correct[valid]
        acc = correct.sum().to(scores.dtype) / max(count, 1) if count else torch.zeros((), dtype=scores.dtype)
        acc = acc.reshape(())
        if not self.per_class:
            return acc
        per = torch.zeros(num_labels, dtype=scores.dtype, device=scores.device)
        hits = torch.zeros_like(per).index_add_(0, counted, correct.to(scores.dtype))
        seen = torch.zeros_like(per).index_add_(0, counted, torch.ones_like(counted, dtype=scores.dtype))
        per = torch.where(seen > 0, hits / seen.clamp_min(1), per)
        return acc, per


def _weight_source(layer, path: str, classes: int) -> list[float]:
    """DeepLab's weight_source: whitespace-separated numbers, read until the first that is not one (its
    ``while (infile >> tmp_val)``), each >= 0, as many as classes. (Here, not with the converter: the list reader
    of :mod:`sfport.data.imagedata` imports torch, and the file is read only when the net is built.)"""
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


def _check_label_range(layer_name: str, type_name: str, label: torch.Tensor, n: int, ignore=None) -> None:
    bad = (label < 0) | (label >= n)
    if ignore is not None:
        bad &= label != ignore
    if bool(bad.any()):
        raise CaffeFileError(None, f"layer '{layer_name}' ({type_name}): a label is outside 0..{n - 1}")


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

