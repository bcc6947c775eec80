"""The torch side of :mod:`sfport.converters.multibox`: MultiBoxLoss's module, the losses on what the family's
numpy matching and mining selected."""
from __future__ import annotations

import numpy as np
import torch

from ..multibox import (F32, FLT_MIN, _M, _check_shapes, _conf_targets, _find_matches, _ground_truth, _loc_plan,
                        _mine, _normalizer, _Setup)
from .base import NoBlobs


class MultiBoxLoss(NoBlobs):
    """``forward(loc, conf, prior, label) -> loss`` (see the module)."""

    def __init__(self, setup: _Setup, bottoms):
        super().__init__()
        self.setup, self.bottoms = setup, tuple(bottoms)

    def forward(self, loc, conf, prior, label):
        s = self.setup
        P = _check_shapes(s, self.bottoms, 1, [tuple(x.shape) for x in (loc, conf, prior, label)])
        N, C, L = loc.shape[0] if loc.dim() else 1, s.num_classes, s.loc_classes
        loc4, conf3 = loc.reshape(N, P, L, 4), conf.reshape(N, P, C)
        with torch.no_grad():
            loc_np = loc4.detach().cpu().numpy().astype(F32)
            conf_np = conf3.detach().cpu().numpy().astype(F32)
            pr = prior.detach().cpu().numpy().astype(F32).reshape(2, P, 4)
            rows = label.detach().cpu().numpy().astype(F32).reshape(-1, 8)
        pb, pv = pr[0], pr[1]
        truth = _ground_truth(s, rows)
        matches = _find_matches(s, truth, loc_np, pb, pv)
        negs, num_matches = _mine(s, matches, truth, loc_np, conf_np, pb, pv)
        norm = _normalizer(s, N, P, num_matches)
        loss = loc.reshape(-1)[:0].sum() + conf.reshape(-1)[:0].sum()    # 0, in the graph of both
        if s.propagate[0] and num_matches >= 1:
            loss = loss + self._loc_loss(s, loc4, matches, truth, loc_np, pb, pv) * float(s.loc_weight) / norm
        if s.propagate[1]:
            conf_loss = self._conf_loss(s, conf3, matches, negs, truth, N, P)
            if conf_loss is not None:
                loss = loss + conf_loss / norm
        return loss

    @staticmethod
    def _loc_loss(s: _Setup, loc4, matches, truth, loc_np, pb, pv):
        """The inner SmoothL1Loss (smooth_L1_loss_layer.cpp, no sigma) or EuclideanLoss over the 1 x 4K matched
        rows: the sum of ``0.5 d^2`` (|d| < 1) or ``|d| - 0.5``, resp. ``sum(d^2) / 2`` (num is 1)."""
        plan = _loc_plan(s, matches, truth, loc_np, pb, pv)
        dev = loc4.device
        as_t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        pred = loc4[as_t(plan["image"]), as_t(plan["prior"]), as_t(plan["class"])]
        target = as_t(plan["target"]).to(pred.dtype)
        if s.variance_in_target:   # Backward_cpu copies the divided rows' diff back as it is (no 1 / variance)
            pred = (pred / as_t(pv[plan["prior"]]).to(pred.dtype)).detach() + (pred - pred.detach())
        if plan["inside"] is not None:
            pred = torch.where(as_t(plan["inside"]), pred, target)
        d = pred - target
        if s.loc_loss == _M.L2:
            return (d * d).sum() / 2
        return torch.where(d.abs() < 1, 0.5 * d * d, d.abs() - 0.5).sum()

    @staticmethod
    def _conf_loss(s: _Setup, conf3, matches, negs, truth, N, P):
        """The inner SoftmaxWithLoss (normalization NONE: the sum of ``-log(max(p, FLT_MIN))``, gradient ``p -
        onehot``) or SigmoidCrossEntropyLoss (num 1) over the encoded rows; None when there are none."""
        rows, target = _conf_targets(s, matches, negs, truth, N, P)
        dev = conf3.device
        x = conf3.reshape(N * P, -1) if rows is None else \
            conf3[torch.from_numpy(rows[0]).to(dev), torch.from_numpy(rows[1]).to(dev)]
        if x.shape[0] < 1:
            return None
        t = torch.from_numpy(target).to(dev)
        if s.conf_loss == _M.SOFTMAX:
            logp = torch.log_softmax(x, dim=1).gather(1, t.long().unsqueeze(1)).squeeze(1)
            floor = torch.clamp(logp.detach(), min=float(np.log(FLT_MIN)))   # value log(max(p, FLT_MIN))
            return -(logp + (floor - logp.detach())).sum()
        t = t.to(x.dtype)
        pos = (x.detach() >= 0).to(x.dtype)
        return -(x * (t - pos) - torch.log(1 + torch.exp(x - 2 * x * pos))).sum()

