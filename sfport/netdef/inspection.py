"""What ``sfport inspect`` prints: a net definition, or one merged with weights, summarized per layer (shapes,
parameters, phase, Caffe's inserted splits folded), with what the shapes could not say."""

import math
from dataclasses import dataclass, field

from google.protobuf import unknown_fields

from sfport import converters
from sfport.formats import caffe_files, disk, hdf5_weights
from sfport.netdef import builtin, datalayers, shapes, wiring
from sfport.errors import CaffeFileError
from sfport.formats.caffe_files import CaffeModel, as_text, blob_shape
from sfport.netdef import netstate
from sfport.netdef.netstate import NetState, filter_net, missing_producer_hint, stored_phase
from sfport.netdef.wiring import UnknownBottom
from sfport.protos import caffe_pb2

from sfport.netdef.weight_match import MergeReport, merge


@dataclass
class LayerRow:
    index: int                    # position in the (filtered) net: the order Caffe creates the layers in
    name: str
    type: str
    bottoms: list[str]            # as shown: a bottom read through a folded Split names the producer's blob
    tops: list[str]
    blob_shapes: list[list[int]]  # parameter blob shapes: stored, or inferred (``inferred``)
    params: int
    phase: str = ""
    inferred: bool = False        # blob shapes inferred from the definition, not read from weights
    top_shapes: list | None = None    # per top: its shape (Caffe's "Top shape" line) or None when unknown
    split: bool = False           # a Split layer Caffe inserted (insert_splits.cpp)

    def as_dict(self) -> dict:
        tops = [None if s is None else list(s) for s in (self.top_shapes or [None] * len(self.tops))]
        return {"index": self.index, "name": self.name, "type": self.type, "bottoms": self.bottoms,
                "tops": self.tops, "top_shapes": tops, "param_shapes": self.blob_shapes,
                "param_shapes_inferred": self.inferred, "blob_shapes": self.blob_shapes, "params": self.params,
                "phase": self.phase, "shapes_inferred": self.inferred, "inserted_split": self.split}


def _phase_label(layer) -> str:
    parts = []
    for kind, rules in (("include", layer.include), ("exclude", layer.exclude)):
        for r in rules:
            if r.HasField("phase"):
                parts.append(f"{kind} {caffe_pb2.Phase.Name(r.phase)}")
    return ", ".join(parts)


def unknown_field_notes(net) -> list[str]:
    """Fields present in the file that the schema does not know, per layer: the sign of a file from another
    Caffe fork (BVLC master's swish_param and clip_param, for example, reuse the fork's numbers 147 and 148)."""
    notes = []

    def walk(msg, where: str):
        found = sorted({f.field_number for f in unknown_fields.UnknownFieldSet(msg)})
        if found:
            notes.append(f"{where}: unknown field number{'s' if len(found) > 1 else ''} "
                         + ", ".join(map(str, found)))
        for fd, value in msg.ListFields():
            if fd.message_type is None or fd.name == "blobs":
                continue
            for i, sub in enumerate(value if fd.is_repeated else [value]):
                walk(sub, f"{where}.{fd.name}" + (f"[{i}]" if fd.is_repeated else ""))

    for layer in net.layer:
        walk(layer, f"layer '{as_text(layer.name)}'")
    return notes


def summarize(model: CaffeModel, infer_missing: bool = True) -> list[LayerRow]:
    """One row per layer of ``model.net`` (every layer, whatever its rules): name, type, connections, top
    shapes, parameter blob shapes (stored, or inferred for a layer without blobs when ``infer_missing``) and
    parameter count."""
    return _rows(model, model.net, shape_walk(model.net, {}, model.path), infer_missing)


@dataclass
class WalkedShapes:
    """Top and parameter shapes of a net already reduced to one state, walked as Caffe's Net::Init does."""
    layers: list                                          # shapes.LayerShapes per layer of the net
    unknown_inputs: list = field(default_factory=list)    # (top, layer name, layer type, stated shape or None)
    stuck: list = field(default_factory=list)             # (layer name, type): bottoms known, tops not inferred


def shape_walk(net, given: dict, path=None) -> WalkedShapes:
    """:func:`sfport.netdef.shapes.infer` over every layer of ``net`` (a net already filtered to one state), with the
    shapes ``given`` by name taking the place of what a data or Input layer states (as ``sfport deploy`` and
    pycaffe's reshape do); a label top takes the batch size of its data (:func:`sfport.netdef.datalayers.data_tops`)."""
    out = WalkedShapes(shapes.infer(net, input_shapes=given, filtered=True, path=path))
    for layer, ls in zip(net.layer, out.layers):
        bottoms, tops = ls.bottoms, ls.tops
        if datalayers.is_data_layer(layer):
            for j, (t, shape) in enumerate(zip(layer.top, tops)):
                # a label of a data-set layer takes its batch from the data: only the data's shape is missing
                derived = j > 0 and datalayers.reads_data_set(layer) and not datalayers.spec_of(layer).named_tops
                if shape is None and not derived:
                    out.unknown_inputs.append((as_text(t), as_text(layer.name), as_text(layer.type),
                                               datalayers.stated_image_shape(layer) if t == layer.top[0] else None))
        elif len(layer.top) and all(b is not None for b in bottoms) and bottoms and any(t is None for t in tops):
            out.stuck.append((as_text(layer.name), as_text(layer.type)))
    return out


def _rows(model: CaffeModel, net, walked: WalkedShapes, infer_missing: bool = True, labels=None) -> list[LayerRow]:
    """Rows of the layers of ``net`` (``model.net`` or its filtered copy): blob shapes stored in ``model`` when
    the layer has blobs there, else the inferred ones (marked)."""
    rows = []
    for i, layer in enumerate(net.layer):
        ls = walked.layers[i]
        if len(layer.blobs):
            blob_shapes = [list(blob_shape(b)) for b in layer.blobs]
            guessed = False
        else:
            blob_shapes = [list(s) for s in ((ls.params if infer_missing else None) or [])]
            guessed = bool(blob_shapes)
        count = sum(math.prod(s) for s in blob_shapes)
        rows.append(LayerRow(i, as_text(layer.name), as_text(layer.type), [as_text(b) for b in layer.bottom],
                             [as_text(t) for t in layer.top], blob_shapes, count,
                             labels[i] if labels is not None else _phase_label(layer), guessed, list(ls.tops),
                             wiring.is_inserted_split(layer)))
    return rows


def fold_splits(rows: list[LayerRow]) -> list[LayerRow]:
    """The rows without the Split layers Caffe inserted: a layer that read a split's top reads the producer's
    blob (the split's bottom) instead, as in the definition before Caffe's InsertSplits."""
    out = []
    for r, bottoms in wiring.without_splits(rows, lambda r: r.split, lambda r: r.bottoms, lambda r: r.tops):
        out.append(LayerRow(r.index, r.name, r.type, bottoms, list(r.tops), r.blob_shapes, r.params, r.phase,
                            r.inferred, r.top_shapes, r.split))
    return out



@dataclass
class Inspection:
    """What ``sfport inspect`` shows: the model read (or merged), its rows (in the NetState ``state``, Caffe's
    inserted splits folded unless ``splits``), the merge report if any, and what the shapes could not say."""
    source: str
    model: CaffeModel
    rows: list[LayerRow]
    report: MergeReport | None = None
    state: NetState | None = None     # None: a stored net whose phase the file does not record
    stored: bool = False              # a net Caffe stored, already filtered: shown as stored
    net: object = None                # the NetParameter shown (the filtered definition)
    splits_folded: int = 0
    unknown_inputs: list = field(default_factory=list)   # (top, layer, type, stated shape or None)
    stuck: list = field(default_factory=list)            # (layer, type) whose tops sfport cannot infer
    notes: list = field(default_factory=list)            # e.g. a state asked of a stored net

    def totals(self) -> dict:
        net = self.net if self.net is not None else self.model.net
        return {"layers": len(net.layer), "layers_shown": len(self.rows), "splits_folded": self.splits_folded,
                "layers_with_blobs": sum(1 for r in self.rows if r.blob_shapes),
                "params": sum(r.params for r in self.rows),
                "params_inferred": sum(r.params for r in self.rows if r.inferred),
                "weights_present": self.model.has_weights()}

    def unknown_fields(self) -> list[str]:
        return unknown_field_notes(self.model.net)

    def state_dict(self) -> dict:
        if self.state is None:
            return {"phase": None, "level": None, "stages": [], "stored": self.stored}
        return {"phase": caffe_pb2.Phase.Name(self.state.phase), "level": self.state.level,
                "stages": list(self.state.stages), "stored": self.stored}

    def describe_state(self) -> str:
        if self.state is None:
            return "the net Caffe stored (its phase not recorded)"
        return self.state.describe() + (" (the net Caffe stored, already filtered)" if self.stored else "")

    def shape_notes(self) -> list[str]:
        """At most one line each: the inputs without a shape and how to give them; a layer sfport cannot infer."""
        out = []
        if self.unknown_inputs:
            names = list(dict.fromkeys(t for t, *_ in self.unknown_inputs))
            layers = list(dict.fromkeys((l, k) for _, l, k, _ in self.unknown_inputs))
            stated = next((s for *_, s in self.unknown_inputs if s is not None), None)
            says = "" if stated is None else \
                f", which states {','.join('?' if d is None else str(d) for d in stated)}"
            what = ", ".join(f"'{n}'" for n in names)
            where = ", ".join(f"layer '{l}', {k}" for l, k in layers)
            dims = {t: ",".join("NCHW"[k] if d is None else str(d) for k, d in enumerate(s))
                    if s is not None and len(s) == 4 else "N,C,H,W" for t, _, _, s in self.unknown_inputs}
            out.append(f"top shapes unknown: no shape for input{'s' if len(names) > 1 else ''} {what} ({where}{says}): give {'them' if len(names) > 1 else 'it'} with "
                       + " ".join(f"--shape {n}={dims[n]}" for n in names))
        if self.stuck:
            name, kind = self.stuck[0]
            more = f" (and {len(self.stuck) - 1} more layers)" if len(self.stuck) > 1 else ""
            why = "sfport has no converter for the type" if converters.find(kind) is None else \
                "its converter gives no top shape for these bottoms"
            out.append(f"top shapes unknown from layer '{name}' ({kind}) on: {why}{more}")
        return out

    def as_dict(self) -> dict:
        doc = {"source": self.source, "name": as_text(self.model.net.name), "state": self.state_dict(),
               "layers": [r.as_dict() for r in self.rows], "totals": self.totals(), "upgrades": self.model.upgrades,
               "unknown_fields": self.unknown_fields(),
               "unknown_inputs": [{"top": t, "layer": l, "type": k} for t, l, k, _ in self.unknown_inputs],
               "notes": self.shape_notes() + list(self.notes)}
        if self.report is not None:
            doc["merge"] = self.report.as_dict()
        return doc


def _given_shapes(net, input_shapes, path) -> dict:
    """``input_shapes`` as {top: shape}: one bare shape is the first data layer's first top; a name that is no
    data layer's top is an error naming the inputs."""
    inputs = [t for layer in net.layer if datalayers.is_data_layer(layer) for t in layer.top]
    if input_shapes is None:
        return {}
    if not isinstance(input_shapes, dict):
        if not inputs:
            raise CaffeFileError(path, "the net has no input to give a shape to")
        input_shapes = {inputs[0]: input_shapes}
    for name in input_shapes:
        if name not in inputs:
            raise CaffeFileError(path, f"a shape is given for '{name}', which is not an input of the net "
                                       f"(its inputs: {', '.join(map(as_text, inputs)) or 'none'})")
    return {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}


TORCH_ZIP = "torch"             # torch.save's zip archive: sfport's converted net (`sfport convert`, format pt)
TORCHSCRIPT = "torchscript"     # torch.jit.save's zip archive (`sfport convert --format torchscript`)
ONNX = "onnx"                   # an ONNX ModelProto (`sfport convert --format onnx`)
HDF5_WEIGHTS = "hdf5-weights"   # Caffe's HDF5 weights (Net::ToHDF5: snapshot_format HDF5's .caffemodel.h5)
HDF5_STATE = "hdf5-solverstate"  # Caffe's HDF5 solver state (.solverstate.h5)
SOLVERSTATE = "solverstate"     # a binary .solverstate
CAFFE = "caffe"                 # a net definition, a caffemodel or a solver (caffe_files sniffs which)


def file_kind(path) -> str:
    """Which of the files sfport reads or writes ``path`` is, from its first bytes (a zip archive, HDF5) and,
    where the bytes are a protobuf of any schema, its name (.onnx, .solverstate); the file is checked to be a
    readable regular file first. Imports no torch."""
    import zipfile

    disk.check_readable_file(path)
    with open(path, "rb") as f:
        head = f.read(8)
    name = str(path).lower()
    if head[:4] == disk.ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CaffeFileError(path, f"a damaged zip archive (truncated .pt?): {e}") from None
        # torch.jit.save writes the module's code (code/...) and constants.pkl beside data.pkl; torch.save only data.pkl
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return TORCHSCRIPT
        return TORCH_ZIP
    if head == b"\x89HDF\r\n\x1a\n":
        return HDF5_STATE if name.endswith(".solverstate.h5") else HDF5_WEIGHTS
    if name.endswith(".pth") or caffe_files.is_torch_pt(path):   # not a zip: load_torch_file says what it is not
        return TORCH_ZIP
    if name.endswith(".onnx"):
        return ONNX
    if name.endswith(".solverstate"):
        return SOLVERSTATE
    return CAFFE


def onnx_summary(path) -> dict:
    """An ONNX model's header, inputs, outputs (name and shape: a size, or the name of a dynamic axis),
    operators and initializer values, read with onnx (no torch, no external data)."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any decoding failure is bad input here
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CaffeFileError(path, f"not a valid ONNX model: {first}") from None
    if not len(m.graph.node) and not len(m.graph.output):
        raise CaffeFileError(path, "decodes as protobuf but holds no ONNX graph (not an ONNX model?)")

    def shape(v):
        dims = v.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    inits = {i.name for i in m.graph.initializer}
    ops: dict[str, int] = {}
    for node in m.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"source": str(path), "kind": "onnx", "ir_version": m.ir_version,
            "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
            "producer": f"{m.producer_name} {m.producer_version}".strip(),
            "inputs": [{"name": v.name, "shape": shape(v)} for v in m.graph.input if v.name not in inits],
            "outputs": [{"name": v.name, "shape": shape(v)} for v in m.graph.output],
            "nodes": len(m.graph.node), "operators": ops,
            "initializers": len(m.graph.initializer),
            "values": sum(math.prod(i.dims) for i in m.graph.initializer),
            "metadata": {p.key: p.value for p in m.metadata_props}}


def inspect(model: str | None = None, prototxt: str | None = None, state=None, input_shapes=None,
            splits: bool = False, read: CaffeModel | None = None, source: str | None = None) -> Inspection:
    """A caffemodel or prototxt (``model``), a definition with ``model``'s weights merged in by layer name
    (``prototxt``), or without either the built-in SphereFace-20 deploy net, summarized layer by layer as Caffe
    would instantiate it: the layers of the NetState ``state`` (a NetState, a phase name or number; None: TEST)
    as Net::FilterNet keeps them (data layers, losses and accuracy included), each top's shape (Caffe's "Top
    shape" lines) from the definition and ``input_shapes`` ({input: shape}, or one shape for the first input),
    and the parameter blob shapes (stored, or inferred). A caffemodel's own net was filtered by Caffe before it
    was stored, and is shown as stored (``state`` then only adds a note when it differs). The Split layers
    Caffe inserted are folded into their producers unless ``splits``. ``read``: a net already read (a converted
    ``.pt``'s definition), shown as ``source``."""
    report = None
    if read is not None:
        model = prototxt = None
        source = source or read.path
    elif model is None and prototxt is None:
        read = builtin.builtin_model()
        source = read.path
    elif prototxt is not None:
        read = caffe_files.read_prototxt(prototxt)
        source = prototxt if model is None else f"{model} + {prototxt}"
    else:
        read, source = caffe_files.read_net(model), model
    path = read.path
    stored = (read.kind == caffe_files.BINARY or stored_phase(read.net) is not None)
    notes = []
    if stored:
        net = read.net
        phase = stored_phase(net)
        shown_state = None if phase is None else NetState(phase)
        asked = None if state is None else NetState.of(state)
        if asked is not None and (shown_state is None or asked != shown_state):
            notes.append(f"the net Caffe stored is already filtered (in {_describe(shown_state)}): "
                         f"{asked.describe()} cannot be chosen from it; give its definition with -p for that")
    else:
        net = filter_net(read.net, NetState.of(state), path)
        shown_state = NetState(net.state.phase, net.state.level, tuple(net.state.stage))
    if model is not None and prototxt is not None:
        definition = CaffeModel(read.path, netstate.without_rules(net), [[] for _ in net.layer], read.upgrades,
                                read.kind)
        if file_kind(model) == HDF5_WEIGHTS:   # Caffe's HDF5 weights (h5py; no torch)
            weights = hdf5_weights.read_model(model)
        else:
            weights = caffe_files.read_caffemodel(model)
        shown, report = merge(definition, weights)
    elif stored:
        shown = read
    else:
        shown = CaffeModel(read.path, net, [[] for _ in net.layer], read.upgrades, read.kind)
    try:
        walked = shape_walk(net, _given_shapes(net, input_shapes, path), path)
    except UnknownBottom as e:   # a training definition read in a state without its data layer: say which has it
        raise CaffeFileError(e.path or path, e.message + ("" if stored else
                                                          missing_producer_hint(read.net, e.blob, state))) from None
    rows = _rows(shown, shown.net, walked, labels=[_phase_label(layer) for layer in net.layer])
    folded = 0
    if not splits:
        folded = sum(1 for r in rows if r.split)
        rows = fold_splits(rows)
    return Inspection(source, shown, rows, report, shown_state, stored, net, folded, walked.unknown_inputs,
                      walked.stuck, notes)


def _describe(state: NetState | None) -> str:
    return "an unrecorded phase" if state is None else state.describe()
