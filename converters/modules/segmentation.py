"""The torch side of :mod:`sfport.converters.segmentation`: SegAccuracy, Padding and MatWrite as modules (MatWrite
reads its source list with the data room's list reader)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sfport.data.imagedata import read_list_text
from sfport.errors import CaffeFileError
from sfport.formats import disk

from ..base import in_export_form
from .base import NoBlobs


class SegAccuracy(NoBlobs):
    """``forward(scores, label) -> (1, 1, 1, 3)``: pixel accuracy, mean class recall and mean IoU of one batch.

    SegAccuracyLayer::Forward_cpu clears the confusion matrix (C x C, C = the scores' channels) at every forward,
    then for each pixel whose label is not ignored counts (label, prediction), the prediction being the top-1 of
    ``std::partial_sort`` with ``std::greater`` over (score, channel) pairs: the highest score, among equal scores
    the highest channel. A label outside 0..C-1 that is not ignored is Caffe's LOG(FATAL). The three values are
    ConfusionMatrix's accuracy() (the diagonal over the total, 0 when nothing is counted), avgRecall(false) (the
    mean over the classes that occur of diagonal / row sum, 0 when none occurs) and avgJaccard() (the mean over
    all C classes of diagonal / (row + column - diagonal), a class with equal intersection and union, as one that
    occurs nowhere, counting 1), in double, stored as float."""

    def __init__(self, layer_name: str, ignore: tuple):
        super().__init__()
        self.layer_name, self.ignore = layer_name, tuple(int(v) for v in ignore)

    def forward(self, scores, label):
        c = scores.shape[1]
        # the last channel of the maximum: argmax over the channels reversed
        pred = (c - 1) - torch.argmax(scores.detach().flip(1), dim=1)
        gt = label.detach().reshape(pred.shape).to(torch.float64).trunc().long()   # static_cast<int>
        valid = torch.ones_like(gt, dtype=torch.bool)
        for v in self.ignore:
            valid &= gt != v
        if bool(((gt[valid] < 0) | (gt[valid] >= c)).any()):
            bad = int(gt[valid][(gt[valid] < 0) | (gt[valid] >= c)][0])
            raise CaffeFileError(None, f"layer '{self.layer_name}' (SegAccuracy): unexpected label {bad} (the "
                                       f"scores have {c} channels; ignore_label skips others)")
        m = torch.bincount(gt[valid] * c + pred[valid], minlength=c * c).reshape(c, c).to(torch.float64)
        total, diag = m.sum(), torch.diagonal(m)
        rows, cols = m.sum(dim=1), m.sum(dim=0)
        accuracy = diag.sum() / total if total > 0 else torch.zeros((), dtype=torch.float64)
        present = rows > 0
        recall = (diag[present] / rows[present]).sum() / present.sum() if bool(present.any()) \
            else torch.zeros((), dtype=torch.float64)
        union = rows + cols - diag
        jaccard = torch.where(diag == union, torch.ones_like(diag), diag / torch.where(union == 0, 1.0, union))
        out = torch.stack([accuracy, recall, jaccard.sum() / c]).to(scores.dtype)
        return out.reshape(1, 1, 1, 3).to(scores.device)


class Padding(NoBlobs):
    """PaddingLayer::Forward_cpu: ``pad_beg`` rows and columns before, ``pad_end`` after, zeros when both are >= 0;
    both <= 0 crop ``-pad_beg`` and ``-pad_end`` off instead. Backward_cpu copies the diff back (autograd's)."""

    def __init__(self, beg: int, end: int):
        super().__init__()
        self.beg, self.end = beg, end

    def forward(self, x):
        if self.beg >= 0 and self.end >= 0:
            return torch.nn.functional.pad(x, (self.beg, self.end, self.beg, self.end))
        h, w = x.shape[2], x.shape[3]
        return x[:, :, -self.beg:h + self.end, -self.beg:w + self.end]


def mat_bytes(blob: np.ndarray) -> bytes:
    """Blob::ToMat of DeepLab's Caffe: a MAT-file (v5, no compression) with one variable ``data``, single, of
    dims (W, H, C, N): the blob's memory read in MATLAB's column-major order, so ``data(w, h, c, n)`` is the
    blob's ``(n, c, h, w)``."""
    a = np.asarray(blob, dtype=np.float32)
    a = a.reshape((1,) * (4 - a.ndim) + a.shape) if a.ndim < 4 else a
    return disk.mat_file_bytes({"data": np.ascontiguousarray(a.transpose(3, 2, 1, 0))})


class MatWrite(NoBlobs):
    """Writes each bottom at forwards 0, period, 2 period, ... to ``<prefix><name>_blob_<i>.mat``
    (MatWriteLayer::Forward_cpu), ``<name>`` the forward's line of ``source`` (its first field, less ``strip``
    characters at the end) or ``iter_<k>`` without a source. Caffe reads the source in LayerSetUp; here it is
    read at the first forward, so that a net holding the layer can be built, inspected, verified and exported
    where the list is not (those never write). Each file is written whole (temporary name, then rename) into a
    folder made if missing. Nothing is written while a net is traced or exported."""

    def __init__(self, layer_name: str, prefix: str, source: str | None, strip: int, period: int):
        super().__init__()
        self.layer_name, self.prefix, self.period = layer_name, prefix, period
        self.source, self.strip, self.names = source, strip, None
        self.iter = 0

    def _read_names(self) -> list:
        """MatWriteLayer::LayerSetUp: the first field of each line of ``source``, less ``strip`` characters."""
        names = []
        for n, line in enumerate(read_list_text(self.source, "MatWrite source list", "a list").splitlines(), 1):
            first = line.split()[0] if line.split() else ""
            if len(first) <= self.strip:
                raise CaffeFileError(self.source, f"layer '{self.layer_name}' (MatWrite): line {n}: too much "
                                                  f"stripping ('{first[:40]}' has {len(first)} characters, strip "
                                                  f"is {self.strip})")
            names.append(first[:len(first) - self.strip])
        return names

    def forward(self, *bottoms):
        if in_export_form() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return ()
        if self.source is not None and self.names is None:
            self.names = self._read_names()
        if self.iter % self.period == 0:
            if self.names is not None and self.iter >= len(self.names):
                raise CaffeFileError(None, f"layer '{self.layer_name}' (MatWrite): forward {self.iter + 1} has no "
                                           f"line in its source ({len(self.names)} lines): the test has run for "
                                           f"more iterations than it was supposed to")
            name = self.names[self.iter] if self.names is not None else f"iter_{self.iter}"
            for i, b in enumerate(bottoms):
                path = Path(f"{self.prefix}{name}_blob_{i}.mat")
                try:
                    disk.atomic_write(path, mat_bytes(b.detach().float().cpu().numpy()))
                except CaffeFileError:
                    raise
                except OSError as e:
                    raise CaffeFileError(path, f"cannot write layer '{self.layer_name}' (MatWrite)'s MAT-file: "
                                               f"{e.strerror or e}") from None
        self.iter += 1
        return ()

