"""The torch side of :mod:`sfport.converters.nms`: the greedy NMS as one loop in torch (eager, and scripted inside a
TorchScript trace) and onnx's ``NonMaxSuppression`` for an ONNX export, which keep the same boxes. (No ``from
__future__ import annotations``: TorchScript reads :func:`select`'s annotations.)"""
from typing import List, Optional, Tuple

import torch


_SCRIPTED: list = []


def greedy_nms(boxes: torch.Tensor, thresh: float, inclusive: bool, disjoint_zero: bool,
               limit: int, offset: float = 1.0) -> torch.Tensor:
    """The kept positions of ``boxes`` (k x 4 float, in order): each box not yet suppressed is kept and suppresses
    the later ones it overlaps, until ``limit`` are kept. IoU in float: ``w = max(0, min(x2) - max(x1) + offset)``,
    ``inter / (area_i + area_j - inter)``. ``inclusive``: suppressed at ``IoU >= thresh`` compared in double
    (cpu_nms.pyx); else at ``IoU > thresh`` in float (nms.cpp, ApplyNMSFast), where ``disjoint_zero`` makes boxes
    that do not touch 0 (nms.cpp's iou, IntersectBBox)."""
    k = boxes.size(0)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    alive = torch.ones(k, dtype=torch.bool, device=boxes.device)
    keep: List[int] = []
    for i in range(k):
        if len(keep) >= limit:
            break
        if not bool(alive[i]):
            continue
        keep.append(i)
        w = torch.clamp(torch.minimum(x2[i], x2[i + 1:]) - torch.maximum(x1[i], x1[i + 1:]) + offset, min=0.0)
        h = torch.clamp(torch.minimum(y2[i], y2[i + 1:]) - torch.maximum(y1[i], y1[i + 1:]) + offset, min=0.0)
        inter = w * h
        ovr = inter / (areas[i] + areas[i + 1:] - inter)
        if inclusive:
            hit = ovr.double() >= thresh
        else:
            if disjoint_zero:
                apart = (x1[i] > x2[i + 1:]) | (y1[i] > y2[i + 1:]) | (x2[i] < x1[i + 1:]) | (y2[i] < y1[i + 1:])
                ovr = torch.where(apart, torch.zeros_like(ovr), ovr)
            hit = ovr > torch.tensor(thresh, dtype=torch.float32, device=boxes.device)
        alive[i + 1:] = alive[i + 1:] & ~hit
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def select(cand: torch.Tensor, cand_scores: torch.Tensor, floor: Optional[float], thresh: float, inclusive: bool,
           disjoint_zero: bool, limit: int, offset: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image, position) of every kept candidate: per image (``cand`` N x k x 4 in order, ``cand_scores`` N x k)
    :func:`greedy_nms` over the candidates scored above ``floor`` (None: all), which lead the order."""
    images: List[torch.Tensor] = []
    positions: List[torch.Tensor] = []
    for j in range(cand.size(0)):
        count = cand.size(1) if floor is None else int((cand_scores[j] > floor).sum())
        kept = greedy_nms(cand[j, :count], thresh, inclusive, disjoint_zero, limit, offset)
        images.append(torch.full_like(kept, j))
        positions.append(kept)
    if not images:
        empty = torch.zeros(0, dtype=torch.long, device=cand.device)
        return empty, empty
    return torch.cat(images), torch.cat(positions)


def scripted_select(*args):
    """:func:`select`, scripted while tracing (a TorchScript export keeps its loops)."""
    if not torch.jit.is_tracing():
        return select(*args)
    if not _SCRIPTED:
        _SCRIPTED.append(torch.jit.script(select))
    return _SCRIPTED[0](*args)


class OnnxNMS(torch.autograd.Function):
    """onnx's NonMaxSuppression over ``boxes`` (N x k x 4, given as ``[x1, y1, x2 + offset, y2 + offset]``: its IoU
    has no offset) and ``scores`` (N x 1 x k), at most ``limit`` per image, suppressed above ``iou`` (float),
    candidates above ``floor`` (None: all). Eagerly (while the exporter traces) the selection :func:`greedy_nms`
    makes of candidates given in descending order of score. Rows ``[image, 0, position]`` by image, then in the
    order kept (onnxruntime's, whose equal scores go lower position first)."""

    @staticmethod
    def forward(ctx, boxes, scores, limit: int, iou: float, floor, inclusive: bool, disjoint_zero: bool,
                offset: float = 1.0):
        rows = []
        for n in range(boxes.shape[0]):
            count = int((scores[n, 0] > floor).sum()) if floor is not None else boxes.shape[1]
            keep = greedy_nms(boxes[n, :count], iou, False, disjoint_zero, limit, offset)
            rows.append(torch.stack([torch.full_like(keep, n), torch.zeros_like(keep), keep], 1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, limit, iou, floor, inclusive, disjoint_zero, offset=1.0):
        if offset:
            boxes = g.op("Add", boxes, g.op("Constant", value_t=torch.tensor([0.0, 0.0, offset, offset])))
        args = [boxes, scores, g.op("Constant", value_t=torch.tensor([limit], dtype=torch.int64)),
                g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32))]
        if floor is not None:
            args.append(g.op("Constant", value_t=torch.tensor([floor], dtype=torch.float32)))
        return g.op("NonMaxSuppression", *args, center_point_box_i=0)

