"""The SSD fork's box arithmetic, batch sampling and image transforms: what its AnnotatedData layer does to an image
and its boxes before the usual crop, mirror, mean and scale.

Followed from the SSD fork (weiliu89/caffe, branch ssd; the brocolli fork keeps the same functions, its resize
policy under ``old_resize_param``): ``util/bbox_util.cpp`` (IntersectBBox, BBoxSize, ClipBBox, ScaleBBox,
LocateBBox, ProjectBBox, ExtrapolateBBox, JaccardOverlap, BBoxCoverage, MeetEmitConstraint),
``util/sampler.cpp`` (GroupObjectBBoxes, SampleBBox, SatisfySampleConstraint, GenerateSamples,
GenerateBatchSamples), ``util/im_transforms.cpp`` (UpdateBBoxByResizePolicy, ApplyResize with
AspectKeepingResizeAndPad / AspectKeepingResizeBySmall, roll_weighted_die, ApplyDistort with RandomBrightness,
RandomContrast, RandomSaturation, RandomHue, RandomOrderChannels) and ``data_transformer.cpp`` (ExpandImage,
CropImage's pixel box, TransformAnnotation).

Boxes are float32 rows ``[xmin, ymin, xmax, ymax]`` computed in float32 as the fork's ``float`` code does; the
random draws (the fork's ``caffe_rng_uniform`` / ``caffe_rng_rand``) come from the numpy generator given, so one
seed gives one result. Images are H x W x C uint8 (BGR) as OpenCV holds them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfport.netdef.datalayers import resized_size
from sfport.protos import caffe_pb2

F32 = np.float32
RP = caffe_pb2.ResizeParameter
EMIT = caffe_pb2.EmitConstraint
UNIT = np.array([0, 0, 1, 1], F32)   # bbox_util.cpp UnitBBox


# ---------------------------------------------------------------------------------------------------------------
# the annotations of one image
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Annos:
    """An AnnotatedDatum's annotation groups flattened in their order (group by group, annotation by annotation):
    per box its group_label, instance_id, [xmin, ymin, xmax, ymax] and difficult flag. Dropping rows keeps the
    order; a group left without rows is dropped as TransformAnnotation drops it."""
    group: np.ndarray       # int32 (N,)
    instance: np.ndarray    # int32 (N,)
    boxes: np.ndarray       # float32 (N, 4)
    difficult: np.ndarray   # bool (N,)

    @classmethod
    def of(cls, anno_datum) -> "Annos":
        rows = [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, a.bbox.difficult)
                for g in anno_datum.annotation_group for a in g.annotation]
        if not rows:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 4), F32), np.zeros(0, bool))
        t = list(zip(*rows))
        return cls(np.asarray(t[0], np.int32), np.asarray(t[1], np.int32),
                   np.asarray(list(zip(*t[2:6])), F32).reshape(-1, 4), np.asarray(t[6], bool))

    def __len__(self) -> int:
        return len(self.group)

    def take(self, keep: np.ndarray, boxes: np.ndarray) -> "Annos":
        return Annos(self.group[keep], self.instance[keep], np.ascontiguousarray(boxes[keep], F32),
                     self.difficult[keep])

    def rows(self) -> np.ndarray:
        """(N, 7) float32: group_label, instance_id, xmin, ymin, xmax, ymax, difficult (the label top's row after
        its item_id, annotated_data_layer.cpp load_batch)."""
        return np.concatenate([self.group[:, None].astype(F32), self.instance[:, None].astype(F32), self.boxes,
                               self.difficult[:, None].astype(F32)], axis=1).astype(F32)


# ---------------------------------------------------------------------------------------------------------------
# bbox_util.cpp
# ---------------------------------------------------------------------------------------------------------------

def bbox_size(b: np.ndarray) -> np.ndarray:
    """BBoxSize (normalized): 0 for an invalid box (xmax < xmin or ymax < ymin), else width * height."""
    b = np.asarray(b, F32)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), F32(0), w * h).astype(F32)


def clip_bbox(b: np.ndarray) -> np.ndarray:
    """ClipBBox: every coordinate to [0, 1]."""
    return np.maximum(np.minimum(np.asarray(b, F32), F32(1)), F32(0))


def intersect_bbox(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """IntersectBBox, broadcast over leading axes: [0, 0, 0, 0] where the boxes do not meet."""
    b1, b2 = np.asarray(b1, F32), np.asarray(b2, F32)
    apart = (b2[..., 0] > b1[..., 2]) | (b2[..., 2] < b1[..., 0]) | (b2[..., 1] > b1[..., 3]) | \
        (b2[..., 3] < b1[..., 1])
    inter = np.stack(np.broadcast_arrays(np.maximum(b1[..., 0], b2[..., 0]), np.maximum(b1[..., 1], b2[..., 1]),
                                         np.minimum(b1[..., 2], b2[..., 2]), np.minimum(b1[..., 3], b2[..., 3])),
                     axis=-1).astype(F32)
    inter[np.broadcast_to(apart, inter.shape[:-1])] = 0
    return inter


def jaccard_overlap(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """JaccardOverlap (normalized), broadcast over leading axes."""
    inter = intersect_bbox(b1, b2)
    iw, ih = inter[..., 2] - inter[..., 0], inter[..., 3] - inter[..., 1]
    isize = iw * ih
    union = bbox_size(b1) + bbox_size(b2) - isize
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), isize / union, F32(0)).astype(F32)


def bbox_coverage(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """BBoxCoverage, broadcast over leading axes: the part of ``b1`` that ``b2`` covers."""
    isize = bbox_size(intersect_bbox(b1, b2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(isize > 0, isize / bbox_size(b1), F32(0)).astype(F32)


def locate_bbox(src: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LocateBBox: boxes (rows) given inside ``src`` in the coordinates ``src`` is given in."""
    b = np.asarray(b, F32)
    sw, sh = src[2] - src[0], src[3] - src[1]
    return np.stack([src[0] + b[..., 0] * sw, src[1] + b[..., 1] * sh, src[0] + b[..., 2] * sw,
                     src[1] + b[..., 3] * sh], axis=-1).astype(F32)


def project_bbox(src: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ProjectBBox of rows of boxes into ``src``: (projected and clipped boxes, which are kept: those that meet
    ``src`` and keep a positive size)."""
    b = np.asarray(boxes, F32).reshape(-1, 4)
    meets = ~((b[:, 0] >= src[2]) | (b[:, 2] <= src[0]) | (b[:, 1] >= src[3]) | (b[:, 3] <= src[1]))
    sw, sh = src[2] - src[0], src[3] - src[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = np.stack([(b[:, 0] - src[0]) / sw, (b[:, 1] - src[1]) / sh, (b[:, 2] - src[0]) / sw,
                         (b[:, 3] - src[1]) / sh], axis=1).astype(F32)
    proj = clip_bbox(proj)
    return proj, meets & (bbox_size(proj) > 0)


def meet_emit_constraint(src: np.ndarray, boxes: np.ndarray, emit) -> np.ndarray:
    """MeetEmitConstraint per row: CENTER, the box's centre inside ``src`` (edges included); MIN_OVERLAP, more
    than ``emit_overlap`` of the box inside ``src``."""
    b = np.asarray(boxes, F32).reshape(-1, 4)
    if emit.emit_type == EMIT.CENTER:
        xc, yc = (b[:, 0] + b[:, 2]) / F32(2), (b[:, 1] + b[:, 3]) / F32(2)
        return (xc >= src[0]) & (xc <= src[2]) & (yc >= src[1]) & (yc <= src[3])
    return bbox_coverage(b, src) > F32(emit.emit_overlap)


def crop_pixels(bbox: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """CropImage's pixel rectangle (x, y, w, h) of a normalized box: ClipBBox, ScaleBBox, then truncation."""
    c = clip_bbox(bbox)
    xmin, ymin, xmax, ymax = c[0] * F32(width), c[1] * F32(height), c[2] * F32(width), c[3] * F32(height)
    return int(xmin), int(ymin), int(F32(xmax - xmin)), int(F32(ymax - ymin))


def update_bbox_by_resize_policy(p, old_width: int, old_height: int, boxes: np.ndarray) -> np.ndarray:
    """im_transforms.cpp UpdateBBoxByResizePolicy: boxes of a ``old_width`` x ``old_height`` image after
    ApplyResize (WARP: clipped; FIT_LARGE_SIZE_AND_PAD: moved into the padded frame; FIT_SMALL_SIZE: clipped)."""
    b = np.asarray(boxes, F32).reshape(-1, 4)
    new_h, new_w = F32(p.height), F32(p.width)
    ow, oh = F32(old_width), F32(old_height)
    orig_aspect, new_aspect = ow / oh, new_w / new_h
    x0, y0, x1, y1 = b[:, 0] * ow, b[:, 1] * oh, b[:, 2] * ow, b[:, 3] * oh
    zero = F32(0)
    if p.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD:
        if orig_aspect > new_aspect:
            pad = (new_h - new_w / orig_aspect) / F32(2)
            x0, x1 = np.maximum(zero, x0 * new_w / ow), np.minimum(new_w, x1 * new_w / ow)
            y0 = pad + np.maximum(zero, y0 * (new_h - F32(2) * pad) / oh)
            y1 = pad + np.minimum(new_h, y1 * (new_h - F32(2) * pad) / oh)
        else:
            pad = (new_w - orig_aspect * new_h) / F32(2)
            x0 = pad + np.maximum(zero, x0 * (new_w - F32(2) * pad) / ow)
            x1 = pad + np.minimum(new_w, x1 * (new_w - F32(2) * pad) / ow)
            y0, y1 = np.maximum(zero, y0 * new_h / oh), np.minimum(new_h, y1 * new_h / oh)
    else:
        if p.resize_mode == RP.FIT_SMALL_SIZE:
            if orig_aspect < new_aspect:
                new_h = new_w / orig_aspect
            else:
                new_w = orig_aspect * new_h
        x0, x1 = np.maximum(zero, x0 * new_w / ow), np.minimum(new_w, x1 * new_w / ow)
        y0, y1 = np.maximum(zero, y0 * new_h / oh), np.minimum(new_h, y1 * new_h / oh)
    return np.stack([x0 / new_w, y0 / new_h, x1 / new_w, y1 / new_h], axis=1).astype(F32)


def extrapolate_bbox(p, height: int, width: int, crop_bbox: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """bbox_util.cpp ExtrapolateBBox: FIT_SMALL_SIZE with height_scale / width_scale rescales the boxes to the
    scale's frame; otherwise unchanged."""
    if not (p.height_scale > 0 and p.width_scale > 0 and p.resize_mode == RP.FIT_SMALL_SIZE):
        return boxes
    orig_aspect = F32(width) / F32(height)
    rh, rw = F32(p.height), F32(p.width)
    if orig_aspect < rw / rh:
        rh = rw / orig_aspect
    else:
        rw = rh * orig_aspect
    ch, cw = rh * (crop_bbox[3] - crop_bbox[1]), rw * (crop_bbox[2] - crop_bbox[0])
    if cw < p.width_scale or ch < p.height_scale:   # its CHECK_GEs
        raise ValueError(f"a crop of {cw:g} x {ch:g} is smaller than resize_param width_scale / height_scale")
    out = np.asarray(boxes, F32).copy()
    out[:, [0, 2]] *= cw / F32(p.width_scale)
    out[:, [1, 3]] *= ch / F32(p.height_scale)
    return out


def transform_annotation(annos: Annos, img_height: int, img_width: int, crop_bbox: np.ndarray, mirror: bool,
                         resize=None, emit=None) -> Annos:
    """data_transformer.cpp TransformAnnotation: per box, the resize policy (``resize``: when the image is
    resized, do_resize), the emit constraint against ``crop_bbox``, the projection into ``crop_bbox`` (boxes
    that leave it are dropped), the mirror (xmin, xmax = 1 - xmax, 1 - xmin), then ExtrapolateBBox."""
    boxes = annos.boxes
    if resize is not None and len(annos):
        if img_height <= 0 or img_width <= 0:   # its CHECK_GTs
            raise ValueError(f"an image of {img_height} x {img_width}")
        boxes = update_bbox_by_resize_policy(resize, img_width, img_height, boxes)
    keep = np.ones(len(annos), bool)
    if emit is not None:
        keep &= meet_emit_constraint(crop_bbox, boxes, emit)
    proj, ok = project_bbox(crop_bbox, boxes)
    keep &= ok
    if mirror:
        proj = np.stack([F32(1) - proj[:, 2], proj[:, 1], F32(1) - proj[:, 0], proj[:, 3]], axis=1).astype(F32)
    if resize is not None and keep.any():
        proj[keep] = extrapolate_bbox(resize, img_height, img_width, crop_bbox, proj[keep])
    return annos.take(keep, proj)


# ---------------------------------------------------------------------------------------------------------------
# sampler.cpp
# ---------------------------------------------------------------------------------------------------------------

def sample_bboxes(s, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """SampleBBox ``n`` times (rows): a random scale in [min_scale, max_scale], a random aspect ratio in
    [max(min_aspect_ratio, scale^2), min(max_aspect_ratio, 1 / scale^2)], the box scale * sqrt(ratio) wide and
    scale / sqrt(ratio) high at a random place inside [0, 1]."""
    scale = rng.uniform(s.min_scale, s.max_scale, n).astype(F32)
    sq = scale.astype(np.float64) ** 2.0   # std::pow(scale, 2.)
    min_ar = np.maximum(F32(s.min_aspect_ratio), sq.astype(F32))
    max_ar = np.minimum(F32(s.max_aspect_ratio), (1 / sq).astype(F32))
    ar = rng.uniform(min_ar, max_ar).astype(F32)
    bw, bh = scale * np.sqrt(ar), scale / np.sqrt(ar)
    w_off = rng.uniform(0, F32(1) - bw).astype(F32)
    h_off = rng.uniform(0, F32(1) - bh).astype(F32)
    return np.stack([w_off, h_off, w_off + bw, h_off + bh], axis=1).astype(F32)


def sample_bbox(s, rng: np.random.Generator) -> np.ndarray:
    """SampleBBox: one box (:func:`sample_bboxes`)."""
    return sample_bboxes(s, rng, 1)[0]


def satisfy_sample_constraint(sampled: np.ndarray, objects: np.ndarray, c):
    """SatisfySampleConstraint of one sampled box (a bool) or of rows of them (a bool per row): no constraint set,
    true; else some object box meets every bound that is set (jaccard overlap, the sample's coverage by it, its
    coverage by the sample)."""
    sampled = np.asarray(sampled, F32)
    rows = sampled.reshape(-1, 4)
    has = c.HasField
    jac = has("min_jaccard_overlap") or has("max_jaccard_overlap")
    smp = has("min_sample_coverage") or has("max_sample_coverage")
    obj = has("min_object_coverage") or has("max_object_coverage")
    if not (jac or smp or obj):
        found = np.ones(len(rows), bool)
    else:
        a, o = rows[:, None, :], np.asarray(objects, F32).reshape(1, -1, 4)
        ok = np.ones((len(rows), o.shape[1]), bool)
        for on, value, lo, hi in ((jac, lambda: jaccard_overlap(a, o), "min_jaccard_overlap",
                                   "max_jaccard_overlap"),
                                  (smp, lambda: bbox_coverage(a, o), "min_sample_coverage", "max_sample_coverage"),
                                  (obj, lambda: bbox_coverage(o, a), "min_object_coverage", "max_object_coverage")):
            if on:
                v = value()
                if has(lo):
                    ok &= ~(v < F32(getattr(c, lo)))
                if has(hi):
                    ok &= ~(v > F32(getattr(c, hi)))
        found = ok.any(axis=1)
    return bool(found[0]) if sampled.ndim == 1 else found


def generate_batch_samples(objects: np.ndarray, samplers, rng: np.random.Generator) -> list[np.ndarray]:
    """GenerateBatchSamples: for each batch_sampler that uses the original image, ``max_trials`` sampled boxes
    (drawn together), keeping in order those that satisfy its constraint, at most ``max_sample`` of them when that
    is set (the fork stops trying once it has them: the same boxes)."""
    out = []
    for bs in samplers:
        if not bs.use_original_image or bs.max_trials <= 0:
            continue
        boxes = locate_bbox(UNIT, sample_bboxes(bs.sampler, rng, int(bs.max_trials)))
        found = np.flatnonzero(satisfy_sample_constraint(boxes, objects, bs.sample_constraint))
        if bs.HasField("max_sample"):
            found = found[:bs.max_sample]
        out.extend(boxes[found])
    return out


# ---------------------------------------------------------------------------------------------------------------
# im_transforms.cpp and the image halves of ExpandImage / CropImage
# ---------------------------------------------------------------------------------------------------------------

_INTERP = {RP.LINEAR: "INTER_LINEAR", RP.AREA: "INTER_AREA", RP.NEAREST: "INTER_NEAREST", RP.CUBIC: "INTER_CUBIC",
           RP.LANCZOS4: "INTER_LANCZOS4"}
_PAD = {RP.CONSTANT: "BORDER_CONSTANT", RP.MIRRORED: "BORDER_REFLECT101", RP.REPEAT_NEAREST: "BORDER_REPLICATE"}


def _cv2():
    import cv2  # noqa: PLC0415 - OpenCV loads with the first image, not with every command
    return cv2


def roll_weighted_die(probs, rng: np.random.Generator) -> int:
    """roll_weighted_die: the first index whose cumulative probability reaches a uniform draw."""
    cumulative = np.cumsum(np.asarray(probs, F32), dtype=F32)
    val = F32(rng.uniform(0, cumulative[-1]))
    return min(int(np.searchsorted(cumulative, val, side="left")), len(cumulative) - 1)


def apply_resize(img: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
    """ApplyResize: WARP to height x width, FIT_LARGE_SIZE_AND_PAD (aspect kept, padded with pad_value by
    pad_mode), or FIT_SMALL_SIZE (aspect kept, the smaller side fitted); the interpolation drawn uniformly from
    interp_mode (LINEAR when none)."""
    cv2 = _cv2()
    interp = cv2.INTER_LINEAR
    if len(p.interp_mode):
        interp = getattr(cv2, _INTERP[p.interp_mode[roll_weighted_die([1.0 / len(p.interp_mode)] *
                                                                      len(p.interp_mode), rng)]])
    border = getattr(cv2, _PAD[p.pad_mode])
    nh, nw = int(p.height), int(p.width)
    channels = img.shape[2] if img.ndim == 3 else 1
    pad = [float(v) for v in p.pad_value] or [0.0]
    if len(pad) not in (1, channels):
        raise ValueError(f"{len(pad)} pad_value entries for {channels} channels")
    pad = (pad * 3)[:3] if len(pad) == 1 else (pad + [0.0] * 3)[:3]
    orig_aspect, new_aspect = F32(img.shape[1]) / F32(img.shape[0]), F32(nw) / F32(nh)
    if p.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD:   # AspectKeepingResizeAndPad
        if orig_aspect > new_aspect:
            h = int(np.floor(F32(nw) / orig_aspect))
            out = cv2.resize(img, (nw, h), interpolation=interp)
            top = int(np.floor((nh - h) / 2.0))
            out = cv2.copyMakeBorder(out, top, nh - h - top, 0, 0, border, value=pad)
        else:
            w = int(np.floor(orig_aspect * F32(nh)))
            out = cv2.resize(img, (w, nh), interpolation=interp)
            left = int(np.floor((nw - w) / 2.0))
            out = cv2.copyMakeBorder(out, 0, 0, left, nw - w - left, border, value=pad)
    elif p.resize_mode == RP.FIT_SMALL_SIZE:   # AspectKeepingResizeBySmall
        w, h = resized_size(p, img.shape[1], img.shape[0])
        out = cv2.resize(img, (w, h), interpolation=interp)
    else:
        out = cv2.resize(img, (nw, nh), interpolation=interp)
    return out if out.ndim == img.ndim else out[:, :, None]


def _lut(alpha: float, beta: float) -> np.ndarray:
    """cv::Mat::convertTo(-1, alpha, beta) of 8-bit values: saturate_cast<uchar>(x * alpha + beta) in float."""
    x = np.arange(256, dtype=F32) * F32(alpha) + F32(beta)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def adjust_brightness(img: np.ndarray, delta: float) -> np.ndarray:
    """AdjustBrightness: every value + delta (rounded, saturated), when delta is not 0."""
    return _lut(1, delta)[img] if abs(F32(delta)) > 0 else img


def adjust_contrast(img: np.ndarray, delta: float) -> np.ndarray:
    """AdjustContrast: every value * delta (rounded, saturated), when delta differs from 1 by more than 1e-3."""
    return _lut(delta, 0)[img] if abs(F32(delta) - F32(1)) > 1e-3 else img


def _hsv_channel(img: np.ndarray, channel: int, lut: np.ndarray) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"hue and saturation distortions need a colour image, not {img.shape[-1]} channel(s)")
    cv2 = _cv2()
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, channel] = lut[hsv[:, :, channel]]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def adjust_saturation(img: np.ndarray, delta: float) -> np.ndarray:
    """AdjustSaturation: in OpenCV's 8-bit HSV, S * delta (the fork's test ``fabs(delta - 1) != 1e-3`` is true for
    every delta drawn)."""
    return _hsv_channel(img, 1, _lut(delta, 0)) if abs(F32(delta) - F32(1)) != 1e-3 else img


def adjust_hue(img: np.ndarray, delta: float) -> np.ndarray:
    """AdjustHue: in OpenCV's 8-bit HSV (H in [0, 180)), H + delta saturated to [0, 255], when delta is not 0."""
    return _hsv_channel(img, 0, _lut(1, delta)) if abs(F32(delta)) > 0 else img


def apply_distort(img: np.ndarray, d, rng: np.random.Generator) -> np.ndarray:
    """ApplyDistort: brightness, contrast, saturation, hue, channel order (contrast last but one instead, when the
    first draw is not above 0.5); each step happens with its probability, its amount drawn uniformly."""
    def brightness(x):
        if rng.uniform() < d.brightness_prob:
            return adjust_brightness(x, F32(rng.uniform(-d.brightness_delta, d.brightness_delta)))
        return x

    def contrast(x):
        if rng.uniform() < d.contrast_prob:
            return adjust_contrast(x, F32(rng.uniform(d.contrast_lower, d.contrast_upper)))
        return x

    def saturation(x):
        if rng.uniform() < d.saturation_prob:
            return adjust_saturation(x, F32(rng.uniform(d.saturation_lower, d.saturation_upper)))
        return x

    def hue(x):
        if rng.uniform() < d.hue_prob:
            return adjust_hue(x, F32(rng.uniform(-d.hue_delta, d.hue_delta)))
        return x

    def order(x):   # RandomOrderChannels: std::random_shuffle of the three channels
        if rng.uniform() < d.random_order_prob:
            if x.ndim != 3 or x.shape[2] != 3:
                raise ValueError("random_order_prob needs a colour image")
            return np.ascontiguousarray(x[:, :, rng.permutation(3)])
        return x

    steps = (brightness, contrast, saturation, hue, order) if rng.uniform() > 0.5 else \
        (brightness, saturation, hue, contrast, order)
    for step in steps:
        img = step(img)
    return img


def expand_image(img: np.ndarray, ratio: float, fill, rng: np.random.Generator,
                 mean_image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ExpandImage: a canvas of int(H * ratio) x int(W * ratio) filled with ``fill`` (one value per channel) or
    with ``mean_image`` (C x H x W of the canvas's size, each value truncated to a byte as the fork's
    ``static_cast<char>``), the H x W x C image placed at a random whole-pixel offset. Returns (canvas,
    expand_bbox: the canvas in the image's normalized coordinates, which TransformAnnotation projects into)."""
    ih, iw, c = img.shape
    height, width = int(F32(ih) * F32(ratio)), int(F32(iw) * F32(ratio))
    h_off = F32(np.floor(F32(rng.uniform(0, height - ih))))
    w_off = F32(np.floor(F32(rng.uniform(0, width - iw))))
    bbox = np.array([-w_off / F32(iw), -h_off / F32(ih), (F32(width) - w_off) / F32(iw),
                     (F32(height) - h_off) / F32(ih)], F32)
    y, x = int(h_off), int(w_off)
    if mean_image is not None:
        if tuple(mean_image.shape) != (c, height, width):   # its CHECK_EQs
            raise ValueError(f"expand_param makes a {c}x{height}x{width} canvas, the mean_file is "
                             f"{'x'.join(str(d) for d in mean_image.shape)}")
        canvas = np.ascontiguousarray((np.trunc(mean_image).astype(np.int64) & 0xFF).astype(np.uint8)
                                      .transpose(1, 2, 0))
    elif c <= 4:   # the canvas and the copy in one pass: OpenCV's constant border around the image
        cv2 = _cv2()
        canvas = cv2.copyMakeBorder(img, y, height - ih - y, x, width - iw - x, cv2.BORDER_CONSTANT,
                                    value=[float(v) for v in fill] + [0.0] * (4 - c))
        return (canvas if canvas.ndim == 3 else canvas[:, :, None]), bbox
    else:
        canvas = np.empty((height, width, c), np.uint8)
        canvas[...] = np.asarray(fill, np.uint8).reshape(1, 1, c)
    canvas[y:y + ih, x:x + iw] = img
    return canvas, bbox
