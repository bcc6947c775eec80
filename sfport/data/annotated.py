"""The SSD fork's AnnotatedData layer: the AnnotatedDatum records of an LMDB / LevelDB, each image transformed with
its boxes as ``annotated_data_layer.cpp`` load_batch does, as sfport's endless stream.

Per record (the fork's order, weiliu89/caffe branch ssd, ``layers/annotated_data_layer.cpp`` load_batch and
``data_transformer.cpp``): DistortImage (distort_param; encoded records only, as the fork), ExpandImage
(expand_param), GenerateBatchSamples over annotated_data_param's batch_sampler and CropImage to one sampled box
picked at random, then Transform: ApplyResize (resize_param), crop (crop_size; random in TRAIN, centred in
TEST), mirror, mean and scale, with TransformAnnotation carrying the boxes through every step (the emit
constraint, projection into each crop, the mirror). As in the fork, each step that changes an encoded image writes
it back as JPEG (EncodeCVMatToDatum) and the next step decodes it, so the JPEG round trips are part of the data.
A raw record is cropped and expanded as raw bytes (its expansion filled with the byte ``' '``, 32, as the fork's
buffer) and is not resized (the fork's raw Transform does not resize).

The label top is ``1 x 1 x boxes x 8``, one row per box of the batch: item_id, group_label, instance_id, xmin,
ymin, xmax, ymax, difficult; a batch without any box has the single row of -1 (load_batch). Records without an
annotation type (``create-annoset --anno-type classification``) give the datum's label, ``(batch,)``.

Positions follow :mod:`sfport.data.imagedata`: stream position ``pos`` reads record ``pos % n`` in key order, and
every random draw of its sample (distortion, expansion, sampling, resize interpolation, crop, mirror) comes from
:func:`sfport.data.imagedata.sample_rng` (seed, pos), so a micro-batch is a pure function of (source, seed, batch).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from google.protobuf import message as pb_message
from google.protobuf import unknown_fields

from sfport.data import boxtransforms as bt
from sfport.data import images
from sfport.data.db import Records, RecordStream, check_datum, key_text
from sfport.data.imagedata import Transform, collate, sample_rng
from sfport.errors import CaffeFileError
from sfport.netdef.datalayers import BOX_ROW, resized_size
from sfport.protos import caffe_pb2

F32 = np.float32
RP = caffe_pb2.ResizeParameter
_FLAGS = {True: "IMREAD_COLOR", False: "IMREAD_GRAYSCALE", None: "IMREAD_UNCHANGED"}
RAW_FILL = 32   # data_transformer.cpp ExpandImage(const Datum&): std::string buffer(size, ' ')


@dataclass
class Sample:
    """One datum on its way through load_batch: its image (H x W x C uint8), whether the datum holds it encoded,
    the height and width the datum records (TransformAnnotation's img_height / img_width), its boxes."""
    img: np.ndarray
    encoded: bool
    height: int
    width: int
    annos: bt.Annos


def parse_annotated(value: bytes, path, key: bytes) -> caffe_pb2.AnnotatedDatum:
    """A record as a caffe.AnnotatedDatum, checked: it parses, has no foreign fields, and its datum holds 8-bit
    image data (encoded, or raw C x H x W bytes)."""
    ad = caffe_pb2.AnnotatedDatum()
    where = f"record '{key_text(key)}'"
    try:
        ad.ParseFromString(value)
    except pb_message.DecodeError:
        raise CaffeFileError(path, f"{where}: not a caffe.AnnotatedDatum") from None
    if len(unknown_fields.UnknownFieldSet(ad)) or len(unknown_fields.UnknownFieldSet(ad.datum)):
        raise CaffeFileError(path, f"{where}: not a caffe.AnnotatedDatum (fields it does not have; a Data "
                                   f"layer's Datum database?)")
    if not ad.HasField("datum"):
        raise CaffeFileError(path, f"{where}: an AnnotatedDatum without its datum")
    check_datum(ad.datum, path, key)
    if not ad.datum.encoded and not len(ad.datum.data):
        raise CaffeFileError(path, f"{where}: a raw datum of float_data (AnnotatedData crops and expands 8-bit "
                                   f"images)")
    return ad


class AnnotatedTransform:
    """transform_param and annotated_data_param of one AnnotatedData layer: a :class:`Sample` -> (C x H x W
    float32, its boxes), every draw from the generator given."""

    def __init__(self, layer, train: bool, base: Path | None = None):
        self.who = f"layer '{layer.name}' ({layer.type})"
        tp = layer.transform_param
        if tp.force_color and tp.force_gray:
            self._bad("cannot set both force_color and force_gray")
        self.tf = Transform.from_layer(layer, train, base)   # crop_size, mirror, mean, scale, the phase
        self.color = True if tp.force_color else False if tp.force_gray else None
        self.resize = tp.resize_param if tp.HasField("resize_param") else None
        self.distort_p = tp.distort_param if tp.HasField("distort_param") else None
        self.expand_p = tp.expand_param if tp.HasField("expand_param") else None
        self.emit = tp.emit_constraint if tp.HasField("emit_constraint") else None
        self.samplers = list(layer.annotated_data_param.batch_sampler)
        self._check(layer)

    def _bad(self, problem: str):
        raise CaffeFileError(None, f"{self.who}: {problem}")

    def _check(self, layer) -> None:
        """The CHECKs of DataTransformer's constructor, DataLayerSetUp, SampleBBox and the Random* distortions,
        before any record is read."""
        tp = layer.transform_param
        if self.resize is not None:
            if not (self.resize.height > 0 and self.resize.width > 0):
                self._bad(f"resize_param height {self.resize.height} and width {self.resize.width} must be > 0")
            if self.resize.resize_mode == RP.FIT_SMALL_SIZE and layer.data_param.batch_size != 1:
                self._bad("resize_param FIT_SMALL_SIZE takes batch_size 1 only (its images differ in size)")
        if self.expand_p is not None and not self.expand_p.max_expand_ratio > 1:
            self._bad(f"expand_param max_expand_ratio {self.expand_p.max_expand_ratio:g} must be > 1")
        noise = [f.name for f, v in tp.noise_param.ListFields() if f.name not in ("prob", "saltpepper_param")
                 and v and not (f.name == "jpeg" and v <= 0)]
        if noise:
            self._bad(f"noise_param ({', '.join(noise)}) is not supported by sfport")
        for i, bs in enumerate(self.samplers):
            s = bs.sampler
            if bs.use_original_image and bs.max_trials > 0 and not (
                    0 < s.min_scale <= s.max_scale <= 1 and 0 < s.min_aspect_ratio <= s.max_aspect_ratio < 3.4e38):
                self._bad(f"batch_sampler {i + 1}: its sampler needs 0 < min_scale <= max_scale <= 1 and 0 < "
                          f"min_aspect_ratio <= max_aspect_ratio")
        d = self.distort_p
        if d is not None:
            for on, ok, what in ((d.brightness_prob > 0, d.brightness_delta >= 0, "brightness_delta >= 0"),
                                 (d.hue_prob > 0, d.hue_delta >= 0, "hue_delta >= 0"),
                                 (d.contrast_prob > 0, d.contrast_upper >= d.contrast_lower >= 0,
                                  "contrast_upper >= contrast_lower >= 0"),
                                 (d.saturation_prob > 0, d.saturation_upper >= d.saturation_lower >= 0,
                                  "saturation_upper >= saturation_lower >= 0")):
                if on and not ok:
                    self._bad(f"distort_param needs {what}")

    # -- the datum as the fork rewrites it ------------------------------------------------------------------

    def settle(self, s: Sample, img: np.ndarray, annos: bt.Annos) -> Sample:
        """A step's result written back into the datum: encoded, EncodeCVMatToDatum(jpg) and the next step's
        decode; the datum then records the new height and width."""
        if img.size == 0:
            raise ValueError(f"a step leaves an empty {img.shape[0]}x{img.shape[1]} image")
        if s.encoded:
            import cv2  # noqa: PLC0415 - OpenCV loads with the first image, not with every command
            ok, buf = cv2.imencode(".jpg", img)
            if not ok:
                raise ValueError("OpenCV cannot encode the image as jpg")
            img = cv2.imdecode(buf, getattr(cv2, _FLAGS[self.color]))
            img = img if img.ndim == 3 else img[:, :, None]
        return Sample(np.ascontiguousarray(img), s.encoded, img.shape[0], img.shape[1], annos)

    def distort(self, s: Sample, rng: np.random.Generator) -> Sample:
        """DistortImage: an encoded datum distorted and re-encoded; a raw one unchanged (the fork logs "Only
        support encoded datum now")."""
        if not s.encoded:
            return s
        return self.settle(s, bt.apply_distort(s.img, self.distort_p, rng), s.annos)

    def expand(self, s: Sample, rng: np.random.Generator) -> Sample:
        """ExpandImage(const AnnotatedDatum&): with probability ``prob``, the image on a canvas up to
        max_expand_ratio times its size (filled with the mean), its boxes projected into the canvas."""
        p = self.expand_p
        if rng.uniform() > p.prob or abs(p.max_expand_ratio - 1.0) < 1e-2:
            return s
        ratio = F32(rng.uniform(1, p.max_expand_ratio))
        c = s.img.shape[2]
        mean_image = None
        if not s.encoded:
            fill = [RAW_FILL] * c
        elif self.tf.mean_values:
            mv = list(self.tf.mean_values) * (c if len(self.tf.mean_values) == 1 else 1)
            if len(mv) != c:
                raise ValueError(f"{len(self.tf.mean_values)} mean_value entries for {c} channels")
            fill = np.clip(np.rint(np.asarray(mv, np.float64)), 0, 255)   # cv::Mat = Scalar: saturate_cast<uchar>
        else:
            fill, mean_image = [0] * c, self.tf.mean_image
        img, box = bt.expand_image(s.img, ratio, fill, rng, mean_image)
        annos = bt.transform_annotation(s.annos, s.height, s.width, box, False, emit=self.emit)
        return self.settle(s, img, annos)

    def sample(self, s: Sample, rng: np.random.Generator) -> Sample:
        """GenerateBatchSamples, one sampled box picked at random, CropImage(const AnnotatedDatum&) to it: the
        pixels of the box (clipped, truncated to whole pixels), the boxes projected into the box (clipped)."""
        boxes = bt.generate_batch_samples(s.annos.boxes, self.samplers, rng)
        if not boxes:
            return s
        box = boxes[int(rng.integers(len(boxes)))]
        x, y, w, h = bt.crop_pixels(box, s.img.shape[0], s.img.shape[1])
        annos = bt.transform_annotation(s.annos, s.height, s.width, bt.clip_bbox(box), False, emit=self.emit)
        return self.settle(s, s.img[y:y + h, x:x + w], annos)

    def final(self, s: Sample, rng: np.random.Generator) -> tuple[np.ndarray, bt.Annos]:
        """Transform(const AnnotatedDatum&): ApplyResize (encoded only), crop, mirror, mean, scale; the boxes
        through the resize policy, the crop and the mirror (TransformAnnotation with do_resize)."""
        tf = self.tf
        mirror = tf.mirror and bool(rng.integers(0, 2))
        img = s.img
        if s.encoded and self.resize is not None:
            img = bt.apply_resize(img, self.resize, rng)
        ih, iw, c = img.shape
        h_off, w_off, height, width = tf.crop_box(ih, iw, rng)
        if not s.encoded and self.resize is not None and not tf.crop_size:   # the raw Transform's CHECK_EQs
            rw, rh = resized_size(self.resize, iw, ih)
            if (rh, rw) != (ih, iw):
                raise ValueError(f"a raw image of {ih}x{iw}: the fork resizes only encoded records to resize_param's "
                                 f"{rh}x{rw} (write the database with --encode-type jpg)")
        crop_bbox = np.array([F32(w_off) / F32(iw), F32(h_off) / F32(ih), F32(w_off + width) / F32(iw),
                              F32(h_off + height) / F32(ih)], F32)
        out = img[h_off:h_off + height, w_off:w_off + width].astype(F32).transpose(2, 0, 1)
        if s.encoded and mirror:   # the Mat path: mirrored pixels, the mean at the output's own place
            out = out[:, :, ::-1]
        if tf.mean_image is not None:
            m = tf.mean_image
            if m.shape != (c, ih, iw):
                raise ValueError(f"the image is {c}x{ih}x{iw}, the mean_file {tf.mean_path or ''} is "
                                 f"{'x'.join(str(d) for d in m.shape)}")
            out = out - m[:, h_off:h_off + height, w_off:w_off + width]
        elif tf.mean_values:
            mv = list(tf.mean_values) * (c if len(tf.mean_values) == 1 else 1)
            if len(mv) != c:
                raise ValueError(f"{len(tf.mean_values)} mean_value entries for {c} channels")
            out = out - np.asarray(mv, F32)[:, None, None]
        out = out * F32(tf.scale)
        if not s.encoded and mirror:   # the raw Datum path: (pixel - mean) * scale, then mirrored
            out = out[:, :, ::-1]
        annos = bt.transform_annotation(s.annos, s.height, s.width, crop_bbox, mirror, self.resize, self.emit)
        return np.ascontiguousarray(out, F32), annos

    def __call__(self, s: Sample, rng: np.random.Generator) -> tuple[np.ndarray, bt.Annos]:
        """load_batch for one item: distort, expand, sample and crop, transform."""
        if self.distort_p is not None:
            s = self.distort(s, rng)
        if self.expand_p is not None:
            s = self.expand(s, rng)
        if self.samplers:
            s = self.sample(s, rng)
        return self.final(s, rng)


class AnnotatedDataset(RecordStream):
    """An AnnotatedData layer's database as sfport's endless stream: item ``pos`` -> (C x H x W float32, its box
    rows (N x 7: group_label, instance_id, xmin, ymin, xmax, ymax, difficult) or the datum's label, pos, error),
    the record ``pos % n`` in key order transformed with the draws of (seed, pos); :func:`collate_annotated`
    makes a batch of them."""

    def __init__(self, records: Records, pipeline: AnnotatedTransform, seed: int = 0, skip_bad: bool = False,
                 anno_type_given: bool = False):
        self.records, self.pipeline, self.seed, self.skip_bad = records, pipeline, seed, skip_bad
        self.transform = pipeline.tf   # what the solver's path log asks (mean_file)
        self.list_path = records.path
        self.anno_type_given = anno_type_given
        self.fixed_size = pipeline.resize is None or pipeline.resize.resize_mode != RP.FIT_SMALL_SIZE
        self.has_type: bool | None = None
        self.expected: tuple | None = None

    @classmethod
    def from_layer(cls, layer, train: bool = True, seed: int = 0, base_dir=None,
                   skip_bad: bool = False) -> "AnnotatedDataset":
        records, base = cls.records_of(layer, base_dir)
        pipeline = AnnotatedTransform(layer, train, base)
        ds = cls(records, pipeline, seed, skip_bad, layer.annotated_data_param.HasField("anno_type"))
        first = ds.record(records.keys[0])
        ds.has_type = first.HasField("type") or ds.anno_type_given   # DataLayerSetUp: has_anno_type_
        return ds

    def record(self, key: bytes) -> caffe_pb2.AnnotatedDatum:
        return parse_annotated(self.records.get(key), self.records.path, key)

    def sample_of(self, ad: caffe_pb2.AnnotatedDatum, key: bytes) -> Sample:
        """The record's datum decoded (DecodeDatumToCVMat with force_color / force_gray, else
        DecodeDatumToCVMatNative) or its raw bytes, H x W x C, with its boxes."""
        d = ad.datum
        if d.encoded:
            img = images.decode_image(d.data, self.records.path, self.pipeline.color,
                                      where=f"record '{key_text(key)}'")
            if img.dtype != np.uint8:
                raise CaffeFileError(self.records.path, f"record '{key_text(key)}': the image is {img.dtype}, "
                                                        f"Caffe reads 8-bit images only")
            img = img if img.ndim == 3 else img[:, :, None]
            height, width = (d.height, d.width) if d.height > 0 and d.width > 0 else img.shape[:2]
        else:
            img = np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width).transpose(1, 2, 0)
            height, width = d.height, d.width
        return Sample(np.ascontiguousarray(img), bool(d.encoded), int(height), int(width), bt.Annos.of(ad))

    def first(self) -> tuple[tuple, int | None]:
        """((C, H, W) of the first record decoded, its number of boxes or None without an annotation type): what
        DataLayerSetUp shapes the tops from."""
        key = self.records.keys[0]
        ad = self.record(key)
        s = self.sample_of(ad, key)
        return (s.img.shape[2],) + s.img.shape[:2], (len(s.annos) if self.has_type else None)

    def __getitem__(self, pos: int):
        import cv2  # noqa: PLC0415 - OpenCV loads with the first image, not with every command
        key = self.key_at(pos)
        where = f"record '{key_text(key)}'"
        try:
            ad = self.record(key)
            if self.has_type and not ad.HasField("type"):
                raise CaffeFileError(self.records.path, f"{where}: has no annotation type (the first record has "
                                                        f"one: every datum needs its AnnotationType)")
            if not self.has_type and not ad.datum.HasField("label"):
                raise CaffeFileError(self.records.path, f"{where}: its datum has no label")
            try:
                x, annos = self.pipeline(self.sample_of(ad, key), sample_rng(self.seed, pos))
            except (ValueError, cv2.error) as e:
                raise CaffeFileError(self.records.path, f"{where}: {(str(e).strip().splitlines() or [''])[-1]}"
                                     ) from None
            if self.fixed_size and self.expected is not None and tuple(x.shape) != tuple(self.expected):
                raise CaffeFileError(self.records.path, f"{where} gives a {list(x.shape)} sample, the first record "
                                                        f"{list(self.expected)}")
        except CaffeFileError as e:
            return None, None, pos, (e.path, e.message, self.skip_bad)
        y = annos.rows() if self.has_type else int(ad.datum.label)
        return torch.from_numpy(x), y, pos, None

    def shape(self) -> tuple:
        """(C, H, W) of one transformed sample (the first record); later records must give the same (but with
        FIT_SMALL_SIZE, whose batches of one take each image's size)."""
        x, _, _, err = self[0]
        if x is None:
            raise CaffeFileError(err[0], err[1])
        self.expected = tuple(x.shape)
        return self.expected


def collate_annotated(items, describe=None):
    """Stack a micro-batch of AnnotatedData items -> (images, labels, positions, skipped, error) as
    :func:`sfport.data.imagedata.collate` (the same checks and skipping); labels are the fork's
    ``1 x 1 x boxes x 8`` rows with each good item's index in the batch as item_id (one row of -1 when the batch
    has no box), or the datum labels ``(batch,)`` of records without an annotation type."""
    xs, ids, positions, bad, error = collate([(x, i, p, e) for i, (x, _, p, e) in enumerate(items)], describe)
    if xs is None or error is not None:
        return xs, None, positions, bad, error
    ys = [items[int(i)][1] for i in ids]
    if not isinstance(ys[0], np.ndarray):
        return xs, torch.tensor([float(y) for y in ys]), positions, bad, error
    rows = [np.concatenate([np.full((len(y), 1), j, F32), y], axis=1) for j, y in enumerate(ys) if len(y)]
    label = np.concatenate(rows) if rows else np.full((1, BOX_ROW), -1, F32)
    return xs, torch.from_numpy(np.ascontiguousarray(label, F32).reshape(1, 1, -1, BOX_ROW)), positions, bad, error


def collate_for(dataset: AnnotatedDataset):
    """The DataLoader's collate_fn for ``dataset``: :func:`collate_annotated` naming its records."""
    return functools.partial(collate_annotated, describe=dataset.describe)
