"""pycaffe's coord_map.py: how the coordinates of two tops of a NetSpec net relate, to crop and align them.

A layer's map is ``(axis, scale, shift)``: output coordinate ``i * scale`` comes from input coordinate ``i``,
shifted by ``shift``; ``(None, 1, 0)`` is a pointwise layer's identity (no axis of its own). Each layer's map is
its converter's (``Converter.coord_map``: convolutions, pooling, deconvolution, crop, and coord_map.py's
pass-through layers); a layer without one stops the walk there. :func:`coord_map_from_to` walks back from both
tops to a common blob, composing maps on the way, and inverts the first; :func:`crop` writes the Crop layer that
aligns one top to another.
"""
from __future__ import annotations

import numpy as np

from sfport import converters
from sfport.pycaffe.net_spec import layers as L


class UndefinedMapException(Exception):
    """A layer without a coordinate mapping."""


class AxisMismatchException(Exception):
    """Two maps over different axes."""


def coord_map(fn) -> tuple:
    """The ``(axis, scale, shift)`` of the layer ``fn`` (a net_spec Function)."""
    converter = converters.find(fn.type_name)
    mapped = converter.coord_map(fn.layer_param(converter.param_field)) if converter is not None else None
    if mapped is None:
        raise UndefinedMapException
    return mapped


def compose(base_map: tuple, next_map: tuple) -> tuple:
    """``base_map`` followed by ``next_map``: the scales multiply, the second shift is scaled by the first scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map: tuple) -> tuple:
    """The map backwards (for the gradient): scale 1 / a, shift -b / a."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _bottoms(top) -> tuple:
    """The inputs of ``top``'s layer that its map applies to (all, or as many as its converter says)."""
    converter = converters.find(top.fn.type_name)
    n = converter.coord_bottoms if converter is not None else None
    return top.fn.inputs if n is None else top.fn.inputs[:n]


def _walk(start, maps: dict, stop=None):
    """Walk back from ``start`` composing maps into ``maps``; returns the first blob in ``stop`` met, if any."""
    frontier = {start}
    while frontier:
        top = frontier.pop()
        if stop is not None and top in stop:
            return top
        try:
            step = coord_map(top.fn) if _bottoms(top) else None
        except UndefinedMapException:
            continue
        for bottom in _bottoms(top):
            maps[bottom] = compose(maps[top], step)
            frontier.add(bottom)
    return None


def coord_map_from_to(top_from, top_to) -> tuple:
    """The map from ``top_from``'s coordinates to ``top_to``'s, through a blob both are computed from.
    RuntimeError when they share none through layers with a map."""
    from_maps = {top_from: (None, 1, 0)}
    _walk(top_from, from_maps)
    to_maps = {top_to: (None, 1, 0)}
    common = _walk(top_to, to_maps, stop=from_maps)
    if common is None:
        raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")
    return compose(to_maps[common], inverse(from_maps[common]))


def crop(top_from, top_to):
    """A Crop layer (a net_spec Top) cropping ``top_from`` to ``top_to`` by their coordinate map: it must be of
    scale 1 and a whole, non-positive shift (AssertionError otherwise, as coord_map.py's asserts)."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(np.asarray(a) == 1):
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not np.all(np.asarray(b) <= 0):
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    offset = [int(v) for v in np.atleast_1d(-np.round(b).astype(int))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))
