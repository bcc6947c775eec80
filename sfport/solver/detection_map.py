"""The SSD fork's detection test, without the net: Solver::TestDetection's accumulation of DetectionEvaluate's
rows over a test's batches (solver.cpp) and the average precision of each class (util/bbox_util.cpp CumSum and
ComputeAP, ``ap_version`` "11point", "MaxIntegral" or "Integral"), computed in float32 as the fork does (its
ComputeAP compiles to single-precision SSE: the products, sums and the division by 11 round to float each time;
only the 11-point recall thresholds ``j / 10.`` are doubles).

Followed: brocolli-caffe 9.0.2 (the SSD fork), src/caffe/solver.cpp Solver::TestDetection and
src/caffe/util/bbox_util.cpp CumSum / ComputeAP; the per-class lines of ``show_per_class_result`` as the
weiliu89/caffe ssd branch's solver.cpp writes them (``class<label>: <AP>``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sfport.errors import CaffeFileError

AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
_F = np.float32
_EPS = _F(1e-6)          # ComputeAP's const float eps = 1e-6


def check_ap_version(ap_version: str) -> None:
    """ComputeAP's LOG(FATAL) << "Unknown ap_version: " for anything but the three versions."""
    if ap_version not in AP_VERSIONS:
        raise CaffeFileError(None, f"Unknown ap_version: {ap_version} (the solver's ap_version is one of "
                                   f"{', '.join(AP_VERSIONS)})")


def _cumsum(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """CumSum: the running sum of ``values`` after a std::stable_sort of the pairs by descending score."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    return np.cumsum(values[order].astype(np.int64))


def precision_recall(scores, tp, fp, num_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """ComputeAP's precision ``tp_cumsum / (tp_cumsum + fp_cumsum)`` and recall ``tp_cumsum / num_pos`` (float32
    divisions of the counts converted to float), in descending score order."""
    scores = np.asarray(scores, dtype=_F)
    tpc = _cumsum(scores, np.asarray(tp))
    fpc = _cumsum(scores, np.asarray(fp))
    prec = (tpc.astype(_F) / (tpc + fpc).astype(_F)).astype(_F)
    rec = (tpc.astype(_F) / _F(num_pos)).astype(_F)
    return prec, rec


def average_precision(scores, tp, fp, num_pos: int, ap_version: str) -> float:
    """ComputeAP: the average precision of one class from its detections' ``scores`` and 0/1 ``tp`` and ``fp``
    flags (any order; ``tp == 1 - fp``) and its ``num_pos`` ground-truth boxes. 0 with no detection or no
    positive. The value is a float32 (returned as a Python float)."""
    check_ap_version(ap_version)
    scores, tp, fp = np.asarray(scores, dtype=_F), np.asarray(tp), np.asarray(fp)
    if len(tp) != len(fp) or len(tp) != len(scores):
        raise CaffeFileError(None, f"ComputeAP: {len(tp)} true and {len(fp)} false positive flags for "
                                   f"{len(scores)} scores (tp must have same size as fp)")
    if np.any(tp != 1 - fp):
        raise CaffeFileError(None, "ComputeAP: the true and false positive flags must be complements (0 and 1)")
    if not len(tp) or num_pos == 0:
        return 0.0
    prec, rec = precision_recall(scores, tp, fp, num_pos)
    if np.any(np.cumsum(tp[np.argsort(-scores.astype(np.float64), kind="stable")]) > num_pos):
        raise CaffeFileError(None, f"ComputeAP: more true positives than the {num_pos} ground-truth boxes")
    n = len(prec)
    ap = _F(0)
    if ap_version == "11point":                 # VOC2007
        max_precs = [_F(0)] * 11
        start = n - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10.:     # float recall against the double j / 10.
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                if max_precs[j] < prec[i]:
                    max_precs[j] = prec[i]
        for j in range(10, -1, -1):
            ap = _F(ap + _F(max_precs[j] / _F(11)))
    elif ap_version == "MaxIntegral":           # VOC2012, ILSVRC
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(n - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            d = _F(abs(_F(cur_rec - rec[i])))
            if d > _EPS:
                ap = _F(ap + _F(cur_prec * d))
            cur_rec = rec[i]
        ap = _F(ap + _F(cur_rec * cur_prec))
    else:                                       # Integral: the natural integral
        prev = _F(0)
        for i in range(n):
            d = _F(abs(_F(rec[i] - prev)))
            if d > _EPS:
                ap = _F(ap + _F(prec[i] * d))
            prev = rec[i]
    return float(ap)


def _int(v) -> int:
    """``static_cast<int>`` of a float blob value (toward zero; x86 gives INT_MIN out of range)."""
    v = float(v)
    if not np.isfinite(v) or not -2 ** 31 <= int(v) < 2 ** 31:
        return -2 ** 31
    return int(v)


@dataclass
class OutputResult:
    """One output's mAP (float32 as a Python float) and, per label of ``num_pos`` in ascending order, its AP, or
    None where TestDetection warns ``Missing true_pos for label`` (no detection of the label)."""
    index: int
    mean_ap: float
    per_label: list = field(default_factory=list)     # (label, AP or None)

    @property
    def aps(self) -> dict:
        return {label: ap for label, ap in self.per_label if ap is not None}


class DetectionScores:
    """Solver::TestDetection's maps over one test's batches: per output, per label, the (score, tp) and (score,
    fp) pairs of the detection rows and the summed ``num_pos`` of the ``-1`` rows."""

    def __init__(self):
        self.pairs: dict[int, dict[int, list]] = {}        # all_true_pos / all_false_pos: (score, tp, fp)
        self.num_pos: dict[int, dict[int, int]] = {}       # all_num_pos

    def add(self, j: int, rows) -> None:
        """The rows (``K x 5``: ``[image, label, score, tp, fp]``, or ``[-1, label, num_pos, -1, -1]``) of output
        ``j`` of one batch. Rows with ``tp == fp == 0`` (a detection matched to a difficult box that is not
        evaluated) are left out, as the fork does."""
        for r in np.asarray(rows, dtype=_F).reshape(-1, 5):
            item, label = _int(r[0]), _int(r[1])
            if item == -1:
                per = self.num_pos.setdefault(j, {})
                per[label] = per.get(label, 0) + _int(r[2])
                continue
            tp, fp = _int(r[3]), _int(r[4])
            if tp == 0 and fp == 0:
                continue
            self.pairs.setdefault(j, {}).setdefault(label, []).append((r[2], tp, fp))

    def results(self, ap_version: str) -> list[OutputResult]:
        """Per output index ``0 .. len(outputs with detections) - 1`` (the fork loops ``i < all_true_pos.size()``
        and stops with "Missing output_blob ..." where one is absent), the AP of each label of ``num_pos`` in
        ascending order (a label without detections is warned about and left out of the sum, but not of the
        division: ``mAP /= num_pos.size()``, in float32)."""
        check_ap_version(ap_version)
        out = []
        for i in range(len(self.pairs)):
            for what, table in (("true_pos", self.pairs), ("false_pos", self.pairs), ("num_pos", self.num_pos)):
                if i not in table:
                    raise CaffeFileError(None, f"Missing output_blob {what}: {i} (the detection test needs "
                                               f"DetectionEvaluate rows in every output of the test net)")
            res = OutputResult(i, 0.0)
            total = _F(0)
            for label in sorted(self.num_pos[i]):
                pairs = self.pairs[i].get(label)
                if pairs is None:
                    res.per_label.append((label, None))
                    continue
                scores = np.array([p[0] for p in pairs], dtype=_F)
                ap = average_precision(scores, np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs]),
                                       self.num_pos[i][label], ap_version)
                res.per_label.append((label, ap))
                total = _F(total + _F(ap))
            with np.errstate(divide="ignore", invalid="ignore"):
                res.mean_ap = float(_F(total / _F(len(self.num_pos[i]))))
            out.append(res)
        return out
