"""Region proposals, the RPN's last step in the two-stage detectors: py-faster-rcnn's Python ``ProposalLayer``
(``python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" }``; lib/rpn/proposal_layer.py with
generate_anchors.py, fast_rcnn/bbox_transform.py, nms/cpu_nms.pyx and fast_rcnn/config.py's cfg), a built-in Python
layer chosen by module and class (nothing the file names is imported), and the C++ ``Proposal`` type as the oracle
fork runs it (brocolli-caffe src/caffe/layers/proposal_layer.cpp with src/caffe/util/nms.cpp).

Both shift A anchors over the H x W score map (rows ordered h, w, anchor), move each by its four deltas (centre and
log-size, pixel boxes with their +1), clip to the image of im_info (height, width), drop the boxes too small,
sort by the foreground score (channels A..2A-1 of the first bottom), take the first pre_nms_topn, run a greedy NMS
whose IoU counts the +1 and keep the first post_nms_topn: rois ``[n, x1, y1, x2, y2]`` and optionally the scores.
Where they differ, each follows its source:

- anchors: generate_anchors.py (float64, np.round, sizes ``16 * scale``) / the .cpp's generate_anchors (float; its
  size is ``round(sqrt(base_size^2 / ratio) * scale / base_size - 1) + 1``: its scale is not py-faster-rcnn's);
- settings: param_str's ``feat_stride`` and ``scales`` with cfg.TEST's RPN_PRE_NMS_TOP_N 6000, RPN_POST_NMS_TOP_N
  300, RPN_NMS_THRESH 0.7, RPN_MIN_SIZE 16 (cfg.TRAIN's 12000 / 2000 / 0.7 / 16 while training) / proposal_param;
- too small: width or height below ``RPN_MIN_SIZE * im_info[2]``, removed (_filter_boxes) / below ``min_size``
  (im_info's scale unused), kept with score 0;
- order: by score, ties in ascending anchor order (py-faster-rcnn's ``argsort()[::-1]`` is numpy's unstable
  quicksort, whose order of ties is unspecified: sfport takes a stable sort's, which is also OpenCV's and
  onnxruntime's) / sort_box's quicksort, its order of ties included;
- NMS: suppressed at IoU >= 0.7 (cpu_nms.pyx, float IoU, double threshold) / at IoU > nms_thresh (nms_cpu, float),
  disjoint boxes 0;
- tops: rois R x 5, scores R x 1 / rois R x 5, scores R;
- batch: py-faster-rcnn asserts one image; sfport runs each image of a batch as that one, with its own im_info row
  (or the first, when im_info has one) and its index in column 0 / each image with im_info's first row.

Float32 throughout as numpy and C++ compute it (each operation rounded), exp rounded once from double (glibc's
expf; numpy's SIMD float32 exp may differ in the last bit on some CPUs).

Export: decoding, clipping and the size test are the same tensor operations; the sort is TopK (ties: the lower
index first) and the NMS onnx's NonMaxSuppression on ``[x1, y1, x2 + 1, y2 + 1]`` (its IoU has no +1; rounding
``x2 + 1`` can move an IoU that lies within an ulp of the threshold), with gathers: the ONNX file is the layer.
TorchScript runs the same NMS loop as eager (scripted). The C++ type's exported sort orders ties as a stable
sort does, not as sort_box. The module is :mod:`.modules.proposal`.
"""
import math
import re
import numpy as np

from sfport.errors import CaffeFileError
from .base import NoParams, register, register_python

PY_MODULE, PY_LAYER = "rpn.proposal_layer", "ProposalLayer"
# py-faster-rcnn lib/fast_rcnn/config.py: RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE
PY_CFG = {"TEST": (6000, 300, 0.7, 16), "TRAIN": (12000, 2000, 0.7, 16)}
_PY_KEYS = ("feat_stride", "scales")      # what proposal_layer.py's setup reads of param_str
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_TAG = "!!python/tuple"


def _bad(layer, what: str) -> CaffeFileError:
    kind = (f"Python {layer.python_param.module}.{layer.python_param.layer}" if layer.type == "Python"
            else layer.type)
    return CaffeFileError(None, " ".join(f"layer '{layer.name}' ({kind}): {what}".split()))


# ---------------------------------------------------------------------------------------------------------
# param_str and anchors
# ---------------------------------------------------------------------------------------------------------

def _split(text: str) -> list[str]:
    """``text`` cut at newlines and commas outside brackets (the entries of a YAML flow or block mapping)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch in ",\n" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    return parts + ["".join(cur)]


def _number(text: str):
    t = text.strip()
    if not _NUMBER.fullmatch(t):
        raise ValueError(f"'{t}' is not a number")
    return int(t) if re.fullmatch(r"[-+]?\d+", t) else float(t)


def parse_param_str(text: str) -> dict:
    """python_param's ``param_str`` as proposal_layer.py's ``yaml.load`` reads it, without evaluating anything: a
    mapping (``'feat_stride': 16``, one entry a line or ``{...}`` with commas) of quoted or bare keys to numbers or
    lists of numbers (``[8, 16, 32]``, also tagged ``!!python/tuple``). ValueError names what it cannot read."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    out = {}
    for entry in _split(body):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        key, sep, value = entry.partition(":")
        key, value = key.strip(), value.strip()
        if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
            key = key[1:-1]
        if not sep or not key:
            raise ValueError(f"'{entry}' is not 'key: value'")
        if value.startswith(_TAG):
            value = value[len(_TAG):].strip()
        if value.startswith("[") and value.endswith("]"):
            out[key] = [_number(v) for v in value[1:-1].split(",") if v.strip()]
        else:
            out[key] = _number(value)
    return out


def py_anchors(scales, base_size: int = 16, ratios=(0.5, 1, 2)) -> np.ndarray:
    """generate_anchors.py's generate_anchors (float64, ``(len(ratios) * len(scales)) x 4``): the base window
    ``[0, 0, base - 1, base - 1]``, _ratio_enum (np.round of sqrt(size / ratio), half to even), _scale_enum."""
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mkanchors(ws, hs, x, y):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)))

    base = np.array([1, 1, base_size, base_size]) - 1
    w, h, x, y = whctrs(base)
    r = np.asarray(ratios, dtype=np.float64)
    ws = np.round(np.sqrt(w * h / r))
    ratio_anchors = mkanchors(ws, np.round(ws * r), x, y)
    out = []
    for a in ratio_anchors:
        w, h, x, y = whctrs(a)
        out.append(mkanchors(w * np.asarray(scales), h * np.asarray(scales), x, y))
    return np.vstack(out).astype(np.float64)


def cpp_anchors(base_size: int, ratios, scales) -> np.ndarray:
    """proposal_layer.cpp's generate_anchors in float: ``ratio_w = sqrt(base^2 / ratio)``, ``ratio_h = ratio_w *
    ratio``, half sizes ``0.5 * ROUND(ratio_w * scale * 1.0 / base - 1)`` (ROUND truncates ``x + 0.5``, double)."""
    f = np.float32
    area, center = f(base_size * base_size), f(0.5) * (f(base_size) - f(1))
    out = []
    for r in np.asarray(ratios, dtype=np.float32):
        rw = f(np.sqrt(f(area / r)))
        rh = f(rw * r)
        for s in np.asarray(scales, dtype=np.float32):
            half_w = f(0.5) * f(int(float(f(rw * s)) * 1.0 / base_size - 1.0 + 0.5))
            half_h = f(0.5) * f(int(float(f(rh * s)) * 1.0 / base_size - 1.0 + 0.5))
            out.append([center - half_w, center - half_h, center + half_w, center + half_h])
    return np.asarray(out, dtype=np.float32).astype(np.float64)


class _Setup:
    """What a layer's parameters say: its anchors, stride, the two sizes, the NMS threshold and the min size
    (``python``: py-faster-rcnn's layer, whose last four are cfg's, TEST or TRAIN)."""

    def __init__(self, layer, python: bool):
        self.name, self.python, self.ntop = layer.name, python, len(layer.top)
        if python:
            try:
                params = parse_param_str(layer.python_param.param_str)
            except ValueError as e:
                raise _bad(layer, f"param_str {layer.python_param.param_str!r}: {e}") from None
            unknown = sorted(set(params) - set(_PY_KEYS))
            if unknown:
                raise _bad(layer, f"param_str sets {', '.join(unknown)}, which py-faster-rcnn's ProposalLayer does "
                                  f"not read (it reads feat_stride and scales)")
            if "feat_stride" not in params:
                raise _bad(layer, "param_str must give 'feat_stride' (proposal_layer.py reads "
                                  "layer_params['feat_stride'])")
            self.stride = params["feat_stride"]
            scales = params.get("scales", [8, 16, 32])
            if not isinstance(scales, list) or not scales or any(s <= 0 for s in scales):
                raise _bad(layer, f"param_str 'scales' must be a list of positive numbers, not {scales}")
            self.anchors = py_anchors(scales)
            self.configs = {k: (pre, post, t, float(m)) for k, (pre, post, t, m) in PY_CFG.items()}
        else:
            p = layer.proposal_param
            if not len(p.ratio) or not len(p.scale):
                raise _bad(layer, "proposal_param needs at least one ratio and one scale (generate_anchors makes "
                                  "ratio x scale anchors)")
            if any(r <= 0 for r in p.ratio):
                raise _bad(layer, "every ratio must be positive")
            if p.post_nms_topn < 1:
                raise _bad(layer, "post_nms_topn must be at least 1")
            self.stride = int(p.feat_stride)
            self.anchors = cpp_anchors(int(p.base_size), list(p.ratio), list(p.scale))
            cfg = (int(p.pre_nms_topn), int(p.post_nms_topn), float(np.float32(p.nms_thresh)), float(p.min_size))
            self.configs = {"TEST": cfg, "TRAIN": cfg}
        if not isinstance(self.stride, int) or self.stride < 0:
            raise _bad(layer, f"feat_stride must be a non-negative integer, not {self.stride}")
        self.num_anchors = len(self.anchors)


# ---------------------------------------------------------------------------------------------------------
# sort_box (the NMS: .nms)
# ---------------------------------------------------------------------------------------------------------

def sort_box(scores: np.ndarray, num_top: int) -> np.ndarray:
    """The permutation proposal_layer.cpp's sort_box leaves its list in (``sort_box(list, 0, n - 1, num_top)``: a
    quicksort, descending, pivot the first element, that sorts a right part only where it starts before
    ``num_top``). Each partition is computed at once: the left scan stops at values below the pivot, the right
    scan at values above it, the i-th of each are swapped while they have not crossed, and the pivot goes to the
    last value above it; a part of equal values is left as it is (no swap would happen)."""
    v = np.array(scores, dtype=np.float32)
    idx = np.arange(len(v))
    stack = [(0, len(v) - 1)]
    while stack:
        start, end = stack.pop()
        if end <= start or v[start:end + 1].min() == v[start:end + 1].max():
            continue
        pivot = v[start]
        body = v[start + 1:end + 1]
        lo = np.flatnonzero(body < pivot) + start + 1
        hi = (np.flatnonzero(body > pivot) + start + 1)[::-1]
        m = min(len(lo), len(hi))
        m = int(np.argmin(np.append(lo[:m] < hi[:m], False)))
        a, b = lo[:m], hi[:m]
        v[a], v[b] = v[b], v[a].copy()
        idx[a], idx[b] = idx[b], idx[a].copy()
        above = np.flatnonzero(v[start + 1:end + 1] > pivot)
        right = int(above[-1]) + start + 1 if len(above) else start
        if right > start:
            v[[start, right]] = v[[right, start]]
            idx[[start, right]] = idx[[right, start]]
        if start < right - 1:
            stack.append((start, right - 1))
        if right + 1 < num_top and right + 1 < end:
            stack.append((right + 1, end))
    return idx


# ---------------------------------------------------------------------------------------------------------
# the two converters (the module: .modules.proposal)
# ---------------------------------------------------------------------------------------------------------


class _ProposalConverter(NoParams):
    python = False
    discrete = True     # sorted by score, then an NMS

    def setup(self, layer) -> _Setup:
        return _Setup(layer, self.python)

    def top_shapes(self, layer, bottom_shapes):
        """The shapes Caffe's Net::Init reports: proposal_layer.py's setup ``1 x 5`` (and ``1 x 1 x 1 x 1``);
        proposal_layer.cpp's Reshape ``N * post_nms_topn x 5`` (and ``N * post_nms_topn``). The rows are counted
        only in forward."""
        if len(layer.bottom) != 3:
            raise _bad(layer, f"takes 3 bottoms (scores, deltas, im_info), not {len(layer.bottom)}")
        if len(layer.top) not in (1, 2):
            raise _bad(layer, f"gives 1 or 2 tops (rois, scores), not {len(layer.top)}")
        s = self.setup(layer)
        sc, de, info = (tuple(b) for b in bottom_shapes)
        a = s.num_anchors
        if len(sc) != 4 or sc[1] != 2 * a:
            raise _bad(layer, f"bottom '{layer.bottom[0]}' {list(sc)} must be N x {2 * a} x H x W (background, then "
                              f"foreground scores of {a} anchors)")
        if len(de) != 4 or de[0] != sc[0] or de[1] != 4 * a or de[2:] != sc[2:]:
            raise _bad(layer, f"bottom '{layer.bottom[1]}' {list(de)} must be {sc[0]} x {4 * a} x {sc[2]} x {sc[3]} "
                              f"(4 deltas of {a} anchors)")
        need = 3 if self.python else 2
        if not info or math.prod(info[1:]) < need or (self.python and info[0] not in (1, sc[0])):
            raise _bad(layer, f"bottom '{layer.bottom[2]}' {list(info)} must hold a row of {need} values per image")
        if self.python:
            return [(1, 5), (1, 1, 1, 1)][:len(layer.top)]
        r = sc[0] * s.configs["TEST"][1]
        return [(r, 5), (r,)][:len(layer.top)]

    def build(self, layer, bottom_shapes):
        from .modules.proposal import Proposal
        self.top_shapes(layer, bottom_shapes)
        return Proposal(self.setup(layer))

    def input_value(self, layer, bottom, shape, image_shape):
        """im_info of an image as big as the net's image input: rows ``[height, width, 1]``."""
        if bottom != 2 or image_shape is None or len(image_shape) != 4 or not shape or math.prod(shape[1:]) < 2:
            return None
        row = np.zeros(math.prod(shape[1:]), dtype=np.float32)
        row[:3] = [image_shape[2], image_shape[3], 1][:len(row)]
        return np.tile(row, (shape[0], 1)).reshape(shape)


@register("Proposal")
class ProposalConverter(_ProposalConverter):
    """The C++ Proposal type (proposal_param) as the oracle fork's proposal_layer.cpp runs it. OpenCV 4 has its own
    Proposal layer (py-faster-rcnn's anchors and order, no size test, post_nms_topn rows): it runs py-faster-rcnn's
    layer as that fork does not (see :class:`PythonProposalConverter`)."""


@register_python(PY_MODULE, PY_LAYER)
class PythonProposalConverter(_ProposalConverter):
    """py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer`` (see the module)."""
    python = True

    def for_opencv(self, layer):
        """OpenCV's Caffe importer has no Python layer: its Proposal layer is py-faster-rcnn's (its
        proposal_layer.cpp: generate_anchors' sizes, bbox_transform_inv, clip, sort, NMS at IoU > 0.7, but no
        size test and always post_nms_topn rows), given the settings proposal_layer.py uses."""
        s = self.setup(layer)
        pre, post, thresh, min_size = s.configs["TEST"]
        scales = parse_param_str(layer.python_param.param_str).get("scales", [8, 16, 32])
        layer.type = "Proposal"
        layer.ClearField("python_param")
        p = layer.proposal_param
        p.feat_stride, p.base_size, p.min_size = s.stride, 16, int(min_size)
        p.ratio.extend([0.5, 1, 2])
        p.scale.extend(float(v) for v in scales)
        p.pre_nms_topn, p.post_nms_topn, p.nms_thresh = pre, post, thresh


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.proposal`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import proposal
    return getattr(proposal, name)
