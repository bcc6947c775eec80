"""The inference-optimized form of a net: the same outputs from fewer layers, as another Caffe net.

:func:`optimize` folds the per-channel affine layers that follow a Convolution, Deconvolution or InnerProduct
into its weights and bias, merges a chain of them that follows anything else into one Scale layer, and drops
the identities of a test-phase net (Dropout, except py-faster-rcnn's ``scale_train: false`` one, which scales at
test time; Split) and Silence. The result is a NetParameter with its weights (:class:`Optimized`), which
:class:`sfport.TorchNet` builds like any other net (``Net(..., optimize=True)``), so it saves, exports and converts
back to a caffemodel as every net does. What a layer type contributes is its converter's: ``affine``,
``fold_affine`` / ``with_bias``, ``identity_at_inference``, ``computes_nothing`` and ``fresh_top``
(:class:`sfport.converters.Converter`); this module switches on no type name.

What folds (each a CHECK of the layer Caffe runs, restated here):

- BatchNorm with global statistics (batch_norm_layer.cpp Forward_cpu: ``(x - mean_sum/s) / sqrt(var_sum/s +
  eps)``, the statistics 0 when the scale factor ``s`` is 0), one bottom;
- Scale and Bias with one bottom and a learned blob over exactly the channel axis 1 (scale_layer.cpp,
  bias_layer.cpp: ``axis`` 1, ``num_axes`` 1);
- into a layer whose output channels are axis 1: Convolution (its weight ``out x in/group x k``), Deconvolution
  (``in x out/group x k``), InnerProduct with ``axis`` 1 (``N x K``, or ``K x N`` with ``transpose``).

A layer folds into the one before it only when that one's top feeds nothing else and is not a net output, the two
are next to each other in the net, and neither shares parameters (``param { name }``) with another layer. A
dropped Dropout or Split that was not in place has its readers read its bottom instead: that name still holds
the same value for each of them, since Caffe rewrites a name only in place, by a layer that is its one reader
(net.cpp Net::AppendTop: a top 'produced by multiple sources' is fatal; util/insert_splits.cpp gives a blob with
several readers a Split first). Folding is exact in real arithmetic; the float32
weights are computed in float64 and rounded once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sfport import converters as conv_registry
from sfport.netdef import shapes
from sfport.protos import caffe_pb2


@dataclass
class Optimized:
    """``net`` (a NetParameter, no include/exclude rules), ``weights`` {layer name: Caffe blobs}, ``origin``
    {(layer name, top index) of the optimized net: unique blob name of the original net whose value it is},
    ``inputs`` (the original net's unique input names, in the order of the data layers' tops), ``folded``
    [(layer, [layers folded into it])], ``dropped`` [layers]."""

    net: object
    weights: dict
    origin: dict
    inputs: list
    folded: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    pruned: list = field(default_factory=list)      # layers the requested outputs do not need

    def summary(self) -> str:
        n = sum(len(f) for _, f in self.folded)
        pruned = f", {len(self.pruned)} not needed for the output" if self.pruned else ""
        return (f"optimized: {n} layer{'s' * (n != 1)} folded into {len(self.folded)}, {len(self.dropped)} "
                f"dropped{pruned}")


def _affine_of(gl, module) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, b) per channel with top = a * bottom + b, for a foldable layer (its converter's ``affine``), else None."""
    if len(gl.bottoms) != 1 or len(gl.tops) != 1 or gl.shared:
        return None
    shape = gl.bottom_shapes[0]
    if shape is None or len(shape) < 2:
        return None
    return conv_registry.get_for(gl.param).affine(gl.param, module, tuple(shape))


def optimize(net, outputs=None) -> Optimized:
    """The optimized form of a built :class:`sfport.TorchNet` (test phase) with its current weights; with ``outputs``
    (Caffe blob names) only the layers those blobs are computed from are kept."""
    graph, module = net.graph, net.module
    layers = graph.layers
    alive = set(range(len(layers)))
    if outputs is not None:
        unknown = [o for o in outputs if o not in graph.final]
        if unknown:
            raise ValueError(f"no blob '{unknown[0]}' in the net")
        needed = {graph.final[o] for o in outputs}
        alive = set()
        for k in range(len(layers) - 1, -1, -1):
            if set(layers[k].tops) & needed:
                alive.add(k)
                needed.update(layers[k].bottoms)
    pruned = set(range(len(layers))) - alive
    consumers: dict[str, int] = {}
    for k in sorted(alive):
        for u in layers[k].bottoms:
            consumers[u] = consumers.get(u, 0) + 1
    kept_values = ({graph.final[o] for o in outputs} if outputs is not None
                   else set(graph.outputs) | {t for t, _ in module.loss_terms})
    sharing = {owner for gl in layers for owner, _ in gl.shared.values()}

    def private(gl) -> bool:
        return not gl.shared and gl.name not in sharing

    def feeds_only_next(gl, nxt) -> bool:
        return (len(gl.tops) == 1 and nxt.bottoms == gl.tops and consumers.get(gl.tops[0], 0) == 1
                and gl.tops[0] not in kept_values)

    # 1. chains: a head (or a first affine layer) and the affine layers right after it (pruned ones left out)
    plan: dict[int, tuple[list, list]] = {}   # position of head -> (folded layers, its new blobs)
    gone: set[int] = set(pruned)
    order = sorted(alive)
    i = 0
    while i < len(order):
        gl = layers[order[i]]
        converter = conv_registry.get_for(gl.param)
        head = converter.folds_affine and private(gl) and len(gl.tops) == 1
        first = _affine_of(gl, module.module_of(gl.name)) if not head and private(gl) else None
        if not head and first is None:
            i += 1
            continue
        a, b = first if first is not None else (None, None)
        chain, j = [], i + 1
        while j < len(order) and feeds_only_next(layers[order[j - 1]], layers[order[j]]) \
                and private(layers[order[j]]):
            nxt = layers[order[j]]
            step = _affine_of(nxt, module.module_of(nxt.name))
            if step is None:
                break
            sa, sb = step
            a, b = (sa, sb) if a is None else (a * sa, b * sa + sb)
            chain.append(order[j])
            j += 1
        arrays = None
        if chain:   # a head's weights with the chain folded in; after anything else, one Scale's blobs
            arrays = converter.fold_affine(gl.param, module.module_of(gl.name), a, b) if head else \
                [a.astype(np.float32), b.astype(np.float32)]
        if arrays is None:
            chain, j = [], i + 1
        else:
            plan[order[i]] = (chain, arrays)
            gone.update(chain)
        i = max(j, i + 1)

    # 2. identities (at test time) and layers that compute nothing
    drop: set[int] = set()
    training = module.training
    for k in order:
        gl = layers[k]
        converter = conv_registry.get_for(gl.param)
        if converter.computes_nothing and not gl.tops:
            drop.add(k)
        elif not training and len(gl.bottoms) == 1 and gl.tops and not (set(gl.tops) & kept_values) \
                and converter.identity_at_inference(gl.param):
            drop.add(k)

    return _write(net, plan, gone, drop, list(graph.inputs), [layers[k].name for k in sorted(pruned)])


def _write(net, plan, gone, drop, inputs, pruned) -> Optimized:
    """The optimized NetParameter and its weights."""
    graph, module = net.graph, net.module
    layers = graph.layers
    by_index = {gl.index: k for k, gl in enumerate(layers)}
    # the value each original unique blob stands for once identities are dropped
    same: dict[str, str] = {}

    def value(u: str) -> str:
        while u in same:
            u = same[u]
        return u

    for k in sorted(drop):
        gl = layers[k]
        for t in gl.tops:
            same[t] = gl.bottoms[0]
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net.definition)
    del out.layer[:]
    weights, origin, folded, dropped = {}, {}, [], []
    data_tops = iter(inputs)
    for i, layer in enumerate(net.definition.layer):
        if shapes.is_data_layer(layer):
            new = out.layer.add()
            new.CopyFrom(layer)
            for j in range(len(layer.top)):
                origin[(layer.name, j)] = next(data_tops)
            continue
        k = by_index.get(i)
        if k is None:
            continue
        gl = layers[k]
        if k in gone:
            continue
        if k in drop:
            dropped.append(gl.name)
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, b in enumerate(gl.bottoms):   # a reader of a dropped identity's top reads its bottom
            new.bottom[j] = graph.caffe_name[value(b)]
        converter = conv_registry.get_for(gl.param)
        arrays = converter.save(module.module_of(gl.name))
        tops = list(gl.tops)
        if k in plan:
            chain, arrays = plan[k]
            last = layers[chain[-1]]
            tops = [last.tops[0]]
            new.top[0] = graph.caffe_name[last.tops[0]]
            folded.append((gl.name, [layers[c].name for c in chain]))
            if converter.folds_affine:
                converter.with_bias(new)
            else:   # an affine chain after anything else: one Scale with a bias
                conv_registry.affine_layer(new)
            del new.param[:]
            for spec in layer.param[:2]:
                if spec.HasField("lr_mult") or spec.HasField("decay_mult"):
                    new.param.add().CopyFrom(spec)
        new.ClearField("include")
        new.ClearField("exclude")
        del new.blobs[:]
        weights[new.name] = arrays
        for j, u in enumerate(tops):
            origin[(new.name, j)] = u
    return Optimized(out, weights, origin, list(inputs), folded, dropped, list(pruned))



def in_place_layers(graph, module) -> set[str]:
    """The layers of an optimized net that may overwrite their bottom (``module.forward_``): one bottom, produced
    by a layer whose top is a fresh tensor (its converter's ``fresh_top``), read by this layer alone, and neither
    an input nor an output."""
    readers: dict[str, int] = {}
    for gl in graph.layers:
        for u in gl.bottoms:
            readers[u] = readers.get(u, 0) + 1
    fresh = {t for gl in graph.layers if conv_registry.get_for(gl.param).fresh_top for t in gl.tops}
    kept = set(graph.outputs) | {t for t, _ in module.loss_terms}
    return {gl.name for gl in graph.layers
            if hasattr(module.module_of(gl.name), "forward_") and len(gl.bottoms) == 1
            and gl.bottoms[0] in fresh and readers[gl.bottoms[0]] == 1 and gl.bottoms[0] not in kept}
