"""NetGraph: the one intermediate form between Caffe's messages and PyTorch.

Layers of one phase in order, with bottoms/tops resolved to unique blob names (an in-place layer's top gets a
new name, so every intermediate value stays addressable), shapes inferred, and parameters shared by
``param { name: ... }`` resolved to one owner. Everything downstream reads the graph, never the raw messages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sfport import converters
from sfport.netdef import datalayers, shapes
from sfport.netdef.wiring import Wiring
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2


@dataclass
class GraphLayer:
    index: int                        # position in the NetParameter
    name: str
    type: str
    param: object                     # the LayerParameter
    bottoms: list[str]                # unique blob names
    tops: list[str]                   # unique blob names
    bottom_shapes: list
    top_shapes: list
    shared: dict[int, tuple[str, int]] = field(default_factory=dict)  # blob index -> (owner layer, owner blob)
    loss_weights: list[float] = field(default_factory=list)           # per top (Caffe's loss_weight)
    param_shapes: list | None = None  # the parameter blobs' shapes the converter states (None: it does not say)

    @property
    def blob_shapes(self) -> list:
        """The shapes of its bottoms, then its tops."""
        return list(self.bottom_shapes) + list(self.top_shapes)


@dataclass
class NetGraph:
    name: str
    inputs: dict[str, tuple]          # unique input blob name -> shape (None if unknown)
    layers: list[GraphLayer]
    outputs: list[str]                # unique names of the blobs nothing consumes
    caffe_name: dict[str, str]        # unique blob name -> Caffe blob name
    final: dict[str, str]             # Caffe blob name -> unique name of its last value
    phase: int = caffe_pb2.TEST

    def layer(self, name: str) -> GraphLayer:
        for gl in self.layers:
            if gl.name == name:
                return gl
        raise KeyError(name)


def images_apart(graph: NetGraph) -> bool:
    """Whether the net, at inference, computes each image of a batch from that image alone: every blob has the
    inputs' batch on axis 0 and every layer's converter says so of its parameters (Converter.images_apart; a
    type whose converter does not say, or a layer that mixes images, as a Softmax over axis 0 or a BatchNorm of
    the batch's own statistics, makes it False). Such a batch may run in parts, the parts' tops joined."""
    batches = {s[0] if s else None for s in graph.inputs.values()}
    if len(batches) != 1 or None in batches:
        return False
    n = batches.pop()
    for gl in graph.layers:
        if any(not s or s[0] != n for s in gl.blob_shapes):
            return False
        converter = converters.find_for(gl.param)
        if converter is None or not converter.images_apart(gl.param, gl.bottom_shapes):
            return False
    return True


def loss_weights(layer, path=None) -> list[float]:
    """Per-top loss weights as Caffe's Layer::SetLossWeights: explicit ``loss_weight`` (one per top), else 1 for
    the first top of a loss layer and 0 elsewhere."""
    n = len(layer.top)
    if len(layer.loss_weight):
        if len(layer.loss_weight) != n:
            raise CaffeFileError(path, f"layer '{layer.name}': {len(layer.loss_weight)} loss_weight values for "
                                       f"{n} tops (give one per top)")
        return [float(v) for v in layer.loss_weight]
    return [1.0 if (j == 0 and converters.is_loss(layer.type)) else 0.0 for j in range(n)]


def input_names(net) -> list[str]:
    """Tops of the net's data/Input layers, in order."""
    return [t for layer in net.layer if datalayers.is_data_layer(layer) for t in layer.top]


def build_graph(net, phase: int = caffe_pb2.TEST, input_shapes: dict | None = None, path=None) -> NetGraph:
    """Resolve a NetParameter already reduced to one NetState (:func:`sfport.netdef.netstate.filter_net` or
    :func:`sfport.netdef.deploy.derive`) into a NetGraph (Caffe's Net::Init bookkeeping); ``phase`` is the
    state's phase (train or test behaviour of the layers)."""
    data_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    inferred = {ls.index: ls for ls in shapes.infer(net, phase, data_shapes, filtered=True, path=path)}
    wiring = Wiring()                    # Caffe's values (checked by shapes.infer: its errors come first)
    unique: list[str] = []               # value -> its unique name
    caffe_name: dict[str, str] = {}
    inputs: dict[str, tuple] = {}
    available: list[str] = []
    layers: list[GraphLayer] = []
    owners: dict[str, tuple[str, int]] = {}
    used_unique: set[str] = set()

    def new_name(top: str, layer_name: str) -> str:
        name = top if top not in used_unique else f"{top}@{layer_name}"
        k = 2
        while name in used_unique:
            name, k = f"{top}@{layer_name}#{k}", k + 1
        used_unique.add(name)
        return name

    for i, layer in enumerate(net.layer):
        ls = inferred[i]
        read, made = wiring.add(layer)
        bottoms = [unique[v] for v in read]
        for u in bottoms:
            if u in available:
                available.remove(u)
        tops = []
        for v in made:
            u = new_name(wiring.name[v], layer.name)
            unique.append(u)
            caffe_name[u] = wiring.name[v]
            tops.append(u)
            available.append(u)
        if datalayers.is_data_layer(layer):
            inputs.update(zip(tops, ls.tops))
            continue
        gl = GraphLayer(i, layer.name, layer.type, layer, bottoms, tops, list(ls.bottoms), list(ls.tops),
                        loss_weights=loss_weights(layer, path), param_shapes=ls.params)
        for j, spec in enumerate(layer.param):
            if spec.name:
                if spec.name in owners:
                    gl.shared[j] = owners[spec.name]
                else:
                    owners[spec.name] = (layer.name, j)
        layers.append(gl)
    current = {name: unique[v] for name, v in wiring.current.items()}
    return NetGraph(net.name, inputs, layers, available, caffe_name, current, phase)
