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
                raise CaffeFileError(None, about_layer(layer, f"unknown bottom blob '{as_text(b)}' (bottom index "
                                                              f"{j}): no earlier layer produces it"))
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
