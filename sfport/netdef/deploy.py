"""The inference (deploy) form of any net definition: what users write by hand as ``deploy.prototxt``.

:func:`derive` takes a train_val / train_test definition (or a caffemodel's stored training net, or a
deploy net, which comes back unchanged but for its rules) and returns the net Caffe would run at test time on
inputs instead of a data set:

1. The layers of the requested NetState (net.cpp Net::FilterNet; :mod:`sfport.netdef.netstate`).
2. Every data layer (Data, ImageData, HDF5Data, MemoryData, WindowData, DummyData, AnnotatedData, and a Python
   layer without bottoms) becomes an Input layer for its **first** top, shaped from what the layer states
   (:func:`sfport.netdef.datalayers.stated_image_shape`) or as given; its other tops are labels, by position, whatever their
   names. HDF5Data and Python tops name data sets in no fixed order: a top the net reads only as a label (a
   loss's or accuracy's second bottom, a label bottom such as MarginInnerProduct's, Silence, or through layers
   whose every top is read so) is a label, the others are inputs. Input layers stay as they are.
3. Loss layers (a loss type, or any layer with a non-zero ``loss_weight``, a Python loss for example), Accuracy,
   Silence and the other training-only types are dropped, and so is every layer that reads a dropped blob (a
   label or a loss), transitively.
4. Layers whose every top feeds only Silence (directly or through layers dropped by this rule) are dropped, and
   an Input top that fed only dropped layers (a label given by an Input layer) goes too.
5. The Split layers Caffe inserted (insert_splits.cpp: tops named ``<blob>_<layer>_<i>_split_<k>``) are folded
   into their producers.

What remains has Caffe's net outputs (net.cpp Net::Init: the blobs no layer consumes) of the inference net: for
a classification train_val, the classifier's output (``fc8``), not the loss or the accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sfport import converters
from sfport.formats import caffe_files
from sfport.netdef import datalayers
from sfport.errors import CaffeFileError
from sfport.netdef.netstate import NetState, filter_net, missing_producer_hint, stored_phase
from sfport.netdef.wiring import UnknownBottom, Wiring, without_splits
from sfport.protos import caffe_pb2


def is_loss_layer(layer) -> bool:
    """A layer whose tops enter the loss (Layer::SetLossWeights): a loss type, or a non-zero loss_weight."""
    return converters.is_loss(layer.type) or any(w != 0 for w in layer.loss_weight)


def dropped_for_inference(layer) -> bool:
    """Loss layers, Accuracy, Silence and the other layers only training and testing need."""
    return is_loss_layer(layer) or converters.is_training_only(layer.type)


@dataclass
class Derivation:
    """What :func:`derive` did: the inference net, and per kept data layer the shape its input got (None: not
    known from the definition) and what its definition states."""
    net: object
    inputs: dict = field(default_factory=dict)          # input name -> shape or None
    sources: dict = field(default_factory=dict)         # input name -> (data layer name, type)
    labels: list = field(default_factory=list)          # label tops dropped
    dropped: list = field(default_factory=list)         # layer names dropped (losses, accuracy, what feeds only them)

    def unknown_inputs(self) -> list[str]:
        return [n for n, s in self.inputs.items() if not s]


def _normalised_shapes(net, input_shapes) -> dict:
    """``input_shapes`` as {name: shape}: a bare shape is the first data layer's first top."""
    if input_shapes is None:
        return {}
    if isinstance(input_shapes, dict):
        return {k: tuple(v) for k, v in input_shapes.items()}
    first = next((layer.top[0] for layer in net.layer if datalayers.is_data_layer(layer) and len(layer.top)), None)
    if first is None:
        raise CaffeFileError(None, "the net has no input to give a shape to")
    return {first: tuple(input_shapes)}


def derive(net, state=None, input_shapes=None, path=None, already_filtered: bool = False) -> Derivation:
    """The inference net of ``net`` in ``state`` (a NetState or phase; default TEST), as the module docstring
    says. ``input_shapes`` ({name: shape}, or one shape for the first input) override what data layers state.
    ``already_filtered``: ``net`` is a stored net Caffe already filtered (a caffemodel's definition)."""
    filtered = net if already_filtered else filter_net(net, NetState.of(state), path)
    bare = None if input_shapes is None or isinstance(input_shapes, dict) else tuple(input_shapes)
    given = {} if bare is not None else _normalised_shapes(filtered, input_shapes)
    out = caffe_pb2.NetParameter(name=filtered.name)
    result = Derivation(out)

    # Records of the layers in order, Caffe's inserted splits folded: the values their bottoms read and their tops
    # make (an in-place top is a new value of its name)
    wiring = Wiring()
    consumers: dict[int, list[tuple[int, int]]] = {}   # value -> [(record, bottom index)]
    records = []                       # [layer, bottom values, top values, kind]
    try:
        for layer, bottom_names in without_splits(filtered.layer):
            bottoms, tops = wiring.add(layer, bottom_names)
            for j, v in enumerate(bottoms):
                consumers.setdefault(v, []).append((len(records), j))
            records.append([layer, bottoms, tops, None])
    except CaffeFileError as e:
        hint = missing_producer_hint(net, e.blob, state) if isinstance(e, UnknownBottom) and not already_filtered \
            else ""
        raise CaffeFileError(e.path or path, e.message + hint) from None

    def label_use(v: int, seen=()) -> bool:
        """Whether a blob is read only as a label: by a loss or accuracy at a bottom after the first, at a label
        bottom of its type, by Silence, or by layers (Slice, Reshape, ...) whose every top is read so."""
        cs = consumers.get(v)
        if not cs:
            return False
        for c, j in cs:
            layer, _, tops, _ = records[c]
            if converters.is_sink(layer.type) or (j >= 1 and dropped_for_inference(layer)) or \
                    j in converters.label_bottoms(layer.type):
                continue
            if c in seen or not tops or not all(label_use(t, seen + (c,)) for t in tops):
                return False
        return True

    removed: set[int] = set()          # versions that do not exist in the inference net
    for record in records:
        layer, bottoms, tops, _ = record
        if datalayers.is_data_layer(layer) and not datalayers.is_input(layer):
            record[3] = "data"
            # tops that name data sets or Python outputs, in no fixed order: labels by how they are read
            if datalayers.spec_of(layer).named_tops:
                labels = [j for j, v in enumerate(tops) if label_use(v)]
                if len(labels) == len(tops):
                    labels = labels[1:]
            else:                          # Caffe's convention: (data, label), by position
                labels = list(range(1, len(tops)))
            removed.update(tops[j] for j in labels)
            result.labels.extend(layer.top[j] for j in labels)
        elif datalayers.is_input(layer):
            record[3] = "input"
        elif dropped_for_inference(layer) or any(v in removed for v in bottoms):
            record[3] = "dropped"
            removed.update(tops)
        else:
            record[3] = "kept"

    # Backward (consumers come after producers): a layer whose every top is read only by Silence or by layers
    # pruned here is pruned; an input read only by dropped or pruned layers goes.
    def dead(v: int) -> bool:
        cs = consumers.get(v)
        return bool(cs) and all(records[c][3] == "pruned" or converters.is_sink(records[c][0].type) for c, _ in cs)

    for record in reversed(records):
        if record[3] == "kept" and record[2] and all(dead(v) for v in record[2]):
            record[3] = "pruned"
            removed.update(record[2])

    def unread(v: int) -> bool:
        cs = consumers.get(v)
        return bool(cs) and all(records[c][3] in ("dropped", "pruned") for c, _ in cs)

    for layer, bottoms, tops, kind in records:
        if kind in ("dropped", "pruned"):
            result.dropped.append(layer.name)
            continue
        if kind in ("data", "input"):
            keep = [j for j, v in enumerate(tops) if v not in removed and not unread(v)]
            if not keep:
                result.dropped.append(layer.name)
                continue
            if bare is not None:   # one shape given: the inference net's first input
                given[layer.top[keep[0]]], bare = bare, None
            stated = datalayers.data_tops(layer, given)
            found = []
            for j in keep:
                top = layer.top[j]
                shape = stated[j] if j < len(stated) else None
                found.append(tuple(int(d) for d in shape) if shape else None)
                result.inputs[top] = found[-1]
                result.sources[top] = (layer.name, layer.type)
            # InputLayer::LayerSetUp: a shape for every top, or none
            datalayers.input_layer(out, layer.name, [layer.top[j] for j in keep], found if all(found) else [])
            continue
        copy = out.layer.add()
        copy.CopyFrom(layer)
        copy.ClearField("include")
        copy.ClearField("exclude")
        copy.ClearField("phase")
        del copy.bottom[:]
        copy.bottom.extend(wiring.name[v] for v in bottoms)
    strangers = [k for k in given if k not in result.inputs and k not in result.labels]
    if strangers:
        raise CaffeFileError(path, f"a shape is given for '{strangers[0]}', which is not an input of the net "
                                   f"(its inputs: {', '.join(result.inputs) or 'none'})")
    return result


def net_outputs(net) -> list[str]:
    """Caffe's net outputs (net.cpp Net::Init): the blobs no later layer consumes, in the order they appear."""
    available: dict[str, None] = {}
    for layer in net.layer:
        for b in layer.bottom:
            available.pop(b, None)
        for t in layer.top:
            available[t] = None
    return list(available)


def deploy_net(source, phase="test", input_shapes=None, *, stages=(), level: int = 0):
    """The deploy NetParameter ``sfport deploy`` writes, of ``source`` (a net file, a CaffeModel or a
    NetParameter) in the NetState (``phase``, ``level``, ``stages``): the inference net with every input shaped
    (an input whose shape the definition does not fix is an error naming it and the option that gives it)."""
    path, already_filtered = None, False
    if isinstance(source, caffe_pb2.NetParameter):
        net = source
    else:
        model = source if isinstance(source, caffe_files.CaffeModel) else caffe_files.read_net(source)
        path, net = model.path, model.net
        # a caffemodel's definition: the net Caffe filtered and stored (net.cpp Net::ToProto)
        already_filtered = model.kind == caffe_files.BINARY or stored_phase(net) is not None
    d = derive(net, NetState.of(phase, level, stages), input_shapes, path, already_filtered)
    missing = d.unknown_inputs()
    if missing:
        raise unknown_input_error(path, missing[0], d.sources.get(missing[0]))
    if not d.inputs:
        raise CaffeFileError(path, "the net has no data or Input layer: nothing to make an input of")
    d.net.ClearField("state")
    return d.net


def unknown_input_error(path, name: str, source=None) -> CaffeFileError:
    """The one line for an input whose shape nothing gives."""
    where = f" (from layer '{source[0]}', {source[1]}, whose definition does not fix it)" if source else ""
    return CaffeFileError(path, f"the shape of input '{name}' is unknown{where}: give it with --shape "
                                f"{name}=N,C,H,W (Python: input_shapes={{'{name}': (N, C, H, W)}})")
