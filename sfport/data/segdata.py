"""The segmentation forks' data layers as Datasets over images and their label images: caffe-segnet's
DenseImageData (dense_image_data_layer.cpp, its io.cpp ReadImageToCVMat and data_transformer.cpp
Transform(cv::Mat, Blob*, bool)) and DeepLab's ImageSegData (image_seg_data_layer.cpp and its data_transformer.cpp
TransformImgAndSeg), on the deterministic micro-batch stream of :mod:`sfport.data.imagedata` (its list order,
shuffle, passes and positions).

DenseImageData (``dense_image_data_param``): ``image label_image`` per line, whitespace separated. The image is
read as ImageData reads it (BGR or grayscale, ``new_height x new_width`` by bilinear resize), the label image in
grayscale, resized by nearest neighbour. Both are mirrored together (``dense_image_data_param.mirror``: a random
flip, in every phase), then cropped together at one random offset to ``crop_height x crop_width`` (in every phase,
as the fork), then the image is ``(pixel - mean) * scale`` (transform_param's mean_value or a mean_file of the
cropped size) and the label keeps its pixel values. The fork CHECKs that transform_param has neither ``mirror`` nor
``crop_size`` (its "FIXME: any stochastic transformation will break layer"): one line naming the layer. With
``batch_size: 1`` and no size stated, every batch has its own image's size (the fork reshapes to each image);
otherwise every image must have the first image's size.

ImageSegData (``image_data_param``, V1 ``IMAGE_SEG_DATA``): ``label_type`` says what a line holds and what the
label top is: PIXEL, ``image label_image`` (the label image read in grayscale and, with new_height / new_width,
resized bilinearly as DeepLab's io.cpp does); IMAGE (the default), ``image [label]``, the label image filled with
the integer C's ``atoi`` reads from the second field (0 when there is none or it is not a number; saturated to
0..255, a ``CV_8UC1`` Mat); NONE, the image alone and a label of ``ignore_label`` everywhere. ``has_label`` is read
by no code of the fork: here ``has_label: false`` lets IMAGE lines hold the image path alone (label 0, what the
fork gives), and with ``has_label`` true such a line is an error. TransformImgAndSeg: a random mirror
(transform_param.mirror, every phase); an image smaller than ``crop_size`` is padded at its bottom and right with
the mean (0 without mean_value, where the fork reads past an empty vector) and its label with ``ignore_label``;
the crop is random in TRAIN and centred in TEST; ``(pixel - mean) * scale`` (no mean_file: the fork CHECKs there
is none). Without crop_size every image is read over the first image's size from its top left corner (a larger
image is cut, as the fork; a smaller one, which the fork reads out of bounds, is an error). The ``data_dim`` top
holds each image's (height, width) after the resize, at most the data top's.

Random draws: the fork draws its mirror and crop offsets from Caffe's RNG (caffe_rng_rand, the transformer's
Rand: boost generators seeded per prefetch thread and shared with everything else that draws), a stream no port
can reproduce. sfport makes the same draws in the same order (mirror, then the height offset, then the width
offset) from its own generator of each stream position (:func:`sfport.data.imagedata.sample_rng`), so the samples
of a micro-batch are a pure function of (list, seed, position) for workers, ranks and resumed runs.

A list or an image that cannot be read, a line without the fields its label_type needs, a label image of another
size than its image, an image smaller than the crop: one :class:`CaffeFileError` naming the list and the line.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfport.data import images
from sfport.data.imagedata import ImageDataset, Transform, read_list_text, resolve, sample_rng
from sfport.errors import CaffeFileError
from sfport.netdef import datalayers
from sfport.protos import caffe_pb2

# what a list line holds: caffe-segnet's pairs, DeepLab's label_type PIXEL, IMAGE and NONE
PAIR, PIXEL, IMAGE, NONE = "pair", "pixel", "image", "none"
_KINDS = {caffe_pb2.ImageDataParameter.PIXEL: PIXEL, caffe_pb2.ImageDataParameter.IMAGE: IMAGE,
          caffe_pb2.ImageDataParameter.NONE: NONE}
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


@dataclass
class SegEntry:
    path: str         # the image, as written in the list
    label: str        # the label image's path (PAIR, PIXEL), the label's text (IMAGE), "" (NONE, or none given)
    line: int         # 1-based line number in the list file


def atoi(text: str) -> int:
    """C's ``atoi``: leading whitespace, a sign and the digits that follow; 0 when there are none."""
    m = _ATOI.match(text)
    return int(m[1]) if m else 0


def to_uchar(value: int) -> int:
    """OpenCV's saturate_cast<uchar> of an integer (a ``cv::Scalar`` written into a ``CV_8UC1`` Mat)."""
    return min(max(int(value), 0), 255)


def read_pairs(source, kind: str, has_label: bool = True) -> list[SegEntry]:
    """The list of a segmentation data layer: one image a line and what ``kind`` needs after it (PAIR and PIXEL:
    the label image, IMAGE: the label, unless ``has_label`` is false; NONE: nothing, further fields ignored as
    DeepLab's istringstream ignores them). Blank lines are skipped, as sfport's ImageData skips them."""
    text = read_list_text(source, "image list", "an image list")
    want = {PAIR: "'image label_image'", PIXEL: "'image label_image' (label_type PIXEL)",
            IMAGE: "'image label' (label_type IMAGE; has_label: false for a list of images alone)"}
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        short = (kind == PAIR and len(fields) != 2) or (kind == PIXEL and len(fields) < 2) or \
                (kind == IMAGE and has_label and len(fields) < 2)
        if short:   # caffe-segnet's `infile >> image >> label` would pair fields across lines
            raise CaffeFileError(source, f"line {n}: expected {want[kind]}, got '{line.strip()[:80]}'")
        out.append(SegEntry(fields[0], fields[1] if kind != NONE and len(fields) > 1 else "", n))
    if not out:
        raise CaffeFileError(source, "the image list is empty")
    return out


def _root(root_folder: str, data_root, first: str, source: Path, base: Path | None) -> str:
    """What the forks put before each listed path: ``root_folder`` itself (they concatenate the strings:
    ``root_folder + path``, so DeepLab's ``/JPEGImages/x.jpg`` lists work under a root without a trailing slash),
    looked up in the working directory, then next to the solver / net file and the list; ``data_root`` (sfport's
    --data-root) is a folder that replaces it."""
    if data_root is not None:
        return os.path.join(str(data_root), "")
    if not os.path.exists(root_folder + first) and not os.path.isabs(root_folder + first):
        for alt in ([base] if base is not None else []) + [source.parent]:
            prefix = os.path.join(str(alt), root_folder)
            if os.path.exists(prefix + first):
                return prefix
    return root_folder


class SegDataset(ImageDataset):
    """Item ``pos`` (a position in the endless stream) -> (CHW float32 image, 1HW float32 label, data_dim, pos,
    error); the list order, shuffle and ``describe`` are :class:`sfport.data.imagedata.ImageDataset`'s."""

    def __init__(self, entries: list[SegEntry], root: str, transform: Transform, *, dense: bool, kind: str,
                 new_height: int = 0, new_width: int = 0, is_color: bool = True, shuffle: bool = False,
                 seed: int = 0, list_path: str | None = None, skip_bad: bool = False, train: bool = True,
                 mirror: bool = False, crop_size: int = 0, crop_hw: tuple = (0, 0), ignore_label: int = 255,
                 pad: tuple = ()):
        super().__init__(entries, "", transform, new_height, new_width, is_color, shuffle, seed, list_path, skip_bad)
        self.root = root   # a prefix string: the forks concatenate root_folder and the listed path
        self.dense, self.kind, self.train, self.mirror = dense, kind, train, mirror
        self.crop_size, self.crop_hw, self.ignore_label, self.pad = crop_size, tuple(crop_hw), ignore_label, pad
        self.size: tuple | None = None   # (H, W) of the data top every sample must have; None: each its own
        self.first: tuple | None = None  # (C, H, W) of the first image, resized

    @classmethod
    def from_layer(cls, layer, train: bool = True, seed: int = 0, data_root: str | os.PathLike | None = None,
                   base_dir: str | os.PathLike | None = None, skip_bad: bool = False) -> "SegDataset":
        """From a DenseImageData or ImageSegData LayerParameter, with the forks' set-up checks; reads the first
        image (and label image) as their DataLayerSetUp does. Relative paths as ImageData's
        (:meth:`sfport.data.imagedata.ImageDataset.from_layer`)."""
        spec = datalayers.spec_of(layer)
        dense = spec.reader == datalayers.DENSE
        p, tp = datalayers.params_of(layer), layer.transform_param
        name = f"layer '{layer.name}' ({layer.type})"
        if not p.source:
            raise CaffeFileError(None, f"{name}: {spec.param}.source is not set")
        if bool(p.new_height) != bool(p.new_width):
            raise CaffeFileError(None, f"{name}: new_height {p.new_height} and new_width {p.new_width}: set both or "
                                       f"neither (the fork requires them together)")
        if dense and bool(p.crop_height) != bool(p.crop_width):
            raise CaffeFileError(None, f"{name}: crop_height {p.crop_height} and crop_width {p.crop_width}: set both "
                                       f"or neither (caffe-segnet requires them together)")
        if dense and (tp.mirror or tp.crop_size):
            raise CaffeFileError(None, f"{name}: transform_param mirror / crop_size would transform the image and "
                                       f"its label image differently (caffe-segnet CHECKs they are unset): use "
                                       f"dense_image_data_param's mirror and crop_height / crop_width")
        if not dense and tp.mean_file:
            raise CaffeFileError(None, f"{name}: transform_param mean_file: DeepLab's ImageSegData does not support "
                                       f"a mean file (give mean_value)")
        channels = 3 if p.is_color else 1
        means = list(tp.mean_value)
        if len(means) not in (0, 1, channels):   # DataTransformer's CHECK
            give = "1" if channels == 1 else f"1 or {channels}"
            raise CaffeFileError(None, f"{name}: {len(means)} mean_value entries for {channels}-channel images "
                                       f"(is_color {str(p.is_color).lower()}): give {give}")
        base = Path(base_dir) if base_dir else None
        source = resolve(p.source, base)
        kind = PAIR if dense else _KINDS[p.label_type]
        entries = read_pairs(source, kind, True if dense else p.has_label)
        root = _root(p.root_folder, data_root, entries[0].path, source, base)
        transform = dataclasses.replace(Transform.from_layer(layer, train, base), crop_size=0, mirror=False)
        pad = tuple(means * channels if len(means) == 1 else means or [0.0] * channels)
        ds = cls(entries, root, transform, dense=dense, kind=kind, new_height=p.new_height, new_width=p.new_width,
                 is_color=p.is_color, shuffle=p.shuffle and train, seed=seed, list_path=str(source),
                 skip_bad=skip_bad, train=train, mirror=p.mirror if dense else tp.mirror,
                 crop_size=tp.crop_size, crop_hw=(p.crop_height, p.crop_width) if dense else (0, 0),
                 ignore_label=0 if dense else p.ignore_label, pad=pad)
        ds.first = ds.first_shape()
        if dense and ds.crop_hw[0]:
            ds.size = ds.crop_hw
        elif not dense and ds.crop_size:
            ds.size = (ds.crop_size, ds.crop_size)
        elif not (dense and p.batch_size == 1 and not p.new_height):   # the fork's reshape to each single image
            ds.size = ds.first[1:]
        return ds

    def read_pair(self, entry: SegEntry) -> tuple[np.ndarray, np.ndarray]:
        """(image HxW[xC] uint8, label HxW uint8) as the fork's ReadImageToCVMat gives them, the label made
        from the line (IMAGE) or ignore_label (NONE) when it is no image; the two of one size."""
        import cv2  # loaded on the first image read
        resize = self.new_height > 0 and self.new_width > 0
        img = images.read_image(self.root + entry.path, self.is_color, list_file=self.list_path, line=entry.line)
        if resize:
            img = cv2.resize(img, (self.new_width, self.new_height))   # INTER_LINEAR
        rows, cols = img.shape[:2]
        if self.kind in (PAIR, PIXEL):
            path = self.root + entry.label
            try:
                lab = images.read_image(path, False)
            except CaffeFileError as e:
                raise CaffeFileError(self.list_path,
                                     f"line {entry.line}: label image '{path}' is {e.message}") from None
            if resize:   # caffe-segnet reads labels with nearest neighbour; DeepLab's io.cpp resizes bilinearly
                lab = cv2.resize(lab, (self.new_width, self.new_height),
                                 interpolation=cv2.INTER_NEAREST if self.dense else cv2.INTER_LINEAR)
            if lab.shape[:2] != (rows, cols):   # the forks' CHECKs (DataLayerSetUp, TransformImgAndSeg)
                raise CaffeFileError(self.list_path, f"line {entry.line}: label image '{entry.label}' is "
                                                     f"{_hw(lab.shape)}, its image '{entry.path}' is {_hw(img.shape)}"
                                                     f": the fork needs them of one size")
        else:
            value = atoi(entry.label) if self.kind == IMAGE else self.ignore_label
            lab = np.full((rows, cols), to_uchar(value), np.uint8)
        return img, lab

    def first_shape(self) -> tuple:
        """(C, H, W) of the first image the stream reads (resized), its label read and checked with it: what the
        fork's DataLayerSetUp shapes its tops by (with --skip-bad-images, the first that can be read)."""
        for pos in range(min(len(self), 64)):
            try:
                img, _ = self.read_pair(self.entry_at(pos))
            except CaffeFileError:
                if not self.skip_bad:
                    raise
                continue
            return (1 if img.ndim == 2 else img.shape[2],) + tuple(img.shape[:2])
        raise CaffeFileError(self.list_path, "none of the first images could be read")

    def _dense_sample(self, img, lab, rng) -> tuple:
        """dense_image_data_layer.cpp InternalThreadEntry: mirror both, crop both, Transform each."""
        if self.mirror and rng.integers(0, 2):
            img, lab = img[:, ::-1], lab[:, ::-1]
        ch, cw = self.crop_hw
        if ch:
            h, w = lab.shape
            if h < ch or w < cw:
                raise ValueError(f"it is {h}x{w}, smaller than crop_height x crop_width {ch}x{cw}")
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img, lab = img[y0:y0 + ch, x0:x0 + cw], lab[y0:y0 + ch, x0:x0 + cw]
        if self.size is not None and lab.shape != tuple(self.size):   # DataTransformer's CHECK_EQs
            raise ValueError(f"it is {_hw(lab.shape)}, the layer was set up for {_hw(self.size)} by its first "
                             f"image (resize them all with new_height and new_width)")
        x = self.transform(np.ascontiguousarray(img), rng)
        dim = np.asarray(lab.shape, np.float32)
        return x, lab.astype(np.float32)[None], dim

    def _seg_sample(self, img, lab, rng) -> tuple:
        """image_seg_data_layer.cpp InternalThreadEntry with TransformImgAndSeg: data_dim, mirror drawn, pad to
        crop_size (mean, ignore_label), crop (random in TRAIN, centred in TEST), mean and scale, mirror."""
        rows, cols = lab.shape
        bh, bw = self.size
        dim = np.asarray([min(bh, rows), min(bw, cols)], np.float32)
        mirror = self.mirror and bool(rng.integers(0, 2))
        crop = self.crop_size
        ph, pw = max(crop - rows, 0), max(crop - cols, 0)
        if ph or pw:   # cv::copyMakeBorder at the bottom and right, the image in doubles
            c = 1 if img.ndim == 2 else img.shape[2]
            padded = np.empty((rows + ph, cols + pw, c), np.float64)
            padded[:] = np.asarray(self.pad, np.float32).astype(np.float64)
            padded[:rows, :cols] = img.reshape(rows, cols, c)
            img = padded
            lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=to_uchar(self.ignore_label))
            rows, cols = lab.shape
        if crop:
            if self.train:
                y0, x0 = int(rng.integers(0, rows - crop + 1)), int(rng.integers(0, cols - crop + 1))
            else:
                y0, x0 = (rows - crop) // 2, (cols - crop) // 2
            img, lab = img[y0:y0 + crop, x0:x0 + crop], lab[y0:y0 + crop, x0:x0 + crop]
        else:
            if rows < bh or cols < bw:
                raise ValueError(f"it is {rows}x{cols}, smaller than the first image's {bh}x{bw} the layer was set "
                                 f"up for (the fork would read past it; give crop_size or new_height / new_width)")
            img, lab = img[:bh, :bw], lab[:bh, :bw]
        x = self.transform(np.ascontiguousarray(img), rng)
        y = lab.astype(np.float32)[None]
        if mirror:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        return np.ascontiguousarray(x), np.ascontiguousarray(y), dim

    def __getitem__(self, pos: int):
        """(image, label, data_dim, pos, error): a bad sample gives ``None`` and the error (file, message,
        skip_bad) instead of raising, so the message crosses DataLoader workers intact; ``collate`` raises it (or
        counts it, with skip_bad)."""
        entry = self.entry_at(pos)
        rng = sample_rng(self.seed, pos)
        try:
            img, lab = self.read_pair(entry)
            try:
                x, y, dim = (self._dense_sample if self.dense else self._seg_sample)(img, lab, rng)
            except ValueError as e:
                raise CaffeFileError(self.list_path, f"line {entry.line}: image '{entry.path}': {e}") from None
        except CaffeFileError as e:
            return None, None, None, pos, (e.path, e.message, self.skip_bad)
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(dim), pos, None

    def shape(self) -> tuple:
        """(C, H, W) of one transformed sample (the first that can be read)."""
        for pos in range(min(len(self), 64)):
            x, _, _, _, err = self[pos]
            if x is not None:
                return tuple(x.shape)
            if not self.skip_bad:
                raise CaffeFileError(err[0], err[1])
        raise CaffeFileError(self.list_path, "none of the first images could be read")


def _hw(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def collate(items, describe=None):
    """Stack a micro-batch -> (images, labels, positions, skipped, error, (data_dims,)), the five first as
    :func:`sfport.data.imagedata.collate` gives them (bad samples counted with skip_bad, else the error as
    (file, message) for the main process to raise)."""
    error = next(((err[0], err[1]) for *_, err in items if err is not None and not err[2]), None)
    good = [(x, y, d, p) for x, y, d, p, _ in items if x is not None]
    bad = len(items) - len(good)
    if error is not None or not good:
        return None, None, [p for *_, p in good] or [it[3] for it in items], bad, error, ()
    odd = next((g for g in good if g[0].shape != good[0][0].shape), None)
    if odd is not None:   # the dataset's size checks keep this from happening; named if it does
        path, where = describe(odd[3]) if describe is not None else (None, f"stream position {odd[3]}")
        return None, None, [g[3] for g in good], bad, (path, f"{where} differs in size from the first image of "
                                                             f"its batch"), ()
    return (torch.stack([g[0] for g in good]), torch.stack([g[1] for g in good]), [g[3] for g in good], bad, None,
            (torch.stack([g[2] for g in good]).reshape(len(good), 1, 1, 2),))


def collate_for(dataset: SegDataset):
    """The DataLoader's collate_fn for ``dataset``: :func:`collate` naming its list lines."""
    return functools.partial(collate, describe=dataset.describe)
