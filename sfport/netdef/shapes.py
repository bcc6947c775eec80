"""Blob and parameter shapes of a Caffe net, inferred from its definition as Caffe's Net::Init does.

``infer(net, state)`` walks the layers active in ``state`` (Caffe's Net::FilterNet rules, :mod:`sfport.netdef.netstate`) and returns, per layer,
the shapes of its tops and of the parameter blobs Caffe would allocate. Data layers' tops come from their
parameters or from the shapes given; every other layer's come from its converter (the registry in
:mod:`sfport.converters`, the one home of a layer type). A layer type without a converter, a converter that does
not say, or an input of unknown shape leaves ``None`` there (and downstream) instead of failing: shapes are a
check, not a requirement for reading.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from sfport import converters
from sfport.formats import caffe_files
from sfport.errors import CaffeFileError
from sfport.netdef.netstate import NetState, included

Shape = tuple  # of ints

# The layers that feed a net (Caffe's data layers and Input): their tops become the graph's inputs. A Python
# layer is one only when it has no bottoms (a Python layer with bottoms computes, a Python loss for example).
DATA_TYPES = ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "AnnotatedData",
              "Python")
# Those whose definition fixes their tops' shapes; the others read a data set (a training net's data layers).
SHAPED_DATA_TYPES = ("Input", "DummyData", "MemoryData")


def is_data_layer(layer) -> bool:
    """A layer whose tops are the net's inputs: Input, a data layer, or a Python layer without bottoms."""
    if layer.type == "Python":
        return len(layer.bottom) == 0
    return layer.type in DATA_TYPES


def reads_data_set(layer) -> bool:
    """A data layer that reads a data set (Data, ImageData, HDF5Data, ...): its tops' shapes come from the data."""
    return is_data_layer(layer) and layer.type not in SHAPED_DATA_TYPES


@dataclass
class LayerShapes:
    index: int                       # position in net.layer
    bottoms: list                    # shapes (or None) of the bottoms
    tops: list                       # shapes (or None) of the tops
    params: list | None              # expected parameter blob shapes, None when unknown


def layer_included(layer, state=None, level: int = 0, stages: tuple = ()) -> bool:
    """Caffe's Net::FilterNet for one layer; ``state`` is a NetState or a phase (then with ``level``, ``stages``)."""
    if not isinstance(state, NetState):
        state = NetState.of(state, level, stages)
    return included(layer, state)


def _repeat(shapes: list, ntop: int) -> list:
    """One shape given for several tops applies to each; missing ones are unknown."""
    if len(shapes) == 1:
        shapes = shapes * ntop
    return (shapes + [None] * ntop)[:ntop]


def batch_size(layer) -> int | None:
    """The batch size a data layer states (None: it does not)."""
    for name in ("data_param", "image_data_param", "window_data_param", "hdf5_data_param", "memory_data_param"):
        if layer.HasField(name) and getattr(layer, name).batch_size:
            return int(getattr(layer, name).batch_size)
    return None


def stated_image_shape(layer) -> tuple | None:
    """The shape of a data-set layer's first top as far as its definition fixes it, None for an axis it does not:
    batch_size; ImageData's channels (is_color), new_height/new_width or crop_size (image_data_layer.cpp
    DataLayerSetUp); WindowData's crop_size of colour images (window_data_layer.cpp); a Data layer's crop_size,
    and its channels when force_color / force_gray or one mean_value per channel say them (data_transformer.cpp
    checks mean_value has 1 or C entries). None when nothing is stated."""
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
    if layer.type == "ImageData":
        p = layer.image_data_param
        c = 3 if p.is_color else 1
        if not tp.crop_size and p.new_height and p.new_width:
            h, w = int(p.new_height), int(p.new_width)
    elif layer.type == "WindowData":
        c = 3
    shape = (n, c, h, w)
    return None if all(d is None for d in shape) else shape


def data_set_tops(layer, first) -> list:
    """The tops' shapes of a layer that reads a data set, from what its first sample holds: a Data layer's first
    record decoded, ``first = (C, H, W)`` -> ``(batch, C, crop or H, crop or W)`` and labels ``(batch,)``
    (data_layer.cpp DataLayerSetUp with DataTransformer::InferBlobShape); HDF5Data's datasets, ``first`` = each
    top's trailing shape in the first file -> ``(batch,) + trailing`` (hdf5_data_layer.cpp LayerSetUp)."""
    n = batch_size(layer) or 0
    if layer.type == "HDF5Data":
        return [(n,) + tuple(int(d) for d in t) for t in first]
    c, h, w = (int(d) for d in first)
    crop = int(layer.transform_param.crop_size)
    if crop:
        h = w = crop
    return ([(n, c, h, w)] + [(n,)] * (len(layer.top) - 1))[:len(layer.top)]


def data_tops(layer, given: dict) -> list:
    """Shapes of a data layer's tops: as given by name (for every kind, as pycaffe's reshape of an input), else
    what its parameters fix (Input and DummyData shapes, MemoryData sizes, the image shape a data-set layer
    states in full); a label top (any top after the first, whatever its name) takes the batch size of the data."""
    ntop = len(layer.top)
    if layer.type == "Input":
        fixed = _repeat([tuple(s.dim) for s in layer.input_param.shape], ntop)
    elif layer.type == "DummyData":
        p = layer.dummy_data_param
        fixed = _repeat([tuple(s.dim) for s in p.shape] or [
            (n, c, h, w) for n, c, h, w in zip(p.num, p.channels, p.height, p.width)], ntop)
    elif layer.type == "MemoryData":
        p = layer.memory_data_param
        fixed = _repeat([(p.batch_size, p.channels, p.height, p.width), (p.batch_size,)], ntop)
    if layer.type in SHAPED_DATA_TYPES:
        return [tuple(given[t]) if t in given else s for t, s in zip(layer.top, fixed)]
    else:
        fixed = [given.get(t) for t in layer.top]
        stated = stated_image_shape(layer)
        if fixed and fixed[0] is None and stated is not None and None not in stated:
            fixed[0] = stated
        if layer.type != "HDF5Data" and fixed and fixed[0] is not None:
            # labels: (batch,) for Data / ImageData / MemoryData, (batch, 1, 1, 1) for WindowData
            label = (fixed[0][0], 1, 1, 1) if layer.type == "WindowData" else (fixed[0][0],)
            fixed = fixed[:1] + [s if s is not None else label for s in fixed[1:]]
    return fixed


def layer_shapes(layer, bottoms: list) -> tuple[list, list | None]:
    """(top shapes, parameter blob shapes) of a non-data layer, from its converter; None where unknown (a bottom
    of unknown shape, or a converter that does not say). A converter's complaint about the layer's parameters or
    bottoms (Caffe's CHECKs in LayerSetUp / Reshape) is a :class:`CaffeFileError` naming the layer."""
    ntop = len(layer.top)
    converter = converters.get(layer.type, _text(layer.name))   # an unknown type: LayerRegistry::CreateLayer fails
    if any(b is None for b in bottoms):
        return [None] * ntop, None
    try:
        tops = converter.top_shapes(layer, bottoms)
        params = converter.param_shapes(layer, bottoms)
    except CaffeFileError:
        raise
    except (ValueError, IndexError, ZeroDivisionError, TypeError, OverflowError) as e:
        raise CaffeFileError(None, about_layer(layer, str(e) or type(e).__name__)) from None
    tops = list(tops) if tops is not None else [None] * ntop
    for j, shape in enumerate(tops):
        if shape is not None:
            check_blob_shape(layer, f"top '{_text(layer.top[j]) if j < ntop else j}'", shape)
    for j, shape in enumerate(params or []):
        if shape is not None:
            check_blob_shape(layer, f"parameter blob {j}", shape, empty_ok=False)
    return tops, params


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def about_layer(layer, message: str) -> str:
    """A converter's message about ``layer``, led by the layer's name and type once."""
    message = " ".join(message.split())
    if message.startswith(f"layer '{_text(layer.name)}'"):
        return message
    return f"layer '{_text(layer.name)}' ({_text(layer.type)}): {message}"


def check_blob_shape(layer, what: str, shape, empty_ok: bool = True) -> None:
    """Caffe's Blob::Reshape CHECKs (:func:`sfport.formats.caffe_files.blob_count`) for a top or parameter blob of
    ``layer``; a parameter blob with a zero dimension (``empty_ok`` false: a num_output of 0, say) is refused
    too - Caffe's fillers divide by its fan-in and crash."""
    dims = [int(d) for d in shape]
    try:
        caffe_files.blob_count(dims)
    except ValueError as e:
        hint = " (the kernel or window does not fit the input?)" if any(d < 0 for d in dims) else ""
        raise CaffeFileError(None, about_layer(layer, f"{what} would have the shape {dims if len(dims) <= 8 else '...'}"
                                                      f": {e}{hint}")) from None
    if not empty_ok and any(d == 0 for d in dims):
        raise CaffeFileError(None, about_layer(layer, f"{what} would have the shape {dims}: an empty parameter "
                                                      f"blob (num_output or a size of 0?)"))


def infer(net, state=None, input_shapes: dict | None = None, filtered: bool = False,
          path=None) -> list[LayerShapes]:
    """Shapes of every layer's tops and parameter blobs for the layers active in ``state`` (a NetState or a
    phase; default TEST), or of every layer when ``filtered`` (a net already reduced to one state).
    ``input_shapes`` gives blob shapes by name (for Input layers' and data layers' tops). A layer's complaint
    about its parameters or bottoms names the definition file ``path``."""
    try:
        return _infer(net, state, input_shapes, filtered)
    except CaffeFileError as e:
        if e.path is None and path is not None:
            e.path = os.fspath(path)
            e.args = (str(e),)
        raise


def _infer(net, state, input_shapes, filtered) -> list[LayerShapes]:
    state = NetState.of(state).for_net(net)
    given = dict(input_shapes or {})
    blobs: dict[str, tuple | None] = dict(given)
    wiring = _Wiring()
    out = []
    for i, layer in enumerate(net.layer):
        if not filtered and not included(layer, state):
            continue
        wiring.add(layer)
        bottoms = [blobs.get(b) for b in layer.bottom]
        if is_data_layer(layer):
            tops, params = data_tops(layer, given), []
            for j, shape in enumerate(tops):
                if shape is not None:
                    check_blob_shape(layer, f"top '{_text(layer.top[j])}'", shape)
        else:
            tops, params = layer_shapes(layer, bottoms)
        for name, shape in zip(layer.top, tops):
            blobs[name] = None if shape is None else tuple(int(d) for d in shape)
        out.append(LayerShapes(i, bottoms, list(tops), params))
    return out


class _Wiring:
    """Caffe's bookkeeping of blob names as Net::Init meets the layers (net.cpp AppendBottom / AppendTop, after
    insert_splits.cpp InsertSplits): a bottom must have been produced before ("Unknown bottom blob"); a top is
    new, or in place - the same name as the layer's bottom at the same index; any other reuse of a name is
    "Top blob 'x' produced by multiple sources". InsertSplits gives every reader of a value shared by several
    readers its own copy, so an in-place layer on a value that another reader also reads (or that it reads
    twice) writes a name that is then produced twice: Caffe refuses that net as well."""

    def __init__(self):
        self.value: dict[str, tuple] = {}      # blob name -> (layer index, top index) of its current value
        self.readers: dict[tuple, int] = {}    # value -> how many bottoms read it
        self.count = 0

    def add(self, layer) -> None:
        i, self.count = self.count, self.count + 1
        for j, b in enumerate(layer.bottom):
            if b not in self.value:
                raise CaffeFileError(None, about_layer(layer, f"unknown bottom blob '{_text(b)}' (bottom index {j}): no "
                                                         f"earlier layer produces it"))
            v = self.value[b]
            self.readers[v] = self.readers.get(v, 0) + 1
        seen = set()
        for j, t in enumerate(layer.top):
            if t in seen:
                raise CaffeFileError(None, about_layer(layer, f"top blob '{_text(t)}' is listed twice (produced by "
                                                         f"multiple sources)"))
            seen.add(t)
            in_place = j < len(layer.bottom) and layer.bottom[j] == t
            if in_place:
                n = self.readers.get(self.value[t], 0)
                if n > 1:
                    raise CaffeFileError(None, about_layer(
                        layer, f"works in place on '{_text(t)}', which {n - 1} other bottom(s) also read: Caffe "
                               f"splits a blob with several readers, and '{_text(t)}' is then produced by multiple "
                               f"sources (give this layer its own top)"))
            elif t in self.value:
                raise CaffeFileError(None, about_layer(layer, f"top blob '{_text(t)}' is produced by multiple sources "
                                                         f"(an earlier layer or input already makes it)"))
            self.value[t] = (i, j)
