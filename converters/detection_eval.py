"""The SSD fork's DetectionEvaluate: each detection of a test batch marked true or false positive against the
ground truth, the rows from which the solver's detection test (``eval_type: "detection"``, see
:mod:`sfport.solver.detection_map`) computes the mean average precision.

Followed: the SSD fork as brocolli-caffe 9.0.2 ships it: src/caffe/layers/detection_evaluate_layer.cpp
(LayerSetUp, Reshape, Forward_cpu) with src/caffe/util/bbox_util.cpp (GetDetectionResults, GetGroundTruth,
BBoxSize, IntersectBBox, JaccardOverlap, ScaleBBox), all in float32 as the fork computes them.

Bottoms: the detections ``1 x 1 x N x 7`` (DetectionOutput's rows ``[image, label, score, xmin, ymin, xmax,
ymax]``; rows of image -1 are skipped) and the ground truth ``1 x 1 x G x 8`` (``[image, label, instance, xmin,
ymin, xmax, ymax, difficult]``; the first row of image -1 ends it). Top: ``1 x 1 x (P + N) x 5`` with P the
positive classes (``num_classes``, less the background unless ``background_label_id`` is -1): first one row
``[-1, label, num_pos, -1, -1]`` per positive class (its ground-truth boxes, the difficult ones only with
``evaluate_difficult_gt``), then ``[image, label, score, tp, fp]`` per detection, images and labels ascending,
each label's detections by descending score (std::sort, ties as libstdc++ leaves them); a detection that best
overlaps a difficult box that is not evaluated keeps ``tp = fp = 0`` and the rows left over stay zeros.

``name_size_file`` (``name height width`` per image, in the order of the test set): the boxes are scaled to
pixels with ScaleBBox before matching (sizes ``(w + 1) * (h + 1)``, intersections ``+ 1``), the images counted
across forwards as the fork's ``count_``. The weiliu89 branch's ``resize_param`` (OutputBBox: a clip to the
image and the resize policy before the scale) is not part of the fork followed and is refused with a
name_size_file (without one it changes nothing in either fork).
"""
from __future__ import annotations

import math
import re

import numpy as np

from sfport.errors import CaffeFileError
from sfport.formats import disk
from .base import NoParams, register
from .nms import libstdcxx_sort

_F = np.float32


def _bad(layer_name: str, what: str) -> CaffeFileError:
    return CaffeFileError(None, f"layer '{layer_name}' (DetectionEvaluate): {what}")


# C's isspace in the "C" locale; an int as std::istream >> int reads one (sign, digits; overflow fails)
_WORD = re.compile(rb"[ \t\n\v\f\r]*([^ \t\n\v\f\r]+)")
_INT = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def read_name_sizes(path: str) -> list[tuple[int, int]]:
    """DetectionEvaluateLayer::LayerSetUp's ``while (infile >> name >> height >> width)``: (height, width) per
    line of ``name height width``, up to the first triple that does not read (the rest of the file is ignored,
    as the fork's loop stops there). The path is used as given (relative to the working directory, as Caffe)."""
    disk.check_readable_file(path, "name size file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaffeFileError(path, f"Failed to open name size file: {e.strerror or e}") from None
    sizes, pos = [], 0
    while True:
        m = _WORD.match(data, pos)
        if not m:
            break
        pos, hw = m.end(), []
        for _ in range(2):
            m = _INT.match(data, pos)
            if not m or not -2 ** 31 <= int(m.group(1)) < 2 ** 31:
                return sizes
            pos = m.end()
            hw.append(int(m.group(1)))
        sizes.append((hw[0], hw[1]))
    return sizes


class EvalSetup:
    """DetectionEvaluateLayer::LayerSetUp: num_classes (required), the background label (the uint32 field read
    into an int, so 4294967295 is -1: no background), the overlap threshold (> 0), evaluate_difficult_gt and the
    image sizes of ``name_size_file``."""

    def __init__(self, layer):
        p = layer.detection_evaluate_param
        self.name = layer.name
        if not p.HasField("num_classes"):
            raise _bad(layer.name, "Must provide num_classes (detection_evaluate_param.num_classes)")
        self.num_classes = int(p.num_classes)
        bg = int(p.background_label_id)
        self.background = bg - 2 ** 32 if bg >= 2 ** 31 else bg
        if self.num_classes < 1:
            raise _bad(layer.name, "num_classes must be at least 1")
        if not (self.background == -1 or 0 <= self.background < self.num_classes):
            # the fork writes one row per class but sizes the top for num_classes - 1: out of its buffer
            raise _bad(layer.name, f"background_label_id {self.background} must be -1 or one of the "
                                   f"{self.num_classes} classes")
        self.overlap_threshold = _F(p.overlap_threshold)
        if not self.overlap_threshold > 0:             # CHECK_GT(overlap_threshold_, 0.)
            raise _bad(layer.name, f"overlap_threshold {float(self.overlap_threshold):g} must be positive")
        self.evaluate_difficult_gt = bool(p.evaluate_difficult_gt)
        self.sizes = read_name_sizes(p.name_size_file) if p.HasField("name_size_file") else []
        if self.sizes and p.HasField("resize_param"):
            raise _bad(layer.name, "resize_param (the weiliu89 branch's OutputBBox) is not supported: sfport "
                                   "follows the fork whose DetectionEvaluate scales the boxes by name_size_file "
                                   "alone; remove resize_param")

    @property
    def num_pos_classes(self) -> int:
        return self.num_classes if self.background == -1 else self.num_classes - 1


def _legacy(shape) -> tuple[int, int, int, int]:
    """Blob::num / channels / height / width of a shape (an axis past the last is 1)."""
    shape = tuple(int(d) for d in shape)
    return tuple(shape[k] if k < len(shape) else 1 for k in range(4))


def check_bottoms(name: str, bottoms: list[str], shapes: list) -> int:
    """DetectionEvaluateLayer::Reshape's checks; the count of detection rows."""
    for k, (what, width) in enumerate((("detections", 7), ("ground truth", 8))):
        s = tuple(shapes[k])
        if len(s) > 4 or _legacy(s)[0] != 1 or _legacy(s)[1] != 1 or _legacy(s)[3] != width:
            raise _bad(name, f"the {what} '{bottoms[k]}' {list(s)} must be 1 x 1 x rows x {width}")
    return _legacy(shapes[0])[2]


def _size(b: np.ndarray, normalized: bool = True) -> np.ndarray:
    """BBoxSize: 0 for an invalid box (xmax < xmin or ymax < ymin), else ``w * h`` (``(w + 1) * (h + 1)`` when
    not normalized), in float32."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not normalized:
        w, h = w + _F(1), h + _F(1)
    invalid = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    return np.where(invalid, _F(0), w * h).astype(_F)


def _scale(b: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """ScaleBBox: the corners times the image's width and height (float), the size recomputed (normalized
    only when neither is over 1)."""
    s = np.stack([b[:, 0] * _F(width), b[:, 1] * _F(height), b[:, 2] * _F(width), b[:, 3] * _F(height)], axis=1)
    s = s.astype(_F)
    return s, _size(s, normalized=not (width > 1 or height > 1))


def jaccard(det: np.ndarray, det_size: np.ndarray, gt: np.ndarray, gt_size: np.ndarray,
            normalized: bool) -> np.ndarray:
    """JaccardOverlap (the NormalizedBBox form) of every detection with every ground truth box, float32:
    IntersectBBox (all zeros when one box starts strictly past the other's end), the intersection's width and
    height (``+ 1`` when not normalized), and ``inter / (size1 + size2 - inter)`` when both are > 0; a box's
    size is its stored one, 0 when its corners are invalid."""
    d, g = det[:, None, :], gt[None, :, :]
    apart = (g[..., 0] > d[..., 2]) | (g[..., 2] < d[..., 0]) | (g[..., 1] > d[..., 3]) | (g[..., 3] < d[..., 1])
    zero = _F(0)
    ix1 = np.where(apart, zero, np.maximum(d[..., 0], g[..., 0]))
    iy1 = np.where(apart, zero, np.maximum(d[..., 1], g[..., 1]))
    ix2 = np.where(apart, zero, np.minimum(d[..., 2], g[..., 2]))
    iy2 = np.where(apart, zero, np.minimum(d[..., 3], g[..., 3]))
    iw, ih = (ix2 - ix1).astype(_F), (iy2 - iy1).astype(_F)
    if not normalized:
        iw, ih = iw + _F(1), ih + _F(1)
    s1 = np.where((det[:, 2] < det[:, 0]) | (det[:, 3] < det[:, 1]), zero, det_size)[:, None]
    s2 = np.where((gt[:, 2] < gt[:, 0]) | (gt[:, 3] < gt[:, 1]), zero, gt_size)[None, :]
    inter = (iw * ih).astype(_F)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = (inter / ((s1 + s2) - inter)).astype(_F)
    return np.where((iw > 0) & (ih > 0), iou, zero).astype(_F)


def _as_int(v) -> int:
    """A float blob value as ``int x = value`` converts it (toward zero)."""
    v = float(v)
    t = int(v) if math.isfinite(v) else -2 ** 31
    return t if -2 ** 31 <= t < 2 ** 31 else -2 ** 31      # x86's cvttss2si: INT_MIN when out of range


def detections_of(s: EvalSetup, det: np.ndarray) -> dict:
    """GetDetectionResults: {image: {label: [row, ...]}} (rows ``[score, xmin, ymin, xmax, ymax]``) from the
    ``N x 7`` rows; rows of image -1 skipped, a background label refused."""
    out: dict[int, dict[int, list]] = {}
    for r in det:
        item = _as_int(r[0])
        if item == -1:
            continue
        label = _as_int(r[1])
        if label == s.background:
            raise _bad(s.name, f"Found background label {label} in the detection results")
        out.setdefault(item, {}).setdefault(label, []).append(r[2:7])
    return out


def ground_truth_of(s: EvalSetup, gt: np.ndarray) -> dict:
    """GetGroundTruth (the LabelBBox form, difficult boxes kept): {image: {label: [row, ...]}} (rows ``[xmin,
    ymin, xmax, ymax, difficult]``) from the ``G x 8`` rows, up to the first of image -1."""
    out: dict[int, dict[int, list]] = {}
    for r in gt:
        item = _as_int(r[0])
        if item == -1:
            break
        label = _as_int(r[1])
        if label == s.background:
            raise _bad(s.name, f"Found background label {label} in the dataset (the ground truth)")
        row = np.array([r[3], r[4], r[5], r[6], _F(1) if r[7] != 0 else _F(0)], dtype=_F)
        out.setdefault(item, {}).setdefault(label, []).append(row)
    return out


def evaluate(s: EvalSetup, det: np.ndarray, gt: np.ndarray, count: int = 0) -> tuple[np.ndarray, int]:
    """DetectionEvaluateLayer::Forward_cpu: the ``(P + N) x 5`` rows for the detections ``det`` (``N x 7``) and the
    ground truth ``gt`` (``G x 8``), float32; ``count`` is the fork's ``count_`` (the next image's line of
    ``name_size_file``) before and after."""
    det = np.asarray(det, dtype=_F).reshape(-1, 7)
    gt = np.asarray(gt, dtype=_F).reshape(-1, 8)
    top = np.zeros((s.num_pos_classes + len(det), 5), dtype=_F)
    all_det = detections_of(s, det)
    all_gt = ground_truth_of(s, gt)
    num_pos: dict[int, int] = {}
    for image in sorted(all_gt):
        for label in sorted(all_gt[image]):
            boxes = all_gt[image][label]
            n = len(boxes) if s.evaluate_difficult_gt else sum(1 for b in boxes if b[4] == 0)
            num_pos[label] = num_pos.get(label, 0) + n
    k = 0
    for c in range(s.num_classes):
        if c == s.background:
            continue
        top[k] = (-1, c, num_pos.get(c, 0), -1, -1)
        k += 1
    normalized = not s.sizes
    for image in sorted(all_det):
        labels = all_det[image]
        gts = all_gt.get(image, {})
        for label in sorted(labels):
            rows = labels[label]
            if label not in gts:           # no ground truth for the image or the label: all false positives
                for r in rows:
                    top[k] = (image, label, r[0], 0, 1)
                    k += 1
                continue
            g = np.stack(gts[label])
            g_box, g_size = g[:, :4], _size(g[:, :4])
            if not normalized:
                g_box, g_size = _scale(g_box, *s.sizes[count])
            order = list(range(len(rows)))
            libstdcxx_sort(order, lambda a, b: rows[a][0] > rows[b][0])     # SortBBoxDescend
            d = np.stack([rows[i] for i in order])
            d_box, d_size = d[:, 1:5], _size(d[:, 1:5])
            if not normalized:
                d_box, d_size = _scale(d_box, *s.sizes[count])
            iou = jaccard(d_box, d_size, g_box, g_size, normalized)
            visited = [False] * len(g)
            for i in range(len(d)):
                top[k, :3] = (image, label, d[i, 0])
                best, jmax = _F(-1), -1
                for j in range(len(g)):
                    if iou[i, j] > best:
                        best, jmax = iou[i, j], j
                if best >= s.overlap_threshold:
                    if s.evaluate_difficult_gt or g[jmax, 4] == 0:
                        top[k, 3:] = (0, 1) if visited[jmax] else (1, 0)
                        visited[jmax] = True
                    # else: matched a difficult box that is not evaluated: tp = fp = 0
                else:
                    top[k, 3:] = (0, 1)
                k += 1
        if s.sizes:
            count = (count + 1) % len(s.sizes)
    return top, count


@register("DetectionEvaluate")
class DetectionEvaluateConverter(NoParams):
    training_only = True    # a test net's evaluation: the deploy form drops it
    label_bottoms = (1,)    # the ground truth
    fresh_top = True

    def top_shapes(self, layer, bottom_shapes):
        """DetectionEvaluateLayer::Reshape: ``1 x 1 x (P + N) x 5``."""
        if len(layer.bottom) != 2:
            raise _bad(layer.name, f"takes 2 bottoms (detections, ground truth), not {len(layer.bottom)}")
        if len(layer.top) != 1:
            raise _bad(layer.name, f"has 1 top, not {len(layer.top)}")
        s = EvalSetup(layer)
        n = check_bottoms(layer.name, list(layer.bottom), bottom_shapes)
        return [(1, 1, s.num_pos_classes + n, 5)]

    def build(self, layer, bottom_shapes):
        from .modules.detection_eval import DetectionEvaluate
        self.top_shapes(layer, bottom_shapes)
        return DetectionEvaluate(EvalSetup(layer), list(layer.bottom))


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.detection_eval`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import detection_eval
    return getattr(detection_eval, name)
