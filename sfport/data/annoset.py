"""The SSD fork's ``convert_annoset`` (``create-annoset``): images and their annotation files as an LMDB / LevelDB
of AnnotatedDatum records, for its AnnotatedData layer.

Followed from the SSD fork (weiliu89/caffe, branch ssd): ``tools/convert_annoset.cpp`` (the list of ``image
annotation`` pairs, or ``image label`` for classification; keys ``%08d_<image>``; a transaction per 1000 records)
and ``util/io.cpp`` (ReadRichImageToAnnotatedDatum; ReadXMLToAnnotatedDatum for VOC's XML,
ReadJSONToAnnotatedDatum for the COCO-style JSON of its ``data/coco`` scripts, ReadTxtToAnnotatedDatum for
``label xmin ymin xmax ymax`` lines; MapNameToLabel over the LabelMap prototxt of ``--label-map-file``). Boxes are
stored normalized by the image size the annotation states (the XML's ``size``, the JSON's ``image``; the image's
own otherwise), as the fork's float arithmetic does. Objects of the same label form one annotation group, their
instance ids counting up from 0.

Where the fork logs and goes on with bad input (an unknown name is LOG(FATAL) there; an annotation file that does
not exist gives an image without boxes; a coordinate that is not an integer reads as 0) this stops with one line
naming the file and the problem; an unreadable image stops too, unless skipped as the fork does
(``skip_bad``).
"""
from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from sfport.data.db import Batched, encoding_for, new_database, read_image_to_datum, same_size, unreadable
from sfport.data.imagedata import read_list_text
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.protos import caffe_pb2

F32 = np.float32
BBOX = caffe_pb2.AnnotatedDatum.BBOX
LABEL_TYPES = ("xml", "json", "txt")
_INT = re.compile(r"\s*[+-]?[0-9]+\s*")   # what boost::property_tree's get<int> takes


# ---------------------------------------------------------------------------------------------------------------
# the label map
# ---------------------------------------------------------------------------------------------------------------

def read_label_map(path) -> caffe_pb2.LabelMap:
    """A LabelMap prototxt (``item { name: "dog" label: 12 display_name: "dog" }``), io.cpp ReadProtoFromTextFile."""
    data = caffe_files.read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaffeFileError(path, f"byte {e.start}: not UTF-8 text: not a LabelMap prototxt") from None
    label_map = caffe_pb2.LabelMap()
    try:
        text_format.Merge(text, label_map)
    except text_format.ParseError as e:
        raise CaffeFileError(path, f"not a LabelMap prototxt: {str(e)[:300]}") from None
    return label_map


def name_to_label(label_map, strict: bool = False, path=None) -> dict[str, int]:
    """io.cpp MapNameToLabel: {name: label}; ``strict`` (``--check-label``) refuses a name given twice, else the
    last one given wins."""
    out: dict[str, int] = {}
    for item in label_map.item:
        if strict and item.name in out:
            raise CaffeFileError(path, f"the name '{item.name}' is given more than once (--check-label)")
        out[item.name] = int(item.label)
    return out


# ---------------------------------------------------------------------------------------------------------------
# annotation files
# ---------------------------------------------------------------------------------------------------------------

class _Groups:
    """The annotation groups of one AnnotatedDatum as the fork's readers build them: an object joins the group of
    its label (created at its first object), its instance_id one more than the group's last."""

    def __init__(self, anno_datum):
        self.ad = anno_datum

    def add(self, label: int):
        for g in self.ad.annotation_group:
            if g.group_label == label:
                instance = g.annotation[-1].instance_id + 1 if len(g.annotation) else 0
                anno = g.annotation.add()
                anno.instance_id = instance
                return anno
        g = self.ad.annotation_group.add()
        g.group_label = label
        anno = g.annotation.add()
        anno.instance_id = 0
        return anno


def _set_box(anno, xmin, ymin, xmax, ymax, width, height, difficult: bool, path, log, where: str) -> None:
    """The box normalized by the annotation's image size (``float / int`` in float), with the fork's warnings."""
    if log and (min(xmin, ymin, xmax, ymax) < 0 or xmin > width or xmax > width or ymin > height or ymax > height):
        log(f"{path}: {where}: bounding box exceeds image boundary.")
    if log and (xmin > xmax or ymin > ymax):
        log(f"{path}: {where}: bounding box irregular.")
    b = anno.bbox
    b.xmin, b.ymin = float(F32(xmin) / F32(width)), float(F32(ymin) / F32(height))
    b.xmax, b.ymax = float(F32(xmax) / F32(width)), float(F32(ymax) / F32(height))
    b.difficult = difficult


def _size(path, stated, img_h: int, img_w: int, log) -> tuple[int, int]:
    """The image size an annotation states, else the image's own (the fork warns and goes on); checked non-zero."""
    height, width = stated if stated is not None else (img_h, img_w)
    if stated is None and log:
        log(f"{path}: no image size given, the image's own {img_h}x{img_w} used")
    elif log and (height != img_h or width != img_w):
        log(f"{path}: inconsistent image size: {height}x{width}, the image is {img_h}x{img_w}")
    if width == 0 or height == 0:
        raise CaffeFileError(path, "no valid image width/height")
    return height, width


def read_xml(path, img_h: int, img_w: int, names: dict, anno_datum, log=None) -> None:
    """io.cpp ReadXMLToAnnotatedDatum: VOC's ``<annotation>`` with ``size/height``, ``size/width`` and
    ``<object>``s, each ``name`` (in the label map), ``difficult`` (``1``: difficult; it counts for the
    ``bndbox`` after it) and ``bndbox`` (integer xmin, ymin, xmax, ymax), the children read in their order."""
    data = caffe_files.read_bytes(path)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise CaffeFileError(path, f"malformed XML: {e}") from None
    if root.tag != "annotation":
        raise CaffeFileError(path, f"not a VOC annotation: the root element is <{root.tag}>, not <annotation>")

    def integer(node, tag):
        child = node.find(tag) if node is not None else None
        text = child.text if child is not None and child.text is not None else None
        return int(text) if text is not None and _INT.fullmatch(text) else None

    size = root.find("size")
    h, w = integer(size, "height"), integer(size, "width")
    height, width = _size(path, (h, w) if h is not None and w is not None else None, img_h, img_w, log)
    groups = _Groups(anno_datum)
    for n, obj in enumerate(root.findall("object"), 1):
        anno, difficult = None, False
        for child in obj:
            if child.tag == "name":
                name = child.text or ""
                if name not in names:
                    raise CaffeFileError(path, f"object {n}: the name '{name}' is not in the label map")
                anno = groups.add(names[name])
            elif child.tag == "difficult":
                difficult = child.text == "1"
            elif child.tag == "bndbox":
                if anno is None:
                    raise CaffeFileError(path, f"object {n}: a <bndbox> before its <name>")
                coords = []
                for tag in ("xmin", "ymin", "xmax", "ymax"):
                    c = child.find(tag)
                    text = c.text if c is not None else None
                    if text is None or not _INT.fullmatch(text):
                        got = "missing" if text is None else f"'{text.strip()[:40]}', not an integer"
                        raise CaffeFileError(path, f"object {n}: bndbox {tag} is {got} (the fork reads it as 0)")
                    coords.append(int(text))
                _set_box(anno, *coords, width, height, difficult, path, log, f"object {n}")


def _json_text(v) -> str:
    """A JSON value as boost::property_tree holds it: numbers as written (they are parsed as text here)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else v if isinstance(v, str) else ""


def read_json(path, img_h: int, img_w: int, names: dict, anno_datum, log=None) -> None:
    """io.cpp ReadJSONToAnnotatedDatum: ``{"image": {"height", "width"}, "annotation": [{"category_id",
    "iscrowd", "bbox": [x, y, w, h]}, ...]}``; category_id is looked up by its text in the label map, iscrowd is
    the difficult flag."""
    data = caffe_files.read_bytes(path)
    try:
        doc = json.loads(data.decode("utf-8"), parse_int=str, parse_float=str, parse_constant=str)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CaffeFileError(path, f"malformed JSON: {e}") from None
    if not isinstance(doc, dict) or "annotation" not in doc:
        raise CaffeFileError(path, "not an annotation: no \"annotation\" entry")
    image = doc.get("image") if isinstance(doc.get("image"), dict) else {}
    h, w = (_json_text(image.get(k)) for k in ("height", "width"))
    stated = (int(h), int(w)) if _INT.fullmatch(h) and _INT.fullmatch(w) else None
    height, width = _size(path, stated, img_h, img_w, log)
    objects = doc["annotation"]
    objects = list(objects.values()) if isinstance(objects, dict) else objects
    if not isinstance(objects, list):
        raise CaffeFileError(path, "\"annotation\" is not a list of objects")
    groups = _Groups(anno_datum)
    for n, obj in enumerate(objects, 1):
        if not isinstance(obj, dict) or "category_id" not in obj:
            raise CaffeFileError(path, f"annotation {n}: no category_id")
        name = _json_text(obj["category_id"])
        if name not in names:
            raise CaffeFileError(path, f"annotation {n}: the category_id '{name}' is not in the label map")
        anno = groups.add(names[name])
        crowd = _json_text(obj.get("iscrowd", "0"))
        box = obj.get("bbox")
        try:
            values = [float(_json_text(v)) for v in box] if isinstance(box, list) else []
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise CaffeFileError(path, f"annotation {n}: bbox is not four numbers [x, y, width, height]")
        x, y, bw, bh = (F32(v) for v in values)
        _set_box(anno, x, y, x + bw, y + bh, width, height, bool(int(crowd)) if _INT.fullmatch(crowd) else False,
                 path, log, f"annotation {n}")


def read_txt(path, img_h: int, img_w: int, anno_datum, log=None) -> None:
    """io.cpp ReadTxtToAnnotatedDatum: ``label xmin ymin xmax ymax`` per box (pixels of the image itself), the
    label given as a number (no label map), never difficult."""
    tokens = read_list_text(path, "annotation file", "an annotation file").split()
    if len(tokens) % 5:
        raise CaffeFileError(path, f"{len(tokens)} values: not groups of five (label xmin ymin xmax ymax)")
    groups = _Groups(anno_datum)
    for n in range(len(tokens) // 5):
        label, *coords = tokens[5 * n:5 * n + 5]
        try:
            if not _INT.fullmatch(label):
                raise ValueError
            box = [F32(float(c)) for c in coords]
        except ValueError:
            raise CaffeFileError(path, f"box {n + 1}: '{' '.join(tokens[5 * n:5 * n + 5])[:80]}' is not "
                                       f"'label xmin ymin xmax ymax'") from None
        _set_box(groups.add(int(label)), *box, img_w, img_h, False, path, log, f"box {n + 1}")


# ---------------------------------------------------------------------------------------------------------------
# convert_annoset
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Pair:
    image: str
    annotation: str   # the annotation file (detection) or the label (classification), as written
    line: int


def read_pairs(list_file) -> list[Pair]:
    """The list: ``image annotation`` per line (convert_annoset.cpp reads whitespace-separated pairs)."""
    text = read_list_text(list_file, "list file", "a list of images and annotations")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise CaffeFileError(list_file, f"line {n}: expected 'image annotation', got '{line.strip()[:80]}'")
        out.append(Pair(fields[0], fields[1], n))
    if not out:
        raise CaffeFileError(list_file, "the list is empty")
    return out


def create_annoset(root_folder: str, list_file, db_name, anno_type: str = "classification",
                   label_type: str = "xml", label_map_file=None, check_label: bool = False, min_dim: int = 0,
                   max_dim: int = 0, resize_height: int = 0, resize_width: int = 0, check_size: bool = False,
                   encoded: bool = False, encode_type: str = "", gray: bool = False, shuffle: bool = False,
                   seed: int = 0, backend: str = "lmdb", skip_bad: bool = False, log=None) -> dict:
    """tools/convert_annoset.cpp: each ``image annotation`` pair of ``list_file`` (paths are ``root_folder +``
    the text, as the fork joins them) as an AnnotatedDatum keyed ``%08d_<image>``: the image as
    ReadImageToDatum stores it (``encode_type`` / ``encoded``, ``resize_*`` or ``min_dim`` / ``max_dim``, ``gray``)
    with label -1 and type BBOX, and its boxes (``anno_type`` detection, ``label_type`` xml / json / txt, names
    through ``label_map_file``); or, ``anno_type`` classification, the image with its integer label. ``shuffle``:
    a permutation seeded by ``seed``. Written under a temporary name beside ``db_name`` and renamed when
    complete. Returns counts."""
    if anno_type not in ("classification", "detection"):
        raise CaffeFileError(None, f"--anno-type {anno_type}: classification or detection")
    if label_type not in LABEL_TYPES:
        raise CaffeFileError(None, f"--label-type {label_type}: one of {', '.join(LABEL_TYPES)}")
    detection = anno_type == "detection"
    names: dict = {}
    if detection and label_type != "txt":
        if not label_map_file:
            raise CaffeFileError(None, "--anno-type detection needs --label-map-file (a LabelMap prototxt)")
        names = name_to_label(read_label_map(label_map_file), check_label, label_map_file)
    if Path(db_name).exists():
        raise CaffeFileError(db_name, "already exists (create-annoset creates a new database)")
    pairs = read_pairs(list_file)
    if not detection:
        for p in pairs:
            if not _INT.fullmatch(p.annotation):
                raise CaffeFileError(list_file, f"line {p.line}: the label '{p.annotation[:40]}' is not an integer")
    if shuffle:
        pairs = [pairs[i] for i in np.random.default_rng([seed, 4099]).permutation(len(pairs))]
    if log:
        log(f"A total of {len(pairs)} images.")
    encoded = encoded or bool(encode_type)   # "encode_type specified, assuming encoded=true"
    skipped = 0
    size = None
    with new_database(db_name, backend, "create-annoset") as writer:
        out = Batched(writer, log)
        for line_id, p in enumerate(pairs):
            enc = encoding_for(p.image, encode_type, encoded, list_file, p.line, "--encode-type")
            path = root_folder + p.image
            label = -1 if detection else int(p.annotation)
            d, own = read_image_to_datum(path, label, max(0, resize_height), max(0, resize_width), not gray, enc,
                                         max(0, min_dim), max(0, max_dim), with_size=True)
            if d is None:
                if skip_bad:
                    skipped += 1
                    if log:
                        log(f"Failed to read {p.image}")
                    continue
                raise unreadable(path, list_file, p.line)
            ad = caffe_pb2.AnnotatedDatum()
            ad.datum.CopyFrom(d)
            if detection:
                ad.type = BBOX
                anno = root_folder + p.annotation
                if not os.path.isfile(anno):
                    raise CaffeFileError(list_file, f"line {p.line}: annotation file '{anno}' is missing (the fork "
                                                    f"would store the image without boxes)")
                reader = {"xml": read_xml, "json": read_json}.get(label_type)
                if reader is not None:
                    reader(anno, own[0], own[1], names, ad, log)
                else:
                    read_txt(anno, own[0], own[1], ad, log)
            if check_size and not d.encoded:
                size = same_size(d, size, list_file, p.line, path, "--check-size")
            out.add(f"{line_id:08d}_{p.image}".encode(), ad.SerializeToString())
        out.flush()
    written = out.written
    return {"images": len(pairs), "written": written, "skipped": skipped}
