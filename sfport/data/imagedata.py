"""Caffe's ImageData layer (image_data_layer.cpp, data_transformer.cpp) as a Dataset and a deterministic batch
stream.

The list file holds ``relative/path.jpg label`` lines. The stream is Caffe's cursor over it: batches follow the list
(reshuffled at the start and at every pass when ``shuffle``), a batch that runs past the end continues at the
start of the next pass. Every position in that endless stream is a number, so the data of micro-batch ``b`` is a
pure function of (list, seed, b): workers, ranks and a resumed run all see exactly the same samples. Each
sample's random mirror and crop come from a generator seeded by (seed, position).

Images are decoded by OpenCV as Caffe does (BGR, ``IMREAD_COLOR`` or grayscale, resized to
``new_height x new_width`` when both are set), then ``transform_param`` in Caffe's order: crop (random in TRAIN,
centre in TEST), mirror (random, in both phases as Caffe's DataTransformer), ``(pixel - mean) * scale`` with
``mean_file`` or ``mean_value``.
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfport.formats import caffe_files, disk
from sfport.data import images
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2


INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")   # ASCII digits only (Python's int() takes other scripts' digits)


@dataclass
class ListEntry:
    path: str         # as written in the list
    label: int
    line: int         # 1-based line number in the list file


def read_list_text(source, kind: str, a_kind: str) -> str:
    """The text of a list file (image lists, pairs, landmarks: what Caffe reads with an ifstream,
    image_data_layer.cpp ImageDataLayer::DataLayerSetUp), UTF-8 (a
    leading byte-order mark dropped); a missing file, a folder, a device or FIFO (refused before it is opened,
    so nothing blocks), a file over the readers' size limit, bytes that are not UTF-8 or a NUL byte (a binary
    file; the line and column named) are one line naming the file."""
    try:
        disk.check_readable_file(source, kind)
    except CaffeFileError as e:
        if e.message == "no such file":
            raise CaffeFileError(source, f"{kind} not found") from None
        if e.message.startswith("is a directory"):
            raise CaffeFileError(source, f"is a directory, not {a_kind}") from None
        if e.message.startswith("is not a regular file"):
            raise CaffeFileError(source, f"is not a regular file (a device, FIFO or socket), not {a_kind}") from None
        raise
    try:
        data = Path(source).read_bytes()
    except OSError as e:
        raise CaffeFileError(source, f"cannot read the {kind}: {e.strerror or e}") from None

    def where(at: int) -> str:
        line, start = data.count(b"\n", 0, at) + 1, data.rfind(b"\n", 0, at) + 1
        return f"line {line}, column {at - start + 1}"

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaffeFileError(source, f"{where(e.start)}: byte 0x{data[e.start]:02x} is not UTF-8 text: not "
                                     f"{a_kind}") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise CaffeFileError(source, f"{where(nul)}: a NUL byte (a binary file?): not {a_kind}")
    return text.removeprefix("\ufeff")


def read_list(source: str | os.PathLike) -> list[ListEntry]:
    """Parse an ImageData list (``path label`` per line; the path may contain spaces: the label is the last field)."""
    text = read_list_text(source, "image list", "an image list")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        head, sep, tail = line.rpartition(" ")
        if not sep:
            raise CaffeFileError(source, f"line {n}: expected 'path label', got '{line[:80]}'")
        if not _INTEGER.fullmatch(tail):
            raise CaffeFileError(source, f"line {n}: the label '{tail[:40]}' is not an integer")
        label = int(tail)
        if not INT32_MIN <= label <= INT32_MAX:   # image_data_layer.cpp keeps the label in an int
            raise CaffeFileError(source, f"line {n}: the label {tail[:40]} is out of range (Caffe reads labels as "
                                         f"32-bit integers, {INT32_MIN} to {INT32_MAX})")
        out.append(ListEntry(head.strip(), label, n))
    if not out:
        raise CaffeFileError(source, "the image list is empty")
    return out


def read_mean_file(path) -> np.ndarray:
    """A Caffe ``mean.binaryproto`` (BlobProto) as a (C, H, W) float32 array."""
    data = caffe_files.read_bytes(path)
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except Exception:  # noqa: BLE001 - any decode failure is bad input
        raise CaffeFileError(path, "not a Caffe BlobProto (mean.binaryproto)") from None
    shape = caffe_files.blob_shape(blob)
    arr = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if arr.size == 0 or arr.size != int(np.prod(shape)):
        raise CaffeFileError(path, f"mean blob holds {arr.size} values for shape {list(shape)}")
    arr = arr.reshape(shape)
    return arr.reshape(arr.shape[-3:]) if arr.ndim >= 3 else arr


@dataclass
class Transform:
    """transform_param: crop_size, mirror, mean (per channel or a mean image), scale."""
    crop_size: int = 0
    mirror: bool = False
    mean_values: tuple = ()
    mean_image: np.ndarray | None = None
    scale: float = 1.0
    train: bool = True
    mean_path: str | None = None   # the mean_file, for the messages

    @classmethod
    def from_layer(cls, layer, train: bool, base_dir: Path | None = None) -> "Transform":
        tp = layer.transform_param
        mean_image = None
        if tp.mean_file:
            path = Path(tp.mean_file)
            if not path.is_absolute() and base_dir is not None and not path.exists():
                path = base_dir / path
            mean_image = read_mean_file(path)
        if tp.mean_file and len(tp.mean_value):
            raise CaffeFileError(None, f"layer '{layer.name}': give mean_file or mean_value, not both")
        bad = next((f"{k} {v}" for k, v in [("scale", tp.scale)] + [("mean_value", m) for m in tp.mean_value]
                    if not math.isfinite(v)), None)
        if bad:   # Caffe multiplies by it silently: every sample would be NaN or inf
            raise CaffeFileError(None, f"layer '{layer.name}': transform_param {bad} is not a finite number")
        return cls(tp.crop_size, tp.mirror, tuple(tp.mean_value), mean_image, tp.scale, train,
                   str(path) if tp.mean_file else None)

    def crop_box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(y0, x0, height, width) of DataTransformer's crop of an ``h`` x ``w`` image: the whole image without
        crop_size; else a random offset in TRAIN (height offset drawn first), the centre in TEST."""
        if not self.crop_size:
            return 0, 0, h, w
        ch = cw = self.crop_size
        if h < ch or w < cw:
            raise ValueError(f"image {h}x{w} is smaller than crop_size {self.crop_size}")
        if self.train:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HWC uint8 (BGR) -> CHW float32, as Caffe's DataTransformer::Transform(cv::Mat)."""
        if img.ndim == 2:
            img = img[:, :, None]
        h, w, c = img.shape
        y0, x0, ch, cw = self.crop_box(h, w, rng)
        mirror = self.mirror and bool(rng.integers(0, 2))  # Caffe mirrors in TEST too when asked
        out = img[y0:y0 + ch, x0:x0 + cw].astype(np.float32).transpose(2, 0, 1)
        if self.mean_image is not None:
            m = self.mean_image
            if m.shape[0] != c or m.shape[1] != h or m.shape[2] != w:   # DataTransformer::Transform CHECK_EQs
                raise ValueError(f"the image is {c}x{h}x{w}, the mean_file {self.mean_path or ''} is "
                                 f"{'x'.join(str(d) for d in m.shape)}")
            out = out - m[:, y0:y0 + ch, x0:x0 + cw]
        elif self.mean_values:
            mv = list(self.mean_values)
            if len(mv) == 1:
                mv = mv * c
            if len(mv) != c:
                raise ValueError(f"{len(mv)} mean_value entries for {c} channels")
            out = out - np.asarray(mv, np.float32)[:, None, None]
        if self.scale != 1:
            out = out * np.float32(self.scale)
        if mirror:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out, dtype=np.float32)


def sample_rng(seed: int, pos: int) -> np.random.Generator:
    """The generator of the random crop and mirror of the sample at stream position ``pos`` (every data layer that
    transforms uses it, so the same images at the same positions get the same draws)."""
    return np.random.default_rng([seed, 104729, pos])


def resolve(path: str | os.PathLike, base: Path | None) -> Path:
    """A relative data path as Caffe opens it (the working directory), else next to the solver/net file."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and base is not None and (Path(base) / p).exists():
        return Path(base) / p
    return p


class ImageDataset(torch.utils.data.Dataset):
    """Item ``pos`` (a position in the endless stream) -> (CHW float32 image, label, pos). ``order(epoch)`` is the
    list order of one pass."""

    def __init__(self, entries: list[ListEntry], root: str | os.PathLike, transform: Transform,
                 new_height: int = 0, new_width: int = 0, is_color: bool = True, shuffle: bool = False,
                 seed: int = 0, list_path: str | None = None, skip_bad: bool = False):
        self.entries, self.root, self.transform = entries, str(root), transform
        self.new_height, self.new_width, self.is_color = new_height, new_width, is_color
        self.shuffle, self.seed, self.list_path, self.skip_bad = shuffle, seed, list_path, skip_bad
        self._orders: dict[int, np.ndarray] = {}

    @classmethod
    def from_layer(cls, layer, train: bool = True, seed: int = 0, data_root: str | os.PathLike | None = None,
                   base_dir: str | os.PathLike | None = None, skip_bad: bool = False) -> "ImageDataset":
        """From an ImageData LayerParameter. Relative ``source`` / ``root_folder`` are looked up in the current
        directory (as Caffe does), then next to the solver/net file (``base_dir``); ``data_root`` replaces
        ``root_folder``."""
        p = layer.image_data_param
        if not p.source:
            raise CaffeFileError(None, f"layer '{layer.name}' (ImageData): image_data_param.source is not set")
        if bool(p.new_height) != bool(p.new_width):   # image_data_layer.cpp DataLayerSetUp CHECK
            raise CaffeFileError(None, f"layer '{layer.name}' (ImageData): new_height {p.new_height} and new_width "
                                       f"{p.new_width}: set both or neither (Caffe requires them together)")
        resized = (3 if p.is_color else 1) * p.new_height * p.new_width
        if resized > INT32_MAX:   # checked before the first resize allocates it (blob.cpp: count_ <= INT_MAX)
            raise CaffeFileError(None, f"layer '{layer.name}' (ImageData): an image resized to {p.new_height} x "
                                       f"{p.new_width} is {resized} values, more than a Caffe blob holds (INT_MAX)")
        base = Path(base_dir) if base_dir else None
        source = resolve(p.source, base)
        entries = read_list(source)
        if data_root is not None:
            root = Path(data_root)
        else:
            root = Path(p.root_folder) if p.root_folder else Path("")
            first = entries[0].path
            if not (root / first).exists() and not root.is_absolute():  # Caffe: the working directory; else
                for alt in ([base / root] if base is not None else []) + [source.parent / root]:
                    if (alt / first).exists():
                        root = alt
                        break
        transform = Transform.from_layer(layer, train, base)
        return cls(entries, root, transform, p.new_height, p.new_width, p.is_color, p.shuffle and train, seed,
                   str(source), skip_bad)

    def __len__(self) -> int:
        return len(self.entries)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.entries))
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, 7919, epoch]).permutation(len(self.entries))
        return self._orders[epoch]

    def entry_at(self, pos: int) -> ListEntry:
        n = len(self.entries)
        return self.entries[int(self.order(pos // n)[pos % n])]

    def describe(self, pos: int) -> tuple[str | None, str]:
        """(list file, 'line N: image P') of stream position ``pos``: what a message about its sample names."""
        entry = self.entry_at(pos)
        return self.list_path, f"line {entry.line}: image '{entry.path}'"

    def load(self, entry: ListEntry) -> np.ndarray:
        import cv2  # loaded on the first image read: the list, the stream and the sampler need no OpenCV
        path = os.path.join(self.root, entry.path)
        img = images.read_image(path, self.is_color, list_file=self.list_path, line=entry.line)
        if self.new_height > 0 and self.new_width > 0:
            img = cv2.resize(img, (self.new_width, self.new_height))
        return img

    def __getitem__(self, pos: int):
        """(image, label, pos, error): a bad image gives ``None`` and the error text instead of raising, so the
        message crosses DataLoader workers intact; ``collate`` raises it (or counts it, with skip_bad)."""
        entry = self.entry_at(pos)
        rng = sample_rng(self.seed, pos)
        try:
            img = self.load(entry)
            try:
                x = self.transform(img, rng)
            except ValueError as e:
                raise CaffeFileError(self.list_path, f"line {entry.line}: image '{entry.path}': {e}") from None
        except CaffeFileError as e:
            return None, entry.label, pos, (e.path, e.message, self.skip_bad)
        return torch.from_numpy(x), entry.label, pos, None

    def shape(self) -> tuple:
        """(C, H, W) of one transformed sample (reads the first image)."""
        for pos in range(min(len(self), 64)):
            x, _, _, err = self[pos]
            if x is not None:
                return tuple(x.shape)
            if not self.skip_bad:
                raise CaffeFileError(err[0], err[1])
        raise CaffeFileError(self.list_path, "none of the first images could be read")


def collate(items, describe=None):
    """Stack a micro-batch -> (images, labels, positions, skipped, error). Images that could not be read are
    dropped and counted (with skip-bad) or reported in ``error`` as (list file, message) for the main process to
    raise (an exception raised inside a DataLoader worker would lose its one-line message). Every image must have
    the size of the batch's first (Caffe's ImageDataLayer shapes the batch to its first image and
    DataTransformer CHECKs each one against it): another is an ``error`` naming both, through ``describe(pos)``
    -> (file, 'line N: image ...') of the dataset when given."""
    error = next(((err[0], err[1]) for _, _, _, err in items if err is not None and not err[2]), None)
    good = [(x, y, p) for x, y, p, _ in items if x is not None]
    bad = len(items) - len(good)
    if not good:
        return None, None, [p for _, _, p, _ in items], bad, error
    first = good[0]
    odd = next((g for g in good if g[0].shape != first[0].shape), None)
    if odd is not None and error is None:
        def name(pos):
            return describe(pos) if describe is not None else (None, f"stream position {pos}")

        path, where = name(odd[2])
        _, where0 = name(first[2])
        error = (path, f"{where} is {_size(odd[0])}, the first image of its batch ({where0}) is {_size(first[0])}: "
                       f"Caffe shapes a batch to its first image (resize them all with new_height and new_width)")
    if error is not None:
        return None, None, [p for _, _, p in good], bad, error
    xs = torch.stack([x for x, _, _ in good])
    ys = torch.tensor([float(y) for _, y, _ in good])
    return xs, ys, [p for _, _, p in good], bad, error


def _size(x: torch.Tensor) -> str:
    return "x".join(str(d) for d in x.shape)


def check(batch):
    """Raise the error a collated batch carries (see ``collate``); return the batch."""
    if batch[4] is not None:
        raise CaffeFileError(*batch[4])
    return batch


class MicroBatches(torch.utils.data.Sampler):
    """The stream positions of micro-batches ``start, start+1, ...`` of one rank: global micro-batch
    ``t*W*k + r*k + i`` for update t, rank r of W, accumulation step i of k (so W ranks with iter_size k see
    exactly the batches one rank with iter_size W*k would)."""

    def __init__(self, batch_size: int, world: int = 1, rank: int = 0, iter_size: int = 1, start_update: int = 0,
                 stop_update: int | None = None):
        self.b, self.world, self.rank, self.k = batch_size, world, rank, iter_size
        self.start, self.stop = start_update, stop_update

    def global_batch(self, update: int, i: int) -> int:
        return update * self.world * self.k + self.rank * self.k + i

    def __iter__(self):
        t = self.start
        while self.stop is None or t < self.stop:
            for i in range(self.k):
                g = self.global_batch(t, i)
                yield list(range(g * self.b, (g + 1) * self.b))
            t += 1

    def __len__(self):
        if self.stop is None:
            raise TypeError("endless")
        return (self.stop - self.start) * self.k


def settle_temp_folders() -> None:
    """Make, in this process, the temporary files and folders that DataLoader workers would each make on the way:
    Python's tempfile tries its folder with a randomly named file at its first use (tempfile._get_default_tempdir
    writes and removes it), and multiprocessing makes a pymp-* folder for the file descriptors a worker passes
    (resource_sharer). The loader stops its workers with SIGTERM when one of them fails, and a worker stopped in
    between left that file or folder in $TMPDIR. Made before the workers fork, both are inherited; this process
    removes its pymp-* folder when it exits (multiprocessing's atexit finalizer)."""
    import multiprocessing.util
    import tempfile

    tempfile.gettempdir()
    multiprocessing.util.get_temp_dir()


def loader(dataset, sampler: MicroBatches, workers: int = 0, pin_memory: bool = False, collate_fn=None):
    """A DataLoader yielding (images, labels, positions, skipped, error) per micro-batch, in order (or what
    ``collate_fn`` makes of a micro-batch's items; by default :func:`collate` with the dataset's ``describe``)."""
    if workers:
        settle_temp_folders()
    if collate_fn is None:
        collate_fn = functools.partial(collate, describe=getattr(dataset, "describe", None))
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                                       pin_memory=pin_memory, persistent_workers=False,
                                       prefetch_factor=4 if workers else None)
