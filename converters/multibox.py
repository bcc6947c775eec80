"""The SSD fork's MultiBoxLoss (weiliu89/caffe, branch ssd; followed as brocolli-caffe 9.0.2 ships it):
src/caffe/layers/multibox_loss_layer.cpp with src/caffe/util/bbox_util.cpp, and the loss layers it runs inside
(smooth_L1_loss_layer.cpp, euclidean_loss_layer.cpp, softmax_loss_layer.cpp, sigmoid_cross_entropy_loss_layer.cpp).

Bottoms: ``loc`` (N x P*L*4, L = 1 with share_location, else num_classes), ``conf`` (N x P*C), ``prior``
(PriorBox's 1 x 2 x P*4: boxes, then variances) and ``label`` (1 x 1 x G x 8: ``[item, label, instance, xmin, ymin,
xmax, ymax, difficult]``; rows of item -1 are skipped). Top: the loss, a scalar.

Forward_cpu in two parts. What is discrete - the ground truth (GetGroundTruth), the matches (FindMatches,
MatchBBox), the mining (MineHardExamples with ComputeConfLoss, ComputeLocLoss, ApplyNMS) and the encoded targets
(EncodeBBox) - is computed in numpy in float32 as the fork computes it (CPU_ONLY: ComputeConfLoss, not its GPU
twin). The losses on what it selected are torch: ``loc_weight * loc_loss / normalizer + conf_loss / normalizer``
(each term only where the layer's propagate_down, set or LayerSetUp's default true, true, false, false, says so),
so autograd gives Backward_cpu's diffs: the inner loss layer's diff (its loss weight loc_weight, resp. 1) times
the top's diff over the normalizer, copied back to the matched (and mined) rows, zero elsewhere.

Followed where it looks odd: EncodeConfPrediction's LOGISTIC targets without mining advance by P per image, not
P*C (so for image i > 0 the ones land at ``i*P + j*C + label`` of the flat targets), and every other target is
``background_label_id`` (its caffe_set), not 0; an nms_param without top_k keeps nothing (top_k 0). Not
followed: a second forward without a backward in between (the fork appends to its match lists and then reads the
first forward's matches); each forward here matches anew.
"""
from __future__ import annotations

import numpy as np

from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2
from .base import NoParams, register
from .nms import libstdcxx_sort

F32 = np.float32
FLT_MIN = float(np.finfo(np.float32).tiny)
_M = caffe_pb2.MultiBoxLossParameter
_CODE = caffe_pb2.PriorBoxParameter
_NORM = caffe_pb2.LossParameter


def _bad(name: str, what: str) -> CaffeFileError:
    return CaffeFileError(None, f"layer '{name}' (MultiBoxLoss): {what}")


class _Setup:
    """MultiBoxLossLayer::LayerSetUp's parameters and checks (and the CHECKs bbox_util.cpp makes of them)."""

    def __init__(self, layer):
        self.name = layer.name
        p = layer.multibox_loss_param
        if not p.HasField("num_classes"):
            raise _bad(self.name, "must provide multibox_loss_param.num_classes")
        self.num_classes = C = int(p.num_classes)
        if C < 1:
            raise _bad(self.name, "num_classes should not be less than 1")
        self.share_location = bool(p.share_location)
        self.loc_classes = 1 if self.share_location else C
        self.background = int(p.background_label_id)
        self.use_difficult_gt = bool(p.use_difficult_gt)
        self.mining = int(p.mining_type)
        if p.HasField("do_neg_mining") and p.do_neg_mining != (self.mining != _M.NONE):
            raise _bad(self.name, f"do_neg_mining {str(p.do_neg_mining).lower()} (deprecated) contradicts "
                                  f"mining_type {_M.MiningType.Name(self.mining)}")
        self.neg_mining = self.mining != _M.NONE
        if self.neg_mining and not self.share_location:
            raise _bad(self.name, "negative mining (mining_type other than NONE) needs share_location true")
        lp = layer.loss_param
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _NORM.VALID if lp.normalize else _NORM.BATCH_SIZE
        else:
            self.normalization = int(lp.normalization)
        self.loc_weight = F32(p.loc_weight)
        self.loc_loss = int(p.loc_loss_type)
        self.conf_loss = int(p.conf_loss_type)
        if self.conf_loss == _M.SOFTMAX and not 0 <= self.background < C:
            raise _bad(self.name, f"background_label_id {self.background} should be within [0, {C}) for Softmax")
        self.map_agnostic = bool(p.map_object_to_agnostic)
        if self.map_agnostic and C != 2:   # background_label_id is unsigned: always >= 0
            raise _bad(self.name, f"map_object_to_agnostic needs num_classes 2, not {C}")
        self.match_type = int(p.match_type)
        self.overlap_threshold = F32(p.overlap_threshold)
        self.use_prior_for_matching = bool(p.use_prior_for_matching)
        self.code_type = int(p.code_type)
        self.variance_in_target = bool(p.encode_variance_in_target)
        self.ignore_cross_boundary = bool(p.ignore_cross_boundary_bbox)
        self.bp_inside = bool(p.bp_inside)
        self.neg_pos_ratio = F32(p.neg_pos_ratio)
        self.neg_overlap = F32(p.neg_overlap)
        self.nms = p.HasField("nms_param")
        self.nms_threshold = F32(p.nms_param.nms_threshold) if self.nms else F32(0)
        self.top_k = int(p.nms_param.top_k) if self.nms else -1
        self.sample_size = int(p.sample_size)
        if self.mining == _M.HARD_EXAMPLE and self.sample_size <= 0:
            raise _bad(self.name, f"sample_size {self.sample_size} must be positive for HARD_EXAMPLE mining")
        self.use_prior_for_nms = bool(p.use_prior_for_nms)
        pd = list(layer.propagate_down)
        if pd and len(pd) != 4:
            raise _bad(self.name, f"propagate_down must be given 0 or 4 times (once per bottom), not {len(pd)}")
        if any(pd[2:]):
            raise _bad(self.name, "cannot backpropagate to the prior and label inputs (propagate_down true)")
        self.propagate = pd[:2] if pd else [True, True]


def _legacy(shape, axis: int) -> int:
    """Blob::LegacyShape: an axis past the blob's is 1."""
    return int(shape[axis]) if axis < len(shape) else 1


def _count(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _check_shapes(s: _Setup, bottoms, tops: int, bottom_shapes) -> int:
    """LossLayer::Reshape and MultiBoxLossLayer::Reshape; also that each blob holds what Forward_cpu reads (the
    fork reads past a blob that does not). Returns the number of priors."""
    if len(bottoms) != 4 or tops != 1:
        raise _bad(s.name, f"takes 4 bottoms (loc, conf, prior, label) and 1 top, not {len(bottoms)} and {tops}")
    loc, conf, prior, label = (tuple(b) for b in bottom_shapes)
    for name, shape in zip(bottoms, (loc, conf, prior, label)):
        if len(shape) > 4:
            raise _bad(s.name, f"bottom '{name}' {list(shape)} has more than 4 axes")
    if _legacy(loc, 0) != _legacy(conf, 0):
        raise _bad(s.name, f"bottoms '{bottoms[0]}' {list(loc)} and '{bottoms[1]}' {list(conf)} must have the same "
                           f"first dimension")
    height = _legacy(prior, 2)
    P = height // 4
    if P < 1 or height % 4 or _count(prior) != 2 * height:
        raise _bad(s.name, f"the prior bottom '{bottoms[2]}' {list(prior)} must be 1 x 2 x (4 x priors)")
    n = _legacy(loc, 0)
    if _legacy(loc, 1) != P * s.loc_classes * 4 or _count(loc) != n * P * s.loc_classes * 4:
        raise _bad(s.name, f"number of priors must match number of location predictions: {P} priors need "
                           f"'{bottoms[0]}' N x {P * s.loc_classes * 4}, not {list(loc)}")
    if _legacy(conf, 1) != P * s.num_classes or _count(conf) != n * P * s.num_classes:
        raise _bad(s.name, f"number of priors must match number of confidence predictions: {P} priors need "
                           f"'{bottoms[1]}' N x {P * s.num_classes}, not {list(conf)}")
    if _count(label) != 8 * _legacy(label, 2):
        raise _bad(s.name, f"the label bottom '{bottoms[3]}' {list(label)} must be 1 x 1 x G x 8 (item, label, "
                           f"instance, xmin, ymin, xmax, ymax, difficult per row)")
    return P


# boxes (bbox_util.cpp), float32; a box is [xmin, ymin, xmax, ymax] along the last axis

def _size(b: np.ndarray) -> np.ndarray:
    """BBoxSize (normalized): 0 for an invalid box (xmax < xmin or ymax < ymin), else width * height."""
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    invalid = (b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])
    return np.where(invalid, F32(0), w * h).astype(F32)


def _overlaps(a: np.ndarray, sa: np.ndarray, b: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """JaccardOverlap(a_i, b_j) for every pair: IntersectBBox (none when one box starts past the other's end),
    ``inter / (size1 + size2 - inter)`` when the intersection's width and height are > 0, else 0."""
    apart = ((b[None, :, 0] > a[:, None, 2]) | (b[None, :, 2] < a[:, None, 0]) |
             (b[None, :, 1] > a[:, None, 3]) | (b[None, :, 3] < a[:, None, 1]))
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    ok = ~apart & (iw > 0) & (ih > 0)
    inter = (iw * ih).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / ((sa[:, None] + sb[None, :]) - inter)
    return np.where(ok, iou, F32(0)).astype(F32)


def _half_step(c: np.ndarray, w: np.ndarray, sign: float) -> np.ndarray:
    """``center +- width / 2.``: double arithmetic on floats, stored as float."""
    return (c.astype(np.float64) + sign * (w.astype(np.float64) / 2.0)).astype(F32)


def _positive(s: _Setup, bad: np.ndarray, what: str) -> None:
    """A CHECK_GT(..., 0) of bbox_util.cpp over rows: ``bad`` marks the rows that fail it."""
    if bool(bad.any()):
        raise _bad(s.name, f"{what} (row {int(np.nonzero(bad)[0][0])}) must be > 0")


def _decode(s: _Setup, pb: np.ndarray, pv: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """DecodeBBox (clip_bbox false) of ``loc`` (..., P, 4) against the priors ``pb`` and variances ``pv`` (P, 4)."""
    v = np.ones_like(pv) if s.variance_in_target else pv
    px0, py0, px1, py1 = (pb[:, k] for k in range(4))
    l0, l1, l2, l3 = (loc[..., k] for k in range(4))
    if s.code_type == _CODE.CORNER:
        return np.stack([px0 + v[:, 0] * l0, py0 + v[:, 1] * l1, px1 + v[:, 2] * l2, py1 + v[:, 3] * l3], axis=-1)
    pw, ph = px1 - px0, py1 - py0
    _positive(s, (pw <= 0) | (ph <= 0), "a prior's width and height")
    if s.code_type == _CODE.CORNER_SIZE:
        return np.stack([px0 + v[:, 0] * l0 * pw, py0 + v[:, 1] * l1 * ph, px1 + v[:, 2] * l2 * pw,
                         py1 + v[:, 3] * l3 * ph], axis=-1)
    pcx, pcy = (px0 + px1) / F32(2), (py0 + py1) / F32(2)   # (xmin + xmax) / 2.: exact either way
    cx = v[:, 0] * l0 * pw + pcx
    cy = v[:, 1] * l1 * ph + pcy
    w = np.exp(v[:, 2] * l2) * pw
    h = np.exp(v[:, 3] * l3) * ph
    return np.stack([_half_step(cx, w, -1), _half_step(cy, h, -1), _half_step(cx, w, 1), _half_step(cy, h, 1)],
                    axis=-1)


def _encode(s: _Setup, pb: np.ndarray, pv: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """EncodeBBox of the ground-truth boxes ``gt`` (K, 4) against their priors ``pb`` and variances ``pv``, with
    its CHECKs (and EncodeLocPrediction's on the variances with encode_variance_in_target)."""
    if s.variance_in_target or s.code_type != _CODE.CENTER_SIZE:
        _positive(s, (pv <= 0).any(axis=1), "a matched prior's variances")
    v = np.ones_like(pv) if s.variance_in_target else pv
    if s.code_type == _CODE.CORNER:
        return ((gt - pb) / v).astype(F32)
    pw, ph = pb[:, 2] - pb[:, 0], pb[:, 3] - pb[:, 1]
    _positive(s, (pw <= 0) | (ph <= 0), "a matched prior's width and height")
    if s.code_type == _CODE.CORNER_SIZE:
        return ((gt - pb) / np.stack([pw, ph, pw, ph], axis=1) / v).astype(F32)
    bw, bh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    _positive(s, (bw <= 0) | (bh <= 0), "a matched ground-truth box's width and height (CENTER_SIZE)")
    pcx, pcy = (pb[:, 0] + pb[:, 2]) / F32(2), (pb[:, 1] + pb[:, 3]) / F32(2)
    bcx, bcy = (gt[:, 0] + gt[:, 2]) / F32(2), (gt[:, 1] + gt[:, 3]) / F32(2)
    return np.stack([(bcx - pcx) / pw / v[:, 0], (bcy - pcy) / ph / v[:, 1],
                     np.log(bw / pw) / v[:, 2], np.log(bh / ph) / v[:, 3]], axis=1).astype(F32)


def _cross_boundary(b: np.ndarray) -> np.ndarray:
    """IsCrossBoundaryBBox: a coordinate outside [0, 1]."""
    return ((b < 0) | (b > 1)).any(axis=-1)


class _Truth:
    """One image's ground truth (GetGroundTruth's map entry): boxes (G, 4), their sizes and labels."""

    def __init__(self, boxes, labels):
        self.boxes = np.asarray(boxes, dtype=F32).reshape(-1, 4)
        self.sizes = _size(self.boxes)
        self.labels = np.asarray(labels, dtype=np.int64)


def _ground_truth(s: _Setup, rows: np.ndarray) -> dict[int, _Truth]:
    """GetGroundTruth (the map<int, vector<NormalizedBBox>> form): rows of item -1 skipped, the background label
    refused (CHECK_NE), difficult boxes skipped unless use_difficult_gt; item and label truncated to int."""
    items = rows[:, 0].astype(np.int64)
    labels = rows[:, 1].astype(np.int64)
    out: dict[int, tuple[list, list]] = {}
    for k in range(len(rows)):
        if items[k] == -1:
            continue
        if labels[k] == s.background:
            raise _bad(s.name, f"ground-truth row {k} has the background label {s.background} (found background "
                               f"label in the dataset)")
        if not s.use_difficult_gt and rows[k, 7] != 0:
            continue
        boxes, labs = out.setdefault(int(items[k]), ([], []))
        boxes.append(rows[k, 3:7])
        labs.append(labels[k])
    return {i: _Truth(b, l) for i, (b, l) in out.items()}


def _match_bbox(s: _Setup, truth: _Truth, pred: np.ndarray, label: int):
    """MatchBBox of the predictions ``pred`` (P, 4) against the ground truth of ``label`` (-1: all): the
    bipartite rounds (the greatest remaining overlap, the first prediction then the first box on ties), then for
    PER_PREDICTION each unmatched prediction's best box at overlap >= overlap_threshold. Returns the matched box
    per prediction (-1 none, -2 a cross-boundary prediction ignored) and its overlap."""
    num = len(pred)
    idx = np.full(num, -1, dtype=np.int64)
    best = np.zeros(num, dtype=F32)
    gts = np.arange(len(truth.labels)) if label == -1 else np.nonzero(truth.labels == label)[0]
    if not len(gts):
        return idx, best
    ov = _overlaps(pred, _size(pred), truth.boxes[gts], truth.sizes[gts])
    has = ov.astype(np.float64) > 1e-6                     # the overlaps map keeps those above 1e-6
    if s.ignore_cross_boundary:
        cross = _cross_boundary(pred)
        idx[cross] = -2
        has[cross] = False
    best = np.where(has, ov, F32(0)).max(axis=1).astype(F32)
    pool = np.ones(len(gts), dtype=bool)
    while pool.any():
        cand = np.where(has & (idx == -1)[:, None] & pool[None, :], ov, F32(-2))
        i, j = np.unravel_index(int(np.argmax(cand)), cand.shape)
        if cand[i, j] == -2:
            break
        idx[i], best[i] = gts[j], ov[i, j]
        pool[j] = False
    if s.match_type == _M.PER_PREDICTION:
        cand = np.where(has & (ov >= s.overlap_threshold), ov, F32(-2))
        j = np.argmax(cand, axis=1)                           # the first box of the greatest overlap
        take = (idx == -1) & (cand[np.arange(num), j] != -2)
        idx[take], best[take] = gts[j[take]], cand[take, j[take]]
    return idx, best


def _find_matches(s: _Setup, truth: dict, loc: np.ndarray, pb: np.ndarray, pv: np.ndarray):
    """FindMatches: per image, ``{label: (match indices, overlaps)}`` (label -1 with share_location; an image
    without ground truth has none)."""
    out = []
    for i in range(loc.shape[0]):
        matches: dict[int, tuple] = {}
        t = truth.get(i)
        if t is None:
            out.append(matches)
            continue
        if not s.use_prior_for_matching:
            for c in range(s.loc_classes):
                label = -1 if s.share_location else c
                if not s.share_location and label == s.background:
                    continue
                matches[label] = _match_bbox(s, t, _decode(s, pb, pv, loc[i, :, c]), label)
        else:
            idx, ovl = _match_bbox(s, t, pb, -1)
            if s.share_location:
                matches[-1] = (idx, ovl)
            else:
                lab = np.where(idx > -1, t.labels[np.maximum(idx, 0)], -1)
                for c in range(s.loc_classes):
                    if c != s.background:
                        matches[c] = (np.where((idx > -1) & (lab == c), idx, -1), ovl)
        out.append(matches)
    return out


def _conf_losses(s: _Setup, conf: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ComputeConfLoss (CPU) of every prior (P, C) for its label (P,): softmax ``-log(max(p, FLT_MIN))`` or the
    logistic loss summed over the classes, in float, class by class."""
    P, C = conf.shape
    if s.conf_loss == _M.SOFTMAX:
        mx = conf[:, 0].copy()
        for c in range(1, C):
            mx = np.maximum(conf[:, c], mx)
        total = np.zeros(P, dtype=F32)
        for c in range(C):
            total = (total + np.exp(conf[:, c] - mx)).astype(F32)
        prob = np.exp(conf[np.arange(P), labels] - mx) / total
        return (-np.log(np.maximum(prob, F32(FLT_MIN)))).astype(F32)
    loss = np.zeros(P, dtype=F32)
    for c in range(C):
        x = conf[:, c]
        pos = (x >= 0).astype(F32)
        t = (labels == c).astype(F32)
        loss = (loss - (x * (t - pos) - np.log(F32(1) + np.exp(x - F32(2) * x * pos)))).astype(F32)
    return loss


def _loc_losses(s: _Setup, diff: np.ndarray) -> np.ndarray:
    """ComputeLocLoss per match (K, 4 differences): the four terms added one by one into a float, each in double
    (``loss += 0.5 * val * val``, ``loss += abs_val - 0.5``)."""
    loss = np.zeros(len(diff), dtype=F32)
    for k in range(4):
        v = diff[:, k].astype(np.float64)
        term = 0.5 * v * v if s.loc_loss == _M.L2 else np.where(np.abs(v) < 1, 0.5 * v * v, np.abs(v) - 0.5)
        loss = (loss.astype(np.float64) + term).astype(F32)
    return loss


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold, top_k: int) -> list[int]:
    """ApplyNMS (no reused overlaps): std::stable_sort by descending score, the first top_k (when > -1), then the
    best box is kept (unless smaller than 1e-5) and the remaining boxes overlapping it by more than the threshold
    (or smaller than 1e-5) dropped; it stops after top_k kept boxes."""
    order = np.argsort(-scores, kind="stable")
    if -1 < top_k < len(order):
        order = order[:top_k]
    b = boxes[order]
    sizes = _size(b)
    alive = ~(sizes.astype(np.float64) < 1e-5)               # a small box is erased wherever it is met
    kept: list[int] = []
    for k in range(len(order)):
        if not alive[k]:
            continue
        kept.append(int(order[k]))
        if -1 < top_k <= len(kept):
            break
        alive[k + 1:] &= ~(_overlaps(b[k:k + 1], sizes[k:k + 1], b[k + 1:], sizes[k + 1:])[0] > threshold)
    return kept


def _top_by_loss(loss: np.ndarray, cand: np.ndarray, num_sel: int) -> set:
    """The first ``num_sel`` candidates after std::sort(SortScorePairDescend): a set, so the order matters only
    where a tie straddles the cut; then the sort is libstdc++'s (:func:`libstdcxx_sort`)."""
    if num_sel <= 0:
        return set()
    order = cand[np.argsort(-loss[cand], kind="stable")]
    if num_sel >= len(order) or loss[order[num_sel - 1]] != loss[order[num_sel]]:
        return {int(m) for m in order[:num_sel]}
    pairs = [(float(loss[m]), int(m)) for m in cand]
    libstdcxx_sort(pairs, lambda a, b: a[0] > b[0])
    return {m for _, m in pairs[:num_sel]}


def _prior_labels(s: _Setup, m: dict, t: _Truth | None, P: int) -> np.ndarray:
    """Each prior's class: the label of its box under the first label (ascending) that matches it, else the
    background (ComputeConfLoss's loop); a label outside [0, num_classes) is refused (its CHECKs)."""
    labels = np.full(P, s.background, dtype=np.int64)
    for idx, _ in reversed(list(m.values())):
        labels = np.where(idx > -1, t.labels[np.maximum(idx, 0)], labels)
    if bool(((labels < 0) | (labels >= s.num_classes)).any()):
        raise _bad(s.name, f"a matched ground-truth label is outside [0, {s.num_classes})")
    return labels


def _mine(s: _Setup, matches: list, truth: dict, loc, conf, pb, pv) -> tuple[list, int]:
    """MineHardExamples: updates ``matches`` in place (HARD_EXAMPLE unmatches the positives it does not select)
    and returns each image's negatives (ascending prior index) and the number of matches left."""
    num_matches = sum(int((idx > -1).sum()) for m in matches for idx, _ in m.values())   # CountNumMatches
    negs: list[list[int]] = [[] for _ in matches]
    if s.mining == _M.NONE:
        return negs, num_matches
    P = pb.shape[0]
    plan = _loc_plan(s, matches, truth, loc, pb, pv) if s.mining == _M.HARD_EXAMPLE else None
    for i, m in enumerate(matches):
        if not m:
            continue
        loss = _conf_losses(s, conf[i], _prior_labels(s, m, truth.get(i), P))
        if plan is not None:                                   # ComputeLocLoss (the last label of a prior wins)
            loc_loss = np.zeros(P, dtype=F32)
            rows = plan["image"] == i
            loc_loss[plan["prior"][rows]] = _loc_losses(s, plan["pred"][rows] - plan["target"][rows])
            loss = (loss + loc_loss).astype(F32)
        for label, (idx, ovl) in m.items():
            if s.mining == _M.MAX_NEGATIVE:                   # IsEligibleMining
                cand = np.nonzero((idx == -1) & (ovl < s.neg_overlap))[0]
                num_sel = min(int(F32(int((idx > -1).sum())) * s.neg_pos_ratio), len(cand))
            else:
                cand = np.arange(P)
                num_sel = min(s.sample_size, P)
            if s.nms and s.nms_threshold > 0:
                boxes = pb if s.use_prior_for_nms else _decode(s, pb, pv, loc[i, :, max(label, 0)])
                kept = _nms(boxes[cand], loss[cand], s.nms_threshold, s.top_k)
                sel = [int(cand[k]) for k in kept[:num_sel]]
            else:
                sel = list(_top_by_loss(loss, cand, num_sel))
            chosen = np.zeros(P, dtype=bool)
            chosen[sel] = True
            if s.mining == _M.HARD_EXAMPLE:
                dropped = (idx > -1) & ~chosen
                num_matches -= int(dropped.sum())
                idx[dropped] = -1
            negs[i].extend(int(k) for k in np.nonzero((idx == -1) & chosen)[0])
    return negs, num_matches


def _loc_plan(s: _Setup, matches: list, truth: dict, loc, pb, pv) -> dict:
    """EncodeLocPrediction's rows in its order (images, labels ascending, priors): the image, prior and location
    class of each match, the encoded ground truth (``target``) and the prediction (``pred``, numpy) with, for
    bp_inside, the coordinates whose box leaves the image given the target (``inside`` False there); both
    divided by the variances with encode_variance_in_target."""
    image, prior, lclass, gt = [], [], [], [np.zeros((0, 4), F32)]
    for i, m in enumerate(matches):
        for label in sorted(m):
            idx = m[label][0]
            js = np.nonzero(idx > -1)[0]
            image += [i] * len(js)
            prior += js.tolist()
            lclass += [max(label, 0)] * len(js)
            gt.append(truth[i].boxes[idx[js]])
    plan = {"image": np.asarray(image, dtype=np.int64), "prior": np.asarray(prior, dtype=np.int64),
            "class": np.asarray(lclass, dtype=np.int64), "inside": None}
    j = plan["prior"]
    target = _encode(s, pb[j], pv[j], np.concatenate(gt).astype(F32))
    pred = loc[plan["image"], j, plan["class"]]
    if s.bp_inside:
        box = pb[j] if s.use_prior_for_matching else _decode(s, pb[j], pv[j], pred)
        plan["inside"] = (box >= 0) & (box <= 1)
        pred = np.where(plan["inside"], pred, target)
    if s.variance_in_target:
        target, pred = (target / pv[j]).astype(F32), (pred / pv[j]).astype(F32)
    plan.update(target=target, pred=pred)
    return plan


def _positives(s: _Setup, matches: dict, truth):
    """An image's matched priors per label, in label order, with the class each is trained to (the
    agnostic class when mapped so, else its ground truth's label, which must lie in [0, num_classes))."""
    for lab in sorted(matches):
        idx = matches[lab][0]
        js = np.nonzero(idx > -1)[0]
        gl = np.full(len(js), s.background + 1) if s.map_agnostic else truth.labels[idx[js]]
        if bool(((gl < 0) | (gl >= s.num_classes)).any()):
            raise _bad(s.name, f"a matched ground-truth label is outside [0, {s.num_classes})")
        yield js, gl


def _conf_targets(s: _Setup, matches: list, negs: list, truth: dict, N: int, P: int):
    """EncodeConfPrediction: with mining the rows (image, prior) of the positives then the negatives of each
    image with ground truth and their targets; without, every prior in order and the targets. SOFTMAX targets are
    labels, LOGISTIC ones N x C indicator rows filled with background_label_id (its caffe_set) around the ones."""
    C = s.num_classes
    if s.neg_mining:
        image, prior, label = [], [], []
        for i in range(N):
            if i not in truth:
                continue
            for js, gl in _positives(s, matches[i], truth[i]):
                image += [i] * len(js)
                prior += js.tolist()
                label += gl.tolist()
            image += [i] * len(negs[i])
            prior += negs[i]
            label += [-1] * len(negs[i])                     # a negative
        rows = (np.asarray(image, dtype=np.int64), np.asarray(prior, dtype=np.int64))
        label = np.asarray(label, dtype=np.int64)
        if s.conf_loss == _M.SOFTMAX:
            return rows, np.where(label == -1, s.background, label)
        t = np.full((len(label), C), F32(s.background), dtype=F32)
        pos = np.nonzero(label > -1)[0]
        t[pos, label[pos]] = 1
        if 0 <= s.background < C:
            t[label == -1, s.background] = 1
        return rows, t
    flat = np.full(N * P * (C if s.conf_loss == _M.LOGISTIC else 1), s.background, dtype=np.int64)
    for i in range(N):
        if i not in truth:
            continue
        for js, gl in _positives(s, matches[i], truth[i]):
            if s.conf_loss == _M.SOFTMAX:
                flat[i * P + js] = gl
            else:   # conf_gt_data advances by num_priors per image (not num_priors * num_classes)
                flat[i * P + js * C + gl] = 1
    return None, flat if s.conf_loss == _M.SOFTMAX else flat.astype(F32).reshape(N * P, C)


def _normalizer(s: _Setup, N: int, P: int, num_matches: int) -> float:
    """LossLayer::GetNormalizer(normalization, num_, num_priors_, num_matches_), at least 1."""
    n = {_NORM.FULL: N * P, _NORM.VALID: num_matches, _NORM.BATCH_SIZE: N}.get(s.normalization, 1)
    return float(F32(max(1, n)))


@register("MultiBoxLoss")
class MultiBoxLossConverter(NoParams):
    loss = True
    label_bottoms = (3,)

    def top_shapes(self, layer, bottom_shapes):
        """LossLayer::Reshape: the loss is a scalar."""
        _check_shapes(_Setup(layer), list(layer.bottom), len(layer.top), bottom_shapes)
        return [()]

    def build(self, layer, bottom_shapes):
        from .modules.multibox import MultiBoxLoss
        s = _Setup(layer)
        _check_shapes(s, list(layer.bottom), len(layer.top), bottom_shapes)
        return MultiBoxLoss(s, layer.bottom)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.multibox`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import multibox
    return getattr(multibox, name)
