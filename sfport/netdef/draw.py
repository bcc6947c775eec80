"""Graphs of Caffe nets, as Caffe's python/caffe/draw.py draws them (``sfport draw``, like python/draw_net.py).

The graph is the one ``caffe.draw.get_pydot_graph`` builds: each layer is a ``record`` box named by its label
(``get_layer_label``: the name, ``(type)`` - ``(Pooling MAX)`` for pooling - and for Convolution, Deconvolution and
Pooling the kernel size, stride and pad), filled by type (``choose_color_by_layertype``) or light green for an
in-place layer (one bottom, one top, the same blob); each blob is a node; an edge goes from every bottom blob to
its layer and from the layer to every top, the top edges labelled as ``get_edge_label`` says (a Data layer's
batch size, a Convolution / Deconvolution / InnerProduct layer's num_output). As in draw.py, a blob node takes the
style of its last mention: a blob some layer reads is a grey octagon, a blob only written (a net's outputs, or an
in-place layer's blob that nothing reads afterwards) is a plain node; layers and blobs that share a key
(``name_type`` / ``blob_blob``) are one node. Drawing needs the optional extra ``draw`` (pydot) and Graphviz's
``dot`` program, except for ``.dot`` output, which is the DOT text itself.

Caffe's draw.py filters layers by phase alone; here ``phase`` (with ``stages`` and ``level``) selects the layers
of that NetState as Caffe's Net::FilterNet does (sfport.netdef.netstate), and ``phase=None`` draws every layer.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os

from sfport.formats import caffe_files, disk
from sfport.netdef.wiring import without_splits
from sfport.errors import CaffeFileError
from sfport.formats.disk import atomic_write, check_output
from sfport.netdef.netstate import NetState, filter_net, stored_phase, without_rules
from sfport.protos import caffe_pb2

FORMATS = ("png", "svg", "pdf", "dot")
RANKDIRS = ("LR", "TB", "BT", "RL")
NEEDS = "drawing needs pydot and Graphviz: pip install 'sfport[draw]' and apt install graphviz"

# draw.py's internal layer and blob styles.
LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def pydot():
    """The pydot module; the one-line error when it is not installed."""
    try:
        import pydot as module
    except ImportError:
        raise CaffeFileError(None, NEEDS) from None
    return module


def output_format(path: str | os.PathLike) -> str:
    """The format a drawing's file name asks for (png, svg, pdf or dot); a one-line error for anything else."""
    return disk.output_format(path, FORMATS, "drawing")


def get_edge_label(layer) -> str:
    """draw.py get_edge_label: the label of the edges from a layer to its tops."""
    if layer.type == "Data":
        return "Batch " + str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer, path=None) -> tuple[float, float]:
    """draw.py get_layer_lr_mult: the lr_mult of the weights and the bias (1.0 where no param spec says)."""
    if layer.type not in LEARNING_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    if len(layer.param) > 2:
        raise CaffeFileError(path, f"layer '{layer.name}': {len(layer.param)} param specs; Caffe's draw.py reads "
                                   f"the lr_mult of a {layer.type} layer's 1 or 2 (could not parse it)")
    mults = [p.lr_mult for p in layer.param] + [1.0, 1.0]
    return mults[0], mults[1]


def get_layer_label(layer, rankdir: str, display_lrm: bool = False, path=None) -> str:
    """draw.py get_layer_label: the layer's node name (also its text), in double quotes. Words are separated
    by a DOT newline when the graph runs sideways (LR, RL) and by spaces when it runs vertically (TB, BT)."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        kind = f"({layer.type} {caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)})"
    else:
        kind = f"({layer.type})"
    parts = [layer.name, kind]
    if layer.type == "Pooling":
        p = layer.pooling_param
        spatial = (p.kernel_size, p.stride, p.pad)
    elif layer.type in ("Convolution", "Deconvolution"):
        c = layer.convolution_param  # draw.py reads the first value of each repeated field only
        spatial = (c.kernel_size[0] if len(c.kernel_size) else 1, c.stride[0] if len(c.stride) else 1,
                   c.pad[0] if len(c.pad) else 0)
    else:
        spatial = None
    if spatial is not None:
        parts.append(separator.join(["kernel size: %d" % spatial[0], "stride: %d" % spatial[1],
                                     "pad: %d" % spatial[2]]))
    if display_lrm and layer.type in LEARNING_TYPES:
        lrm0, lrm1 = get_layer_lr_mult(layer, path)
        if any([lrm0, lrm1]):
            parts.append("lr mult: %.1f, %.1f" % (lrm0, lrm1))
    return '"%s"' % separator.join(parts)


def choose_color_by_layertype(layertype: str) -> str:
    """draw.py choose_color_by_layertype."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def is_in_place(layer) -> bool:
    return len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]


def drawn_layers(net, phase=None, stages=(), level: int = 0, path=None) -> list:
    """The layers drawn: all of them (``phase=None``), or those of the NetState (phase, level, stages) as
    Net::FilterNet selects them."""
    if phase is None:
        return list(net.layer)
    return list(filter_net(net, NetState.of(phase, level, stages), path).layer)


def net_graph(net, rankdir: str = "LR", phase=None, stages=(), level: int = 0, display_lrm: bool = False,
              label_edges: bool = True, path=None):
    """The ``pydot.Dot`` of ``net`` (a NetParameter) as draw.py's get_pydot_graph builds it, of the layers
    :func:`drawn_layers` selects."""
    if rankdir not in RANKDIRS:
        raise CaffeFileError(None, f"rankdir must be one of {', '.join(RANKDIRS)}, not '{rankdir}'")
    dot = pydot()
    graph = dot.Dot(net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes, edges = {}, []
    for layer in drawn_layers(net, phase, stages, level, path):
        label = get_layer_label(layer, rankdir, display_lrm, path)
        key = f"{layer.name}_{layer.type}"
        style = NEURON_LAYER_STYLE if is_in_place(layer) else \
            {**LAYER_STYLE_DEFAULT, "fillcolor": choose_color_by_layertype(layer.type)}
        nodes[key] = dot.Node(label, **style)
        for blob in layer.bottom:
            nodes[blob + "_blob"] = dot.Node(blob, **BLOB_STYLE)
            edges.append((blob + "_blob", key, '""'))
        for blob in layer.top:
            nodes[blob + "_blob"] = dot.Node(blob)
            edges.append((key, blob + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(dot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """pycaffe's draw.get_pydot_graph: the pydot graph of every layer, or of ``phase``'s (TRAIN / TEST)."""
    return net_graph(caffe_net, rankdir, phase, display_lrm=display_lrm, label_edges=label_edges)


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False) -> bytes:
    """pycaffe's draw.draw_net: the drawing as the bytes of format ``ext`` (``dot`` its DOT text)."""
    return render(get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm), ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False) -> None:
    """pycaffe's draw.draw_net_to_file: the drawing in the format of ``filename``'s extension."""
    draw(caffe_net, filename, rankdir, phase, display_lrm=display_lrm)


def render(graph, fmt: str, path=None) -> bytes:
    """The graph in ``fmt``: the DOT text for 'dot', else what Graphviz's ``dot -T<fmt>`` makes of it."""
    if fmt == "dot":
        return graph.to_string().encode()
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):  # pydot prints dot's output when dot fails
            return graph.create(prog="dot", format=fmt)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise CaffeFileError(None, NEEDS) from None
        raise
    except AssertionError:
        lines = [ln for ln in said.getvalue().splitlines()[1:] if ln.strip()]
        why = lines[-1].strip() if lines else "no message"
        raise CaffeFileError(path, f"Graphviz's dot could not draw the net as {fmt}: {why}") from None


def fold_inserted_splits(net):
    """A copy of a net Caffe instantiated (a caffemodel's stored net) without the Split layers Caffe's
    InsertSplits added, their tops read as the blob they copy: the graph of the definition."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer, bottoms in without_splits(net.layer):
        kept = out.layer.add()
        kept.CopyFrom(layer)
        kept.bottom[:] = bottoms
    return out


def read_drawable(path, splits: bool = False):
    """(net, stored phase or None, stored) from a prototxt or caffemodel, upgraded from legacy formats. A net
    Caffe stored (a caffemodel's) is already filtered: its include/exclude rules are dropped, and the Split
    layers Caffe inserted are folded away unless ``splits``."""
    read = caffe_files.read_net(path)
    stored = read.kind == caffe_files.BINARY or stored_phase(read.net) is not None
    if not stored:
        return read.net, None, False
    net = without_rules(read.net)
    return (net if splits else fold_inserted_splits(net)), stored_phase(read.net), True


def draw(net, path, rankdir: str = "LR", phase=None, stages=(), level: int = 0, display_lrm: bool = False,
         source=None):
    """Draw ``net`` to ``path`` in the format its extension names (draw.py draw_net_to_file), written under a
    temporary name and renamed; returns the graph. ``source`` names the net's file in errors."""
    fmt = output_format(path)
    check_output(path)
    graph = net_graph(net, rankdir, phase, stages, level, display_lrm, path=source)
    atomic_write(path, render(graph, fmt, path))
    return graph
