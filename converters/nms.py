"""The orderings the detection layers share: libstdc++'s std::sort (the SSD fork's keep_top_k, DetectionEvaluate,
MultiBoxLoss's mining) and the greedy NMS (Proposal's nms_cpu / cpu_nms.pyx, the SSD fork's ApplyNMSFast): one loop
in torch (eager, and scripted inside a TorchScript trace) and onnx's ``NonMaxSuppression`` for an ONNX export, which
keep the same boxes. ``offset`` is what a box's width and height add to ``x2 - x1``: 1 for the pixel boxes of the
two-stage detectors, 0 for SSD's normalized boxes (bbox_util.cpp JaccardOverlap)."""
from typing import List, Optional, Tuple

import numpy as np
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


def float_threshold(t: float, inclusive: bool) -> float:
    """The float ``f`` with ``IoU > f`` (onnx's test, in float) exactly where the layer suppresses."""
    f = np.float32(t)
    if inclusive and float(f) >= t:          # IoU >= t (double): above the float just below t
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def libstdcxx_sort(a: list, less) -> None:
    """``std::sort(a.begin(), a.end(), less)`` as GCC's libstdc++ (bits/stl_algo.h) performs it, in place: an
    introsort (median-of-three pivot moved to the front, unguarded partition, heapsort past 2 log2(n) levels)
    down to runs of 16, then one insertion sort. The sort is not stable, so where keys tie (saturated scores
    at the keep_top_k cut) only the same algorithm keeps what Caffe, built with GCC, keeps."""
    n = len(a)
    if n < 2:
        return

    def swap(i, j):
        a[i], a[j] = a[j], a[i]

    def adjust_heap(first, hole, length, value):          # std::__adjust_heap + std::__push_heap
        top, child = hole, hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if less(a[first + child], a[first + child - 1]):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(a[first + parent], value):
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = value

    def heap_sort(first, last):                             # std::__partial_sort(first, last, last)
        length = last - first
        if length >= 2:                                     # std::__make_heap
            parent = (length - 2) // 2
            while True:
                adjust_heap(first, parent, length, a[first + parent])
                if parent == 0:
                    break
                parent -= 1
        while last - first > 1:                             # std::__sort_heap / std::__pop_heap
            last -= 1
            value = a[last]
            a[last] = a[first]
            adjust_heap(first, 0, last - first, value)

    def partition_pivot(first, last):                       # std::__unguarded_partition_pivot
        mid = first + (last - first) // 2
        x, y, z = first + 1, mid, last - 1                  # std::__move_median_to_first(first, x, y, z)
        if less(a[x], a[y]):
            if less(a[y], a[z]):
                swap(first, y)
            elif less(a[x], a[z]):
                swap(first, z)
            else:
                swap(first, x)
        elif less(a[x], a[z]):
            swap(first, x)
        elif less(a[y], a[z]):
            swap(first, z)
        else:
            swap(first, y)
        lo, hi, pivot = first + 1, last, first              # std::__unguarded_partition
        while True:
            while less(a[lo], a[pivot]):
                lo += 1
            hi -= 1
            while less(a[pivot], a[hi]):
                hi -= 1
            if not lo < hi:
                return lo
            swap(lo, hi)
            lo += 1

    def introsort(first, last, depth):                      # std::__introsort_loop
        while last - first > 16:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            cut = partition_pivot(first, last)
            introsort(cut, last, depth)
            last = cut

    def linear_insert(i):                                   # std::__unguarded_linear_insert
        value = a[i]
        while less(value, a[i - 1]):
            a[i] = a[i - 1]
            i -= 1
        a[i] = value

    def insertion_sort(first, last):                        # std::__insertion_sort
        for i in range(first + 1, last):
            if less(a[i], a[first]):
                value = a[i]
                a[first + 1:i + 1] = a[first:i]
                a[first] = value
            else:
                linear_insert(i)

    introsort(0, n, 2 * (n.bit_length() - 1))               # 2 * std::__lg(n)
    if n > 16:                                              # std::__final_insertion_sort
        insertion_sort(0, 16)
        for i in range(16, n):
            linear_insert(i)
    else:
        insertion_sort(0, n)
