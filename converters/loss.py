"""SoftmaxWithLoss and Accuracy, as Caffe computes them (loss_layer.cpp, softmax_loss_layer.cpp, accuracy_layer.cpp)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Converter, register
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
    never below 1."""

    def __init__(self, axis: int, normalization: int, ignore_label: int | None, with_prob: bool):
        super().__init__()
        self.caffe_blobs: list[str] = []
        self.axis, self.normalization, self.ignore_label, self.with_prob = axis, normalization, ignore_label, with_prob

    def forward(self, scores, label):
        axis = canonical_axis(self.axis, scores.dim())
        logp = torch.log_softmax(scores, dim=axis)
        outer = math.prod(scores.shape[:axis])
        inner = math.prod(scores.shape[axis + 1:])
        label = label.reshape(outer, inner).long()
        logp_f = logp.movedim(axis, -1).reshape(outer, inner, -1)
        valid = torch.ones_like(label, dtype=torch.bool) if self.ignore_label is None else label != self.ignore_label
        safe = torch.where(valid, label, torch.zeros_like(label))
        if bool(((safe < 0) | (safe >= logp_f.shape[-1])).any()):
            raise ValueError(f"SoftmaxWithLoss: a label is outside 0..{logp_f.shape[-1] - 1}")
        picked = logp_f.gather(2, safe.unsqueeze(2)).squeeze(2)
        # value: -log(max(p, FLT_MIN)); gradient: that of -log p (Caffe's p - 1 for the label)
        clamped = torch.clamp(picked.detach(), min=-LOSS_CAP)
        nll = -(picked + (clamped - picked.detach()))
        total = torch.where(valid, nll, torch.zeros_like(nll)).sum()
        n = self.normalization
        if n == caffe_pb2.LossParameter.FULL:
            norm = float(outer * inner)
        elif n == caffe_pb2.LossParameter.VALID:
            norm = float(valid.sum()) if self.ignore_label is not None else float(outer * inner)
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
class SoftmaxWithLossConverter(Converter):
    loss = True

    def param_shapes(self, layer, bottom_shapes):
        return []

    def top_shapes(self, layer, bottom_shapes):
        """The loss (a scalar) and, as a second top, the softmax probabilities."""
        return [(), tuple(bottom_shapes[0])][:len(layer.top)]

    def build(self, layer, bottom_shapes):
        lp = layer.loss_param
        return SoftmaxWithLoss(layer.softmax_param.axis, _normalization(layer),
                               lp.ignore_label if lp.HasField("ignore_label") else None, len(layer.top) > 1)


@register("Accuracy")
class AccuracyConverter(Converter):
    training_only = True

    def param_shapes(self, layer, bottom_shapes):
        return []

    def top_shapes(self, layer, bottom_shapes):
        """The accuracy (a scalar) and, as a second top, one accuracy per class."""
        b0 = bottom_shapes[0]
        return [(), (b0[canonical_axis(layer.accuracy_param.axis, len(b0))],)][:len(layer.top)]

    def build(self, layer, bottom_shapes):
        p = layer.accuracy_param
        return Accuracy(p.axis, p.top_k, p.ignore_label if p.HasField("ignore_label") else None, len(layer.top) > 1)
