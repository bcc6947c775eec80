"""py-faster-rcnn's ProposalLayer.forward (TEST phase) transcribed into numpy, independent of sfport: the reference
tests/test_detectors.py checks the detectors' ``proposal`` blob against, and the margins that say whether another
implementation (OpenCV 4's Proposal, fed its own rounding of the same scores) must give the same rows.

Transcribed from rbgirshick/py-faster-rcnn 781a917b: lib/rpn/proposal_layer.py (forward, _filter_boxes),
lib/rpn/generate_anchors.py, lib/fast_rcnn/bbox_transform.py (bbox_transform_inv, clip_boxes), lib/nms/cpu_nms.pyx
and lib/fast_rcnn/config.py (cfg.TEST: RPN_PRE_NMS_TOP_N 6000, RPN_POST_NMS_TOP_N 300, RPN_NMS_THRESH 0.7,
RPN_MIN_SIZE 16), in the same dtypes (anchors float64; from ``astype(deltas.dtype)`` on float32; the NMS threshold
a double). tests/test_detectors.py checks it against the layer itself (tests/data/proposal/py_*.npz, made by running
proposal_layer.py): the same rows in the same order (bit for bit where numpy's float32 exp rounds as it did there),
the same scores.

Where the source is not one function of its inputs, this picks one answer and measures how much it mattered:

- ``argsort()[::-1]`` (numpy's quicksort, in proposal_layer.py and again in cpu_nms.pyx) leaves the order of equal
  scores unspecified: here equal scores go in ascending anchor order (cpu_nms's second sort then leaves the sorted
  boxes in place);
- nms_wrapper runs gpu_nms (cfg.USE_GPU_NMS: its own float IoU ``> 0.7f``) or cpu_nms (float IoU ``>= 0.7`` in
  double): here cpu_nms. The comparisons agree on every float (none lies between 0.7f and 0.7); the IoUs' rounding
  may not.

:class:`Proposals` reports the margins of the rows given: ``score_margin``, the least score difference that
decides them (between consecutive rows, the last row and the next survivor, and each box the NMS suppressed before
that and the kept box that suppressed it; the gap at the pre_nms_topN cut if the NMS got that far), and
``iou_margin``, the least distance from the threshold of an IoU that decided them (each of those suppressions,
and each pair of rows, kept apart). Scores that differ from these by less than half of ``score_margin``, boxes whose
IoUs differ by less than ``iou_margin`` and ties taken in any order give the same rows
(greedy NMS in any order that keeps every pair further apart than the margin in its order; the boxes kept are
then the same, in the same order).
"""
from dataclasses import dataclass

import numpy as np

TEST_CFG = {"pre_nms_topN": 6000, "post_nms_topN": 300, "nms_thresh": 0.7, "min_size": 16}


def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)) -> np.ndarray:
    """generate_anchors.py: _ratio_enum then _scale_enum of the window ``[0, 0, base - 1, base - 1]``."""
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mkanchors(ws, hs, x_ctr, y_ctr):
        ws, hs = ws[:, np.newaxis], hs[:, np.newaxis]
        return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1),
                          x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))

    ratios, scales = np.array(ratios), np.array(scales)
    w, h, x_ctr, y_ctr = whctrs(np.array([1, 1, base_size, base_size]) - 1)
    ws = np.round(np.sqrt(w * h / ratios))
    ratio_anchors = mkanchors(ws, np.round(ws * ratios), x_ctr, y_ctr)
    out = []
    for i in range(ratio_anchors.shape[0]):
        w, h, x_ctr, y_ctr = whctrs(ratio_anchors[i, :])
        out.append(mkanchors(w * scales, h * scales, x_ctr, y_ctr))
    return np.vstack(out)


def bbox_transform_inv(boxes, deltas) -> np.ndarray:
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx, dy, dw, dh = deltas[:, 0::4], deltas[:, 1::4], deltas[:, 2::4], deltas[:, 3::4]
    pred_ctr_x = dx * widths[:, np.newaxis] + ctr_x[:, np.newaxis]
    pred_ctr_y = dy * heights[:, np.newaxis] + ctr_y[:, np.newaxis]
    pred_w = np.exp(dw) * widths[:, np.newaxis]
    pred_h = np.exp(dh) * heights[:, np.newaxis]
    pred = np.zeros(deltas.shape, dtype=deltas.dtype)
    pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return pred


def clip_boxes(boxes, im_shape) -> np.ndarray:
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], im_shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], im_shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], im_shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], im_shape[0] - 1), 0)
    return boxes


def filter_boxes(boxes, min_size) -> np.ndarray:
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    return np.where((ws >= min_size) & (hs >= min_size))[0]


def iou(box, boxes) -> np.ndarray:
    """cpu_nms.pyx's float32 IoU of one box with each of ``boxes``."""
    one, zero = np.float32(1), np.float32(0)
    w = np.maximum(zero, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + one)
    h = np.maximum(zero, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + one)
    inter = w * h
    area = (box[2] - box[0] + one) * (box[3] - box[1] + one)
    return inter / (area + (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one) - inter)


def cpu_nms(boxes, scores, thresh, limit=None):
    """cpu_nms.pyx on boxes already in descending score: greedy, each box kept suppresses the later ones at
    ``IoU >= thresh`` (vectorised over the later boxes as py_cpu_nms.py). Stops when ``limit`` are kept.
    Returns (keep, how far it went, for each box the box that suppressed it or -1, for each its IoU)."""
    n = len(boxes)
    by = np.full(n, -1)
    by_iou = np.zeros(n, dtype=np.float32)
    keep, end = [], n
    for i in range(n):
        if by[i] >= 0:
            continue
        keep.append(i)
        if limit is not None and len(keep) >= limit:
            end = i + 1
            break
        later = np.arange(i + 1, n)
        later = later[by[later] < 0]
        ovr = iou(boxes[i], boxes[later])
        hit = later[ovr >= thresh]
        by[hit], by_iou[hit] = i, ovr[ovr >= thresh]
    return keep, end, by, by_iou


@dataclass
class Proposals:
    rois: np.ndarray          # R x 5, ``[0, x1, y1, x2, y2]``
    scores: np.ndarray        # R x 1
    filtered: int             # boxes under RPN_MIN_SIZE * im_info[2], removed
    size_margin: float        # the least side of a (clipped) box, of every anchor, minus RPN_MIN_SIZE * im_info[2]
    survivors: int            # boxes the NMS keeps, counted up to post_nms_topN + 1
    score_margin: float       # see the module
    iou_margin: float         # see the module


def proposals(scores, bbox_deltas, im_info, feat_stride=16, scales=(8, 16, 32), cfg=TEST_CFG) -> Proposals:
    """ProposalLayer.forward on one image: ``scores`` 1 x 2A x H x W, ``bbox_deltas`` 1 x 4A x H x W, ``im_info``
    1 x 3 (float32)."""
    scores, bbox_deltas, im_info = (np.asarray(x, dtype=np.float32) for x in (scores, bbox_deltas, im_info))
    assert scores.shape[0] == 1, "Only single item batches are supported"
    anchors = generate_anchors(scales=np.array(scales))
    A = anchors.shape[0]
    scores = scores[:, A:, :, :]
    im_info = im_info[0, :]
    height, width = scores.shape[-2:]
    shift_x, shift_y = np.meshgrid(np.arange(0, width) * feat_stride, np.arange(0, height) * feat_stride)
    shifts = np.vstack((shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel())).transpose()
    K = shifts.shape[0]
    anchors = (anchors.reshape((1, A, 4)) + shifts.reshape((1, K, 4)).transpose((1, 0, 2))).reshape((K * A, 4))
    bbox_deltas = bbox_deltas.transpose((0, 2, 3, 1)).reshape((-1, 4))
    scores = scores.transpose((0, 2, 3, 1)).reshape((-1, 1))
    proposals = clip_boxes(bbox_transform_inv(anchors, bbox_deltas), im_info[:2])
    min_size = cfg["min_size"] * im_info[2]
    sides = np.minimum(proposals[:, 2] - proposals[:, 0] + 1, proposals[:, 3] - proposals[:, 1] + 1)
    keep = filter_boxes(proposals, min_size)
    filtered = len(proposals) - len(keep)
    proposals, scores = proposals[keep, :], scores[keep]
    # argsort()[::-1], equal scores in ascending anchor order
    order = np.lexsort((keep, -scores.ravel().astype(np.float64)))
    gaps = []
    if 0 < cfg["pre_nms_topN"] < len(order):
        gaps.append(float(scores[order[cfg["pre_nms_topN"] - 1], 0]) - float(scores[order[cfg["pre_nms_topN"]], 0]))
        order = order[:cfg["pre_nms_topN"]]
    proposals, scores = proposals[order, :], scores[order]
    post, thresh = cfg["post_nms_topN"], cfg["nms_thresh"]
    keep, end, by, by_iou = cpu_nms(proposals, scores.ravel(), thresh, post + 1 if post > 0 else None)
    survivors = len(keep)
    if end < len(proposals):
        gaps = []                                    # the NMS stopped before the pre_nms_topN cut
    s = scores.ravel().astype(np.float64)
    gaps.append(-np.diff(s[keep]))                   # consecutive rows, and the last row and the next survivor
    lost = np.flatnonzero(by[:end] >= 0)             # each suppression: its score lead and IoU
    gaps.append(s[by[lost]] - s[lost])
    ious = [by_iou[lost].astype(np.float64) - thresh]
    kept = proposals[keep]                           # each pair of rows: below the threshold
    for k in range(1, len(keep)):
        ious.append(thresh - iou(kept[k], kept[:k]).astype(np.float64))
    if post > 0:
        keep = keep[:post]
    proposals, scores = proposals[keep, :], scores[keep]
    batch_inds = np.zeros((proposals.shape[0], 1), dtype=np.float32)
    rois = np.hstack((batch_inds, proposals.astype(np.float32, copy=False)))
    least = lambda parts: min((float(np.min(p)) for p in parts if np.size(p)), default=np.inf)  # noqa: E731
    return Proposals(rois, scores, filtered, float(sides.min() - min_size), survivors, least(gaps), least(ious))
