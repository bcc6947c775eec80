"""The HDF5Data layer's data: its list of ``.h5`` files read as sfport's endless stream of rows.

Followed from BVLC Caffe's ``layers/hdf5_data_layer.cpp`` (files listed one per whitespace-separated token, every
top a dataset of the same first axis read as float, ``shuffle`` permutes the files at every pass and the rows of
every file loaded, batches run on across files; one file held at a time). Positions follow
:mod:`sfport.data.imagedata`'s micro-batches. Nothing here unpickles: HDF5 datasets are numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sfport.data.imagedata import read_list_text, resolve
from sfport.errors import CaffeFileError


def read_hdf5_list(source, base: Path | None = None) -> list[Path]:
    """hdf5_data_param.source: the .h5 files, one per whitespace-separated token (Caffe reads ``source >> line``);
    a relative name as written (the working directory), else next to the solver/net file, else next to the list."""
    source = Path(source)
    text = read_list_text(source, "HDF5 file list", "a list of HDF5 files")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for name in line.split():
            p = Path(name)
            if not p.is_absolute() and not p.exists():
                for alt in ([base / p] if base is not None else []) + [source.parent / p]:
                    if alt.exists():
                        p = alt
                        break
            if not p.is_file():
                raise CaffeFileError(source, f"line {n}: HDF5 file '{name}' not found")
            out.append(p)
    if not out:
        raise CaffeFileError(source, "lists no HDF5 files")
    return out


def _h5py(who: str | None = None):
    try:
        import h5py  # noqa: PLC0415 - optional: HDF5Data only
    except ImportError:
        raise CaffeFileError(None, f"{who + ': ' if who else ''}HDF5Data needs the Python package 'h5py' (pip "
                                   f"install sfport[hdf5])") from None
    return h5py


class HDF5Dataset(torch.utils.data.Dataset):
    """An HDF5Data layer's files as sfport's endless stream: item ``pos`` -> (one float32 row per top, pos, error).
    A pass reads every file once (in a permuted order per pass with ``shuffle``) and each file's rows (permuted
    per pass and file with ``shuffle``); batches run on into the next file and the next pass."""

    def __init__(self, files: list[Path], tops: list[str], shuffle: bool = False, seed: int = 0,
                 source: str | None = None, who: str = "an HDF5 data layer"):
        h5py = _h5py(who)
        self.who = who
        self.files, self.tops, self.shuffle, self.seed, self.source = [str(f) for f in files], list(tops), \
            shuffle, seed, source
        self.counts, self.trailing = [], None
        for f in self.files:
            try:
                with h5py.File(f, "r") as h:
                    shapes = []
                    for t in self.tops:
                        ds = h.get(t)
                        if not isinstance(ds, h5py.Dataset):
                            raise CaffeFileError(f, f"no dataset '{t}' (a top of {who})")
                        if ds.dtype.kind not in "iufb" or ds.ndim < 1:
                            raise CaffeFileError(f, f"dataset '{t}' is {ds.dtype} of shape {list(ds.shape)}: "
                                                    f"Caffe reads numbers with at least one axis")
                        shapes.append(tuple(int(d) for d in ds.shape))
            except CaffeFileError:
                raise
            except Exception as e:  # noqa: BLE001 - OSError and friends: not an HDF5 file
                raise CaffeFileError(f, f"not a readable HDF5 file: {(str(e).splitlines() or [''])[0]}") from None
            n = shapes[0][0]
            if any(s[0] != n for s in shapes):
                raise CaffeFileError(f, "the datasets " + ", ".join(f"'{t}' {list(s)}" for t, s in
                                                                    zip(self.tops, shapes)) + " differ in rows")
            if n == 0:
                raise CaffeFileError(f, "holds no rows")
            trailing = [s[1:] for s in shapes]
            if self.trailing is None:
                self.trailing = trailing
            elif trailing != self.trailing:
                raise CaffeFileError(f, f"rows of {[list(t) for t in trailing]} where the first file has "
                                        f"{[list(t) for t in self.trailing]}")
            self.counts.append(n)
        self.total = int(sum(self.counts))
        self._cache: tuple | None = None   # (file index, arrays) of the file last read: Caffe holds one file
        self._orders: tuple | None = None  # (epoch, file order, {file: row order}) of the epoch last read

    @classmethod
    def from_layer(cls, layer, seed: int = 0, base_dir=None) -> "HDF5Dataset":
        p = layer.hdf5_data_param
        who = f"layer '{layer.name}' (HDF5Data)"
        if not p.source:
            raise CaffeFileError(None, f"{who}: hdf5_data_param.source is not set")
        if layer.HasField("transform_param"):   # hdf5_data_layer.cpp LayerSetUp refuses it
            raise CaffeFileError(None, f"{who}: HDF5Data does not transform data (remove transform_param)")
        base = Path(base_dir) if base_dir else None
        source = resolve(p.source, base)
        return cls(read_hdf5_list(source, base), list(layer.top), p.shuffle, seed, str(source), who)

    def __getstate__(self):
        return {**self.__dict__, "_cache": None, "_orders": None}

    def __len__(self) -> int:
        return self.total

    def file_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, 6151, epoch]).permutation(len(self.files))

    def row_order(self, epoch: int, f: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.counts[f])
        return np.random.default_rng([self.seed, 12289, epoch, f]).permutation(self.counts[f])

    def locate(self, pos: int) -> tuple[int, int]:
        """(file index, row) of stream position ``pos``."""
        epoch, r = divmod(pos, self.total)
        if self._orders is None or self._orders[0] != epoch:   # one epoch's orders, drawn once
            self._orders = (epoch, self.file_order(epoch), {})
        _, files, rows = self._orders
        for f in map(int, files):
            if r < self.counts[f]:
                if f not in rows:
                    rows[f] = self.row_order(epoch, f)
                return f, int(rows[f][r])
            r -= self.counts[f]
        raise AssertionError("unreachable")

    def describe(self, pos: int) -> tuple[str, str]:
        """(.h5 file, 'row R') of stream position ``pos``: what a message about its sample names."""
        f, row = self.locate(pos)
        return self.files[f], f"row {row}"

    def arrays(self, f: int) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != f:
            h5py = _h5py(self.who)
            try:
                with h5py.File(self.files[f], "r") as h:   # hdf5_load_nd_dataset: read as float
                    arrays = [np.asarray(h[t][()], dtype=np.float32) for t in self.tops]
            except Exception as e:  # noqa: BLE001
                raise CaffeFileError(self.files[f], f"unreadable: {(str(e).splitlines() or [''])[0]}") from None
            self._cache = (f, arrays)
        return self._cache[1]

    def __getitem__(self, pos: int):
        try:
            f, row = self.locate(pos)
            rows = tuple(torch.from_numpy(np.array(a[row], dtype=np.float32)) for a in self.arrays(f))
        except CaffeFileError as e:
            return None, pos, (e.path, e.message)
        return rows, pos, None

    def __getitems__(self, positions: list[int]):
        """A micro-batch at once (the DataLoader's batched fetch): the rows of each file taken together, one array
        index per top and file, instead of one row at a time (a third of ``sfport train``'s time per iteration
        went to the data of an 8-row batch). The same rows as ``[self[p] for p in positions]``, which is what a
        batch with an unreadable file gets (each row its own error)."""
        try:
            located = [self.locate(p) for p in positions]
            parts = []
            start = 0
            for k in range(1, len(located) + 1):   # runs of rows of one file, in the stream's order
                if k == len(located) or located[k][0] != located[start][0]:
                    rows = np.fromiter((r for _, r in located[start:k]), dtype=np.intp, count=k - start)
                    parts.append([a[rows] for a in self.arrays(located[start][0])])
                    start = k
        except CaffeFileError:
            return [self[p] for p in positions]
        tops = [np.concatenate(cols) if len(cols) > 1 else cols[0] for cols in zip(*parts)]
        return StackedRows(tuple(torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)) for t in tops),
                           list(positions))

    def top_shapes(self) -> list[tuple]:
        """The trailing shape of each top's dataset (the first file's; every file has the same)."""
        return [tuple(t) for t in self.trailing]


class StackedRows(NamedTuple):
    """A micro-batch that :meth:`HDF5Dataset.__getitems__` stacked already: one tensor per top, the positions."""
    tops: tuple
    positions: list


def collate_tops(items):
    """Stack a micro-batch of HDF5Data rows -> (one tensor per top, positions, error)."""
    if isinstance(items, StackedRows):
        return items.tops, items.positions, None
    error = next((err for _, _, err in items if err is not None), None)
    if error is not None:
        return None, [p for _, p, _ in items], error
    n = len(items[0][0])
    return tuple(torch.stack([rows[j] for rows, _, _ in items]) for j in range(n)), [p for _, p, _ in items], None
