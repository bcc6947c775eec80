"""The torch side of :mod:`sfport.converters.detection_eval`: DetectionEvaluate's module around the family's
numpy evaluation."""
from __future__ import annotations

import torch

from ..detection_eval import EvalSetup, _legacy, check_bottoms, evaluate
from .base import NoBlobs


class DetectionEvaluate(NoBlobs):
    """``forward(detections, ground_truth) -> 1 x 1 x (P + N) x 5`` (see :func:`evaluate`). Keeps the fork's
    ``count_`` (the position in ``name_size_file``) across forwards."""

    def __init__(self, setup: EvalSetup, bottoms: list[str]):
        super().__init__()
        self.setup, self.bottoms = setup, list(bottoms)
        self.count = 0

    def forward(self, det, gt):
        n = check_bottoms(self.setup.name, self.bottoms, [tuple(det.shape), tuple(gt.shape)])
        g = _legacy(gt.shape)[2]
        top, self.count = evaluate(self.setup, det.detach().float().cpu().reshape(-1)[:n * 7].numpy(),
                                   gt.detach().float().cpu().reshape(-1)[:g * 8].numpy(), self.count)
        return torch.from_numpy(top).reshape(1, 1, -1, 5).to(det.device)

