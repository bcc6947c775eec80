"""Caffe's data layers, one specification per type: the one home of what each reads and states.

A data layer feeds a net: its tops become the net's inputs (Caffe's Input and the layers of data_layers.hpp:
Data, ImageData, HDF5Data, MemoryData, WindowData, DummyData, the SSD fork's AnnotatedData, caffe-segnet's
DenseImageData, DeepLab's ImageSegData, and a Python layer without bottoms). Per type, :data:`SPECS` says which
parameter field it reads (its ``batch_size``, ``source``), whether its definition fixes its tops' shapes or a data
set does, whether its tops name what they read (in no fixed order) rather than data and labels by position, the
shape of its labels, and which of sfport's readers reads its data set. Shape inference (:mod:`.shapes`), the
deploy form (:mod:`.deploy`), the data feeder (:mod:`sfport.data.feed`), the solver's paths, ``sfport inspect
SOLVER`` and ``sfport test`` / ``time`` ask here; none of them names a data layer's type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sfport.netdef.netstate import NetState, included
from sfport.protos import caffe_pb2

# The readers of sfport.data.feed, by what they read (ANNO: AnnotatedDatum records of an LMDB / LevelDB; DENSE and
# IMAGE_SEG: the segmentation forks' lists of images and label images, sfport.data.segdata)
LIST, DB, HDF5, ANNO = "list", "db", "hdf5", "annotated"
DENSE, IMAGE_SEG = "dense", "imageseg"
SEG_READERS = (DENSE, IMAGE_SEG)
# the readers of image lists whose parameters say is_color / new_height / new_width
IMAGE_LISTS = (LIST,) + SEG_READERS
# the SSD fork's label rows (annotated_data_layer.cpp): item_id, group_label, instance_id, xmin, ymin, xmax, ymax,
# difficult; the label top is 1 x 1 x boxes x 8, its number of boxes that of each batch
BOX_ROW = 8


def _repeat(shapes: list, ntop: int) -> list:
    """One shape given for several tops applies to each; missing ones are unknown."""
    if len(shapes) == 1:
        shapes = shapes * ntop
    return (shapes + [None] * ntop)[:ntop]


def _shapes(p, ntop: int) -> list:
    """input_param's / dummy_data_param's ``shape`` list (DummyData's legacy num/channels/height/width too)."""
    legacy = [(n, c, h, w) for n, c, h, w in zip(*(getattr(p, f, ()) for f in ("num", "channels", "height",
                                                                              "width")))]
    return _repeat([tuple(s.dim) for s in p.shape] or legacy, ntop)


def _dense_label(data: tuple) -> list:
    """caffe-segnet's label top: one label image per sample, of the data's height and width."""
    n, _, h, w = data
    return [(n, 1, h, w)]


def _seg_labels(data: tuple) -> list:
    """DeepLab's label top (one label image per sample, the data's height and width) and its data_dim top (each
    image's height and width, 1 x 1 x 2 per sample)."""
    n, _, h, w = data
    return [(n, 1, h, w), (n, 1, 1, 2)]


def _memory(p, ntop: int) -> list:
    """MemoryData's stated sizes: the data and its labels."""
    return _repeat([(p.batch_size, p.channels, p.height, p.width), (p.batch_size,)], ntop)


@dataclass(frozen=True)
class DataLayerSpec:
    type: str
    param: str                       # the LayerParameter field of its parameters
    stated: Callable | None = None   # (params, number of tops) -> the tops' shapes its definition fixes
    named_tops: bool = False         # its tops name data sets / outputs, in no fixed order (the deploy form)
    label_tops: bool = True          # tops after the first are labels of the batch
    reader: str | None = None        # sfport's reader of its data set (LIST, DB, HDF5), None: none
    synthetic: bool = False          # `--synthetic-data` can stand in for its images
    label_shape: tuple = ()          # a label top's shape after the batch axis
    channels: int | None = None      # the channels its images always have (WindowData: colour windows)
    has_batch: bool = True           # its parameters hold a batch_size
    label_blob: tuple | None = None  # a label top's whole shape when it does not follow the batch
    bottomless: bool = False         # a data layer only without bottoms (a Python layer with bottoms computes)
    label_of: Callable | None = None  # the data top's (N, C, H, W) -> the shapes of the tops after it (label images)

    @property
    def shaped(self) -> bool:
        """Its definition fixes its tops' shapes (no data set is read)."""
        return self.stated is not None


SPECS = {s.type: s for s in (
    # input_layer.cpp: the shapes are the parameters
    DataLayerSpec("Input", "input_param", stated=_shapes, synthetic=True, has_batch=False),
    # data_layer.cpp: Datum records of an LMDB / LevelDB
    DataLayerSpec("Data", "data_param", reader=DB, synthetic=True),
    # image_data_layer.cpp: a list of image paths and labels
    DataLayerSpec("ImageData", "image_data_param", reader=LIST, synthetic=True),
    # hdf5_data_layer.cpp: one dataset per top, by the top's name
    DataLayerSpec("HDF5Data", "hdf5_data_param", named_tops=True, label_tops=False, reader=HDF5),
    # memory_data_layer.cpp: arrays given from Python, of the stated size
    DataLayerSpec("MemoryData", "memory_data_param", stated=_memory),
    # window_data_layer.cpp: colour windows, labels (batch, 1, 1, 1)
    DataLayerSpec("WindowData", "window_data_param", label_shape=(1, 1, 1), channels=3),
    # dummy_data_layer.cpp: filler values of the stated shapes
    DataLayerSpec("DummyData", "dummy_data_param", stated=_shapes, has_batch=False),
    # the SSD fork's annotated_data_layer.cpp: AnnotatedDatum records of an LMDB / LevelDB, its batch_size is
    # data_param's; its label top holds one row per box of the batch (one row here, the count of its first record)
    DataLayerSpec("AnnotatedData", "data_param", reader=ANNO, label_blob=(1, 1, 1, BOX_ROW)),
    # caffe-segnet's dense_image_data_layer.cpp: `image label_image` pairs of a list; labels (batch, 1, H, W)
    DataLayerSpec("DenseImageData", "dense_image_data_param", reader=DENSE, label_of=_dense_label),
    # DeepLab's image_seg_data_layer.cpp (V1 IMAGE_SEG_DATA): images and label images (label_type PIXEL), one
    # label per image (IMAGE) or none (NONE) from image_data_param's list; labels (batch, 1, H, W), then data_dim
    DataLayerSpec("ImageSegData", "image_data_param", reader=IMAGE_SEG, label_of=_seg_labels),
    # a Python layer without bottoms (python_layer.hpp): its tops are whatever its setup says
    DataLayerSpec("Python", "python_param", named_tops=True, has_batch=False, bottomless=True),
)}
DATA_TYPES = tuple(SPECS)
INPUT = SPECS["Input"].type
PYTHON = SPECS["Python"].type   # python_layer.hpp: a layer whose code is a Python class


def spec_of(layer) -> DataLayerSpec | None:
    """The specification of a data layer, None for any other layer (a Python layer with bottoms computes: a
    Python loss, for example)."""
    spec = SPECS.get(layer.type)
    return None if spec is None or (spec.bottomless and len(layer.bottom)) else spec


def is_data_layer(layer) -> bool:
    """A layer whose tops are the net's inputs: Input, a data layer, or a Python layer without bottoms."""
    return spec_of(layer) is not None


def data_layers(net, state) -> list:
    """The data layers of ``net`` active in ``state`` (a NetState or a phase; Caffe's Net::FilterNet)."""
    state = state if isinstance(state, NetState) else NetState.of(state)
    return [layer for layer in net.layer if is_data_layer(layer) and included(layer, state)]


def is_input(layer) -> bool:
    """Caffe's Input layer (what a deploy net's inputs are)."""
    return layer.type == INPUT


def is_python(layer) -> bool:
    """A Python layer (python_param names its module and class), with bottoms or without."""
    return layer.type == PYTHON


def reads_data_set(layer) -> bool:
    """A data layer that reads a data set (Data, ImageData, HDF5Data, ...): its tops' shapes come from the data."""
    spec = spec_of(layer)
    return spec is not None and not spec.shaped


def params_of(layer):
    """The parameter message a data layer reads (``layer.image_data_param`` for ImageData, ...)."""
    return getattr(layer, spec_of(layer).param)


def input_layer(net, name: str, tops: list, shapes: list):
    """Append Caffe's Input layer ``name`` with these tops and shapes to ``net`` (a NetParameter); return it."""
    layer = net.layer.add(name=name, type=INPUT, top=list(tops))
    for shape in shapes:
        layer.input_param.shape.add(dim=list(shape))
    return layer


def input_shapes(net) -> dict:
    """{top: shape} of the Input layers of ``net``, as they state them."""
    return {layer.top[j]: tuple(s.dim) for layer in net.layer if is_input(layer)
            for j, s in enumerate(layer.input_param.shape) if j < len(layer.top)}


def batch_size(layer) -> int | None:
    """The batch size a data layer states (None: it does not): its parameters' ``batch_size``, or the first axis
    of the first shape an Input or DummyData layer states."""
    spec = spec_of(layer)
    if spec is None:
        return None
    if spec.has_batch:
        p = params_of(layer)
        return int(p.batch_size) if layer.HasField(spec.param) and p.batch_size else None
    if spec.shaped:
        given = params_of(layer).shape
        if len(given) and len(given[0].dim):
            return int(given[0].dim[0])
    return None


def stated_tops(layer) -> list:
    """The tops' shapes a shaped data layer's definition fixes (None for a top it does not)."""
    return spec_of(layer).stated(params_of(layer), len(layer.top))


def resized_size(p, width: int, height: int) -> tuple[int, int]:
    """(width, height) of a ``width`` x ``height`` image after the SSD fork's resize_param ``p`` (im_transforms.cpp
    InferNewSize): WARP and FIT_LARGE_SIZE_AND_PAD give p.width x p.height, FIT_SMALL_SIZE keeps the aspect with
    the smaller side fitted (truncated)."""
    w, h = int(p.width), int(p.height)
    if p.resize_mode == caffe_pb2.ResizeParameter.FIT_SMALL_SIZE:
        orig_aspect = np.float32(width) / np.float32(height)
        if orig_aspect < np.float32(w) / np.float32(h):
            h = int(np.float32(w) / orig_aspect)
        else:
            w = int(orig_aspect * np.float32(h))
    return w, h


def stated_image_shape(layer) -> tuple | None:
    """The shape of a data-set layer's first top as far as its definition fixes it, None for an axis it does not:
    batch_size; ImageData's channels (is_color), new_height/new_width or crop_size (image_data_layer.cpp
    DataLayerSetUp); WindowData's crop_size of colour images (window_data_layer.cpp); a Data layer's crop_size,
    and its channels when force_color / force_gray or one mean_value per channel say them (data_transformer.cpp
    checks mean_value has 1 or C entries); AnnotatedData's resize_param height / width (but FIT_SMALL_SIZE's, which
    depend on the image), then its crop_size (data_transformer.cpp InferBlobShape); DenseImageData's crop_size,
    else its crop_height / crop_width, else new_height / new_width, channels is_color (dense_image_data_layer.cpp
    DataLayerSetUp); ImageSegData's crop_size (smaller images are padded to it), else new_height / new_width,
    channels is_color (image_seg_data_layer.cpp DataLayerSetUp). None when nothing is stated."""
    spec = spec_of(layer)
    tp = layer.transform_param
    n = batch_size(layer)
    c = h = w = None
    if tp.crop_size:
        h = w = int(tp.crop_size)
    if tp.force_color:
        c = 3
    elif tp.force_gray:
        c = 1
    elif len(tp.mean_value) > 1:
        c = len(tp.mean_value)
    if spec.reader in IMAGE_LISTS:
        p = params_of(layer)
        c = 3 if p.is_color else 1
        if not tp.crop_size and spec.reader == DENSE and p.crop_height and p.crop_width:
            h, w = int(p.crop_height), int(p.crop_width)
        elif not tp.crop_size and p.new_height and p.new_width:
            h, w = int(p.new_height), int(p.new_width)
    elif spec.channels:
        c = spec.channels
    elif spec.reader == ANNO and tp.HasField("resize_param") and not tp.crop_size:
        rp = tp.resize_param
        if rp.resize_mode != caffe_pb2.ResizeParameter.FIT_SMALL_SIZE and rp.height and rp.width:
            h, w = int(rp.height), int(rp.width)
    shape = (n, c, h, w)
    return None if all(d is None for d in shape) else shape


def data_set_tops(layer, first, boxes: int | None = None) -> list:
    """The tops' shapes of a layer that reads a data set, from what its first sample holds: a Data layer's first
    record decoded, ``first = (C, H, W)`` -> ``(batch, C, crop or H, crop or W)`` and labels ``(batch,)``
    (data_layer.cpp DataLayerSetUp with DataTransformer::InferBlobShape); an AnnotatedData layer's the same after
    its resize_param (:func:`resized_size`), and labels ``1 x 1 x max(boxes, 1) x 8`` for the ``boxes`` of its
    first record, ``(batch,)`` when its records have no annotation type (``boxes`` None;
    annotated_data_layer.cpp DataLayerSetUp); HDF5Data's datasets, ``first`` = each top's trailing shape in the
    first file -> ``(batch,) + trailing`` (hdf5_data_layer.cpp LayerSetUp); DenseImageData's and ImageSegData's
    first image (resized to new_height / new_width) -> its crop_size (DenseImageData: or crop_height /
    crop_width), else its size, and their label images ``(batch, 1, H, W)`` (ImageSegData: and data_dim
    ``(batch, 1, 1, 2)``)."""
    n = batch_size(layer) or 0
    spec = spec_of(layer)
    if spec.reader == HDF5:
        return [(n,) + tuple(int(d) for d in t) for t in first]
    c, h, w = (int(d) for d in first)
    label = (n,) + spec.label_shape
    if spec.reader == ANNO:
        if layer.transform_param.HasField("resize_param"):
            w, h = resized_size(layer.transform_param.resize_param, w, h)
        if boxes is not None:
            label = (1, 1, max(int(boxes), 1), BOX_ROW)
    crop = int(layer.transform_param.crop_size)
    dense = layer.dense_image_data_param
    if spec.reader == DENSE and dense.crop_height and dense.crop_width:
        h, w = int(dense.crop_height), int(dense.crop_width)
    if crop:
        h = w = crop
    if spec.label_of is not None:
        return ([(n, c, h, w)] + spec.label_of((n, c, h, w)))[:len(layer.top)]
    return ([(n, c, h, w)] + [label] * (len(layer.top) - 1))[:len(layer.top)]


def data_tops(layer, given: dict) -> list:
    """Shapes of a data layer's tops: as given by name (for every kind, as pycaffe's reshape of an input), else
    what its parameters fix (Input and DummyData shapes, MemoryData sizes, the image shape a data-set layer
    states in full); a label top (any top after the first, whatever its name) takes the batch size of the data, or
    AnnotatedData's 1 x 1 x 1 x 8 (one box row standing in for the count each batch has), or the segmentation
    layers' label images of the data's height and width (and ImageSegData's data_dim)."""
    spec = spec_of(layer)
    if spec.shaped:
        return [tuple(given[t]) if t in given else s for t, s in zip(layer.top, stated_tops(layer))]
    fixed = [given.get(t) for t in layer.top]
    stated = stated_image_shape(layer)
    if fixed and fixed[0] is None and stated is not None and None not in stated:
        fixed[0] = stated
    if spec.label_tops and spec.label_blob is not None:
        fixed = fixed[:1] + [s if s is not None else spec.label_blob for s in fixed[1:]]
    elif spec.label_of is not None and fixed and fixed[0] is not None:
        labels = spec.label_of(tuple(fixed[0]))
        fixed = fixed[:1] + [s if s is not None else (labels[j] if j < len(labels) else None)
                             for j, s in enumerate(fixed[1:])]
    elif spec.label_tops and fixed and fixed[0] is not None:
        # labels: (batch,) for Data / ImageData, (batch, 1, 1, 1) for WindowData
        label = (fixed[0][0],) + spec.label_shape
        fixed = fixed[:1] + [s if s is not None else label for s in fixed[1:]]
    return fixed
