"""The torch side of :mod:`sfport.converters.structure`: one small module per routing, reshaping or combining
operation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sfport.errors import CaffeFileError

from .base import NoBlobs, set_fields


class EltwiseProd(NoBlobs):
    def forward(self, *xs):
        y = xs[0]
        for t in xs[1:]:
            y = y * t
        return y


class EltwiseMax(NoBlobs):
    def forward(self, *xs):
        y = xs[0]
        for t in xs[1:]:
            y = torch.maximum(y, t)
        return y


class EltwiseSum(NoBlobs):
    """Caffe EltwiseLayer SUM: sum of coeff_i * x_i (a coefficient of 1 multiplies nothing)."""

    def __init__(self, coeff: list[float]):
        super().__init__()
        set_fields(self, coeff=coeff)

    def forward(self, *xs):
        y = xs[0] if self.coeff[0] == 1 else xs[0] * self.coeff[0]
        for c, t in zip(self.coeff[1:], xs[1:]):
            y = y + (t if c == 1 else t * c)
        return y


class Concat(NoBlobs):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)


class Slice(NoBlobs):
    def __init__(self, axis: int, sizes: list[int]):
        super().__init__()
        self.axis, self.sizes = axis, sizes

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


class Split(NoBlobs):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return tuple(x for _ in range(self.n))


class Flatten(NoBlobs):
    def __init__(self, axis: int, end_axis: int):
        super().__init__()
        self.axis, self.end_axis = axis, end_axis

    def forward(self, x):
        return torch.flatten(x, self.axis, self.end_axis)


class Reshape(NoBlobs):
    """Caffe ReshapeLayer: dims replace axes [start, end); 0 copies the bottom's dim, one -1 is inferred."""

    def __init__(self, start: int, end: int | None, dims: list[int]):
        super().__init__()
        self.start, self.end, self.dims = start, end, dims

    def forward(self, x):
        end = x.dim() if self.end is None else self.end
        shape = list(x.shape[:self.start]) + [x.shape[self.start + i] if d == 0 else d
                                              for i, d in enumerate(self.dims)] + list(x.shape[end:])
        return x.reshape(shape)


class Crop(NoBlobs):
    """Caffe CropLayer: the first bottom cut to the second's shape from ``axis`` on, at ``offsets``."""

    def __init__(self, axis: int, offsets: list[int]):
        super().__init__()
        self.axis, self.offsets = axis, offsets

    def forward(self, x, ref):
        y = x
        for ax, off in zip(range(self.axis, x.dim()), self.offsets):
            y = y.narrow(ax, off, ref.shape[ax])
        return y


class Permute(NoBlobs):
    def __init__(self, order: list[int]):
        super().__init__()
        self.order = order

    def forward(self, x):
        return x.permute(self.order)


class Softmax(NoBlobs):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return F.softmax(x, dim=self.axis)


class ArgMax(NoBlobs):
    """Caffe ArgMaxLayer (argmax_layer.cpp). Without axis: over each sample flattened, [indices] or, with
    out_max_val, [indices; values], in the top shape of ``_argmax_setup``; with axis: the top_k indices (or
    their values with out_max_val) along it. Forward_cpu ranks pairs (value, index) with
    ``std::partial_sort(..., std::greater<std::pair<Dtype, int> >())``: by value, and among equal values the
    larger index first - here a stable descending sort of the reversed axis. (NaN has no place in that order
    in Caffe; here it ranks first.) Caffe has no Backward for ArgMax."""

    def __init__(self, top_k: int, out_max_val: bool, axis: int | None, top_shape: tuple):
        super().__init__()
        self.top_k, self.out_max_val, self.axis, self.top_shape = top_k, out_max_val, axis, tuple(top_shape)

    def _top(self, x):
        """Values and indices of the top_k along the last axis, Caffe's tie order (larger index first): the
        first of equal values in the reversed axis. Eager and traced: a stable sort (torch.topk leaves the order
        of ties open). In an ONNX export, TopK, whose specification breaks ties by the lower index."""
        n = x.shape[-1]
        if torch.onnx.is_in_onnx_export():
            vals, rev = torch.topk(x.flip(-1), self.top_k, dim=-1)
        else:
            vals, rev = torch.sort(x.flip(-1), dim=-1, descending=True, stable=True)
            vals, rev = vals[..., :self.top_k], rev[..., :self.top_k]
        return vals, (n - 1 - rev).to(x.dtype)

    def forward(self, x):
        if self.axis is None:
            vals, idx = self._top(x.reshape(x.shape[0], -1))
            out = torch.stack([idx, vals], dim=1) if self.out_max_val else idx.unsqueeze(1)
            return out.reshape((x.shape[0],) + self.top_shape[1:])
        last = x.dim() - 1   # nonnegative: ONNX export writes movedim's permutation as given
        vals, idx = self._top(x.movedim(self.axis, last))
        return (vals if self.out_max_val else idx).movedim(last, self.axis)


class Silence(NoBlobs):
    def forward(self, *xs):
        return ()


class Tile(NoBlobs):
    """Caffe TileLayer (tile_layer.cpp): Forward_cpu copies each block of count(axis) values ``tiles`` times in a
    row, i.e. the bottom repeated ``tiles`` times along ``axis``; Backward_cpu sums the tiles' diffs (autograd's
    gradient of repeat)."""

    def __init__(self, axis: int, tiles: int):
        super().__init__()
        self.axis, self.tiles = axis, tiles

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(reps)


class Reduction(NoBlobs):
    """Caffe ReductionLayer (reduction_layer.cpp): each of the count(0, axis) rows of count(axis) values becomes
    one value - SUM / MEAN (dot with ones), ASUM (sum of |x|), SUMSQ (dot(x, x)) - scaled by coeff_ (coeff,
    divided by the row length for MEAN, in float as Reshape does). Backward_cpu: coeff_ * top_diff for SUM /
    MEAN, times sign(x) (0 at 0) for ASUM, times 2x for SUMSQ - the true derivatives, which autograd gives."""

    def __init__(self, op: str, axis: int, coeff: float):
        super().__init__()
        self.op, self.axis, self.coeff = op, axis, coeff

    def forward(self, x):
        rows = x.flatten(self.axis) if self.axis < x.dim() - 1 else x
        if self.op == "ASUM":
            y = rows.abs().sum(-1)
        elif self.op == "SUMSQ":
            y = (rows * rows).sum(-1)
        else:
            y = rows.sum(-1)
        return y if self.coeff == 1 else y * self.coeff


class BatchReindex(NoBlobs):
    """Caffe BatchReindexLayer (batch_reindex_layer.cpp): top[i] = data[permut[i]]. check_batch_reindex CHECKs
    0 <= permut[i] < N on the values (so 2.5 passes and ``static_cast<int>`` makes it 2); Backward_cpu zeroes
    the data's diff and adds each top row's diff into its source row (index_select's gradient); it CHECKs that
    the indices are not back-propagated to."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, data, permut):
        p = permut.detach().reshape(-1)
        n = data.shape[0]
        bad = (p < 0) | (p >= n) | torch.isnan(p)
        if not torch.jit.is_tracing() and p.numel() and bool(bad.any()):   # a data check: not part of a graph
            raise CaffeFileError(None, f"layer '{self.name}' (BatchReindex): index {p[bad][0].item():g} is outside "
                                       f"0..{n - 1} (the batch of {n})")
        return data.index_select(0, p.long())


class Filter(NoBlobs):
    """Caffe FilterLayer (filter_layer.cpp): every bottom but the last keeps the items (first-axis rows) whose
    selector value is nonzero (``if (*tmp_data_selector)``: NaN counts as nonzero, -0 as zero), in order.
    Backward_cpu copies each top row's diff back to its item and zeroes the others (index_select's gradient);
    back-propagating to the selector is a LOG(FATAL) there, and it gets no gradient here."""

    def forward(self, *bottoms):
        *data, selector = bottoms
        keep = torch.nonzero(selector.detach().reshape(-1) != 0).reshape(-1)   # Reshape CHECKed: N x 1 x 1 ...
        tops = tuple(b.index_select(0, keep) for b in data)
        return tops[0] if len(tops) == 1 else tops


class ParameterBlob(nn.Module):
    """Caffe ParameterLayer (parameter_layer.hpp): no bottoms, one learnable blob of parameter_param.shape;
    Forward_cpu shares the blob's data and diff with the top, so the top is the blob and its gradient is the
    blob's. Caffe allocates the blob without a filler: it starts at zero."""

    def __init__(self, shape: tuple):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))
        self.caffe_blobs = ["weight"]

    def forward(self):
        return self.weight

