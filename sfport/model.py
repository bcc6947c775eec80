"""A net definition merged with weights by layer name, and the per-layer summary ``sfport inspect`` prints."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from google.protobuf import unknown_fields

from sfport import shapes, wire
from sfport.errors import CaffeFileError
from sfport.caffe_files import CaffeModel, blob_shape, has_legacy_shape
from sfport.protos import caffe_pb2


def as_text(value) -> str:
    """A proto2 string field as str: invalid UTF-8 in a binary file comes back from protobuf as bytes."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


@dataclass
class MergeReport:
    """What ``merge`` did, in the terms of Caffe's Net::CopyTrainedLayersFrom."""
    copied: list[str] = field(default_factory=list)
    layers_without_weights: list[str] = field(default_factory=list)   # expect parameters, none in the weights
    weights_without_layers: list[str] = field(default_factory=list)   # in the weights, not in the definition
    mismatches: list[str] = field(default_factory=list)               # "layer 'x' blob 0: weights [..], net [..]"
    filled: dict[str, list[str]] = field(default_factory=dict)        # layer -> filler per blob (left to fillers)

    def as_dict(self) -> dict:
        return {"copied": self.copied, "layers_without_weights": self.layers_without_weights,
                "weights_without_layers": self.weights_without_layers, "mismatches": self.mismatches,
                "filled": self.filled}

    def lines(self) -> list[str]:
        """What was copied, left to fillers and ignored, as log lines."""
        out = [f"Copied weights of {len(self.copied)} layers"]
        for name in self.layers_without_weights:
            how = self.filled.get(name)
            if how and all(h.startswith("shared with ") for h in how):
                owners = sorted({h[len("shared with "):] for h in how})
                out.append(f"Layer {name}: no weights in the file; its blobs are shared with {', '.join(owners)}")
                continue
            out.append(f"Layer {name}: no weights in the file; initialised by its filler"
                       + (f" ({', '.join(how)})" if how else ""))
        if self.weights_without_layers:
            out.append(f"Ignoring {len(self.weights_without_layers)} weight layers the net does not have: "
                       + ", ".join(self.weights_without_layers))
        return out


def _shape_matches(blob, expected: tuple) -> bool:
    """Caffe Blob::ShapeEquals: a legacy 4-D blob matches a shape of <= 4 axes padded with leading 1s."""
    stored = blob_shape(blob)
    if has_legacy_shape(blob) and len(expected) <= 4:
        return stored == (1,) * (4 - len(expected)) + tuple(expected)
    return stored == tuple(expected)


def merge(definition: CaffeModel, weights: CaffeModel, phase: int = caffe_pb2.TEST,
          strict: bool = True) -> tuple[CaffeModel, MergeReport]:
    """Copy the blobs of ``weights`` into the layers of ``definition`` with the same name.

    Layers of the definition that would have parameters but find none keep none (Caffe leaves them to their
    fillers); weight layers without a definition layer are ignored. A blob count or shape that disagrees with
    what the definition needs raises :class:`CaffeFileError` naming both files, unless ``strict`` is false.
    """
    report = MergeReport()
    source = weights.weight_layers()
    net = caffe_pb2.NetParameter()
    net.CopyFrom(definition.net)
    expected = {ls.index: ls.params for ls in shapes.infer(net, phase)}
    values: list[list[wire.BlobValues]] = []
    used = set()
    for i, layer in enumerate(net.layer):
        del layer.blobs[:]
        name = as_text(layer.name)
        src_i = source.get(layer.name)
        need = expected.get(i)
        if src_i is None:
            values.append([])
            if need:
                report.layers_without_weights.append(name)
            continue
        used.add(layer.name)
        src = weights.net.layer[src_i]
        problems = []
        if need is not None and len(need) != len(src.blobs):
            problems.append(f"layer '{name}' ({as_text(layer.type)}): the weights have {len(src.blobs)} blobs, "
                            f"the net needs {len(need)}")
        elif need is not None:
            for j, (blob, shape) in enumerate(zip(src.blobs, need)):
                if not _shape_matches(blob, shape):
                    problems.append(f"layer '{name}' ({as_text(layer.type)}) blob {j}: weights have shape "
                                    f"{list(blob_shape(blob))}, the net needs {list(shape)}")
        if problems and strict:
            raise CaffeFileError(weights.path, f"does not fit {definition.path}: {problems[0]}"
                                 + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        report.mismatches.extend(problems)
        layer.blobs.extend(src.blobs)
        values.append(list(weights.values[src_i]))
        report.copied.append(name)
    report.weights_without_layers = [as_text(n) for n in source if n not in used]
    merged = CaffeModel(weights.path, net, values, definition.upgrades + weights.upgrades, weights.kind)
    return merged, report


@dataclass
class LayerRow:
    index: int
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    blob_shapes: list[list[int]]
    params: int
    phase: str = ""
    inferred: bool = False        # blob shapes inferred from the definition, not read from weights

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "type": self.type, "bottoms": self.bottoms,
                "tops": self.tops, "blob_shapes": self.blob_shapes, "params": self.params, "phase": self.phase,
                "shapes_inferred": self.inferred}


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
    """One row per layer: name, type, connections, blob shapes (stored, or inferred when there are no
    weights) and parameter count."""
    inferred = {}
    if infer_missing and not model.has_weights():
        inferred = {ls.index: ls.params for ls in shapes.infer(model.net)}
    rows = []
    for i, layer in enumerate(model.net.layer):
        if len(layer.blobs):
            blob_shapes = [list(blob_shape(b)) for b in layer.blobs]
            guessed = False
        else:
            blob_shapes = [list(s) for s in (inferred.get(i) or [])]
            guessed = bool(blob_shapes)
        count = sum(math.prod(s) for s in blob_shapes)
        rows.append(LayerRow(i, as_text(layer.name), as_text(layer.type), [as_text(b) for b in layer.bottom],
                             [as_text(t) for t in layer.top], blob_shapes,
                             count, _phase_label(layer), guessed))
    return rows


def _random_blobs(layer, need, rng) -> list:
    """Random values of a sensible scale: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), slopes near 0.25,
    scales near 1, BatchNorm statistics with a positive variance and scale factor 1."""
    if layer.type == "BatchNorm":
        c = need[0]
        return [rng.normal(0, 0.1, c).astype(np.float32), rng.uniform(0.5, 1.5, c).astype(np.float32),
                np.ones(need[2], np.float32)]
    out = []
    for j, shape in enumerate(need):
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:]) if layer.type != "Deconvolution" else shape[0] * math.prod(shape[2:])
            out.append(rng.normal(0, 1 / math.sqrt(max(fan_in, 1)), shape).astype(np.float32))
        elif layer.type in ("PReLU",):
            out.append((0.25 + 0.05 * rng.standard_normal(shape)).astype(np.float32))
        elif layer.type in ("Scale", "Normalize") and j == 0:
            out.append((1 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
        else:
            out.append((0.1 * rng.standard_normal(shape)).astype(np.float32))
    return out


def with_random_weights(definition: CaffeModel, seed: int = 0, phase: int = caffe_pb2.TEST) -> CaffeModel:
    """A copy of ``definition`` whose parameter blobs (shapes inferred as Caffe would allocate them) hold
    random float32 values of a sensible scale: test nets and benchmark files without real weights."""
    rng = np.random.default_rng(seed)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(definition.net)
    out = CaffeModel(definition.path, net, [[] for _ in net.layer], list(definition.upgrades), "binary")
    expected = {ls.index: ls.params for ls in shapes.infer(net, phase)}
    for i, layer in enumerate(net.layer):
        need = expected.get(i, [])  # layers not in this phase get no blobs
        if need is None:
            raise CaffeFileError(definition.path, f"cannot infer the parameter shapes of layer "
                                                  f"'{as_text(layer.name)}' ({as_text(layer.type)})")
        out.set_blob_arrays(i, _random_blobs(layer, need, rng))
    return out
