"""Blob and parameter shapes of a Caffe net, inferred from its definition as Caffe's Net::Init does.

``infer(net, state)`` walks the layers active in ``state`` (Caffe's Net::FilterNet rules, :mod:`sfport.netdef.netstate`) and returns, per layer,
the shapes of its tops and of the parameter blobs Caffe would allocate. Data layers' tops come from their
parameters (:mod:`sfport.netdef.datalayers`) or from the shapes given; every other layer's come from its converter (the registry in
:mod:`sfport.converters`, the one home of a layer type). A layer type without a converter, a converter that does
not say, or an input of unknown shape leaves ``None`` there (and downstream) instead of failing: shapes are a
check, not a requirement for reading.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from sfport import converters
from sfport.formats import caffe_files, forkschema
from sfport.formats.caffe_files import as_text
from sfport.errors import CaffeFileError
from sfport.netdef.datalayers import data_tops, is_data_layer, params_of, spec_of
from sfport.netdef.netstate import NetState, included
from sfport.netdef.wiring import Wiring, about_layer

Shape = tuple  # of ints


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


def layer_shapes(layer, bottoms: list) -> tuple[list, list | None]:
    """(top shapes, parameter blob shapes) of a non-data layer, from its converter; None where unknown (a bottom
    of unknown shape, or a converter that does not say). A converter's complaint about the layer's parameters or
    bottoms (Caffe's CHECKs in LayerSetUp / Reshape) is a :class:`CaffeFileError` naming the layer."""
    ntop = len(layer.top)
    converter = converters.get_for(layer)   # an unknown type: LayerRegistry::CreateLayer fails
    try:
        if any(b is None for b in bottoms):   # what can be checked without them (a convolution's stride: 0)
            converter.check_parameters(layer)
            return [None] * ntop, None
        tops = converter.top_shapes(layer, bottoms)
        params = converter.param_shapes(layer, bottoms)
    except CaffeFileError:
        raise
    except (ValueError, IndexError, ZeroDivisionError, TypeError, OverflowError) as e:
        raise CaffeFileError(None, about_layer(layer, str(e) or type(e).__name__)) from None
    tops = list(tops) if tops is not None else [None] * ntop
    for j, shape in enumerate(tops):
        if shape is not None:
            check_blob_shape(layer, lambda: f"top '{as_text(layer.top[j]) if j < ntop else j}'", shape)
    for j, shape in enumerate(params or []):
        if shape is not None:
            check_blob_shape(layer, lambda: f"parameter blob {j}", shape, empty_ok=False)
    return tops, params


def check_blob_shape(layer, what, shape, empty_ok: bool = True) -> None:
    """Caffe's Blob::Reshape CHECKs (:func:`sfport.formats.caffe_files.blob_count`) for a top or parameter blob of
    ``layer`` (``what()`` names it in a message); a parameter blob with a zero dimension (``empty_ok`` false: a
    num_output of 0, say) is refused too - Caffe's fillers divide by its fan-in and crash."""
    dims = [int(d) for d in shape]
    try:
        caffe_files.blob_count(dims)
    except ValueError as e:
        hint = " (the kernel or window does not fit the input?)" if dims and min(dims) < 0 else ""
        raise CaffeFileError(None, about_layer(layer, f"{what()} would have the shape {dims if len(dims) <= 8 else '...'}"
                                                      f": {e}{hint}")) from None
    if not empty_ok and 0 in dims:
        raise CaffeFileError(None, about_layer(layer, f"{what()} would have the shape {dims}: an empty parameter "
                                                      f"blob (num_output or a size of 0?)"))


def check_batch_size(layer) -> None:
    """A data layer that states ``batch_size: 0``: Caffe's DataLayerSetUp refuses it (image_data_layer.cpp,
    data_layer.cpp: CHECK_GT(batch_size, 0) "Positive batch size required"), whatever the shapes given."""
    spec = spec_of(layer)
    if spec is None or not spec.has_batch or not layer.HasField(spec.param):
        return
    p = params_of(layer)
    if p.HasField("batch_size") and p.batch_size <= 0:
        raise CaffeFileError(None, about_layer(layer, f"batch_size must be positive, not {p.batch_size} "
                                                      f"(Caffe's CHECK_GT(batch_size, 0): Positive batch size "
                                                      f"required)"))


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
    wiring = Wiring()
    out = []
    for i, layer in enumerate(net.layer):
        if not filtered and not included(layer, state):
            continue
        wiring.add(layer)
        bottoms = [blobs.get(b) for b in layer.bottom]
        converter = converters.find_for(layer)
        if converter is not None or is_data_layer(layer):   # (an unknown type is its own error, below)
            forkschema.check_layer(layer, converter)   # --proto: no fork field goes unread
        if is_data_layer(layer):
            check_batch_size(layer)
            tops, params = data_tops(layer, given), []
            for j, shape in enumerate(tops):
                if shape is not None:
                    check_blob_shape(layer, lambda: f"top '{as_text(layer.top[j])}'", shape)
        else:
            tops, params = layer_shapes(layer, bottoms)
        for name, shape in zip(layer.top, tops):
            blobs[name] = None if shape is None else tuple(int(d) for d in shape)
        out.append(LayerShapes(i, bottoms, list(tops), params))
    return out
