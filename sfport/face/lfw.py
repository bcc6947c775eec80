"""LFW verification as the SphereFace authors' ``test/code/evaluation.m`` (github.com/wy1iu/sphereface) does it,
the two other protocols people compare against, and the usual metrics.

``sphereface`` (default): feature = [f(img), f(flip(img))]; per fold, the mean of all left and right features of
the other nine folds is subtracted, features are L2-normalized, score = cosine; the threshold is the mean of every
threshold of the grid -1:1e-4:1 that reaches the best accuracy on the nine folds; accuracy on the fold counts
``same & score > t`` and ``different & score < t`` (strict). ``insightface``: f(img) + f(flip), normalized, squared
L2 distance, grid 0:0.01:4, the first best threshold of the nine folds, ``same & d < t``. ``facenet``: the two
features concatenated, normalized, squared L2 distance, the same grid and rule.

:func:`evaluate_features` (precomputed features) and :func:`evaluate_model` (features extracted from a model, with
their mirror images) are ``sfport eval``. Precomputed features are a ``.npy`` and its image list, or a MAT-file:
sfport's (``features``, row i the image ``images{i}``, as ``sfport embed -o x.mat`` writes it) or evaluation.m's
``result/pairs.mat`` (the struct array ``pairs``, fields fileL, fileR, fold, flag, featureL, featureR; each feature
a column) or the matrices it stacks from it, ``featureLs`` / ``featureRs`` (one column per pair, pairs.txt order).

``skip_missing``: the pairs with an image that is not there (no file, or no landmarks, or not in the features'
image list) are left out; the others keep their folds (pair k of pairs.txt stays in fold ceil(k / 600)), so a fold
has fewer pairs and its accuracy is counted over the pairs it has left; a fold with none left is left out (its
number in the report's ``folds_without_pairs``), as long as two folds have pairs. How many pairs of each fold have
both images is said before any feature is computed (``note``), and is the error when images are missing without
``skip_missing``.
A :class:`Report` carries every pair's score and flag (``as_dict`` / ``from_dict``), so an earlier ``--report``
can be drawn again beside a new run in one ROC figure (:func:`roc_figure`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sfport.face import align
from sfport.report import plots
from sfport.errors import CaffeFileError
from sfport.data.imagedata import read_list_text
from sfport.face.features import (MAT_FEATURES, MAT_IMAGES, Model, combine, extract, mat_kind, mat_matrix, mat_string,
                             mat_strings, mat_vector, read_mat)
from sfport.formats.disk import check_readable_file, load_array

PROTOCOLS = ("sphereface", "insightface", "facenet")
# the ROC metrics a report needs to be drawn again (roc_metrics' and the protocol's operating point)
METRICS = ("auc", "eer", "eer_threshold", "tar_at_far_1e-3", "threshold_at_far_1e-3", "tar_at_far_1e-2",
           "threshold_at_far_1e-2", "tar_at_threshold", "far_at_threshold")

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
    pairs: int = 0    # the pairs its accuracy is counted over
    fold: int = 0     # its number in pairs.txt (1-based; 0: unknown, then its place in the list)


@dataclass
class Report:
    protocol: str
    folds: list[FoldResult]
    scores: np.ndarray = field(repr=False, default=None)   # one score per pair (higher = more similar)
    same: np.ndarray = field(repr=False, default=None)
    metrics: dict = field(default_factory=dict)
    skipped: int = 0  # pairs of pairs.txt left out (skip_missing)
    folds_without_pairs: list = field(default_factory=list)   # the folds (1-based) with no pair left

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
        """The JSON report: accuracy, std, standard error, the folds (accuracy, threshold, pairs), the ROC
        metrics, the pairs evaluated and skipped, and each pair's score (the cosine of its L2-normalized
        features) and same flag, in pairs.txt order: what :meth:`from_dict` needs to draw the ROC again."""
        return {"protocol": self.protocol, "accuracy": self.accuracy, "std": self.std, "stderr": self.stderr,
                "folds": [{"fold": f.fold or i + 1, "accuracy": f.accuracy, "threshold": f.threshold,
                           "pairs": f.pairs} for i, f in enumerate(self.folds)], **self.metrics,
                "pairs": len(self.scores), "skipped_pairs": self.skipped,
                "folds_without_pairs": list(self.folds_without_pairs),
                "scores": [float(v) for v in self.scores], "same": [bool(v) for v in self.same]}

    @classmethod
    def from_dict(cls, doc, path=None) -> "Report":
        """The report of :meth:`as_dict`'s document, its structure checked: one line naming ``path`` when it is
        not such a report or lacks what a ROC figure needs (the scores, flags, folds and :data:`METRICS`)."""
        def bad(what):
            return CaffeFileError(path, f"not an sfport eval --report: {what}")

        def real(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if "scores" not in doc or "same" not in doc:
            raise CaffeFileError(path, "the report has no ROC data (the 'scores' and 'same' flags of its pairs): "
                                       "written by an older sfport eval? run eval --report again")
        scores, same, folds = doc["scores"], doc["same"], doc.get("folds")
        if not (isinstance(scores, list) and scores and all(map(real, scores))):
            raise bad("'scores' must be a non-empty list of finite numbers")
        if not (isinstance(same, list) and len(same) == len(scores) and all(isinstance(v, bool) for v in same)):
            raise bad(f"'same' must be a list of {len(scores)} true/false flags, one per score")
        if not (isinstance(folds, list) and folds and all(isinstance(f, dict) and real(f.get("accuracy")) and
                                                            real(f.get("threshold")) for f in folds)):
            raise bad("'folds' must be a list of {accuracy, threshold} objects")
        wrong = [k for k in METRICS if not real(doc.get(k))]
        if wrong or not isinstance(doc.get("protocol"), str):
            raise bad(f"'{wrong[0]}' is missing or not a finite number" if wrong else "no 'protocol'")
        return cls(doc["protocol"], [FoldResult(float(f["accuracy"]), float(f["threshold"]), int(f.get("pairs", 0)),
                                                int(f.get("fold", i + 1))) for i, f in enumerate(folds)],
                   np.asarray(scores, np.float64), np.asarray(same, bool), {k: float(doc[k]) for k in METRICS},
                   int(doc.get("skipped_pairs", 0)), [int(k) for k in doc.get("folds_without_pairs", [])])

    def table(self) -> str:
        counts = self.skipped > 0   # the folds' pair counts differ: show them
        lines = ["fold  ACC      threshold" + ("  pairs" if counts else ""), "----------------------------"]
        for i, f in enumerate(self.folds):
            row = f"{f.fold or i + 1:<4}  {100 * f.accuracy:6.2f}%  {f.threshold:.4f}"
            lines.append(row + (f"   {f.pairs:5d}" if counts else ""))
        lines.append("----------------------------")
        lines.append(f"AVE   {100 * self.accuracy:6.2f}%  (std {100 * self.std:.2f}, standard error "
                     f"{100 * self.stderr:.2f})")
        if self.skipped:
            lines.append(f"skipped {self.skipped} of {self.skipped + len(self.scores)} pairs (an image missing); each "
                         f"fold's accuracy is over the pairs it has left")
        if self.folds_without_pairs:
            lines.append(f"evaluated {len(self.folds)} folds ({', '.join(str(f.fold) for f in self.folds)}: "
                         f"{len(self.scores)} pairs); no pair left in fold "
                         f"{', '.join(map(str, self.folds_without_pairs))}")
        m = self.metrics
        if m:
            lines.append(f"ROC AUC {m['auc']:.5f}   EER {100 * m['eer']:.2f}%   TAR@FAR=1e-3 "
                         f"{100 * m['tar_at_far_1e-3']:.2f}%   TAR@FAR=1e-2 {100 * m['tar_at_far_1e-2']:.2f}%")
        return "\n".join(lines)


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.where(n > 0, n, 1)


# Rows of features taken at a time: every temporary stays a few MB, in the cache and in malloc's heap. Whole
# arrays of 6,000 x 1,024 float64 are mapped afresh for each temporary (bound_heap_growth's 1-MiB threshold) and
# fault in page by page: 1.1-1.4 s of a 6,000-pair evaluation, against 0.6.
_ROWS = 256


def _row_blocks(n: int):
    return (slice(i, min(i + _ROWS, n)) for i in range(0, n, _ROWS))


def _train_mean(L: np.ndarray, R: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``np.concatenate([L[train], R[train]]).mean(axis=0)`` (evaluation.m's ``mean([featLs(trainFold,:);
    featRs(trainFold,:)])``) block by block: numpy's add.reduce along axis 0 adds row after row, so carrying the
    running sum into the next block as its first row gives the same sum; then sum / count, as ndarray.mean."""
    acc = None
    for X in (L, R):
        for rows in _row_blocks(len(X)):
            block = X[rows][train[rows]]
            if len(block):
                acc = np.add.reduce(block if acc is None else np.concatenate([acc[None], block]), axis=0)
    if acc is None:   # no training row (a fold alone): the mean of nothing, NaN as the one-shot mean gives it
        return np.concatenate([L[train], R[train]]).mean(axis=0)
    return acc / (2 * int(train.sum()))


def _rowwise(f, L: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``f(L, R)`` for a function of each pair of rows alone (one value per row), block by block."""
    out = np.empty(len(L))
    for rows in _row_blocks(len(L)):
        out[rows] = f(L[rows], R[rows])
    return out


def evaluate(left: np.ndarray, right: np.ndarray, same, folds, protocol: str = "sphereface") -> Report:
    """Ten-fold verification of pair features (rows: pairs; features already combined per protocol). Besides
    :func:`roc_metrics`, the metrics hold the protocol's operating point: the TAR and FAR of the pairs as their
    folds' thresholds call them (``tar_at_threshold``, ``far_at_threshold``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}' (sfport has {', '.join(PROTOCOLS)})")
    L, R = np.asarray(left, np.float64), np.asarray(right, np.float64)
    same = np.asarray(same, bool)
    folds = np.asarray(folds)
    results = []
    accepted = np.zeros(len(same), bool)   # each pair's call by its fold's threshold
    if protocol != "sphereface":   # the same distances for every fold
        d = _rowwise(lambda l, r: ((_normalize(l) - _normalize(r)) ** 2).sum(axis=1), L, R)
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        if protocol == "sphereface":
            mu = _train_mean(L, R, train)
            s = _rowwise(lambda l, r: (_normalize(l - mu) * _normalize(r - mu)).sum(axis=1), L, R)
            grid = np.arange(-10000, 10001) / 10000
            acc = _grid_accuracies(s[train], same[train], grid, True)
            t = float(np.mean(grid[acc == acc.max()]))
            results.append(FoldResult(float(_accuracy(s[test], same[test], t, True)), t, int(test.sum()),
                                      int(k) + 1))
            accepted[test] = s[test] > t
        else:
            grid = np.arange(0, 4, 0.01)
            acc = _grid_accuracies(d[train], same[train], grid, False)
            t = float(grid[int(np.argmax(acc))])
            results.append(FoldResult(float(_accuracy(d[test], same[test], t, False)), t, int(test.sum()),
                                      int(k) + 1))
            accepted[test] = d[test] < t
    scores = _rowwise(lambda l, r: (_normalize(l) * _normalize(r)).sum(axis=1), L, R)
    rep = Report(protocol, results, scores, same)
    rep.metrics = roc_metrics(scores, same)
    rep.metrics["tar_at_threshold"] = float(accepted[same].mean()) if same.any() else 0.0
    rep.metrics["far_at_threshold"] = float(accepted[~same].mean()) if (~same).any() else 0.0
    return rep


def _needed(pairs: list[Pair]) -> list[str]:
    """Every image of the pairs, once, sorted."""
    return sorted({p.left for p in pairs} | {p.right for p in pairs})


def fold_counts(pairs: list[Pair], present: set) -> str:
    """How many pairs of each fold have both images ``present``: 'pairs with both images, by fold: 1: 0/6, 2: 6/6,
    ... (54 of 60)'."""
    folds = pairs[-1].fold + 1
    have, total = [0] * folds, [0] * folds
    for p in pairs:
        total[p.fold] += 1
        have[p.fold] += p.left in present and p.right in present
    return (f"pairs with both images, by fold: {', '.join(f'{k + 1}: {have[k]}/{total[k]}' for k in range(folds))} "
            f"({sum(have)} of {len(pairs)})")


def _available(pairs: list[Pair], present: set, where, why: str, hint: str = "") -> tuple[list[Pair], list[int]]:
    """skip_missing: the pairs whose two images are ``present``, in their folds, and the folds (1-based) left
    without pairs; fewer than two folds with pairs is one line naming ``where`` (``why`` says what an absent image
    lacks; ``hint``, when given, ends the line)."""
    kept = [p for p in pairs if p.left in present and p.right in present]
    have = {p.fold for p in kept}
    empty = [k + 1 for k in range(pairs[-1].fold + 1) if k not in have]
    if len(have) < 2:
        which = f"only fold {min(have) + 1} has" if have else "no fold has"
        raise CaffeFileError(where, f"--skip-missing: {which} pairs whose two images {why} ({len(pairs) - len(kept)} "
                                    f"of {len(pairs)} pairs skipped): the protocol chooses each fold's threshold on "
                                    f"the other folds, so it needs two{hint}")
    return kept, empty


def _evaluate_pairs(pairs: list[Pair], f_of: dict, flip_of: dict | None, protocol: str, skipped: int = 0,
                    empty=()) -> Report:
    """:func:`evaluate` of the pairs, each image's feature combined with its mirror image's (when given)."""
    def feat(name):
        return combine(f_of[name][None], None if flip_of is None else flip_of[name][None], protocol)[0]

    L = np.stack([feat(p.left) for p in pairs])
    R = np.stack([feat(p.right) for p in pairs])
    rep = evaluate(L, R, [p.same for p in pairs], [p.fold for p in pairs], protocol)
    rep.skipped, rep.folds_without_pairs = skipped, list(empty)
    return rep


def _name_hint(absent: list[str], names: list[str]) -> str:
    """How the image names of the pairs differ from a list's (an example of each): a prefix such as the LFW
    folder's own name, a missing folder, or simply other names."""
    want = absent[0]
    for n in names:
        if n.replace("\\", "/").endswith("/" + want):
            return (f"; the list names it '{n}': its names carry the prefix '{n[:-len(want)]}', where they must be "
                    f"relative to the LFW root (embed --root ROOT writes them so)")
    flat = want.rsplit("/", 1)[-1]
    if flat in names:
        return f"; the list names it '{flat}', without its folder: names are relative to the LFW root (name/file)"
    return f"; the list names e.g. '{names[0]}', the pairs e.g. '{want}'"


def _list_names(list_file) -> list[str]:
    names = [l.strip() for l in read_list_text(list_file, "image list", "an image list").splitlines() if l.strip()]
    if not names:
        raise CaffeFileError(list_file, "the image list is empty")
    return names


def _mat_pair_features(doc: dict, path, pairs: list[Pair], pairs_file):
    """(L, R) of a MAT-file in evaluation.m's layout, one row per pair of ``pairs`` (pairs.txt's order), checked:
    the struct array ``pairs`` (its fold and flag, when there, must be pairs.txt's: fold ceil(k / 600), flag 1 same
    and -1 different; fileL / fileR must end with the pair's image) or ``featureLs`` / ``featureRs`` (a column per
    pair). None when the file has neither."""
    n = len(pairs)
    if "pairs" in doc:
        s = doc["pairs"]
        if not (isinstance(s, np.ndarray) and s.dtype.names and {"featureL", "featureR"} <= set(s.dtype.names)):
            raise CaffeFileError(path, f"variable 'pairs' must be evaluation.m's struct array with fields featureL "
                                       f"and featureR (and fileL, fileR, fold, flag), not {mat_kind(s)}")
        s = s.reshape(-1, order="F")
        if len(s) != n:
            raise CaffeFileError(path, f"variable 'pairs' has {len(s)} elements for the {n} pairs of {pairs_file}")
        fields = set(s.dtype.names)
        for i, (e, p) in enumerate(zip(s, pairs)):
            at = f"pairs({i + 1})"
            for key, want in (("fold", p.fold + 1), ("flag", 1 if p.same else -1)):
                v = e[key] if key in fields else None
                number = isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "fiub"
                if v is not None and not (number and float(v.reshape(-1)[0]) == want):
                    got = f"{float(v.reshape(-1)[0]):g}" if number else mat_kind(v)
                    raise CaffeFileError(path, f"{at}.{key} is {got}, but pair {i + 1} of {pairs_file} has {key} "
                                               f"{want}")
            for key, want in (("fileL", p.left), ("fileR", p.right)):
                got = mat_string(path, f"{at}.{key}", e[key]) if key in fields else None
                if got is not None and not ("/" + got.replace("\\", "/")).endswith("/" + want):
                    raise CaffeFileError(path, f"{at}.{key} is '{got}', not pair {i + 1}'s image {want} of "
                                               f"{pairs_file}: the pairs are not in pairs.txt's order")
        L = [mat_vector(path, f"pairs({i + 1}).featureL", e["featureL"]) for i, e in enumerate(s)]
        R = [mat_vector(path, f"pairs({i + 1}).featureR", e["featureR"]) for i, e in enumerate(s)]
        dims = {len(v) for v in L + R}
        if len(dims) > 1:
            raise CaffeFileError(path, f"the features of 'pairs' have different lengths ({sorted(dims)[:3]})")
        L, R = np.stack(L), np.stack(R)
    elif "featureLs" in doc or "featureRs" in doc:
        absent = [k for k in ("featureLs", "featureRs") if k not in doc]
        if absent:
            raise CaffeFileError(path, f"no variable '{absent[0]}': evaluation.m's featureLs and featureRs go together")
        L, R = (mat_matrix(path, k, doc[k], n, "columns").T for k in ("featureLs", "featureRs"))
        if L.shape != R.shape:
            raise CaffeFileError(path, f"'featureLs' has {L.shape[1]} rows (features of that length), 'featureRs' "
                                       f"{R.shape[1]}")
    else:
        return None
    if not (np.isfinite(L).all() and np.isfinite(R).all()):
        raise CaffeFileError(path, "the pair features hold a NaN or infinite value")
    return L, R


def evaluate_features(pairs_file, features_file, list_file=None, protocol: str = "sphereface",
                      skip_missing: bool = False, note=None) -> Report:
    """``sfport eval --features F [--list L]``: the pairs of ``pairs_file`` scored on precomputed features, used
    as they are: a 2-D ``.npy`` (row i the image on line i of ``list_file``, paths relative to the LFW root), or a
    ``.mat`` (sfport's ``features`` + ``images``, ``list_file`` replacing ``images`` when given; or evaluation.m's
    per-pair layout, see the module). ``skip_missing``: pairs with an image not in the list are left out (``note``,
    a callable, is given :func:`fold_counts` first); without it they are an error saying how the names differ."""
    pairs = read_pairs(pairs_file)
    names_from = list_file
    if Path(features_file).suffix.lower() == ".mat":
        doc = read_mat(features_file)
        per_pair = _mat_pair_features(doc, features_file, pairs, pairs_file)
        if per_pair is not None:
            return evaluate(*per_pair, [p.same for p in pairs], [p.fold for p in pairs], protocol)
        if MAT_FEATURES not in doc:
            raise CaffeFileError(features_file, f"no variable '{MAT_FEATURES}' (sfport embed's, with '{MAT_IMAGES}'), "
                                                f"'pairs' or 'featureLs' / 'featureRs' (evaluation.m's); it has "
                                                f"{', '.join(sorted(doc)) or 'no variables'}")
        if list_file:
            names = _list_names(list_file)
        elif MAT_IMAGES in doc:
            names, names_from = mat_strings(features_file, MAT_IMAGES, doc[MAT_IMAGES]), features_file
        else:
            raise CaffeFileError(features_file, f"no variable '{MAT_IMAGES}' (the image of each row): give --list")
        feats = mat_matrix(features_file, MAT_FEATURES, doc[MAT_FEATURES], len(names))
    else:
        if not list_file:
            raise CaffeFileError(features_file, "--features needs --list (the image of each row)")
        feats = load_array(features_file, "features array", ndim=2, finite=True)
        names = _list_names(list_file)
        if len(feats) != len(names):
            raise CaffeFileError(features_file, f"{len(feats)} rows for {len(names)} images in {list_file}")
        if feats.shape[1] == 0:
            raise CaffeFileError(features_file, "the features have no columns")
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        j = index.setdefault(n, i)
        if j != i and not np.array_equal(feats[j], feats[i]):   # listed twice with different features
            raise CaffeFileError(names_from, f"'{n}' is listed twice (image {j + 1} and {i + 1}) with different "
                                             f"features in {features_file}")
    needed = _needed(pairs)
    absent = [n for n in needed if n not in index]
    kept, empty = pairs, []
    if absent and skip_missing:
        if note is not None:
            note(fold_counts(pairs, set(index)))
        kept, empty = _available(pairs, set(index), names_from, "are listed", _name_hint(absent, names))
    elif absent:
        raise CaffeFileError(names_from, f"{len(absent)} images of the pairs are not listed, e.g. {absent[0]}"
                                         f"{_name_hint(absent, names)}; {fold_counts(pairs, set(index))}; "
                                         f"--skip-missing evaluates those")
    return _evaluate_pairs(kept, {n: feats[index[n]] for n in _needed(kept)}, None, protocol, len(pairs) - len(kept),
                           empty)


def evaluate_model(pairs_file, model, lfw_dir, prototxt=None, blob: str | None = None,
                   protocol: str = "sphereface", landmarks=None, landmarks_one_based: bool = False,
                   template: str | None = None, batch_size: int = 64, workers: int = 2, cache: bool = True,
                   progress=False, state: dict | None = None, backend: str = "auto", log=None,
                   skip_missing: bool = False, note=None) -> Report:
    """``sfport eval --model M --lfw-dir D``: the pairs of ``pairs_file`` scored on the features of ``model``
    (:class:`sfport.face.features.Model`) and of the mirror images, from the crops under ``lfw_dir`` or from the
    originals aligned on the fly with the ``landmarks`` list; features cached unless ``cache`` is False.
    ``state``: the phase / stages / level / input_shapes that select the net of a train or test definition;
    ``backend``, ``progress`` and ``log`` as for :func:`sfport.face.features.extract` and its Model. ``skip_missing``:
    the pairs with an image that is not a file under ``lfw_dir`` (or, with ``landmarks``, has none) are left out,
    ``note`` (a callable) given :func:`fold_counts` before any feature is computed; without it a missing image is
    an error, with the count of each fold."""
    pairs = read_pairs(pairs_file)
    if not model or not lfw_dir:
        raise CaffeFileError(None, "give --model and --lfw-dir (or --features and --list)")
    if not os.path.isdir(lfw_dir):
        raise CaffeFileError(lfw_dir, "the LFW folder (--lfw-dir) is not a folder" if os.path.exists(lfw_dir)
                             else "the LFW folder (--lfw-dir) not found")
    marks = align.read_landmarks(landmarks, one_based=landmarks_one_based) if landmarks else None
    kept, empty, needed = pairs, [], _needed(pairs)
    files = {n for n in needed if os.path.isfile(os.path.join(lfw_dir, n))}
    present = files if marks is None else {n for n in files if n in marks}
    if len(present) < len(needed) and skip_missing:
        if note is not None:
            note(fold_counts(pairs, present))
        kept, empty = _available(pairs, present, lfw_dir, "are there" + (" with landmarks" if marks is not None
                                                                           else ""))
    elif len(present) < len(needed):
        absent = [n for n in needed if n not in present]
        first = next((n for n in absent if n not in files), None)
        where, what = ((os.path.join(lfw_dir, first), "missing") if first
                       else (landmarks, f"no landmarks for '{absent[0]}'"))
        lack = "missing" if marks is None else "missing or have no landmarks"
        raise CaffeFileError(where, f"{what} ({len(absent)} of the {len(needed)} images of the pairs are {lack}; "
                                    f"{fold_counts(pairs, present)}): --skip-missing evaluates those")
    needed = _needed(kept)
    m = Model(model, prototxt, blob, **(state or {}), backend=backend, forwards=2 * len(needed))
    ex = extract(m, needed, lfw_dir, protocol, marks, landmarks, template, batch_size, workers,
                 cache_dir=None if cache else False, progress=progress, log=log)
    return _evaluate_pairs(kept, dict(zip(needed, ex.features)), dict(zip(needed, ex.flipped)), protocol,
                           len(pairs) - len(kept), empty)


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



def read_report(path) -> Report:
    """An earlier ``eval --report`` JSON (:meth:`Report.from_dict`), e.g. for ``eval --plot ... --compare``."""
    check_readable_file(path, "JSON report")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CaffeFileError(path, f"not a JSON report: {str(e).splitlines()[0][:200]}") from None
    return Report.from_dict(doc, path)


def roc_figure(reports: dict[str, Report]):
    """The ROC figure (:func:`sfport.report.plots.roc_figure`) of the reports ({label: report}), before rendering: each
    report's curve with its accuracy and AUC, and its operating points marked: TAR at FAR 1e-3 and 1e-2 (at those
    FARs) and the protocol's thresholds (``far_at_threshold``, ``tar_at_threshold``)."""
    runs = []
    for label, rep in reports.items():
        far, tar, _ = roc_curve(np.asarray(rep.scores, np.float64), np.asarray(rep.same, bool))
        m = rep.metrics
        runs.append({"label": label, "far": far, "tar": tar, "accuracy": rep.accuracy, "auc": m["auc"],
                     "points": {"far_1e-3": (1e-3, m["tar_at_far_1e-3"]), "far_1e-2": (1e-2, m["tar_at_far_1e-2"]),
                                "threshold": (m["far_at_threshold"], m["tar_at_threshold"])}})
    return plots.roc_figure(runs)


def plot_roc(path, reports: dict[str, Report]) -> bytes:
    """:func:`roc_figure` rendered in the format ``path``'s extension names (png, svg, pdf), as bytes (the caller
    writes them, e.g. with the report: :func:`sfport.formats.disk.write_files`)."""
    fmt = plots.plot_format(path)
    return plots.figure_bytes(roc_figure(reports), fmt)
