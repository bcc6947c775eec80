"""LFW verification as the SphereFace authors' ``test/code/evaluation.m`` (github.com/wy1iu/sphereface) does it,
the two other protocols people compare against, and the usual metrics.

``sphereface`` (default): feature = [f(img), f(flip(img))]; per fold, the mean of all left and right features of
the other nine folds is subtracted, features are L2-normalized, score = cosine; the threshold is the mean of every
threshold of the grid -1:1e-4:1 that reaches the best accuracy on the nine folds; accuracy on the fold counts
``same & score > t`` and ``different & score < t`` (strict). ``insightface``: f(img) + f(flip), normalized, squared
L2 distance, grid 0:0.01:4, the first best threshold of the nine folds, ``same & d < t``. ``facenet``: the two
features concatenated, normalized, squared L2 distance, the same grid and rule.

:func:`evaluate_features` (precomputed features and their image list) and :func:`evaluate_model` (features
extracted from a model, with their mirror images) are ``sfport eval``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from sfport import align
from sfport.errors import CaffeFileError
from sfport.data import read_list_text
from sfport.features import Model, combine, extract
from sfport.files import atomic_write, load_array

PROTOCOLS = ("sphereface", "insightface", "facenet")


@dataclass
class Pair:
    left: str        # relative path: name/name_0001.jpg
    right: str
    same: bool
    fold: int        # 0-based


def read_pairs(path) -> list[Pair]:
    """LFW ``pairs.txt``: header ``folds<TAB>n``; ``name i j`` (same) or ``name1 i name2 j`` (different); pair k
    (1-based) is in fold ceil(k / (2n)). Without the header, folds of 300 + 300 (evaluation.m's fixed split).
    The file must hold what the header states: ``folds`` >= 2 folds (each fold's threshold is chosen on the
    others), each of n same and n different pairs; anything else is one line naming the file."""
    lines = read_list_text(path, "pairs file", "a pairs file").splitlines()
    if not any(l.strip() for l in lines):
        raise CaffeFileError(path, "the pairs file is empty")
    head = lines[0].split()
    stated_folds, per_set = None, 300
    body = lines
    if len(head) == 2 and all(h.isdigit() for h in head):
        stated_folds, per_set = int(head[0]), int(head[1])
        if stated_folds < 2 or per_set < 1:
            raise CaffeFileError(path, f"line 1: the header '{lines[0].strip()}' must give at least 2 folds of at "
                                       f"least 1 same and 1 different pair (LFW's is '10 300')")
        body = lines[1:]
    per_fold = 2 * per_set
    pairs, first_line = [], []
    for n, line in enumerate(body, 2 if body is not lines else 1):
        f = line.split()
        if not f:
            continue
        try:
            if len(f) not in (3, 4):
                raise ValueError
            numbers = [int(f[1]), int(f[2])] if len(f) == 3 else [int(f[1]), int(f[3])]
            if min(numbers) < 1:
                raise ValueError
        except ValueError:
            raise CaffeFileError(path, f"line {n}: expected 'name i j' or 'name1 i name2 j' (image numbers from "
                                       f"1), got '{line.strip()[:80]}'") from None
        a, b = (f[0], f[0]) if len(f) == 3 else (f[0], f[2])
        if len(pairs) % per_fold == 0:
            first_line.append(n)
        pairs.append(Pair(f"{a}/{a}_{numbers[0]:04d}.jpg", f"{b}/{b}_{numbers[1]:04d}.jpg", len(f) == 3,
                          len(pairs) // per_fold))
    if not pairs:
        raise CaffeFileError(path, "no pairs in the file")
    stated = f"the header states {stated_folds} folds" if stated_folds else "without a header, folds are"
    if stated_folds is not None and len(pairs) != stated_folds * per_fold:
        raise CaffeFileError(path, f"{stated} of {per_set} same + {per_set} different pairs "
                                   f"({stated_folds * per_fold}), but the file has {len(pairs)} pairs")
    folds = pairs[-1].fold + 1
    if folds < 2:  # evaluation.m: each fold's threshold is chosen on the other folds
        raise CaffeFileError(path, f"{len(pairs)} pairs make 1 fold of {per_fold}: the protocol needs at least 2 "
                                   f"folds")
    for k in range(folds):
        same = sum(p.same for p in pairs[k * per_fold:(k + 1) * per_fold])
        total = len(pairs[k * per_fold:(k + 1) * per_fold])
        if same != per_set or total != per_fold:
            raise CaffeFileError(path, f"fold {k + 1} (from line {first_line[k]}) has {same} same and "
                                       f"{total - same} different pairs; {stated} of {per_set} of each")
    return pairs


def _accuracy(scores, same, t, greater: bool) -> float:
    if greater:
        return (np.sum(scores[same] > t) + np.sum(scores[~same] < t)) / len(scores)
    return (np.sum(scores[same] < t) + np.sum(scores[~same] >= t)) / len(scores)


def _grid_accuracies(scores: np.ndarray, same: np.ndarray, grid: np.ndarray, greater: bool) -> np.ndarray:
    """Accuracy at every threshold of the grid, by sorting (same counts as the per-threshold loop)."""
    pos = np.sort(scores[same])
    neg = np.sort(scores[~same])
    if greater:   # same & s > t, diff & s < t
        tp = len(pos) - np.searchsorted(pos, grid, side="right")
        tn = np.searchsorted(neg, grid, side="left")
    else:         # same & d < t, diff & d >= t
        tp = np.searchsorted(pos, grid, side="left")
        tn = len(neg) - np.searchsorted(neg, grid, side="left")
    return (tp + tn) / len(scores)


@dataclass
class FoldResult:
    accuracy: float
    threshold: float


@dataclass
class Report:
    protocol: str
    folds: list[FoldResult]
    scores: np.ndarray = field(repr=False, default=None)   # one score per pair (higher = more similar)
    same: np.ndarray = field(repr=False, default=None)
    metrics: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(np.mean([f.accuracy for f in self.folds]))

    @property
    def std(self) -> float:
        return float(np.std([f.accuracy for f in self.folds], ddof=1)) if len(self.folds) > 1 else 0.0

    @property
    def stderr(self) -> float:
        return self.std / math.sqrt(len(self.folds)) if self.folds else 0.0

    def as_dict(self) -> dict:
        return {"protocol": self.protocol, "accuracy": self.accuracy, "std": self.std, "stderr": self.stderr,
                "folds": [{"fold": i + 1, "accuracy": f.accuracy, "threshold": f.threshold}
                          for i, f in enumerate(self.folds)], **self.metrics}

    def table(self) -> str:
        lines = ["fold  ACC      threshold", "----------------------------"]
        for i, f in enumerate(self.folds):
            lines.append(f"{i + 1:<4}  {100 * f.accuracy:6.2f}%  {f.threshold:.4f}")
        lines.append("----------------------------")
        lines.append(f"AVE   {100 * self.accuracy:6.2f}%  (std {100 * self.std:.2f}, standard error "
                     f"{100 * self.stderr:.2f})")
        m = self.metrics
        if m:
            lines.append(f"ROC AUC {m['auc']:.5f}   EER {100 * m['eer']:.2f}%   TAR@FAR=1e-3 "
                         f"{100 * m['tar_at_far_1e-3']:.2f}%   TAR@FAR=1e-2 {100 * m['tar_at_far_1e-2']:.2f}%")
        return "\n".join(lines)


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.where(n > 0, n, 1)


def evaluate(left: np.ndarray, right: np.ndarray, same, folds, protocol: str = "sphereface") -> Report:
    """Ten-fold verification of pair features (rows: pairs; features already combined per protocol)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}' (sfport has {', '.join(PROTOCOLS)})")
    L, R = np.asarray(left, np.float64), np.asarray(right, np.float64)
    same = np.asarray(same, bool)
    folds = np.asarray(folds)
    results = []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        if protocol == "sphereface":
            mu = np.concatenate([L[train], R[train]]).mean(axis=0)
            s = (_normalize(L - mu) * _normalize(R - mu)).sum(axis=1)
            grid = np.arange(-10000, 10001) / 10000
            acc = _grid_accuracies(s[train], same[train], grid, True)
            t = float(np.mean(grid[acc == acc.max()]))
            results.append(FoldResult(float(_accuracy(s[test], same[test], t, True)), t))
        else:
            d = ((_normalize(L) - _normalize(R)) ** 2).sum(axis=1)
            grid = np.arange(0, 4, 0.01)
            acc = _grid_accuracies(d[train], same[train], grid, False)
            t = float(grid[int(np.argmax(acc))])
            results.append(FoldResult(float(_accuracy(d[test], same[test], t, False)), t))
    scores = (_normalize(L) * _normalize(R)).sum(axis=1)
    rep = Report(protocol, results, scores, same)
    rep.metrics = roc_metrics(scores, same)
    return rep


def _needed(pairs: list[Pair]) -> list[str]:
    """Every image of the pairs, once, sorted."""
    return sorted({p.left for p in pairs} | {p.right for p in pairs})


def _evaluate_pairs(pairs: list[Pair], f_of: dict, flip_of: dict | None, protocol: str) -> Report:
    """:func:`evaluate` of the pairs, each image's feature combined with its mirror image's (when given)."""
    def feat(name):
        return combine(f_of[name][None], None if flip_of is None else flip_of[name][None], protocol)[0]

    L = np.stack([feat(p.left) for p in pairs])
    R = np.stack([feat(p.right) for p in pairs])
    return evaluate(L, R, [p.same for p in pairs], [p.fold for p in pairs], protocol)


def evaluate_features(pairs_file, features_file, list_file, protocol: str = "sphereface") -> Report:
    """``sfport eval --features F --list L``: the pairs of ``pairs_file`` scored on precomputed features (a 2-D
    ``.npy``, row i the image on line i of ``list_file``, paths relative to the LFW root), used as they are."""
    pairs = read_pairs(pairs_file)
    if not list_file:
        raise CaffeFileError(features_file, "--features needs --list (the image of each row)")
    feats = load_array(features_file, "features array", ndim=2, finite=True)
    names = [l.strip() for l in read_list_text(list_file, "image list", "an image list").splitlines() if l.strip()]
    if not names:
        raise CaffeFileError(list_file, "the image list is empty")
    if len(feats) != len(names):
        raise CaffeFileError(features_file, f"{len(feats)} rows for {len(names)} images in {list_file}")
    if feats.shape[1] == 0:
        raise CaffeFileError(features_file, "the features have no columns")
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        j = index.setdefault(n, i)
        if j != i and not np.array_equal(feats[j], feats[i]):   # listed twice with different features
            raise CaffeFileError(list_file, f"'{n}' is listed twice (image {j + 1} and {i + 1}) with different "
                                            f"features in {features_file}")
    needed = _needed(pairs)
    absent = [n for n in needed if n not in index]
    if absent:
        raise CaffeFileError(list_file, f"{len(absent)} images of the pairs are not listed, e.g. {absent[0]}")
    return _evaluate_pairs(pairs, {n: feats[index[n]] for n in needed}, None, protocol)


def evaluate_model(pairs_file, model, lfw_dir, prototxt=None, blob: str | None = None,
                   protocol: str = "sphereface", landmarks=None, landmarks_one_based: bool = False,
                   template: str | None = None, batch_size: int = 64, workers: int = 2, cache: bool = True,
                   progress=False, state: dict | None = None, backend: str = "auto", log=None) -> Report:
    """``sfport eval --model M --lfw-dir D``: the pairs of ``pairs_file`` scored on the features of ``model``
    (:class:`sfport.features.Model`) and of the mirror images, from the crops under ``lfw_dir`` or from the
    originals aligned on the fly with the ``landmarks`` list; features cached unless ``cache`` is False.
    ``state``: the phase / stages / level / input_shapes that select the net of a train or test definition;
    ``backend``, ``progress`` and ``log`` as for :func:`sfport.features.extract` and its Model."""
    pairs = read_pairs(pairs_file)
    if not model or not lfw_dir:
        raise CaffeFileError(None, "give --model and --lfw-dir (or --features and --list)")
    if not os.path.isdir(lfw_dir):
        raise CaffeFileError(lfw_dir, "the LFW folder (--lfw-dir) is not a folder" if os.path.exists(lfw_dir)
                             else "the LFW folder (--lfw-dir) not found")
    m = Model(model, prototxt, blob, **(state or {}), backend=backend)
    marks = align.read_landmarks(landmarks, one_based=landmarks_one_based) if landmarks else None
    needed = _needed(pairs)
    ex = extract(m, needed, lfw_dir, protocol, marks, landmarks, template, batch_size, workers,
                 cache_dir=None if cache else False, progress=progress, log=log)
    return _evaluate_pairs(pairs, dict(zip(needed, ex.features)), dict(zip(needed, ex.flipped)), protocol)


def roc_curve(scores: np.ndarray, same: np.ndarray):
    """(far, tar, thresholds) over every distinct score, thresholds descending (accept when score >= t)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tar = np.r_[0.0, tp[last] / max(y.sum(), 1)]
    far = np.r_[0.0, fp[last] / max((~y).sum(), 1)]
    return far, tar, np.r_[np.inf, s[last]]


def roc_metrics(scores: np.ndarray, same: np.ndarray) -> dict:
    """ROC AUC, EER (and its threshold), TAR at FAR 1e-3 and 1e-2 over all pairs (cosine of the features)."""
    far, tar, thr = roc_curve(np.asarray(scores, np.float64), np.asarray(same, bool))
    auc = float(np.trapezoid(tar, far)) if hasattr(np, "trapezoid") else float(np.trapz(tar, far))
    i = int(np.argmin(np.abs((1 - tar) - far)))
    out = {"auc": auc, "eer": float(((1 - tar[i]) + far[i]) / 2), "eer_threshold": float(thr[i])}
    for name, target in (("1e-3", 1e-3), ("1e-2", 1e-2)):
        ok = np.nonzero(far <= target)[0]
        j = int(ok[-1]) if len(ok) else 0
        out[f"tar_at_far_{name}"] = float(tar[j])
        out[f"threshold_at_far_{name}"] = float(thr[j])
    return out


def plot_roc(path, reports: dict[str, Report], size=(480, 640)) -> None:
    """Write :func:`roc_png` to ``path`` (atomically)."""
    atomic_write(path, roc_png(reports, size))


def roc_png(reports: dict[str, Report], size=(480, 640)) -> bytes:
    """A ROC PNG (TAR against log FAR) drawn with OpenCV, as bytes."""
    import cv2

    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, w - 20, 20, h - 50
    cv2.rectangle(img, (left, top), (right, bottom), (0, 0, 0), 1)
    lo = -4.0

    def xy(far, tar):
        lf = np.log10(np.clip(far, 10 ** lo, 1))
        return (left + (lf - lo) / -lo * (right - left)).astype(int), (bottom - tar * (bottom - top)).astype(int)

    for e in range(int(lo), 1):
        x = int(left + (e - lo) / -lo * (right - left))
        cv2.line(img, (x, bottom), (x, bottom + 5), (0, 0, 0), 1)
        cv2.putText(img, f"1e{e}", (x - 14, bottom + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for t in np.linspace(0, 1, 6):
        y = int(bottom - t * (bottom - top))
        cv2.putText(img, f"{t:.1f}", (left - 32, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    colors = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214)]
    for k, (name, rep) in enumerate(reports.items()):
        far, tar, _ = roc_curve(rep.scores, rep.same)
        xs, ys = xy(far, tar)
        pts = np.stack([xs, ys], axis=1).reshape(-1, 1, 2)
        cv2.polylines(img, [pts], False, colors[k % 4], 2, cv2.LINE_AA)
        cv2.putText(img, f"{name}: {100 * rep.accuracy:.2f}%  AUC {rep.metrics['auc']:.4f}", (left + 10, bottom - 15 -
                    18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colors[k % 4], 1, cv2.LINE_AA)
    cv2.putText(img, "false accept rate", (w // 2 - 50, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(img, "TAR", (5, top + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes()
