"""How Caffe wires a net: each bottom to the value an earlier layer produced, and the Split layers it inserts.

:class:`Wiring` is Caffe's bookkeeping of blob names as Net::Init meets the layers (net.cpp AppendBottom /
AppendTop, after insert_splits.cpp InsertSplits), the one walk that resolves a bottom to its producer: shape
inference (:mod:`.shapes`), the deploy form (:mod:`.deploy`) and the graph a net runs (:mod:`.graph`) use it.
Every top written makes a new *value* (an in-place top is a new value of the same name), numbered in order.

:func:`without_splits` is the one fold of the Split layers Caffe's InsertSplits added to a net it instantiated
(what a caffemodel stores): their readers read the blob the split copies. The deploy form, ``sfport inspect``
and ``sfport draw`` use it.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

from sfport import converters
from sfport.errors import CaffeFileError
from sfport.formats.caffe_files import as_text

_SPLIT_TOP = re.compile(r"_split_\d+$")


def about_layer(layer, message: str) -> str:
    """A message about ``layer``, led by the layer's name and type once."""
    message = " ".join(message.split())
    if message.startswith(f"layer '{as_text(layer.name)}'"):
        return message
    return f"layer '{as_text(layer.name)}' ({as_text(layer.type)}): {message}"


class UnknownBottom(CaffeFileError):
    """Net::AppendBottom's "Unknown bottom blob": ``blob`` (the name) is read before any layer produces it."""

    def __init__(self, layer, blob: str, index: int):
        super().__init__(None, about_layer(layer, f"unknown bottom blob '{blob}' (bottom index {index}): no earlier "
                                                  f"layer produces it"))
        self.blob = blob


class Wiring:
    """The values of a net's blobs as its layers are added in order. ``add`` checks what Caffe checks: a bottom
    must have been produced before ("Unknown bottom blob"); a top is new, or in place - the same name as the
    layer's bottom at the same index; any other reuse of a name is "Top blob 'x' produced by multiple sources".
    InsertSplits gives every reader of a value shared by several readers its own copy, so an in-place layer on a
    value that another reader also reads (or that it reads twice) writes a name that is then produced twice:
    Caffe refuses that net as well."""

    def __init__(self):
        self.current: dict[str, int] = {}     # blob name -> its current value
        self.name: list[str] = []             # value -> its blob name
        self.producer: list[tuple] = []       # value -> (position of the layer added, top index)
        self.readers: dict[int, int] = {}     # value -> how many bottoms read it
        self.count = 0                        # layers added

    def add(self, layer, bottoms: Iterable[str] | None = None) -> tuple[list[int], list[int]]:
        """Add the next layer; returns (the values its bottoms read, the values its tops make). ``bottoms``
        replaces the layer's own bottom names (a reader of a folded split reads the split's source)."""
        i, self.count = self.count, self.count + 1
        names = list(layer.bottom if bottoms is None else bottoms)
        read = []
        for j, b in enumerate(names):
            if b not in self.current:
                raise UnknownBottom(layer, as_text(b), j)
            v = self.current[b]
            self.readers[v] = self.readers.get(v, 0) + 1
            read.append(v)
        made, seen = [], set()
        for j, t in enumerate(layer.top):
            if t in seen:
                raise CaffeFileError(None, about_layer(layer, f"top blob '{as_text(t)}' is listed twice (produced "
                                                              f"by multiple sources)"))
            seen.add(t)
            in_place = j < len(names) and names[j] == t
            if in_place:
                n = self.readers.get(self.current[t], 0)
                if n > 1:
                    raise CaffeFileError(None, about_layer(
                        layer, f"works in place on '{as_text(t)}', which {n - 1} other bottom(s) also read: Caffe "
                               f"splits a blob with several readers, and '{as_text(t)}' is then produced by "
                               f"multiple sources (give this layer its own top)"))
            elif t in self.current:
                raise CaffeFileError(None, about_layer(layer, f"top blob '{as_text(t)}' is produced by multiple "
                                                              f"sources (an earlier layer or input already makes it)"))
            v = len(self.name)
            self.name.append(t)
            self.producer.append((i, j))
            self.current[t] = v
            made.append(v)
        return read, made


def is_inserted_split(layer) -> bool:
    """A Split layer Caffe's InsertSplits added (insert_splits.cpp SplitLayerName / SplitBlobName: tops named
    ``<blob>_<layer>_<i>_split_<k>``)."""
    converter = converters.find(layer.type)
    return converter is not None and converter.copies_bottom and len(layer.bottom) == 1 and len(layer.top) > 0 \
        and all(_SPLIT_TOP.search(as_text(t)) for t in layer.top)


def without_splits(items: Iterable, is_split: Callable = is_inserted_split,
                   bottoms: Callable = lambda layer: layer.bottom,
                   tops: Callable = lambda layer: layer.top) -> Iterator[tuple[object, list]]:
    """The items (layers, or rows describing layers) that are not inserted splits, each with its bottoms read
    through the splits: a reader of a split's top reads the blob the split copies, as in the definition before
    Caffe's InsertSplits. ``is_split``, ``bottoms`` and ``tops`` say what an item is."""
    source: dict[str, str] = {}
    for item in items:
        read = [source.get(b, b) for b in bottoms(item)]
        if is_split(item):
            for t in tops(item):
                source[t] = read[0]
            continue
        for t in tops(item):   # a name written again is its own value from here on
            source.pop(t, None)
        yield item, read


def _split_type() -> str:
    """The type Caffe's InsertSplits gives the layers it adds: the converter that copies its bottom."""
    return next(t for t in converters.registered_types() if converters.get(t).copies_bottom)


def insert_splits(net):
    """insert_splits.cpp InsertSplits: a copy of ``net`` (reduced to one state) in which every top read by more
    than one bottom, or read once and also weighted into the loss (an explicit ``loss_weight``), feeds a Split
    layer right after its producer (``<blob>_<layer>_<j>_split``, tops ``<blob>_<layer>_<j>_split_<k>``), each
    reader taking its own top in order; a weighted top's loss moves to the split's first top. A bottom no
    earlier layer produces is the "unknown bottom blob" error."""
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    count: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, b in enumerate(layer.bottom):
            if b not in last_top:
                raise UnknownBottom(layer, as_text(b), j)
            source[(i, j)] = last_top[b]
            count[last_top[b]] = count.get(last_top[b], 0) + 1
        for j, t in enumerate(layer.top):
            last_top[t] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight[top] = layer.loss_weight[j]
            if loss_weight[top]:
                count[top] = count.get(top, 0) + 1
    out = type(net)()
    out.CopyFrom(net)
    del out.layer[:]
    taken: dict[tuple[int, int], int] = {}
    split = _split_type()
    for i, original in enumerate(net.layer):
        layer = out.layer.add()
        layer.CopyFrom(original)
        for j in range(len(layer.bottom)):
            top = source[(i, j)]
            if count.get(top, 0) > 1:
                producer = net.layer[top[0]].name
                layer.bottom[j] = f"{layer.bottom[j]}_{producer}_{top[1]}_split_{taken.get(top, 0)}"
                taken[top] = taken.get(top, 0) + 1
        for j, blob in enumerate(list(layer.top)):
            n = count.get((i, j), 0)
            if n <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            s = out.layer.add(name=f"{blob}_{layer.name}_{j}_split", type=split, bottom=[blob],
                              top=[f"{blob}_{layer.name}_{j}_split_{k}" for k in range(n)])
            if weight:
                s.loss_weight.extend([weight] + [0.0] * (n - 1))
                layer.ClearField("loss_weight")
                taken[(i, j)] = taken.get((i, j), 0) + 1
    return out
