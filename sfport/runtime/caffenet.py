"""CaffeNet, the nn.Module that runs a NetGraph (Caffe's Net::Forward over the layers' converters), and the two
views of it that training and export use (:class:`_KeptBlobs`, :class:`_Positional`). :class:`sfport.runtime.net.Net`
is the pycaffe-like handle around it."""
from __future__ import annotations

import re

import torch
from torch import nn

from sfport.converters import fillers
from sfport import converters as conv_registry
from sfport.netdef.wiring import about_layer
from sfport.errors import CaffeFileError
from sfport.netdef.graph import NetGraph

# Names a ModuleDict already answers to (its methods, nn.Module's attributes: keys, forward, training, ...): a
# layer of such a name gets another key, as nn.Module.add_module would refuse it ("attribute already exists")
_TAKEN_BY_MODULEDICT = frozenset(dir(nn.ModuleDict()))


def _key(name: str, taken: set) -> str:
    """A ModuleDict key for a Caffe layer name (no dots; unique; not an attribute of the ModuleDict)."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    if key[0].isdigit():
        key = "_" + key
    if key in _TAKEN_BY_MODULEDICT:
        key += "_"
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
        built = self.layers._modules   # the ModuleDict's own registry, filled directly below
        for gl in graph.layers:
            converter = conv_registry.get_for(gl.param)
            if any(s is None for s in gl.bottom_shapes):
                raise CaffeFileError(None, f"layer '{gl.name}' ({gl.type}): the shape of its input is unknown; "
                                           f"give the input shape")
            try:
                module = converter.build(gl.param, [tuple(s) for s in gl.bottom_shapes])
            except ValueError as e:
                raise CaffeFileError(None, about_layer(gl.param, str(e))) from None
            key = _key(gl.name, taken)
            self.keys[gl.name] = key
            # what ModuleDict.__setitem__ (add_module) stores, without its checks (a key from _key passes them;
            # their attribute probe costs as much as building the layer)
            built[key] = module
        for gl in graph.layers:  # shared parameters: one owner's nn.Parameter everywhere
            module = built[self.keys[gl.name]]
            for j, (owner, oj) in gl.shared.items():
                owner_module = built[self.keys[owner]]
                name = module.caffe_blobs[j]
                owner_param = getattr(owner_module, owner_module.caffe_blobs[oj])
                if getattr(module, name).shape != owner_param.shape:
                    raise CaffeFileError(None, f"layer '{gl.name}' shares parameter {j} with '{owner}' but their "
                                               f"shapes differ: {list(getattr(module, name).shape)} vs "
                                               f"{list(owner_param.shape)}")
                setattr(module, name, owner_param)
        for gl in graph.layers:  # lr_mult 0: no gradient at all (Caffe's param_propagate_down false)
            if not gl.param.param:
                continue
            module = built[self.keys[gl.name]]
            for j, spec in enumerate(gl.param.param):
                if j < len(module.caffe_blobs) and j not in gl.shared and spec.HasField("lr_mult") \
                        and spec.lr_mult == 0:
                    getattr(module, module.caffe_blobs[j]).requires_grad_(False)
        self.input_names = list(graph.inputs)
        # 4-D inputs of at least this batch fed as channels_last (NHWC in memory), None: never; set by
        # Net.optimized where it is faster
        self.channels_last_from: int | None = None
        # layers run in place on their bottom when nothing else needs it (no autograd, blobs freed): Net.optimized
        self.in_place: set[str] = set()
        self.output_names = [graph.caffe_name[u] for u in graph.outputs]
        # (unique top name, weight) of every top that enters the loss, in Caffe's order
        self.loss_terms = [(t, w) for gl in graph.layers for t, w in zip(gl.tops, gl.loss_weights) if w]
        self._plans: dict = {}   # run's walk per (keep_all, keep): _plan

    def fill(self, layers=None, generator: torch.Generator | None = None, apply: bool = True) -> dict[str, list[str]]:
        """Initialise parameters by their Caffe fillers (all layers, or those named), as Caffe's LayerSetUp
        does; a shared parameter is filled by its owner only. Returns {layer: [filler description per blob]}
        (``apply=False``: only the descriptions)."""
        done = {}
        names = None if layers is None else set(layers)
        for gl in self.graph.layers:
            if names is not None and gl.name not in names:
                continue
            converter = conv_registry.get_for(gl.param)
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

    def _plan(self, keep_all: bool, keep: tuple) -> list[tuple]:
        """The walk ``run`` makes, worked out once per kind of call: per layer (GraphLayer, module key, bottoms,
        tops, the blobs freed after it: those whose last consumer it is, unless an output, a loss top or kept)."""
        k = (keep_all, keep)
        plan = self._plans.get(k)
        if plan is None:
            last: dict[str, int] = {}
            for i, gl in enumerate(self.graph.layers):
                for b in gl.bottoms:
                    last[b] = i
            kept = set(self.graph.outputs) | {t for t, _ in self.loss_terms} | set(keep)
            plan = [(gl, self.keys[gl.name], tuple(gl.bottoms), tuple(gl.tops),
                     () if keep_all else tuple(dict.fromkeys(b for b in gl.bottoms if last[b] == i and b not in kept)))
                    for i, gl in enumerate(self.graph.layers)]
            self._plans[k] = plan
        return plan

    def run(self, inputs: dict, keep_all: bool = False, keep: tuple = (),
            overrides: dict | None = None) -> dict[str, torch.Tensor]:
        """Every blob by unique name (``keep_all``), else the outputs, loss tops and ``keep`` (unique names); a top
        in ``overrides`` ({unique name: tensor}) takes that value once computed (export's checks)."""
        blobs: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            caffe = self.graph.caffe_name[name]
            if name in inputs:
                blobs[name] = inputs[name]
            elif caffe in inputs:
                blobs[name] = inputs[caffe]
            else:
                raise KeyError(f"missing input '{caffe}'")
        if self.channels_last_from is not None and not conv_registry.in_export_form():
            for name, t in blobs.items():
                if t.dim() == 4 and t.shape[0] >= self.channels_last_from:
                    blobs[name] = t.contiguous(memory_format=torch.channels_last)
        in_place = bool(self.in_place) and not keep_all and not torch.is_grad_enabled() \
            and not conv_registry.in_export_form()
        modules = self.layers._modules
        for gl, key, bottoms, tops, frees in self._plan(keep_all, keep):
            module = modules[key]
            if in_place and gl.name in self.in_place:   # its bottom is read by it alone and freed after it
                out = module.forward_(blobs[bottoms[0]])
            else:
                out = module(*[blobs[b] for b in bottoms])
            if isinstance(out, torch.Tensor):
                blobs[tops[0]] = out if overrides is None or tops[0] not in overrides else overrides[tops[0]]
            else:
                for name, t in zip(tops, out):
                    blobs[name] = t if overrides is None or name not in overrides else overrides[name]
            for b in frees:
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
        self.overrides: dict | None = None   # {Caffe blob name: tensor}: set by export's checks for a while

    def forward(self, *xs):
        final = self.net.graph.final
        unique = [final.get(o, o) for o in self.outputs]
        overrides = None if not self.overrides else {final.get(k, k): v for k, v in self.overrides.items()}
        with conv_registry.export_form():
            blobs = self.net.run(dict(zip(self.net.input_names, xs)), keep_all=False, keep=tuple(unique),
                                 overrides=overrides)
        return tuple(blobs[u] for u in unique)
