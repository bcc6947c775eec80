"""Blob and parameter shapes of a Caffe net, inferred from its definition as Caffe's Net::Init does.

``infer(net, phase)`` walks the layers active in ``phase`` (Caffe's Net::FilterNet rules) and returns, per layer,
the shapes of its tops and of the parameter blobs Caffe would allocate. Data layers' tops come from their
parameters or from the shapes given; every other layer's come from its converter (the registry in
:mod:`sfport.converters`, the one home of a layer type). A layer type without a converter, a converter that does
not say, or an input of unknown shape leaves ``None`` there (and downstream) instead of failing: shapes are a
check, not a requirement for reading.
"""
from __future__ import annotations

from dataclasses import dataclass

from sfport import converters

Shape = tuple  # of ints

# The layers that feed a net (Caffe's data layers and Input): their tops become the graph's inputs.
DATA_TYPES = ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "AnnotatedData",
              "Python")
# Those whose definition fixes their tops' shapes; the others read a data set (a training net's data layers).
SHAPED_DATA_TYPES = ("Input", "DummyData", "MemoryData")


def reads_data_set(layer) -> bool:
    """A data layer that reads a data set (Data, ImageData, HDF5Data, ...): its tops' shapes come from the data."""
    return layer.type in DATA_TYPES and layer.type not in SHAPED_DATA_TYPES


@dataclass
class LayerShapes:
    index: int                       # position in net.layer
    bottoms: list                    # shapes (or None) of the bottoms
    tops: list                       # shapes (or None) of the tops
    params: list | None              # expected parameter blob shapes, None when unknown


def layer_included(layer, phase: int, level: int = 0, stages: tuple = ()) -> bool:
    """Caffe's Net::FilterNet / StateMeetsRule for one layer (phase given as caffe_pb2.TRAIN/TEST)."""
    def meets(rule) -> bool:
        if rule.HasField("phase") and rule.phase != phase:
            return False
        if rule.HasField("min_level") and level < rule.min_level:
            return False
        if rule.HasField("max_level") and level > rule.max_level:
            return False
        if any(s not in stages for s in rule.stage):
            return False
        if any(s in stages for s in rule.not_stage):
            return False
        return True

    if len(layer.include):
        return any(meets(r) for r in layer.include)
    return not any(meets(r) for r in layer.exclude)


def _repeat(shapes: list, ntop: int) -> list:
    """One shape given for several tops applies to each; missing ones are unknown."""
    if len(shapes) == 1:
        shapes = shapes * ntop
    return (shapes + [None] * ntop)[:ntop]


def data_tops(layer, given: dict) -> list:
    """Shapes of a data layer's tops: as given by name, else what its parameters fix (Input and DummyData
    shapes, MemoryData sizes, ImageData's new_height/new_width or crop_size); a label top takes the batch size
    of the data."""
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
    else:
        fixed = [given.get(t) for t in layer.top]
        if fixed and fixed[0] is None and layer.type == "ImageData":
            p, tp = layer.image_data_param, layer.transform_param
            h = tp.crop_size or p.new_height
            w = tp.crop_size or p.new_width
            if h and w:
                fixed[0] = (p.batch_size, 3 if p.is_color else 1, h, w)
        if len(fixed) > 1 and fixed[0] is not None and fixed[1] is None:
            fixed[1] = (fixed[0][0],)
    return fixed


def layer_shapes(layer, bottoms: list) -> tuple[list, list | None]:
    """(top shapes, parameter blob shapes) of a non-data layer, from its converter; None where unknown."""
    ntop = len(layer.top)
    converter = converters.find(layer.type)
    if converter is None or any(b is None for b in bottoms) or not bottoms:
        return [None] * ntop, None
    try:
        tops = converter.top_shapes(layer, bottoms)
        params = converter.param_shapes(layer, bottoms)
    except (ValueError, IndexError, ZeroDivisionError, TypeError):
        return [None] * ntop, None
    return (list(tops) if tops is not None else [None] * ntop), params


def infer(net, phase: int = 1, input_shapes: dict | None = None) -> list[LayerShapes]:
    """Shapes of every layer's tops and parameter blobs for the layers active in ``phase`` (1 = TEST).
    ``input_shapes`` gives blob shapes by name (for Input layers' and data layers' tops)."""
    given = dict(input_shapes or {})
    blobs: dict[str, tuple | None] = dict(given)
    out = []
    for i, layer in enumerate(net.layer):
        if not layer_included(layer, phase):
            continue
        bottoms = [blobs.get(b) for b in layer.bottom]
        if layer.type in DATA_TYPES:
            tops, params = data_tops(layer, given), []
        else:
            tops, params = layer_shapes(layer, bottoms)
        for name, shape in zip(layer.top, tops):
            blobs[name] = None if shape is None else tuple(int(d) for d in shape)
        out.append(LayerShapes(i, bottoms, list(tops), params))
    return out
