"""The torch side of :mod:`sfport.converters.roi`: ROIPooling, PSROIPooling and SmoothL1Loss as modules, following
the forks' CUDA kernels' float arithmetic, with ROIPooling's ONNX form (MaxRoiPool)."""
from __future__ import annotations

import math

import numpy as np
import torch

from sfport.errors import CaffeFileError

from ..base import in_export_form
from .base import NoBlobs


_FLT_MAX = float(np.finfo(np.float32).max)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round`` of float32 values (halves away from zero), exactly: the fraction ``|x| - floor(|x|)`` is exact
    in float, where ``floor(|x| + 0.5)`` is not (0.49999997 + 0.5 rounds to 1). Made of ONNX-exportable ops."""
    a = x.abs()
    t = torch.floor(a)
    up = (a - t >= 0.5).to(x.dtype)
    return torch.sign(x) * (t + up)


def _check_batch_indices(name: str, type_name: str, rois: torch.Tensor, num: int) -> None:
    """ROIPoolingLayer::Forward_cpu: CHECK_GE(roi_batch_ind, 0), CHECK_LT(roi_batch_ind, batch_size) (the GPU
    kernels read outside the blob instead); the index is ``int roi_batch_ind = bottom_rois[0]``, truncated."""
    if rois.shape[0] == 0:
        return
    b = rois[:, 0].detach().to(torch.int64)
    if int(b.min()) < 0 or int(b.max()) >= num:
        bad = int(b.min()) if int(b.min()) < 0 else int(b.max())
        raise CaffeFileError(None, f"layer '{name}' ({type_name}): a roi has batch index {bad}, outside 0..{num - 1}")


def _roi_geometry(rois: torch.Tensor, scale: np.float32, pooled_h: int, pooled_w: int):
    """ROIPoolForward's (roi_pooling_layer.cu) per-roi values: the batch index, the roi's corners
    ``round(x * spatial_scale)`` (float product, C's round), its size ``max(end - start + 1, 1)`` and the float
    bin sizes ``roi_height / pooled_height``."""
    b = rois[:, 0].to(torch.int64)
    q = _round_half_away(rois[:, 1:5] * torch.tensor(scale, dtype=torch.float32)).to(torch.int64)
    sw, sh, ew, eh = q.unbind(1)
    bin_h = torch.clamp(eh - sh + 1, min=1).to(torch.float32) / np.float32(pooled_h)
    bin_w = torch.clamp(ew - sw + 1, min=1).to(torch.float32) / np.float32(pooled_w)
    return b, sh, sw, eh, ew, bin_h, bin_w


def _roi_bins(start, bin_size, pooled: int, limit: int):
    """hstart = floor(ph * bin_size_h), hend = ceil((ph + 1) * bin_size_h) (float products), offset by the roi's
    start and clipped to [0, height]: (R, pooled) each."""
    p = torch.arange(pooled, dtype=torch.float32, device=bin_size.device)
    lo = torch.floor(p * bin_size[:, None]).to(torch.int64) + start[:, None]
    hi = torch.ceil((p + 1) * bin_size[:, None]).to(torch.int64) + start[:, None]
    return lo.clamp(0, limit), hi.clamp(0, limit)


def _log2(sizes: torch.Tensor) -> torch.Tensor:
    """floor(log2(size)) of positive integer sizes."""
    out = torch.zeros_like(sizes)
    for k in range(1, int(sizes.max()).bit_length() if sizes.numel() else 0):
        out += (sizes >= (1 << k)).to(sizes.dtype)
    return out


def _first_max(v, i, v2, i2):
    """Of two (value, flat index) candidates the larger value, on a tie the smaller index (the earlier in
    row-major order): Caffe's scan keeps the first maximum (``bottom_data[index] > maxval``)."""
    take = (v2 > v) | ((v2 == v) & (i2 < i))
    return torch.where(take, v2, v), torch.where(take, i2, i)


def _block_maxima(x: torch.Tensor, levels_h: int, levels_w: int):
    """Sparse tables of x (N x C x H x W), channels last: for each level (a, b) the maximum over the block of 2^a
    rows and 2^b columns starting at each position, and the flat index h * W + w of its first occurrence in
    row-major order; (levels_h, levels_w, N, H, W, C) each. A NaN is -inf (it never passes ``>``). Blocks that
    would cross the map's edge are left -inf (a query never reads them)."""
    n, c, h, w = x.shape
    src = x.permute(0, 2, 3, 1)
    vals = x.new_full((levels_h, levels_w, n, h, w, c), -math.inf)
    idx = torch.full((levels_h, levels_w, n, h, w, c), h * w, dtype=torch.int32, device=x.device)
    vals[0, 0] = torch.where(torch.isnan(src), torch.full_like(src, -math.inf), src)
    idx[0, 0] = torch.arange(h * w, dtype=torch.int32, device=x.device).reshape(1, h, w, 1)
    for a in range(levels_h):
        for k in range(levels_w):
            if a == 0 and k == 0:
                continue
            # the first half (the upper, or the left) then the second: a tie keeps the first half's index
            dim, s, (pv, pi) = (2, 1 << (k - 1), (vals[a, k - 1], idx[a, k - 1])) if a == 0 else \
                (1, 1 << (a - 1), (vals[a - 1, k], idx[a - 1, k]))
            keep = pv.shape[dim] - s
            if keep <= 0:
                continue
            v, i = _first_max(pv.narrow(dim, 0, keep), pi.narrow(dim, 0, keep),
                              pv.narrow(dim, s, keep), pi.narrow(dim, s, keep))
            vals[a, k].narrow(dim, 0, keep).copy_(v)
            idx[a, k].narrow(dim, 0, keep).copy_(i)
    return vals, idx


class _ROIPoolFn(torch.autograd.Function):
    """ROIPoolForward and ROIPoolBackward (roi_pooling_layer.cu)."""

    @staticmethod
    def forward(ctx, x, rois, pooled_h: int, pooled_w: int, scale: float):
        n, c, h, w = x.shape
        r = rois.shape[0]
        rois = rois.detach()
        b, sh, sw, eh, ew, bin_h, bin_w = _roi_geometry(rois, np.float32(scale), pooled_h, pooled_w)
        hs, he = _roi_bins(sh, bin_h, pooled_h, h)
        ws, we = _roi_bins(sw, bin_w, pooled_w, w)
        size_h, size_w = (he - hs).clamp(min=1), (we - ws).clamp(min=1)
        if not (r and n * c * h * w):
            top = x.new_zeros(r, c, pooled_h, pooled_w)
            arg = torch.full((r, c, pooled_h, pooled_w), -1, dtype=torch.int64, device=x.device)
        else:
            lh, lw = _log2(size_h), _log2(size_w)                     # each bin: 4 blocks of 2^lh x 2^lw
            levels_w = int(lw.max()) + 1
            vals, idx = _block_maxima(x.detach(), int(lh.max()) + 1, levels_w)
            vals, idx = vals.reshape(-1, c), idx.reshape(-1, c)        # rows: (level, image, h, w)
            level = (lh[:, :, None] * levels_w + lw[:, None, :]) * n + b[:, None, None]     # (R, PH, PW)
            best_v = best_i = None
            for rows in (hs, he - torch.pow(2, lh)):          # an empty bin reads anywhere: it becomes 0
                for cols in (ws, we - torch.pow(2, lw)):
                    at = (level * (h * w) + rows.clamp(0, h - 1)[:, :, None] * w
                          + cols.clamp(0, w - 1)[:, None, :]).reshape(-1)
                    v = vals.index_select(0, at).reshape(r, pooled_h, pooled_w, c)
                    i = idx.index_select(0, at).reshape(r, pooled_h, pooled_w, c)
                    if best_v is None:
                        best_v, best_i = v, i
                    else:
                        best_v, best_i = _first_max(best_v, best_i, v, i)
            best_v, best_i = best_v.permute(0, 3, 1, 2), best_i.permute(0, 3, 1, 2)
            found = best_v > -_FLT_MAX                                  # maxval starts at -FLT_MAX
            top = torch.where(found, best_v, torch.full_like(best_v, -_FLT_MAX))
            arg = torch.where(found, best_i.to(torch.int64), torch.full_like(best_i, -1, dtype=torch.int64))
        empty = (he <= hs)[:, None, :, None] | (we <= ws)[:, None, None, :]
        top = torch.where(empty, torch.zeros_like(top), top)           # an empty bin is 0, argmax -1
        arg = torch.where(empty, torch.full_like(arg, -1), arg)
        ctx.save_for_backward(arg, b, sh, sw, eh, ew, bin_h, bin_w)
        ctx.shape = (n, c, h, w)
        return top

    @staticmethod
    def backward(ctx, grad):
        """ROIPoolBackward: a bottom element (h, w) gets the diff of each bin whose argmax it is, but only where
        the kernel looks for it: inside the roi's rounded corners (``w >= roi_start_w && w <= roi_end_w``, so a
        malformed roi forced to 1 x 1 passes nothing back) and in the bins ``[floor((h - roi_start_h) /
        bin_size_h), ceil((h - roi_start_h + 1) / bin_size_h))`` (float divisions, clipped)."""
        arg, b, sh, sw, eh, ew, bin_h, bin_w = ctx.saved_tensors
        n, c, h, w = ctx.shape
        r, _, ph_n, pw_n = arg.shape
        out = grad.new_zeros(n * c * h * w)
        if r == 0:
            return out.reshape(n, c, h, w), None, None, None, None
        hh, ww = arg.div(w, rounding_mode="floor"), arg.remainder(w)

        def per_roi(v):
            return v[:, None, None, None]

        inside = (ww >= per_roi(sw)) & (ww <= per_roi(ew)) & (hh >= per_roi(sh)) & (hh <= per_roi(eh))
        bh, bw = per_roi(bin_h), per_roi(bin_w)
        ph_lo = torch.floor((hh - per_roi(sh)).to(torch.float32) / bh).to(torch.int64).clamp(0, ph_n)
        ph_hi = torch.ceil((hh - per_roi(sh) + 1).to(torch.float32) / bh).to(torch.int64).clamp(0, ph_n)
        pw_lo = torch.floor((ww - per_roi(sw)).to(torch.float32) / bw).to(torch.int64).clamp(0, pw_n)
        pw_hi = torch.ceil((ww - per_roi(sw) + 1).to(torch.float32) / bw).to(torch.int64).clamp(0, pw_n)
        ph = torch.arange(ph_n, device=arg.device)[None, None, :, None]
        pw = torch.arange(pw_n, device=arg.device)[None, None, None, :]
        routed = (arg >= 0) & inside & (ph >= ph_lo) & (ph < ph_hi) & (pw >= pw_lo) & (pw < pw_hi)
        plane = (per_roi(b) * c + torch.arange(c, device=arg.device)[None, :, None, None]) * (h * w)
        out.index_add_(0, (plane + arg)[routed], grad[routed])
        return out.reshape(n, c, h, w), None, None, None, None


class _MaxRoiPool(torch.autograd.Function):
    """ONNX's MaxRoiPool in an exported graph (onnxruntime's kernel is Caffe's Forward_cpu). While torch.onnx
    traces, the forward only gives the top's shape (zeros): the exporter also records a Function's forward and
    fails on the eager computation's intermediate values."""

    @staticmethod
    def forward(ctx, x, rois, pooled_h: int, pooled_w: int, scale: float):
        return x.new_zeros(rois.shape[0], x.shape[1], pooled_h, pooled_w)

    @staticmethod
    def symbolic(g, x, rois, pooled_h, pooled_w, scale):
        return g.op("MaxRoiPool", x, rois, pooled_shape_i=[pooled_h, pooled_w], spatial_scale_f=scale)


class ROIPooling(NoBlobs):
    """``forward(data, rois) -> R x C x pooled_h x pooled_w``: each roi's max over each of its bins (the first
    maximum in row-major order; an empty bin 0); gradients as ROIPoolBackward routes them."""

    def __init__(self, name: str, pooled_h: int, pooled_w: int, scale: float):
        super().__init__()
        self.name, self.pooled_h, self.pooled_w, self.scale = name, pooled_h, pooled_w, scale

    def forward(self, x, rois):
        rois = rois.reshape(rois.shape[0], 5)
        if torch.onnx.is_in_onnx_export():
            return _MaxRoiPool.apply(x, rois, self.pooled_h, self.pooled_w, self.scale)
        if torch.jit.is_tracing():
            raise CaffeFileError(None, f"layer '{self.name}' (ROIPooling) has no TorchScript form: its bins "
                                       f"depend on the rois' values; export the net to ONNX (MaxRoiPool)")
        if not in_export_form():
            _check_batch_indices(self.name, "ROIPooling", rois, x.shape[0])
        return _ROIPoolFn.apply(x, rois, self.pooled_h, self.pooled_w, self.scale)


def _psroi_bins(rois: torch.Tensor, lo_col: int, hi_col: int, scale: torch.Tensor, group: int, limit: int):
    """PSROIPoolingForward (psroi_pooling_layer.cu) along one axis: ``roi_start = float(round(x1)) *
    spatial_scale``, ``roi_end = float(round(x2) + 1.) * spatial_scale``, ``roi_size = max(roi_end - roi_start,
    0.1)``, ``bin_size = roi_size / group_size``, ``start = floor(p * bin_size + roi_start)``, ``end = ceil((p + 1)
    * bin_size + roi_start)``, each float operation rounded (no FMA), clipped to [0, limit]: (R, group) each."""
    start = _round_half_away(rois[:, lo_col]) * scale
    end = (_round_half_away(rois[:, hi_col]) + 1) * scale
    size = torch.maximum(end - start, torch.full_like(start, np.float32(0.1)))
    bin_size = size / np.float32(group)
    p = torch.arange(group + 1, dtype=torch.float32, device=rois.device)
    edge = p[None, :] * bin_size[:, None] + start[:, None]
    lo = torch.floor(edge[:, :-1]).to(torch.int64).clamp(0, limit)
    hi = torch.ceil(edge[:, 1:]).to(torch.int64).clamp(0, limit)
    return lo, hi


class PSROIPooling(NoBlobs):
    """``forward(data, rois) -> R x output_dim x group_size x group_size``: top ``(r, k, i, j)`` is the mean of
    channel ``(k * group_size + i) * group_size + j`` over bin (i, j) of roi r (an empty bin 0). The bin sums come
    from a float64 summed-area table, so an exported graph has standard operators only; autograd's gradient is
    PSROIPoolingBackwardAtomic's ``top_diff / bin_area`` added over each bin."""

    def __init__(self, name: str, output_dim: int, group: int, scale: float):
        super().__init__()
        self.name, self.output_dim, self.group, self.scale = name, output_dim, group, scale

    def forward(self, x, rois):
        n, c, h, w = x.shape
        rois = rois.reshape(rois.shape[0], 5)
        if not torch.jit.is_tracing() and not in_export_form():
            _check_batch_indices(self.name, "PSROIPooling", rois, n)
        rois = rois.detach()
        g, d = self.group, self.output_dim
        scale = torch.tensor(self.scale, dtype=torch.float32, device=x.device)
        hs, he = _psroi_bins(rois, 2, 4, scale, g, h)
        ws, we = _psroi_bins(rois, 1, 3, scale, g, w)
        b = rois[:, 0].to(torch.int64)
        table = torch.nn.functional.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0)).reshape(-1)
        channel = torch.arange(d * g * g, device=x.device).reshape(1, d, g, g)   # (ctop * g + ph) * g + pw
        base = (b[:, None, None, None] * c + channel) * ((h + 1) * (w + 1))

        def corner(rows, cols):   # rows (R, g) by ph, cols (R, g) by pw
            return table[base + rows[:, None, :, None] * (w + 1) + cols[:, None, None, :]]

        total = corner(he, we) - corner(hs, we) - corner(he, ws) + corner(hs, ws)
        area = ((he - hs)[:, None, :, None] * (we - ws)[:, None, None, :]).expand_as(total)
        empty = area <= 0
        mean = total.to(x.dtype) / area.clamp(min=1).to(x.dtype)       # out_sum / bin_area in float
        return torch.where(empty, torch.zeros_like(mean), mean)


class SmoothL1Loss(NoBlobs):
    """``forward(pred, target[, inside, outside]) -> loss`` (smooth_L1_loss_layer.cu, caffe-fast-rcnn):
    ``d = inside * (pred - target)``, ``e = outside * (0.5 * sigma2 * d^2 if |d| < 1 / sigma2 else |d| - 0.5 /
    sigma2)`` (SmoothL1Forward: the branch test and both values in double, stored as float), ``loss = sum(e) /
    num``. Autograd's gradient is Backward_gpu's ``+-top_diff / num * SmoothL1'(d) * inside * outside`` for pred
    and target; the weights get none (Caffe never writes their diffs)."""

    def __init__(self, sigma2: float):
        super().__init__()
        self.sigma2 = sigma2
        # 1.0 / sigma2 and 0.5 / sigma2 in double (sigma 0: every |d| is below infinity)
        self.below = 1.0 / sigma2 if sigma2 else math.inf
        self.half = 0.5 / sigma2 if sigma2 else math.inf

    def forward(self, pred, target, inside=None, outside=None):
        d = pred - target.reshape(pred.shape)
        if inside is not None:
            d = inside.detach().reshape(pred.shape) * d
        dd = d.double()
        small = dd.abs() < self.below
        e = torch.where(small, 0.5 * dd * dd * self.sigma2, dd.abs() - self.half).to(pred.dtype)
        if outside is not None:
            e = outside.detach().reshape(pred.shape) * e
        return e.sum() / float(pred.shape[0] if pred.dim() else 1)

