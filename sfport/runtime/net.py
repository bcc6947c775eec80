"""Net, a pycaffe-like handle around :class:`sfport.runtime.caffenet.CaffeNet` (the nn.Module that runs a
NetGraph), and :func:`load_net`, what the commands load."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import io as _io
import os

import numpy as np
import torch
from torch import nn

from google.protobuf import text_format

from sfport.formats import caffe_files, disk, hdf5_weights
from sfport.netdef import builtin, datalayers, netstate
from sfport import converters as conv_registry
from sfport.netdef import deploy as deploy_mod
from sfport.netdef import weight_match
from sfport.netdef import optimize as optimize_mod
from sfport.errors import CaffeFileError
from sfport.netdef.graph import NetGraph, build_graph, input_names
from sfport.netdef.netstate import NetState
from sfport.protos import caffe_pb2
from sfport.runtime.caffenet import CaffeNet, _Positional

PT_FORMAT = "sfport-net"
# the batch from which an optimized net of dense 2-D convolutions takes its input as channels_last (Net._optimize)
DENSE_NHWC_BATCH = 16
# 2: the NetState and form the net was saved in ("state", "inference"), its default when loaded; 1: without them
PT_VERSION = 2
# the <prefix>_iter_N.pt training snapshots an earlier `sfport train` wrote: the training net's state_dict, no
# definition (read as weights only, :func:`read_weights`)
SNAPSHOT_FORMAT = "sfport-checkpoint"
# how a command is given a net's weights without a definition
_HOW = "(-p PROTOTXT; test, time: the prototxt as NET and this file with --weights)"
PT_WHAT = "an sfport converted net (.pt made by `sfport convert`) or training snapshot (.pt of `sfport train`)"


def _names(names, most: int = 5) -> str:
    names = [caffe_files.as_text(n) for n in names]
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

    def __init__(self, model, weights=None, phase: str | None = None, input_shapes: dict | tuple | None = None,
                 seed: int | None = None, *, stages=(), level: int | None = None, inference: bool | None = None,
                 optimize: bool = False):
        with _collector_paused():
            self._init(model, weights, phase, input_shapes, seed, stages, level, inference, optimize)

    def _init(self, model, weights, phase, input_shapes, seed, stages, level, inference, optimize) -> None:
        self.report: weight_match.MergeReport | None = None   # set by _load: what weights the net got, and from where
        read = _read_model(model, input_shapes)                                              # (1) read
        saved = read.saved   # a .pt's NetState: the default of what is not given (else TEST, level 0)
        if saved is not None:
            phase, level = saved.phase if phase is None else phase, saved.level if level is None else level
            stages = stages or saved.stages
        self.state = NetState.of(phase, level, stages)
        self.phase = self.state.phase
        if inference is None and saved is not None and self.state == saved:
            inference = read.saved_inference
        weight_model = _weights_to_copy(weights, read.definition)                            # (2) weights to copy
        net = _filtered(read.definition, read.stored, self.state)                            # (3) filter
        inference = _inference_by_default(net, read.stored, self.phase) if inference is None else bool(inference)
        net, input_shapes = _shaped(net, inference, read.input_shapes, read.definition.path)      # (4) inference form
        self.inference = inference
        self.definition = net
        self.path = read.definition.path
        self.input_shapes = dict(input_shapes or {})
        self.graph = _graph(net, self.phase, input_shapes, self.path)                        # (5) graph
        matched = None
        if read.state is None and isinstance(weight_model, caffe_files.CaffeModel):         # (6) match shapes
            matched = _match_weight_shapes(self.graph, weight_model, self.path)
            if any(gl.param_shapes is None for gl in self.graph.layers):
                matched = None   # matched again against the modules' shapes, which every layer states
        self.module = _module(self.graph, self.path)                                         # (7) modules
        self.module.train(self.phase == caffe_pb2.TRAIN)
        self._load(read.state, weight_model, weights is not None, seed, saved, matched)      # (8) load
        self.blobs: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.layer_outputs: dict[str, list[torch.Tensor]] = {}
        self.optimization = None   # what optimize=True folded and dropped (sfport.netdef.optimize.Optimized)
        self.origin: dict[str, str] | None = None
        if optimize:
            self._optimize()

    def _load(self, state: dict | None, weight_model, weights_given: bool, seed: int | None,
              saved: NetState | None = None, matched: tuple | None = None) -> None:
        """Step (8), the parameters' values, as pycaffe's ``caffe.Net(prototxt, weights, phase)``: Net::Init's
        fillers (each layer's LayerSetUp), then Net::CopyTrainedLayersFrom over them. A converted ``.pt``'s
        state_dict holds every parameter; else the weights are copied by layer name and only the layers left
        without any are filled; else every layer is filled (``seed``: the fillers' generator). ``matched``: step
        (6)'s match of the weights, when it made one. Sets ``report`` and ``has_weights``."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if state is not None:
            self.report = self._load_state_dict(state, saved)
        elif weight_model is not None:  # copied by name; only the layers left without weights are filled
            self.report = self.load_weights(weight_model, matched)
            if weights_given and not self.report.copied and any(self.params.values()):
                raise CaffeFileError(weight_model.path, f"no layer of the weights matches a layer with parameters "
                                                        f"of {self.path or 'the net'} (weights for: "
                                                        f"{_names(weight_model.weight_layers())}; the net's: "
                                                        f"{_names(self.params)})")
            self.module.fill(self.report.layers_without_weights, generator)
        else:   # no weights: a report that says so (every layer with parameters left to its filler)
            filled = self.module.fill(None, generator)
            self.report = weight_match.MergeReport(layers_without_weights=list(self.params), filled=filled,
                                                   no_weights=True)
        # trained weights: a converted .pt's, or a caffemodel's copied into at least one layer (else fillers')
        self.has_weights = state is not None or bool(self.report and self.report.copied)

    def _load_state_dict(self, state: dict, saved: NetState | None) -> weight_match.MergeReport:
        """A converted ``.pt``'s state_dict into the module (sfport's own format; Caffe's counterpart is
        Net::CopyTrainedLayersFromBinaryProto of the caffemodel it was converted from). Every tensor of the net
        must be in it, of its shape; the file's layers the net does not have (a training net's, loaded in
        another phase or as its inference form) are ignored, as Caffe's CopyTrainedLayersFrom ignores them."""
        ours = self.module.state_dict()
        missing = [k for k in ours if k not in state]
        wrong = [f"{k} {list(state[k].shape)} (the net's {list(ours[k].shape)})" for k in ours
                 if k in state and tuple(state[k].shape) != tuple(ours[k].shape)]
        try:
            if not (missing or wrong):
                self.module.load_state_dict({k: v for k, v in state.items() if k in ours})
        except (RuntimeError, KeyError, TypeError) as e:
            wrong = [" ".join(l.strip() for l in str(e).strip().splitlines()[:3])]
        if missing or wrong:
            form = " (inference form)" if self.inference else ""
            hint = f"; it was saved in {saved.describe()}: leave out the phase to load it so" \
                if saved is not None and saved != self.state else ""
            problem = f"no tensor for {_names(missing)}" if missing else f"wrong shape: {_names(wrong, 2)}"
            raise CaffeFileError(self.path, f"its state_dict does not fit its net in {self.state.describe()}{form}: "
                                            f"{problem}{hint}")
        extra = list(dict.fromkeys(k.split(".")[1] for k in state if k not in ours and k.count(".") >= 2))
        return weight_match.MergeReport(copied=list(self.params), weights_without_layers=extra)

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
        # NHWC where it is faster on the CPU (oneDNN): grouped (depthwise) convolutions at any batch, 1.1-1.8x for
        # MobileFaceNet; dense 3x3 convolutions (SphereFace-20) from batch 16 on (1.08x at 16, 1.16x at 64),
        # slower below (0.81x at batch 1, 0.90x at 4)
        convs = [self.module.module_of(gl.name) for gl in self.graph.layers
                 if conv_registry.get_for(gl.param).folds_affine]
        grouped = any(getattr(m, "groups", 1) > 1 for m in convs)
        dense_2d = any(getattr(m, "nd", 0) == 2 for m in convs)
        self.module.channels_last_from = 0 if grouped else DENSE_NHWC_BATCH if dense_2d else None
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
    def load_weights(self, weights, matched: tuple | None = None) -> weight_match.MergeReport:
        """Copy blobs by layer name with Caffe's rule (:func:`sfport.netdef.weight_match.match_weights`); returns what was
        copied and what not. ``weights``: a CaffeModel, or what :func:`read_weights` reads. ``matched``: that
        rule's (chosen, report) for these weights against the graph's parameter shapes, already made (each
        blob's shape is checked again as it is copied)."""
        if isinstance(weights, SnapshotWeights):
            weights = weights.as_caffemodel(self)
        if matched is None:
            targets = [weight_match.Target(gl.name, gl.type,
                                           [tuple(p.shape) for p in self.module.caffe_params(gl.name)])
                       for gl in self.graph.layers]
            matched = weight_match.match_weights(targets, weights, self.path)
        chosen, report = matched
        for gl in self.graph.layers:
            if gl.name in chosen:
                try:
                    conv_registry.get_for(gl.param).load(self.module.module_of(gl.name),
                                                             weights.blob_arrays(chosen[gl.name]))
                except ValueError as e:
                    raise CaffeFileError(weights.path, f"does not fit {self.path or 'the net'}: layer "
                                                       f"'{caffe_files.as_text(gl.name)}' ({gl.type}): {e}") from None
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
            arrays = conv_registry.get_for(gl.param).save(self.module.module_of(gl.name))
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
        ``torch.load(weights_only=True)``; with the NetState and form it is in, in which ``Net(path)`` loads it."""
        buf = _io.BytesIO()
        torch.save({"format": PT_FORMAT, "version": PT_VERSION, "net": caffe_files.net_to_text(self.definition),
                    "input_shapes": {k: list(v) for k, v in self.inputs.items()},
                    "state": {"phase": caffe_pb2.Phase.Name(self.phase), "level": self.state.level,
                              "stages": list(self.state.stages)}, "inference": bool(self.inference),
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


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector held off while a net is read and built, as it was before afterwards: the
    thousands of objects made on the way (messages, tuples, modules, parameters) hold no cycles to find, and a
    full collection they would set off walks every object of the process (torch's few hundred thousand), 1 to
    3 ms of MobileFaceNet's 28-ms load."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# -- the steps of Net.__init__ --------------------------------------------------------------------------------
@dataclasses.dataclass
class _Read:
    """What step (1) reads from Net's ``model`` argument."""
    definition: caffe_files.CaffeModel      # the net definition as read (its blobs, if any, with it)
    state: dict | None                      # a converted .pt's state_dict
    input_shapes: dict | tuple | None       # the shapes given, else a .pt's saved ones
    stored: bool                            # a definition Caffe (or sfport) stored, already reduced to one state
    saved: NetState | None = None           # the NetState a .pt was saved in (None: an older .pt, or no .pt)
    saved_inference: bool | None = None     # and whether it was saved as its inference form


def _read_model(model, input_shapes) -> _Read:
    """Step (1), pycaffe's ``caffe.Net(file, ...)`` reading its file (net.cpp Net::Net: ReadNetParamsFromTextFile,
    or a caffemodel's NetParameter as Net::CopyTrainedLayersFromBinaryProto reads it): a CaffeModel as it is, an
    sfport ``.pt`` (definition, state_dict, saved input shapes, used where none are given), or a prototxt or
    caffemodel path. A caffemodel, a ``.pt``, or any definition with a stored phase was stored by Caffe (or
    sfport) after Net::Init filtered it: net.cpp Net::Init gives every layer the net's phase and Net::ToProto
    stores it with the filtered layers."""
    state, stored, pt = None, False, None
    if isinstance(model, caffe_files.CaffeModel):
        definition = model
    elif isinstance(model, PtFile) or caffe_files.is_torch_pt(model):
        pt = model if isinstance(model, PtFile) else read_pt(model)
        definition, state = pt.definition, pt.state_dict
        input_shapes = input_shapes or pt.input_shapes
        stored = True
    elif str(model).endswith(".h5"):
        raise CaffeFileError(model, f"is Caffe's HDF5 weights, which hold no net definition: give the net's "
                                    f"prototxt with this file as its weights {_HOW}")
    else:
        definition = caffe_files.read_net(model)
        stored = definition.kind == caffe_files.BINARY
    stored = stored or netstate.stored_phase(definition.net) is not None
    return _Read(definition, state, input_shapes, stored, pt and pt.saved, pt and pt.inference)


def _weights_to_copy(weights, definition: caffe_files.CaffeModel) -> caffe_files.CaffeModel | None:
    """Step (2), the weights Net::CopyTrainedLayersFrom will copy: the ``weights`` argument (a CaffeModel or a
    caffemodel path, as pycaffe's ``caffe.Net(prototxt, weights, phase)``), else the definition's own blobs (a
    caffemodel read as the net), else none."""
    if weights is not None:
        return weights if isinstance(weights, (caffe_files.CaffeModel, SnapshotWeights)) else read_weights(weights)
    if definition.has_weights():
        return definition
    return None


def _filtered(definition: caffe_files.CaffeModel, stored: bool, state: NetState):
    """Step (3), net.cpp Net::FilterNet: the layers of the NetState (include/exclude rules). A stored net was
    filtered before it was stored (Net::ToProto writes the net's layers only): its rules are dropped instead."""
    if stored:
        return netstate.without_rules(definition.net)
    return netstate.filter_net(definition.net, state, definition.path)


def _inference_by_default(net, stored: bool, phase: int) -> bool:
    """Step (4)'s default when ``inference`` is not given: a caffemodel alone holds the training net; in TEST,
    the inference form is what it was trained for (no Caffe counterpart: Caffe would need a deploy prototxt)."""
    return stored and phase == caffe_pb2.TEST and any(map(datalayers.reads_data_set, net.layer))


def _shaped(net, inference: bool, input_shapes, path) -> tuple:
    """Step (4), the net's inputs, as Net::Init's input blobs (net.cpp AppendTop of an Input layer's or the
    deprecated ``input``/``input_shape`` fields): with ``inference``, the definition's inference form
    (:func:`sfport.netdef.deploy.derive`, what a hand-written deploy prototxt is: data layers become inputs,
    their label tops, the losses and the accuracy go), every input with a known shape; otherwise one shape
    given alone is the first input's. Returns (net, input_shapes)."""
    if inference:
        derived = deploy_mod.derive(net, input_shapes=input_shapes, path=path, already_filtered=True)
        missing = derived.unknown_inputs()
        if missing:
            raise deploy_mod.unknown_input_error(path, missing[0], derived.sources.get(missing[0]))
        return derived.net, {k: v for k, v in derived.inputs.items() if v}
    if isinstance(input_shapes, (tuple, list)):  # one shape: the net's first input
        names = input_names(net)
        if not names:
            raise CaffeFileError(path, "the net has no input to give a shape to")
        return net, {names[0]: tuple(input_shapes)}
    return net, input_shapes


def _graph(net, phase: int, input_shapes, path) -> NetGraph:
    """Step (5), net.cpp Net::Init's wiring (AppendBottom/AppendTop, the in-place and shared blobs) and its
    shapes (each layer's Reshape), as :func:`sfport.netdef.graph.build_graph`; every input must have a shape,
    as Net::Init needs for its input blobs."""
    graph = build_graph(net, phase, input_shapes, path)
    missing = [n for n, s in graph.inputs.items() if s is None or len(s) == 0]
    if missing:
        layer = next((l for l in net.layer if missing[0] in l.top), None)
        raise deploy_mod.unknown_input_error(path, graph.caffe_name[missing[0]],
                                             (layer.name, layer.type) if layer is not None else None)
    return graph


def _match_weight_shapes(graph: NetGraph, weight_model: caffe_files.CaffeModel, path) -> tuple:
    """Step (6), Net::CopyTrainedLayersFrom's shape check (net.cpp: "Cannot copy param ... shape mismatch"),
    made before any blob is allocated, against the shapes the definition states: a num_output the weights
    cannot fit is the "does not fit" error, not an allocation of its size. Returns the match (step (8) copies
    by it)."""
    return weight_match.match_weights([weight_match.Target(gl.name, gl.type, gl.param_shapes) for gl in graph.layers],
                               weight_model, path)


def _module(graph: NetGraph, path) -> CaffeNet:
    """Step (7), Net::Init's layer creation (LayerRegistry::CreateLayer, each layer's SetUp): the CaffeNet of
    the graph. A layer's own complaint (an unknown type, bad parameters) names the definition's file."""
    try:
        return CaffeNet(graph)
    except CaffeFileError as e:
        if e.path is None:
            e.path = path
            e.args = (str(e),)
        raise


def load_net(model, prototxt=None, input_shapes: dict | tuple | None = None, phase: str | None = None, *,
             stages=(), level: int | None = None, inference: bool = True, optimize: bool = False,
             seed: int = 0) -> "Net":
    """What the commands load: MODEL (a caffemodel, prototxt or sfport .pt) alone, or the weights of MODEL (any
    file :func:`read_weights` reads) copied into the ``prototxt`` definition by layer name, in its inference
    form (any definition: deploy, train_val, train_test, a snapshot's stored net); the other arguments as for
    :class:`Net` (a .pt's phase, level and stages default to those it was saved in; otherwise TEST, level 0).
    Without either, the built-in SphereFace-20 deploy net (:func:`sfport.netdef.builtin.builtin_model`); without
    weights (the built-in net, a definition alone) the fillers' weights are drawn from ``seed``: what ``sfport
    verify`` and ``sfport convert`` show the toolkit on."""
    if model is None and prototxt is None:
        return Net(builtin.builtin_model(), phase=phase, input_shapes=input_shapes, seed=seed, stages=stages,
                   level=level, inference=inference, optimize=optimize)
    if prototxt is not None:
        return Net(caffe_files.read_prototxt(prototxt), weights=read_weights(model), phase=phase,
                   input_shapes=input_shapes, stages=stages, level=level, inference=inference, optimize=optimize,
                   seed=seed)
    return Net(model, phase=phase, input_shapes=input_shapes, stages=stages, level=level, inference=inference,
               optimize=optimize, seed=seed)


def read_weights(path) -> "caffe_files.CaffeModel | SnapshotWeights":
    """The one reader of a weights file for a net (Net::CopyTrainedLayersFrom, by layer name): every weights
    file sfport writes: a caffemodel, Caffe's HDF5 weights (``.h5``, ``snapshot_format: HDF5``), a converted
    ``.pt`` (its state as Caffe blobs, :meth:`Net.to_caffemodel`), or an earlier ``sfport train``'s training
    snapshot ``.pt`` (its net's tensors, :class:`SnapshotWeights`)."""
    if str(path).endswith(".h5"):
        return hdf5_weights.read_model(path)
    if caffe_files.is_torch_pt(path):
        doc = disk.load_torch_file(path, (PT_FORMAT, SNAPSHOT_FORMAT), PT_WHAT)
        if doc.get("format") == SNAPSHOT_FORMAT:
            return SnapshotWeights(os.fspath(path), _tensors(doc, path))
        model = Net(_pt_file(doc, path), inference=False).to_caffemodel()
        model.path = os.fspath(path)
        return model
    return caffe_files.read_caffemodel(path)


@dataclasses.dataclass
class SnapshotWeights:
    """The weights of a training snapshot ``.pt`` (an earlier ``sfport train``'s ``<prefix>_iter_N.pt``): the
    training net's module tensors by name (``layers.<layer>.<tensor>``), without a definition; given to a net,
    each of its layers with parameters takes the snapshot's tensors of its name (:meth:`as_caffemodel`)."""
    path: str
    state_dict: dict

    def weight_layers(self) -> dict[str, int]:
        keys = dict.fromkeys(k.split(".")[1] for k in self.state_dict if k.count(".") >= 2)
        return {k: i for i, k in enumerate(keys)}

    def as_caffemodel(self, net: "Net") -> caffe_files.CaffeModel:
        """``net``'s definition with, as the blobs of each layer whose tensors the snapshot holds (every one of
        them, of the layer's shapes), those tensors in Caffe's blob order (the layer's converter's ``save``)."""
        out = caffe_files.CaffeModel.from_net(net.definition, self.path)
        for gl in net.graph.layers:
            module = net.module.module_of(gl.name)
            own = module.state_dict()
            prefix = f"layers.{net.module.keys[gl.name]}."
            found = {k: self.state_dict[prefix + k] for k in own if prefix + k in self.state_dict}
            if not own or not found:
                continue
            if len(found) != len(own):
                raise CaffeFileError(self.path, f"layer '{caffe_files.as_text(gl.name)}' ({gl.type}): the snapshot "
                                                f"holds {_names(found)}, the layer has {_names(own)}")
            before = {k: v.detach().clone() for k, v in own.items()}
            try:   # the layer's converter reads the blobs off its module: the snapshot's values, then its own again
                module.load_state_dict(found)
                out.set_blob_arrays(gl.index, conv_registry.get_for(gl.param).save(module))
            except RuntimeError as e:
                raise CaffeFileError(self.path, f"does not fit {net.path or 'the net'}: layer "
                                                f"'{caffe_files.as_text(gl.name)}' ({gl.type}): "
                                                f"{' '.join(str(e).split())[:300]}") from None
            finally:
                module.load_state_dict(before)
        return out


def _tensors(doc: dict, path) -> dict:
    """A .pt's ``state_dict``, checked: tensors by name."""
    state = doc.get("state_dict")
    if not isinstance(state, dict):
        raise CaffeFileError(path, "'state_dict' is missing or not a dict of tensors by name")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CaffeFileError(path, f"'state_dict' is not a dict of tensors by name: entry {_short(k)} is "
                                       f"{type(v).__name__}")
    return state


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass
class PtFile:
    """sfport's converted ``.pt``, read and checked (:func:`read_pt`)."""
    definition: caffe_files.CaffeModel
    state_dict: dict
    input_shapes: dict
    saved: NetState | None          # the NetState it was saved in (version 2; None: version 1)
    inference: bool | None          # whether that was the inference form (version 2)


def read_pt(path) -> PtFile:
    """Read sfport's .pt without executing code (weights_only), and check the container's structure before any
    of it is used: ``net`` the text of a NetParameter, ``state_dict`` tensors by name, ``input_shapes``
    (optional) input name -> a shape Caffe's Blob::Reshape takes (caffe_files.blob_count), every size >= 1,
    and (version 2) ``state`` the NetState it was saved in and ``inference`` its form. A training snapshot is
    weights without a definition: one line saying so."""
    return _pt_file(disk.load_torch_file(path, (PT_FORMAT, SNAPSHOT_FORMAT), PT_WHAT), path)


def _pt_file(doc: dict, path) -> PtFile:
    if doc.get("format") == SNAPSHOT_FORMAT:
        raise CaffeFileError(path, "is a training snapshot: the training net's weights without its definition; "
                                   f"give the net's prototxt with this file as its weights {_HOW}")
    text = doc.get("net")
    if not isinstance(text, str):
        raise CaffeFileError(path, f"'net' is {'missing' if text is None else 'a ' + type(text).__name__}, not the "
                                   f"text of a net definition")
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        raise CaffeFileError(path, f"'net' is not a valid net definition: {_short(str(e))}") from None
    state = _tensors(doc, path)
    saved, inference = _saved_state(doc, path)
    raw = doc.get("input_shapes", {})
    if not isinstance(raw, dict):
        raise CaffeFileError(path, f"'input_shapes' is not a dict of input name -> shape (it is {type(raw).__name__})")
    shapes_ = {}
    for k, v in raw.items():
        problem = None
        if not isinstance(k, str):
            problem = f"its key {_short(k)} is not an input name"
        elif not isinstance(v, (list, tuple)) or not v:
            problem = f"'{k}': {_short(v)} is not a list of sizes"
        elif not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v):
            problem = f"'{k}': {_short(v)} is not a list of sizes >= 1"
        else:
            try:
                caffe_files.blob_count(v)
            except ValueError as e:
                problem = f"'{k}': {e}"
        if problem:
            raise CaffeFileError(path, f"'input_shapes' is not a dict of input name -> shape: {problem}")
        shapes_[k] = tuple(v)
    return PtFile(caffe_files.CaffeModel.from_net(net, os.fspath(path)), state, shapes_, saved, inference)


def _saved_state(doc: dict, path) -> tuple[NetState | None, bool | None]:
    """A version 2 ``.pt``'s ``state`` ({phase: TRAIN | TEST, level, stages}) and ``inference``, checked; a
    version 1 file has neither (None, None)."""
    version = doc.get("version", 1)
    if version == 1:
        return None, None
    if version != PT_VERSION:
        raise CaffeFileError(path, f"'version' is {_short(version)}: this sfport reads versions 1 and {PT_VERSION}")
    raw, inference = doc.get("state"), doc.get("inference")
    ok = isinstance(raw, dict) and raw.get("phase") in ("TRAIN", "TEST") and isinstance(raw.get("level"), int) \
        and not isinstance(raw.get("level"), bool) and isinstance(raw.get("stages"), list) \
        and all(isinstance(x, str) for x in raw["stages"])
    if not ok:
        raise CaffeFileError(path, f"'state' is {_short(raw)}, not {{'phase': 'TRAIN' or 'TEST', 'level': an "
                                   f"integer, 'stages': a list of names}}")
    if not isinstance(inference, bool):
        raise CaffeFileError(path, f"'inference' is {_short(inference)}, not true or false")
    return NetState.of(raw["phase"], raw["level"], raw["stages"]), inference
