"""Caffe's weight-copy rule (Net::CopyTrainedLayersFrom with Blob::ShapeEquals): matching a weights file's layers
to a net's by name, merging a definition with weights, and random weights for a definition."""

from dataclasses import dataclass, field

import numpy as np

from sfport import converters
from sfport.netdef import shapes
from sfport.formats import wire
from sfport.errors import CaffeFileError
from sfport.formats.caffe_files import CaffeModel, as_text, blob_shape, has_legacy_shape
from sfport.protos import caffe_pb2



@dataclass
class MergeReport:
    """What ``merge`` did, in the terms of Caffe's Net::CopyTrainedLayersFrom."""
    copied: list[str] = field(default_factory=list)
    layers_without_weights: list[str] = field(default_factory=list)   # expect parameters, none in the weights
    weights_without_layers: list[str] = field(default_factory=list)   # in the weights, not in the definition
    mismatches: list[str] = field(default_factory=list)               # "layer 'x' blob 0: weights [..], net [..]"
    filled: dict[str, list[str]] = field(default_factory=dict)        # layer -> filler per blob (left to fillers)
    no_weights: bool = False    # no weights were given at all (a definition alone): every layer from its filler

    def as_dict(self) -> dict:
        return {"no_weights": self.no_weights, "copied": self.copied,
                "layers_without_weights": self.layers_without_weights,
                "weights_without_layers": self.weights_without_layers, "mismatches": self.mismatches,
                "filled": self.filled}

    def lines(self) -> list[str]:
        """What was copied, left to fillers and ignored, as log lines."""
        if self.no_weights:
            return [f"No weights given: all {len(self.layers_without_weights)} layers with parameters initialised "
                    f"by their fillers"]
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


def blob_fits(blob, expected: tuple) -> bool:
    """Caffe Blob::ShapeEquals: a legacy 4-D blob matches a shape of <= 4 axes padded with leading 1s (LegacyShape
    indexes from the end); any other blob matches its shape exactly, so a (4, 3) blob never fits (3, 4)."""
    stored = blob_shape(blob)
    if has_legacy_shape(blob) and len(expected) <= 4:
        return stored == (1,) * (4 - len(expected)) + tuple(expected)
    return stored == tuple(expected)


@dataclass
class Target:
    """A layer of the net being given weights: its name, type and parameter blob shapes (None: unknown)."""
    name: str
    type: str
    blob_shapes: list | None


def match_weights(targets: list[Target], weights: CaffeModel, against: str | None = None,
                  strict: bool = True) -> tuple[dict[str, int], MergeReport]:
    """Caffe's Net::CopyTrainedLayersFrom rule, the one rule by which sfport copies weights (``merge``, ``Net``,
    and so convert, verify and train --weights): a target layer takes the blobs of the weights' layer of the
    same name (the last of that name), whose blob count and shapes must equal its own (:func:`blob_fits`);
    targets with parameters and no such layer are left to their fillers; weight layers without a target are
    ignored. A disagreement raises :class:`CaffeFileError` naming both files unless ``strict`` is false (then
    it is listed in the report and copied anyway). Returns target name -> index of its layer in ``weights``."""
    report = MergeReport()
    source = weights.weight_layers()
    chosen: dict[str, int] = {}
    for t in targets:
        name = as_text(t.name)
        src_i = source.get(t.name)
        if src_i is None:
            if t.blob_shapes:
                report.layers_without_weights.append(name)
            continue
        blobs = weights.net.layer[src_i].blobs
        need = t.blob_shapes
        problems = []
        if need is not None and len(need) != len(blobs):
            problems.append(f"layer '{name}' ({as_text(t.type)}): the weights have {len(blobs)} blobs, "
                            f"the net needs {len(need)}")
        elif need is not None:
            problems += [f"layer '{name}' ({as_text(t.type)}) blob {j}: weights have shape "
                         f"{list(blob_shape(blob))}, the net needs {list(shape)}"
                         for j, (blob, shape) in enumerate(zip(blobs, need)) if not blob_fits(blob, shape)]
        if problems and strict:
            raise CaffeFileError(weights.path, f"does not fit {against or 'the net'}: {problems[0]}"
                                 + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        report.mismatches.extend(problems)
        chosen[t.name] = src_i
        report.copied.append(name)
    report.weights_without_layers = [as_text(n) for n in source if n not in chosen]
    return chosen, report


def merge(definition: CaffeModel, weights: CaffeModel, phase: int = caffe_pb2.TEST,
          strict: bool = True) -> tuple[CaffeModel, MergeReport]:
    """Copy the blobs of ``weights`` into the layers of ``definition`` with the same name, by
    :func:`match_weights` (blob shapes inferred from the definition). Layers not active in ``phase`` are
    matched with unknown shapes."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(definition.net)
    expected = {ls.index: ls.params for ls in shapes.infer(net, phase, path=definition.path)}
    targets = [Target(layer.name, layer.type, expected.get(i)) for i, layer in enumerate(net.layer)]
    chosen, report = match_weights(targets, weights, definition.path, strict)
    values: list[list[wire.BlobValues]] = []
    for layer in net.layer:
        del layer.blobs[:]
        src_i = chosen.get(layer.name)
        if src_i is None:
            values.append([])
            continue
        layer.blobs.extend(weights.net.layer[src_i].blobs)
        values.append(list(weights.values[src_i]))
    merged = CaffeModel(weights.path, net, values, definition.upgrades + weights.upgrades, weights.kind)
    return merged, report


def with_random_weights(definition: CaffeModel, seed: int = 0, phase: int = caffe_pb2.TEST) -> CaffeModel:
    """A copy of ``definition`` whose parameter blobs (shapes inferred as Caffe would allocate them) hold
    random float32 values of a sensible scale: test nets and benchmark files without real weights."""
    rng = np.random.default_rng(seed)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(definition.net)
    out = CaffeModel(definition.path, net, [[] for _ in net.layer], list(definition.upgrades), "binary")
    expected = {ls.index: ls.params for ls in shapes.infer(net, phase, path=definition.path)}
    for i, layer in enumerate(net.layer):
        need = expected.get(i, [])  # layers not in this phase get no blobs
        if need is None:
            raise CaffeFileError(definition.path, f"cannot infer the parameter shapes of layer "
                                                  f"'{as_text(layer.name)}' ({as_text(layer.type)})")
        out.set_blob_arrays(i, converters.get_for(layer).random_blobs(layer, need, rng)
                            if need else [])
    return out


