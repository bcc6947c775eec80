"""CaffeNet (the nn.Module that runs a NetGraph) and Net, a pycaffe-like handle around it."""
from __future__ import annotations

import copy
import io as _io
import os
import re

import numpy as np
import torch
from torch import nn

from google.protobuf import text_format

from sfport.formats import caffe_files, disk
from sfport.converters import fillers
from sfport.netdef import builtin, netstate, shapes
from sfport import converters as conv_registry
from sfport.netdef import deploy as deploy_mod
from sfport.netdef import weight_match
from sfport.netdef import optimize as optimize_mod
from sfport.errors import CaffeFileError
from sfport.netdef.graph import NetGraph, build_graph, input_names
from sfport.netdef.netstate import NetState
from sfport.proto import caffe_pb2

PT_FORMAT = "sfport-net"
PT_VERSION = 1


def _key(name: str, taken: set) -> str:
    """A ModuleDict key for a Caffe layer name (no dots; unique)."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    if key[0].isdigit():
        key = "_" + key
    base, k = key, 2
    while key in taken:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key


class CaffeNet(nn.Module):
    """Runs a NetGraph. ``forward(*inputs or **inputs)`` returns the net's outputs by Caffe blob name;
    ``run(inputs, keep_all=True)`` returns every blob by unique name. Parameters are nn.Parameters in Caffe
    blob order per layer (``caffe_params(layer)``); a shared parameter is one object in every layer using it."""

    def __init__(self, graph: NetGraph):
        super().__init__()
        self.graph = graph
        self.layers = nn.ModuleDict()
        self.keys: dict[str, str] = {}
        taken: set = set()
        for gl in graph.layers:
            converter = conv_registry.get(gl.type, gl.name)
            if any(s is None for s in gl.bottom_shapes):
                raise CaffeFileError(None, f"layer '{gl.name}' ({gl.type}): the shape of its input is unknown; "
                                           f"give the input shape")
            try:
                module = converter.build(gl.param, [tuple(s) for s in gl.bottom_shapes])
            except ValueError as e:
                raise CaffeFileError(None, shapes.about_layer(gl.param, str(e))) from None
            key = _key(gl.name, taken)
            self.keys[gl.name] = key
            self.layers[key] = module
        for gl in graph.layers:  # shared parameters: one owner's nn.Parameter everywhere
            module = self.layers[self.keys[gl.name]]
            for j, (owner, oj) in gl.shared.items():
                owner_module = self.layers[self.keys[owner]]
                name = module.caffe_blobs[j]
                owner_param = getattr(owner_module, owner_module.caffe_blobs[oj])
                if getattr(module, name).shape != owner_param.shape:
                    raise CaffeFileError(None, f"layer '{gl.name}' shares parameter {j} with '{owner}' but their "
                                               f"shapes differ: {list(getattr(module, name).shape)} vs "
                                               f"{list(owner_param.shape)}")
                setattr(module, name, owner_param)
        for gl in graph.layers:  # lr_mult 0: no gradient at all (Caffe's param_propagate_down false)
            module = self.layers[self.keys[gl.name]]
            for j, spec in enumerate(gl.param.param):
                if j < len(module.caffe_blobs) and j not in gl.shared and spec.HasField("lr_mult") \
                        and spec.lr_mult == 0:
                    getattr(module, module.caffe_blobs[j]).requires_grad_(False)
        self.input_names = list(graph.inputs)
        # 4-D inputs fed as channels_last (NHWC in memory): set by Net.optimized where it is faster
        self.channels_last = False
        # layers run in place on their bottom when nothing else needs it (no autograd, blobs freed): Net.optimized
        self.in_place: set[str] = set()
        self.output_names = [graph.caffe_name[u] for u in graph.outputs]
        # (unique top name, weight) of every top that enters the loss, in Caffe's order
        self.loss_terms = [(t, w) for gl in graph.layers for t, w in zip(gl.tops, gl.loss_weights) if w]

    def fill(self, layers=None, generator: torch.Generator | None = None, apply: bool = True) -> dict[str, list[str]]:
        """Initialise parameters by their Caffe fillers (all layers, or those named), as Caffe's LayerSetUp
        does; a shared parameter is filled by its owner only. Returns {layer: [filler description per blob]}
        (``apply=False``: only the descriptions)."""
        done = {}
        names = None if layers is None else set(layers)
        for gl in self.graph.layers:
            if names is not None and gl.name not in names:
                continue
            converter = conv_registry.get(gl.type, gl.name)
            module = self.module_of(gl.name)
            described = []
            for j, (pname, spec) in enumerate(zip(module.caffe_blobs, converter.fillers(gl.param))):
                if j in gl.shared:
                    described.append(f"shared with {gl.shared[j][0]}")
                    continue
                if spec is None:
                    continue
                try:
                    if apply:
                        fillers.fill(getattr(module, pname).data, spec, generator)
                except ValueError as e:
                    raise CaffeFileError(None, f"layer '{gl.name}': {e}") from None
                described.append(fillers.describe(spec))
            if described:
                done[gl.name] = described
        return done

    def loss(self, blobs: dict) -> torch.Tensor | None:
        """Caffe's net loss: sum of ``loss_weight * sum(top)`` over weighted tops (None if the net has none)."""
        total = None
        for name, w in self.loss_terms:
            term = blobs[name].sum() * w if w != 1 else blobs[name].sum()
            total = term if total is None else total + term
        return total

    def module_of(self, layer_name: str) -> nn.Module:
        return self.layers[self.keys[layer_name]]

    def caffe_params(self, layer_name: str) -> list[nn.Parameter]:
        m = self.module_of(layer_name)
        return [getattr(m, n) for n in m.caffe_blobs]

    def run(self, inputs: dict, keep_all: bool = False) -> dict[str, torch.Tensor]:
        blobs: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            caffe = self.graph.caffe_name[name]
            if name in inputs:
                blobs[name] = inputs[name]
            elif caffe in inputs:
                blobs[name] = inputs[caffe]
            else:
                raise KeyError(f"missing input '{caffe}'")
        if self.channels_last and not conv_registry.in_export_form():
            for name, t in blobs.items():
                if t.dim() == 4:
                    blobs[name] = t.contiguous(memory_format=torch.channels_last)
        remaining = {}
        if not keep_all:  # free a blob after its last consumer
            for gl in self.graph.layers:
                for b in gl.bottoms:
                    remaining[b] = remaining.get(b, 0) + 1
        outputs = set(self.graph.outputs) | {t for t, _ in self.loss_terms}
        in_place = bool(self.in_place) and not keep_all and not torch.is_grad_enabled() \
            and not conv_registry.in_export_form()
        for gl in self.graph.layers:
            module = self.layers[self.keys[gl.name]]
            if in_place and gl.name in self.in_place:   # its bottom is read by it alone and freed after it
                out = module.forward_(blobs[gl.bottoms[0]])
            else:
                out = module(*[blobs[b] for b in gl.bottoms])
            if isinstance(out, torch.Tensor):
                out = (out,)
            for name, t in zip(gl.tops, out):
                blobs[name] = t
            if not keep_all:
                for b in gl.bottoms:
                    remaining[b] -= 1
                    if remaining[b] == 0 and b not in outputs:
                        blobs.pop(b, None)
        return blobs

    def forward(self, *args, **kwargs):
        inputs = dict(zip(self.input_names, args))
        inputs.update(kwargs)
        blobs = self.run(inputs)
        return {self.graph.caffe_name[u]: blobs[u] for u in self.graph.outputs}

    def blobs_module(self) -> nn.Module:
        """A module over this net whose ``forward(**inputs)`` returns every kept blob by unique name (outputs
        and loss tops): what training wraps in DistributedDataParallel, which only sees ``forward``."""
        return _KeptBlobs(self)

    def learnable_params(self) -> list[tuple[str, nn.Parameter, float, float]]:
        """Caffe's Net::learnable_params_: ``(layer/blob index, parameter, lr_mult, decay_mult)`` for every blob
        of every layer in order, a shared blob once (its owner's); a blob that takes no gradient (lr_mult 0,
        BatchNorm's statistics) has lr_mult 0."""
        out = []
        for gl in self.graph.layers:
            specs = gl.param.param
            for j, p in enumerate(self.caffe_params(gl.name)):
                if j in gl.shared:
                    continue
                spec = specs[j] if j < len(specs) else None
                lr = spec.lr_mult if spec is not None and spec.HasField("lr_mult") else 1.0
                dm = spec.decay_mult if spec is not None and spec.HasField("decay_mult") else 1.0
                out.append((f"{gl.name}/{j}", p, float(lr) if p.requires_grad else 0.0, float(dm)))
        return out

    def share_trained_layers_with(self, other: "CaffeNet") -> list[str]:
        """Caffe's Net::ShareTrainedLayersWith: every layer of this net whose name ``other`` also has uses
        ``other``'s parameter objects (blob by blob, where the shapes agree). Returns the layers shared."""
        shared = []
        for gl in self.graph.layers:
            if gl.name not in other.keys:
                continue
            dst, src = self.module_of(gl.name), other.module_of(gl.name)
            for name in dst.caffe_blobs:
                if hasattr(src, name) and getattr(src, name).shape == getattr(dst, name).shape:
                    setattr(dst, name, getattr(src, name))
            if dst.caffe_blobs:
                shared.append(gl.name)
        return shared


class _KeptBlobs(nn.Module):
    """``CaffeNet.blobs_module()``: forward returns the blobs ``CaffeNet.run`` keeps."""

    def __init__(self, net: CaffeNet):
        super().__init__()
        self.net = net

    def forward(self, **inputs):
        return self.net.run(inputs)


class _Positional(nn.Module):
    """Positional inputs, tuple outputs: the form tracing, TorchScript and ONNX need."""

    def __init__(self, net: CaffeNet, outputs: list[str]):
        super().__init__()
        self.net = net
        self.outputs = outputs

    def forward(self, *xs):
        with conv_registry.export_form():
            blobs = self.net.run(dict(zip(self.net.input_names, xs)), keep_all=False)
        return tuple(blobs[self.net.graph.final[o]] if o in self.net.graph.final else blobs[o]
                     for o in self.outputs)


def _names(names, most: int = 5) -> str:
    names = [weight_match.as_text(n) for n in names]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "") or "none"


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class Net:
    """pycaffe-like: ``Net(prototxt_or_caffemodel_or_pt, weights=None, phase="test", input_shapes=None)``.

    The net is the definition's layers of the NetState (``phase``, ``level``, ``stages``; Caffe's
    Net::FilterNet), as pycaffe's ``caffe.Net(file, phase)`` gives them. With ``inference`` it is the
    definition's inference form (:func:`sfport.netdef.deploy.derive`): data layers become inputs, their label tops, the
    losses and the accuracy go; that is the default only for the training net a caffemodel stores, in TEST.
    The commands (:func:`load_net`) always run the inference form. ``input_shapes`` is {input: shape} or one
    shape for the first input.

    ``forward(**inputs)`` returns the output blobs; afterwards ``blobs[name]`` holds every blob (by Caffe name,
    its last value; ``layer_outputs[layer]`` the tops of each layer), ``params[layer]`` the parameters in
    Caffe order, ``module`` the nn.Module. ``save(path)`` writes sfport's self-contained ``.pt``;
    ``save_caffemodel(path)`` writes the (possibly changed) weights back in Caffe's format.
    """

    def __init__(self, model, weights=None, phase: str = "test", input_shapes: dict | tuple | None = None,
                 seed: int | None = None, *, stages=(), level: int | None = None, inference: bool | None = None,
                 optimize: bool = False):
        self.state = NetState.of(phase, level, stages)
        self.phase = self.state.phase
        state = None
        self.report: weight_match.MergeReport | None = None   # set below: what weights the net got, and from where
        stored = False     # a definition Caffe (or sfport) stored, already reduced to one state
        if isinstance(model, caffe_files.CaffeModel):
            definition = model
        elif str(model).endswith(".pt"):
            definition, state, saved_shapes = _load_pt(model)
            input_shapes = input_shapes or saved_shapes
            stored = True
        else:
            definition = caffe_files.read_net(model)
            stored = definition.kind == caffe_files.BINARY
        # net.cpp Net::Init gives every layer the net's phase and Net::ToProto stores it with the filtered layers
        stored = stored or netstate.stored_phase(definition.net) is not None
        weight_model = None
        if weights is not None:
            weight_model = weights if isinstance(weights, caffe_files.CaffeModel) else caffe_files.read_caffemodel(weights)
        elif definition.has_weights():
            weight_model = definition
        net = definition.net
        if stored:  # filtered before it was stored (Net::ToProto writes the net's layers only)
            net = netstate.without_rules(net)
        else:
            net = netstate.filter_net(net, self.state, definition.path)
        if inference is None:  # a caffemodel alone holds the training net: in TEST, what it was trained for
            inference = stored and self.phase == caffe_pb2.TEST and any(map(shapes.reads_data_set, net.layer))
        if inference:
            derived = deploy_mod.derive(net, input_shapes=input_shapes, path=definition.path, already_filtered=True)
            net = derived.net
            input_shapes = {k: v for k, v in derived.inputs.items() if v}
            missing = derived.unknown_inputs()
            if missing:
                raise deploy_mod.unknown_input_error(definition.path, missing[0], derived.sources.get(missing[0]))
        elif isinstance(input_shapes, (tuple, list)):  # one shape: the net's first input
            names = input_names(net)
            if not names:
                raise CaffeFileError(definition.path, "the net has no input to give a shape to")
            input_shapes = {names[0]: tuple(input_shapes)}
        self.inference = bool(inference)
        self.definition = net
        self.path = definition.path
        self.input_shapes = dict(input_shapes or {})
        self.graph = build_graph(net, self.phase, input_shapes, definition.path)
        missing = [n for n, s in self.graph.inputs.items() if s is None or len(s) == 0]
        if missing:
            layer = next((l for l in net.layer if missing[0] in l.top), None)
            raise deploy_mod.unknown_input_error(definition.path, self.graph.caffe_name[missing[0]],
                                                 (layer.name, layer.type) if layer is not None else None)
        if state is None and weight_model is not None:
            # the weights are checked against the shapes the definition states before any blob is allocated
            # (a num_output the weights cannot fit is the "does not fit" error, not an allocation of its size)
            weight_match.match_weights([weight_match.Target(gl.name, gl.type, gl.param_shapes) for gl in self.graph.layers],
                                    weight_model, definition.path)
        try:
            self.module = CaffeNet(self.graph)
        except CaffeFileError as e:   # a layer's own complaint (an unknown type, bad parameters): name the file
            if e.path is None:
                e.path = definition.path
                e.args = (str(e),)
            raise
        self.module.train(self.phase == caffe_pb2.TRAIN)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if state is not None:
            try:
                self.module.load_state_dict(state)
            except (RuntimeError, KeyError, TypeError) as e:
                first = str(e).strip().splitlines()
                raise CaffeFileError(definition.path, "its state_dict does not fit its own net: "
                                     + " ".join(l.strip() for l in first[:3])) from None
        elif weight_model is not None:  # copied by name; only the layers left without weights are filled
            self.report = self.load_weights(weight_model)
            if weights is not None and not self.report.copied and any(self.params.values()):
                raise CaffeFileError(weight_model.path, f"no layer of the weights matches a layer with parameters "
                                                        f"of {definition.path or 'the net'} (weights for: "
                                                        f"{_names(weight_model.weight_layers())}; the net's: "
                                                        f"{_names(self.params)})")
            self.module.fill(self.report.layers_without_weights, generator)
        else:   # no weights: a report that says so (every layer with parameters left to its filler)
            filled = self.module.fill(None, generator)
            self.report = weight_match.MergeReport(layers_without_weights=list(self.params), filled=filled,
                                                no_weights=True)
        if state is not None:   # a converted .pt: its state_dict holds every parameter
            self.report = weight_match.MergeReport(copied=list(self.params))
        # trained weights: a converted .pt's, or a caffemodel's copied into at least one layer (else fillers')
        self.has_weights = state is not None or bool(self.report and self.report.copied)
        self.blobs: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.layer_outputs: dict[str, list[torch.Tensor]] = {}
        self.optimization = None   # what optimize=True folded and dropped (sfport.netdef.optimize.Optimized)
        self.origin: dict[str, str] | None = None
        if optimize:
            self._optimize()

    def _optimize(self, outputs=None) -> None:
        """Become the inference-optimized form of this net (:mod:`sfport.netdef.optimize`): the folded definition
        and weights, built as any net; ``origin`` maps each of its unique blobs to the unique blob of the
        original net whose value it is."""
        opt = optimize_mod.optimize(self, outputs)
        model = caffe_files.CaffeModel.from_net(opt.net, self.path)
        for i, layer in enumerate(model.net.layer):
            if opt.weights.get(layer.name):
                model.set_blob_arrays(i, opt.weights[layer.name])
        other = Net(model, phase="train" if self.phase == caffe_pb2.TRAIN else "test",
                    input_shapes=self.input_shapes or None, inference=False)
        origin = dict(zip(other.graph.inputs, opt.inputs))
        for gl in other.graph.layers:
            for j, t in enumerate(gl.tops):
                origin[t] = opt.origin[(gl.name, j)]
        self.definition, self.graph, self.module = other.definition, other.graph, other.module
        # NHWC where it is faster on the CPU: for grouped (depthwise) convolutions, 1.1-1.8x for MobileFaceNet;
        # dense 3x3 convolutions (SphereFace) run slower so at batch 1 (bench/bench_forward.py)
        self.module.channels_last = any(getattr(self.module.module_of(gl.name), "groups", 1) > 1
                                        for gl in self.graph.layers if gl.type in optimize_mod.HEADS)
        self.module.in_place = optimize_mod.in_place_layers(self.graph, self.module)
        self.optimization, self.origin = opt, origin

    def optimized(self, outputs=None) -> "Net":
        """A new Net, the inference-optimized form of this one (this one is unchanged); with ``outputs``
        (Caffe blob names), only what computes them."""
        other = copy.copy(self)
        other._optimize(outputs)
        return other

    def original_blobs(self) -> dict[str, torch.Tensor]:
        """After a forward of an optimized net: the values of the original net's unique blobs that it still
        computes, by the original's unique names."""
        if self.origin is None:
            return dict(self.unique_blobs)
        return {self.origin[u]: t for u, t in self.unique_blobs.items() if u in self.origin}

    # -- weights ---------------------------------------------------------------------------------------------
    def load_weights(self, weights: caffe_files.CaffeModel) -> weight_match.MergeReport:
        """Copy blobs by layer name with Caffe's rule (:func:`sfport.netdef.weight_match.match_weights`); returns what was
        copied and what not."""
        targets = [weight_match.Target(gl.name, gl.type, [tuple(p.shape) for p in self.module.caffe_params(gl.name)])
                   for gl in self.graph.layers]
        chosen, report = weight_match.match_weights(targets, weights, self.path)
        for gl in self.graph.layers:
            if gl.name in chosen:
                try:
                    conv_registry.get(gl.type, gl.name).load(self.module.module_of(gl.name),
                                                             weights.blob_arrays(chosen[gl.name]))
                except ValueError as e:
                    raise CaffeFileError(weights.path, f"does not fit {self.path or 'the net'}: layer "
                                                       f"'{weight_match.as_text(gl.name)}' ({gl.type}): {e}") from None
        report.filled = self.module.fill(report.layers_without_weights, apply=False)  # filled when built
        return report

    @property
    def params(self) -> dict[str, list[nn.Parameter]]:
        out = {}
        for gl in self.graph.layers:
            ps = self.module.caffe_params(gl.name)
            if ps:
                out[gl.name] = ps
        return out

    def to_caffemodel(self) -> caffe_files.CaffeModel:
        """The net definition with the current parameters as blobs, ready for ``caffe_files.write_caffemodel``."""
        out = caffe_files.CaffeModel.from_net(self.definition, None)
        index = {gl.name: gl for gl in self.graph.layers}
        for i, layer in enumerate(out.net.layer):
            gl = index.get(layer.name)
            if gl is None or gl.index != i:
                continue
            arrays = conv_registry.get(gl.type, gl.name).save(self.module.module_of(gl.name))
            if arrays:
                out.set_blob_arrays(i, arrays)
        return out

    def save_caffemodel(self, path) -> None:
        caffe_files.write_caffemodel(path, self.to_caffemodel())

    # -- running ---------------------------------------------------------------------------------------------
    def forward(self, **inputs) -> dict[str, torch.Tensor]:
        tensors = {k: _as_tensor(v) for k, v in inputs.items()}
        with torch.set_grad_enabled(self.module.training):
            blobs = self.module.run(tensors, keep_all=True)
        self.blobs = {caffe: blobs[u] for caffe, u in self.graph.final.items() if u in blobs}
        self.layer_outputs = {gl.name: [blobs[t] for t in gl.tops] for gl in self.graph.layers}
        self.unique_blobs = blobs
        self.loss = self.module.loss(blobs)
        return {self.graph.caffe_name[u]: blobs[u] for u in self.graph.outputs}

    def backward(self) -> None:
        """Accumulate the gradients of the last forward's loss into the parameters' ``.grad`` (Caffe's
        Net::Backward adding into the param diffs)."""
        if self.loss is None:
            raise RuntimeError("the net has no loss (no layer with a loss_weight) or forward was not run")
        if not self.loss.requires_grad:
            raise RuntimeError("backward needs a forward in train phase (Net(..., phase='train'))")
        self.loss.backward()

    def forward_backward(self, **inputs) -> float:
        """Caffe's Net::ForwardBackward: forward, backward, and the loss as a number."""
        self.forward(**inputs)
        self.backward()
        return float(self.loss.detach())

    @property
    def inputs(self) -> dict[str, tuple]:
        return {self.graph.caffe_name[u]: s for u, s in self.graph.inputs.items()}

    @property
    def outputs(self) -> list[str]:
        return list(self.module.output_names)

    # -- saving ----------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """sfport's converted file: net definition (prototxt text) + state_dict, loadable with
        ``torch.load(weights_only=True)``."""
        buf = _io.BytesIO()
        torch.save({"format": PT_FORMAT, "version": PT_VERSION, "net": caffe_files.net_to_text(self.definition),
                    "input_shapes": {k: list(v) for k, v in self.inputs.items()},
                    "state_dict": self.module.state_dict()}, buf)
        disk.atomic_write(path, buf.getvalue())

    def exportable(self, outputs: list[str] | None = None) -> nn.Module:
        """A module with positional inputs (in ``self.inputs`` order) returning a tuple of ``outputs``."""
        return _Positional(self.module, outputs or self.outputs)

    def example_inputs(self, batch: int | None = None, seed: int = 0) -> tuple:
        g = torch.Generator().manual_seed(seed)
        out = []
        for shape in self.inputs.values():
            s = list(shape)
            if batch is not None:
                s[0] = batch
            out.append(torch.rand(s, generator=g) * 2 - 1)
        return tuple(out)


def load_net(model, prototxt=None, input_shapes: dict | tuple | None = None, phase: str = "test", *,
             stages=(), level: int = 0, inference: bool = True, optimize: bool = False, seed: int = 0) -> "Net":
    """What the commands load: MODEL (a caffemodel, prototxt or sfport .pt) alone, or a caffemodel's weights
    copied into the ``prototxt`` definition by layer name, in its inference form (any definition: deploy,
    train_val, train_test, a snapshot's stored net); the other arguments as for :class:`Net`. Without either,
    the built-in SphereFace-20 deploy net (:func:`sfport.netdef.builtin.builtin_model`) with its fillers' weights drawn
    from ``seed``: what ``sfport verify`` and ``sfport convert`` show the toolkit on."""
    if model is None and prototxt is None:
        return Net(builtin.builtin_model(), phase=phase, input_shapes=input_shapes, seed=seed, stages=stages,
                   level=level, inference=inference, optimize=optimize)
    if prototxt is not None:
        return Net(caffe_files.read_prototxt(prototxt), weights=caffe_files.read_net(model), phase=phase,
                   input_shapes=input_shapes, stages=stages, level=level, inference=inference, optimize=optimize)
    return Net(model, phase=phase, input_shapes=input_shapes, stages=stages, level=level, inference=inference,
               optimize=optimize)


def _load_pt(path):
    """Read sfport's .pt without executing code (weights_only), and check the container's structure before any
    of it is used: ``net`` the text of a NetParameter, ``state_dict`` tensors by name, ``input_shapes``
    (optional) input name -> a shape Caffe's Blob::Reshape takes (caffe_files.blob_count), every size >= 1."""
    doc = disk.load_torch_file(path, PT_FORMAT, "an sfport converted net (.pt made by `sfport convert`)")

    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    text = doc.get("net")
    if not isinstance(text, str):
        raise CaffeFileError(path, f"'net' is {'missing' if text is None else 'a ' + type(text).__name__}, not the "
                                   f"text of a net definition")
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        raise CaffeFileError(path, f"'net' is not a valid net definition: {short(str(e))}") from None
    state = doc.get("state_dict")
    if not isinstance(state, dict):
        raise CaffeFileError(path, "'state_dict' is missing or not a dict of tensors by name")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CaffeFileError(path, f"'state_dict' is not a dict of tensors by name: entry {short(k)} is "
                                       f"{type(v).__name__}")
    raw = doc.get("input_shapes", {})
    if not isinstance(raw, dict):
        raise CaffeFileError(path, f"'input_shapes' is not a dict of input name -> shape (it is {type(raw).__name__})")
    shapes_ = {}
    for k, v in raw.items():
        problem = None
        if not isinstance(k, str):
            problem = f"its key {short(k)} is not an input name"
        elif not isinstance(v, (list, tuple)) or not v:
            problem = f"'{k}': {short(v)} is not a list of sizes"
        elif not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v):
            problem = f"'{k}': {short(v)} is not a list of sizes >= 1"
        else:
            try:
                caffe_files.blob_count(v)
            except ValueError as e:
                problem = f"'{k}': {e}"
        if problem:
            raise CaffeFileError(path, f"'input_shapes' is not a dict of input name -> shape: {problem}")
        shapes_[k] = tuple(v)
    return caffe_files.CaffeModel.from_net(net, os.fspath(path)), state, shapes_
