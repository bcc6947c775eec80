"""The SSD fork's detection layers (weiliu89/caffe, branch ssd): PriorBox (prior_box_layer.cpp) and
DetectionOutput (detection_output_layer.cpp with util/bbox_util.cpp). Normalize, the fork's third layer, is in
:mod:`.norm`; Permute in :mod:`.structure`.

Both compute in float32 the way the fork does: PriorBox's corner arithmetic in double then stored as float
(its ``/ 2.`` and ``/ img_width`` are double), DetectionOutput's decoding, sizes and overlaps in float.

The modules are :mod:`.modules.ssd`. Export: DetectionOutput's top is the layer's own rows, computed with
standard operations (:mod:`.modules.ssd_export`: TopK, NonMaxSuppression, gathers), equal to the eager rows except
in the order of equal scores at the keep_top_k cut. Asked for ``pre_nms`` (``sfport convert --pre-nms``;
``export_options(pre_nms=True)``), and for a layer with ``nms_param.eta`` < 1, the top holds what comes before the
NMS, one row per prior: the decoded boxes of every location class (4 values each) and then the class scores
(``num_classes`` values), shape ``N x num_priors x (4 * num_loc_classes + num_classes)``; :func:`detections` turns
that into the layer's output, equal to eager's.
"""
from __future__ import annotations

import math

import numpy as np
from google.protobuf import text_format

from sfport.protos import caffe_pb2
from .nms import libstdcxx_sort
from .base import NoParams, layer_error as _bad, register

_FLT_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------------------
# PriorBox
# ---------------------------------------------------------------------------------------------------------

class _PriorSetup:
    """PriorBoxLayer::LayerSetUp: the sizes (truncated to int, as Forward_cpu's ``int min_size_``), the aspect
    ratios (1 first; a ratio within 1e-6 of one already there is skipped; flip adds 1/ar after each new one),
    the variances (4, 1, or the default 0.1), img_h/img_w and step_h/step_w (0: from the bottoms), offset."""

    def __init__(self, layer):
        p = layer.prior_box_param
        if not len(p.min_size):
            raise _bad(layer, "prior_box_param must provide min_size")
        if any(s <= 0 for s in p.min_size):
            raise _bad(layer, "min_size must be positive")
        self.min_sizes = [float(s) for s in p.min_size]
        ratios = [1.0]
        for ar in p.aspect_ratio:
            ar = float(np.float32(ar))
            if any(abs(ar - r) < 1e-6 for r in ratios):
                continue
            ratios.append(ar)
            if p.flip:
                ratios.append(float(np.float32(1.0 / ar)))
        self.ratios = ratios
        self.max_sizes = [float(s) for s in p.max_size]
        if self.max_sizes:
            if len(self.max_sizes) != len(self.min_sizes):
                raise _bad(layer, f"{len(self.max_sizes)} max_size for {len(self.min_sizes)} min_size (must match)")
            for lo, hi in zip(self.min_sizes, self.max_sizes):
                if not hi > lo:
                    raise _bad(layer, f"max_size {hi:g} must be greater than min_size {lo:g}")
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        if len(p.variance) > 1:
            if len(p.variance) != 4:
                raise _bad(layer, f"give 4 variances or 1, not {len(p.variance)}")
            self.variance = [float(v) for v in p.variance]
        elif len(p.variance) == 1:
            self.variance = [float(p.variance[0])]
        else:
            self.variance = [0.1]
        if any(v <= 0 for v in self.variance):
            raise _bad(layer, "variances must be positive")
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise _bad(layer, "either img_size or img_h/img_w should be specified; not both")
            self.img_h, self.img_w = p.img_h, p.img_w
            if self.img_h <= 0 or self.img_w <= 0:
                raise _bad(layer, "img_h and img_w should be larger than 0")
        elif p.HasField("img_size"):
            if p.img_size <= 0:
                raise _bad(layer, "img_size should be larger than 0")
            self.img_h = self.img_w = p.img_size
        else:
            self.img_h = self.img_w = 0
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise _bad(layer, "either step or step_h/step_w should be specified; not both")
            self.step_h, self.step_w = float(p.step_h), float(p.step_w)
            if self.step_h <= 0 or self.step_w <= 0:
                raise _bad(layer, "step_h and step_w should be larger than 0")
        elif p.HasField("step"):
            if p.step <= 0:
                raise _bad(layer, "step should be larger than 0")
            self.step_h = self.step_w = float(p.step)
        else:
            self.step_h = self.step_w = 0.0
        self.offset = float(np.float32(p.offset))
        self.clip = bool(p.clip)

    def box_sizes(self) -> np.ndarray:
        """(num_priors, 2): each prior's float box width and height in Forward_cpu's order: per min_size the
        min box, the sqrt(min * max) box, then the other ratios (min_size * sqrt(ar) by min_size / sqrt(ar))."""
        out = []
        for s, mn in enumerate(self.min_sizes):
            mn_i = int(mn)                                      # int min_size_ = min_sizes_[s]
            out.append((mn_i, mn_i))
            if self.max_sizes:
                mx_i = int(self.max_sizes[s])
                w = np.float32(math.sqrt(mn_i * mx_i))          # sqrt(int * int), stored as float
                out.append((w, w))
            for ar in self.ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                # box_width = min_size_ * sqrt(ar) (the ratios scale min_size, also when max_size is given)
                out.append((np.float32(mn_i * math.sqrt(ar)), np.float32(mn_i / math.sqrt(ar))))
        return np.asarray(out, dtype=np.float32)


@register("PriorBox")
class PriorBoxConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """PriorBoxLayer::Reshape: ``1 x 2 x (H * W * num_priors * 4)`` of bottom[0]'s height and width."""
        if len(layer.bottom) != 2:
            raise _bad(layer, f"takes 2 bottoms (the feature map and the image), not {len(layer.bottom)}")
        s = _PriorSetup(layer)
        f = bottom_shapes[0]
        if len(f) < 2:
            raise _bad(layer, f"bottom '{layer.bottom[0]}' {list(f)} has no height and width")
        n = f[-2] * f[-1] * s.num_priors * 4
        if n <= 0:
            raise _bad(layer, f"bottom '{layer.bottom[0]}' {list(f)} gives no priors")
        return [(1, 2, n)]

    def build(self, layer, bottom_shapes):
        from .modules.ssd import PriorBox
        self.top_shapes(layer, bottom_shapes)
        return PriorBox(_PriorSetup(layer))

    def for_reference(self, layer, graph_layer):
        """The fork's defaults written out (caffe.proto: ``clip`` false; prior_box_layer.cpp LayerSetUp: no
        variance is one of 0.1): OpenCV reads an absent clip as true and needs a variance."""
        p = layer.prior_box_param
        if not p.HasField("clip"):
            p.clip = p.clip
        if not len(p.variance):
            p.variance.append(0.1)


# ---------------------------------------------------------------------------------------------------------
# DetectionOutput
# ---------------------------------------------------------------------------------------------------------

class _DetSetup:
    """DetectionOutputLayer::LayerSetUp (the parts that shape the output; save_output_param and visualize
    write files and windows, which sfport does not)."""

    def __init__(self, layer):
        p = layer.detection_output_param
        if not p.HasField("num_classes"):
            raise _bad(layer, "must specify detection_output_param.num_classes")
        self.num_classes = int(p.num_classes)
        if self.num_classes < 1:
            raise _bad(layer, "num_classes must be at least 1")
        self.share_location = bool(p.share_location)
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.code_type = int(p.code_type)
        self.variance_encoded = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = float(np.float32(p.confidence_threshold)) if p.HasField(
            "confidence_threshold") else -_FLT_MAX
        self.nms_threshold = float(np.float32(p.nms_param.nms_threshold))
        if self.nms_threshold < 0:
            raise _bad(layer, "nms_threshold must be non negative")
        self.eta = float(np.float32(p.nms_param.eta))
        if not 0 < self.eta <= 1:
            raise _bad(layer, f"nms_param.eta {self.eta:g} must be in (0, 1]")
        self.top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1
        self.name, self.type = layer.name, layer.type


def _bbox_size(b: np.ndarray) -> np.ndarray:
    """BBoxSize (normalized): 0 for an invalid box (xmax < xmin or ymax < ymin), else width * height (float)."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    invalid = (b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])
    return np.where(invalid, np.float32(0), w * h).astype(np.float32)


def _overlaps(b: np.ndarray, size: np.ndarray) -> np.ndarray:
    """JaccardOverlap of every pair (float32): IntersectBBox (no intersection when one box starts strictly past
    the other's end), then ``inter / (size1 + size2 - inter)`` when the intersection's width and height are > 0."""
    x1, y1, x2, y2 = (b[:, k] for k in range(4))
    apart = ((x1[None, :] > x2[:, None]) | (x2[None, :] < x1[:, None]) |
             (y1[None, :] > y2[:, None]) | (y2[None, :] < y1[:, None]))
    iw = np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :])
    ih = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
    ok = ~apart & (iw > 0) & (ih > 0)
    inter = (iw * ih).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / ((size[:, None] + size[None, :]) - inter)
    return np.where(ok, iou, np.float32(0)).astype(np.float32)


def _nms(s: _DetSetup, boxes: np.ndarray, size: np.ndarray, scores: np.ndarray) -> list[int]:
    """ApplyNMSFast: GetMaxScoreIndex (scores strictly above confidence_threshold, std::stable_sort by score
    descending, the first top_k), then keep a box when its overlap with every kept box is <= the adaptive
    threshold, which is multiplied by eta after each kept box while eta < 1 and it is above 0.5."""
    cand = np.nonzero(scores > np.float32(s.confidence_threshold))[0]
    order = cand[np.argsort(-scores[cand], kind="stable")]
    if -1 < s.top_k < len(order):
        order = order[:s.top_k]
    if not len(order):
        return []
    iou = _overlaps(boxes[order], size[order])
    thr = np.float32(s.nms_threshold)
    kept: list[int] = []
    for k in range(len(order)):
        if all(iou[k, j] <= thr for j in kept):
            kept.append(k)
            if s.eta < 1 and thr > 0.5:
                thr = np.float32(thr * np.float32(s.eta))
    return [int(order[k]) for k in kept]


def _select(s: _DetSetup, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """DetectionOutputLayer::Forward_cpu after decoding: per image and class (background skipped) the NMS, then
    keep_top_k over the image's detections (std::sort by descending score, ties as libstdc++ leaves them: see
    :func:`libstdcxx_sort`), and the rows
    ``[image, label, score, xmin, ymin, xmax, ymax]`` by ascending label. ``boxes`` (N, P, L, 4), ``scores``
    (N, P, C). No detection in the whole batch: one row per image, ``[i, -1, -1, -1, -1, -1, -1]``."""
    num = boxes.shape[0]
    rows = []
    for i in range(num):
        sizes = _bbox_size(boxes[i])                       # DecodeBBox stores BBoxSize before any clip
        indices: dict[int, list[int]] = {}
        for c in range(s.num_classes):
            if c == s.background:
                continue
            li = 0 if s.share_location else c
            indices[c] = _nms(s, boxes[i, :, li], sizes[:, li], scores[i, :, c])
        num_det = sum(len(v) for v in indices.values())
        if s.keep_top_k > -1 and num_det > s.keep_top_k:
            pairs = [(float(scores[i, idx, c]), c, idx) for c in sorted(indices) for idx in indices[c]]
            libstdcxx_sort(pairs, lambda a, b: a[0] > b[0])           # SortScorePairDescend
            new: dict[int, list[int]] = {}
            for _, c, idx in pairs[:s.keep_top_k]:
                new.setdefault(c, []).append(idx)
            indices = new
        for c in sorted(indices):
            li = 0 if s.share_location else c
            for idx in indices[c]:
                rows.append([i, c, scores[i, idx, c], *boxes[i, idx, li]])
    if not rows:
        out = np.full((num, 7), -1, dtype=np.float32)
        out[:, 0] = np.arange(num)
        return out.reshape(1, 1, num, 7)
    return np.asarray(rows, dtype=np.float32).reshape(1, 1, len(rows), 7)


def finish(setup: _DetSetup, rows: np.ndarray) -> np.ndarray:
    """The detection rows from the pre-NMS rows (N x P x (4 L + C))."""
    num, p = rows.shape[0], rows.shape[1]
    L = setup.num_loc_classes
    boxes = np.ascontiguousarray(rows[..., :4 * L].reshape(num, p, L, 4), dtype=np.float32)
    scores = np.ascontiguousarray(rows[..., 4 * L:], dtype=np.float32)
    return _select(setup, boxes, scores)


def detections(layer_or_param, rows) -> np.ndarray:
    """DetectionOutput's output (1 x 1 x K x 7) from the pre-NMS rows an exported graph gives for it.
    ``layer_or_param``: the LayerParameter, a DetectionOutputParameter or its prototxt text (str, or the bytes
    of a TorchScript extra file)."""
    if isinstance(layer_or_param, bytes):          # a TorchScript extra file
        layer_or_param = layer_or_param.decode("utf-8")
    if isinstance(layer_or_param, caffe_pb2.LayerParameter):
        layer = layer_or_param
    else:
        layer = caffe_pb2.LayerParameter(name="detection_out", type="DetectionOutput")
        if isinstance(layer_or_param, str):
            text_format.Parse(layer_or_param, layer.detection_output_param)
        else:
            layer.detection_output_param.CopyFrom(layer_or_param)
    return finish(_DetSetup(layer), np.asarray(rows, dtype=np.float32))


@register("DetectionOutput")
class DetectionOutputConverter(NoParams):
    discrete = True     # an NMS: export checks it from its bottoms as onnxruntime computes them

    def top_shapes(self, layer, bottom_shapes):
        """DetectionOutputLayer::Reshape: ``1 x 1 x 1 x 7`` (the count of rows is known only after the NMS)."""
        if len(layer.bottom) != 3:
            raise _bad(layer, f"takes 3 bottoms (location, confidence, priors), not {len(layer.bottom)}")
        s = _DetSetup(layer)
        loc, conf, prior = bottom_shapes
        if len(prior) < 3 or prior[-1] % 4:
            raise _bad(layer, f"the priors '{layer.bottom[2]}' {list(prior)} are not PriorBox's 1 x 2 x (4 P)")
        p = prior[2] // 4
        if len(loc) < 2 or len(conf) < 2 or loc[0] != conf[0]:
            raise _bad(layer, f"location {list(loc)} and confidence {list(conf)} must have the same number")
        if math.prod(loc[1:]) != p * s.num_loc_classes * 4:
            raise _bad(layer, f"Number of priors must match number of location predictions: {p} priors x "
                              f"{s.num_loc_classes} x 4 != {math.prod(loc[1:])} ('{layer.bottom[0]}' {list(loc)})")
        if math.prod(conf[1:]) != p * s.num_classes:
            raise _bad(layer, f"Number of priors must match number of confidence predictions: {p} priors x "
                              f"{s.num_classes} classes != {math.prod(conf[1:])} ('{layer.bottom[1]}' {list(conf)})")
        return [(1, 1, 1, 7)]

    def build(self, layer, bottom_shapes):
        from .modules.ssd import DetectionOutput
        self.top_shapes(layer, bottom_shapes)
        return DetectionOutput(_DetSetup(layer), text_format.MessageToString(layer.detection_output_param))

    def opencv_layout(self, layer, out, num):
        return opencv_detections(out, num)

    def align_reference_output(self, layer, ours, ref):
        return align_detections(ours, ref)


def opencv_detections(out: np.ndarray, num: int) -> np.ndarray:
    """OpenCV's DetectionOutput (modules/dnn/src/layers/detection_output_layer.cpp) returns the same detections as
    the fork in another layout: rows ordered by confidence over all classes, padded with rows of zeros up to
    keep_top_k, and all zeros when nothing is detected. The fork's Forward_cpu, which sfport follows, orders
    them by image, then ascending label (its std::map), then descending score, with no padding, and writes one
    row ``[i, -1, -1, -1, -1, -1, -1]`` per image when the batch has no detection. The reference is given the
    fork's layout (its values untouched) so the two compare row by row."""
    if out.ndim != 4 or out.shape[-1] != 7:
        return out
    rows = out.reshape(-1, 7)
    rows = rows[rows[:, 2] != 0]          # padding (and OpenCV's empty answer) has confidence 0
    if not len(rows):
        empty = np.full((num, 7), -1, dtype=np.float32)
        empty[:, 0] = np.arange(num)
        return empty.reshape(1, 1, num, 7)
    order = np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))    # stable: the last key sorts first
    return rows[order].reshape(1, 1, -1, 7)


def align_detections(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The reference's detection rows in the order of ours where that order is a matter of near-equal scores:
    within one image and label, rows are sorted by score, and two scores an ulp apart (OpenCV's Softmax and
    sfport's differ by ulps) may sort either way. Each of our rows takes the unused reference row of its image
    and label nearest to it; the values are then compared as they are. Different shapes or groups: unchanged."""
    if ours.shape != ref.shape or ours.ndim != 4 or ours.shape[-1] != 7:
        return ref
    a, b = ours.reshape(-1, 7), ref.reshape(-1, 7)
    out = b.copy()
    for key in {(r[0], r[1]) for r in a}:
        ia = np.nonzero((a[:, 0] == key[0]) & (a[:, 1] == key[1]))[0]
        ib = list(np.nonzero((b[:, 0] == key[0]) & (b[:, 1] == key[1]))[0])
        if len(ia) != len(ib):
            return ref
        for i in ia:
            j = min(ib, key=lambda j: float(np.abs(b[j] - a[i]).max()))
            ib.remove(j)
            out[i] = b[j]
    return out.reshape(ref.shape)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.ssd`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import ssd
    return getattr(ssd, name)
