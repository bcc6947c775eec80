"""DetectionOutput's exported form (the SSD fork's detection_output_layer.cpp Forward_cpu with bbox_util.cpp
ApplyNMSFast, JaccardOverlap): the layer's own ``1 x 1 x R x 7`` rows ``[image, label, score, xmin, ymin, xmax,
ymax]`` (R varies with the input) computed from the decoded boxes and the scores with standard operations, so an
ONNX file (opset 11 and later: TopK, NonMaxSuppression, gathers, NonZero) or a TorchScript file is the layer.

For each image and class other than the background, in one batch of image x class rows:

1. the candidates: the scores sorted in descending order (TopK; equal scores lower prior first, as GetMaxScoreIndex's
   std::stable_sort), the first ``top_k`` of them (the rest scored -inf), those above ``confidence_threshold``;
2. the NMS: ``NonMaxSuppression`` (ONNX; TorchScript and eager: the same greedy loop, :mod:`.nms`) keeps a box
   whose IoU with every kept box is <= ``nms_threshold`` (its test ``IoU > threshold`` in float; the IoU in float
   as JaccardOverlap, ``inter / (size1 + size2 - inter)``, with sizes ``(xmax - xmin) * (ymax - ymin)``). A box
   with ``xmax < xmin`` or ``ymax < ymin`` (BBoxSize 0: it overlaps nothing in Caffe) enters it as the empty box
   at its corner, which overlaps nothing either;
3. ``keep_top_k``: each kept detection's rank among its image's by descending score; those ranked below
   ``keep_top_k`` stay (Caffe: when an image has more, std::sort of (score, label, prior) and the first
   keep_top_k). Equal scores rank by label, then by prior (Caffe's std::sort leaves ties in an order of its own:
   rows that tie at the cut may be other rows of the same score);
4. the rows by image, then ascending label, then descending score (equal scores: lower prior first; Caffe's order
   after a keep_top_k cut may swap them); none in the whole batch: one row ``[i, -1, -1, -1, -1, -1, -1]`` per
   image, as Forward_cpu writes.

``nms_param.eta`` < 1 (the adaptive threshold) has no standard operation: such a layer is exported before its NMS
(:mod:`sfport.converters.ssd`), as is every DetectionOutput when the export is asked for ``pre_nms``.
"""
from __future__ import annotations

import torch

from .nms import OnnxNMS, scripted_select

_BIG = 2 ** 31 - 1


def supported(setup) -> bool:
    """Whether the layer's NMS has a standard form (eta 1: a fixed threshold)."""
    return setup.eta >= 1


def _order(key: torch.Tensor, descending: bool) -> torch.Tensor:
    """The stable sort's permutation of a 1-D ``key`` (ONNX: TopK over all of it, equal keys lower index first)."""
    if torch.onnx.is_in_onnx_export():
        return torch.topk(key, key.shape[0], largest=descending, sorted=True).indices
    return torch.sort(key, descending=descending, stable=True).indices


def _count(like: torch.Tensor) -> torch.Tensor:
    """0, 1, ... along the last axis of ``like`` (int64), from its size at run time."""
    return torch.ones_like(like, dtype=torch.long).cumsum(-1) - 1


def detection_rows(setup, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The layer's top (1 x 1 x R x 7) from ``boxes`` (N, P, L, 4: decoded, DecodeBBoxesAll) and ``scores``
    (N, P, C); see the module."""
    s = setup
    C = s.num_classes
    # image x class rows: b = n * C + c
    sc = scores.permute(0, 2, 1)                                            # N, C, P
    if 0 <= s.background < C:
        bg = torch.tensor([c == s.background for c in range(C)], device=scores.device)
        sc = torch.where(bg.reshape(1, C, 1), torch.full_like(sc, -float("inf")), sc)
    sc = sc.flatten(0, 1)                                                   # N*C, P
    if s.share_location:
        bx = boxes[:, :, 0].unsqueeze(1).expand(-1, C, -1, -1)
    else:
        bx = boxes.permute(0, 2, 1, 3)
    bx = bx.flatten(0, 1)                                                   # N*C, P, 4
    # 1. candidates: descending score, stable; the first top_k
    if torch.onnx.is_in_onnx_export():
        cand_scores, order = torch.topk(sc, sc.shape[1], dim=1, largest=True, sorted=True)
    else:
        cand_scores, order = torch.sort(sc, dim=1, descending=True, stable=True)
    if s.top_k > -1:
        cand_scores = torch.where(_count(cand_scores) < s.top_k, cand_scores,
                                  torch.full_like(cand_scores, -float("inf")))
    cand = torch.gather(bx, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    # 2. the NMS, an inverted box as the empty box at its corner
    x1, y1, x2, y2 = cand.unbind(-1)
    inverted = ((x2 < x1) | (y2 < y1)).unsqueeze(-1)
    for_nms = torch.where(inverted, torch.stack([x1, y1, x1, y1], -1), cand)
    floor, iou = float(s.confidence_threshold), float(s.nms_threshold)
    if torch.onnx.is_in_onnx_export():
        sel = OnnxNMS.apply(for_nms, cand_scores.unsqueeze(1), _BIG, iou, floor, False, True, 0.0)
        b, pos = sel[:, 0], sel[:, 2]
    else:
        b, pos = scripted_select(for_nms, cand_scores, floor, iou, False, True, _BIG, 0.0)
    k = cand_scores.shape[1]
    by_row = _order(b.float(), False)          # by image, then class (onnxruntime's order already; kept stable)
    b, pos = b[by_row], pos[by_row]
    flat = b * k + pos
    score = cand_scores.reshape(-1)[flat]
    box = cand.reshape(-1, 4)[flat]
    image, label = torch.div(b, C, rounding_mode="floor"), torch.remainder(b, C)
    # 3. keep_top_k: the rank of each among its image's detections by descending score
    if s.keep_top_k > -1:
        by_score = _order(score, True)
        ids = _count(scores[:, 0, 0])                                       # 0 .. N-1
        onehot = (image[by_score].unsqueeze(1) == ids.unsqueeze(0)).long()   # K x N
        ranked = (((onehot.cumsum(0) * onehot).sum(1) - 1) < s.keep_top_k).long()
        keep = torch.zeros_like(ranked).scatter(0, by_score, ranked) > 0
        image, label, score, box = image[keep], label[keep], score[keep], box[keep]
    # 4. the rows; none at all: one [i, -1, ...] row per image
    rows = torch.cat([image.unsqueeze(1).float(), label.unsqueeze(1).float(), score.unsqueeze(1), box], 1)
    ids = _count(scores[:, 0, 0]).float()
    empty = torch.cat([ids.unsqueeze(1), -torch.ones_like(ids).unsqueeze(1).expand(-1, 6)], 1)
    none = (torch.ones_like(score, dtype=torch.long).sum() == 0).expand_as(ids)
    take = torch.cat([torch.ones_like(score, dtype=torch.bool), none])
    return torch.cat([rows, empty], 0)[take].unsqueeze(0).unsqueeze(0)
