"""Protobuf wire-format surgery for the big numeric fields of Caffe files.

Python protobuf parses a 90 MB caffemodel quickly, but turning its repeated float fields into numpy arrays
costs a Python object per number. Caffe stores every blob's values as one packed field, so sfport takes the
values out of the bytes before protobuf sees them (zero-copy numpy views of the file), and puts them back when
writing. Only the path down to ``BlobProto`` is walked here; everything else stays opaque bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# BlobProto fields holding values: number -> numpy dtype (little-endian, as protobuf's fixed32/fixed64).
_BLOB_ARRAYS = {5: "data", 6: "diff", 8: "double_data", 9: "double_diff"}
_DTYPES = {5: np.dtype("<f4"), 6: np.dtype("<f4"), 8: np.dtype("<f8"), 9: np.dtype("<f8")}
_NAME_TO_NUM = {v: k for k, v in _BLOB_ARRAYS.items()}

BLOB = "blob"
# Where blobs live: field number -> nested spec, or BLOB for a BlobProto.
NET_SPEC = {
    100: {7: BLOB},                 # NetParameter.layer[] -> LayerParameter.blobs
    2: {6: BLOB, 1: {50: BLOB}},    # NetParameter.layers[] (V1) -> blobs, and its V0 layer -> blobs
}
SOLVERSTATE_SPEC = {3: BLOB}        # SolverState.history


_FIXED_WIDTH = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit): payload bytes


class WireError(ValueError):
    """The bytes are not valid protobuf wire format."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError(f"varint too long at byte {pos}")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: memoryview, start: int, end: int):
    """Yield the fields of the message in buf[start:end], as (number, wire type, first byte of the tag, first
    byte of the payload, one past the last byte); one- and two-byte tags and lengths are read inline."""
    pos = start
    while pos < end:
        tag_start = pos
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {tag_start}")
        if wire_type == 2:
            if pos + 1 < end and buf[pos] < 0x80:
                length, payload = buf[pos], pos + 1
            elif pos + 2 < end and buf[pos + 1] < 0x80:
                length, payload = (buf[pos] & 0x7F) | buf[pos + 1] << 7, pos + 2
            else:
                length, payload = _varint(buf, pos, end)
            if payload + length > end:
                raise WireError(f"field {number} at byte {tag_start} runs past the end "
                                f"({length:,} bytes announced, {end - payload:,} left)")
            pos = payload + length
            yield number, 2, tag_start, payload, pos
        elif wire_type == 0:
            _, pos2 = _varint(buf, pos, end)
            yield number, 0, tag_start, pos, pos2
            pos = pos2
        elif wire_type in _FIXED_WIDTH:
            width = _FIXED_WIDTH[wire_type]
            if pos + width > end:
                raise WireError(f"truncated {8 * width}-bit field at byte {pos}")
            yield number, wire_type, tag_start, pos, pos + width
            pos += width
        elif wire_type in (3, 4):
            raise WireError(f"group field at byte {tag_start}: caffe.proto has no groups")
        else:
            raise WireError(f"invalid wire type {wire_type} at byte {tag_start}")


def top_fields(buf: bytes) -> set[tuple[int, int]]:
    """The (field number, wire type) pairs of the message's own fields (WireError if they do not parse)."""
    return {(number, wire_type) for number, wire_type, _, _, _ in _fields(memoryview(buf), 0, len(buf))}


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2): its tag, its length and ``payload``."""
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + bytes(payload)


def last_field(buf: bytes, number: int) -> bytes | None:
    """The payload of the last top-level length-delimited field ``number`` of a message (protobuf's rule for a
    repeated singular field), or None (WireError if the message does not parse)."""
    mv = memoryview(buf)
    found = None
    for n, wire_type, _, payload, end in _fields(mv, 0, len(buf)):
        if n == number and wire_type == 2:
            found = (payload, end)
    return None if found is None else bytes(mv[found[0]:found[1]])


@dataclass
class BlobValues:
    """The numeric payload of one BlobProto: any of data/diff/double_data/double_diff, as numpy arrays."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


# BlobProto's fields (caffe.proto) and the wire type each is written with: num/channels/height/width (int32,
# varint), shape (a message); a value field is packed (LEN), or written value by value (32- or 64-bit).
_BLOB_WIRE_TYPES = {1: 0, 2: 0, 3: 0, 4: 0, 7: 2}
_UNPACKED = {5: 5, 6: 5, 8: 1, 9: 1}
_MAX_PIECES = 16
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 5: "32-bit"}
# How a blob's path reads in a message: field number -> field name, per spec level (NetParameter / SolverState).
_PATH_NAMES = {100: "layer", 7: "blobs", 2: "layers", 6: "blobs", 1: "layer", 50: "blobs", 3: "history"}


def describe_path(path: tuple) -> str:
    """A blob's path of (field number, index) pairs as the schema names it: ``layer[3].blobs[0]``."""
    return ".".join(f"{_PATH_NAMES.get(n, n)}[{i}]" for n, i in path)


def strip_blobs(buf: bytes, spec: dict, top_fields: set | None = None) -> tuple[bytes, dict[tuple, BlobValues]]:
    """Remove packed value fields of every BlobProto under ``spec``.

    Returns the remaining message bytes (valid protobuf, parseable by the schema) and the values keyed by
    their path: a tuple of (field number, index among that field's occurrences) pairs ending at the blob.
    The arrays are read-only views into ``buf`` (one copy where a field came in a few pieces). A blob whose
    values are (also) written one by one, not packed, is left whole to protobuf, which keeps the order of
    mixed pieces as Caffe's C++ parser does; so is one whose values come in more than ``_MAX_PIECES`` packed
    pieces (legal, and protobuf's C parser joins 200,000 of them faster than Python walks them). A known
    BlobProto field of the wrong wire type (protobuf would set it aside, silently) is a WireError.
    ``top_fields``, when given, receives the (field number, wire type) pairs of the message's own fields
    (what the bytes look like: caffe_files checks the kind of message with them).
    """
    mv = memoryview(buf)
    values: dict[tuple, BlobValues] = {}

    def on_blob(path: tuple, start: int, end: int) -> bytes:
        pieces: dict[int, list] = {}
        kept = []
        unpacked = False
        for number, wire_type, tag_start, payload, stop in _fields(mv, start, end):
            if number in _BLOB_ARRAYS:
                if wire_type == 2:
                    if (stop - payload) % _DTYPES[number].itemsize:  # protobuf refuses such a packed field
                        raise WireError(f"{describe_path(path)}: a packed {_BLOB_ARRAYS[number]} field of "
                                        f"{stop - payload:,} bytes is not a whole number of "
                                        f"{_DTYPES[number].itemsize}-byte values")
                    # a packed field may legally come in several pieces: joined once at the end (linear time)
                    parts = pieces.setdefault(number, [])
                    if len(parts) == _MAX_PIECES:
                        return bytes(mv[start:end])
                    parts.append(mv[payload:stop])
                    continue
                if wire_type != _UNPACKED[number]:
                    raise WireError(f"{describe_path(path)}: its {_BLOB_ARRAYS[number]} field has wire type "
                                    f"{wire_type} ({_WIRE_NAMES.get(wire_type, '?')}), not "
                                    f"{_DTYPES[number].itemsize * 8}-bit values")
                unpacked = True
            else:
                want = _BLOB_WIRE_TYPES.get(number)
                if want is not None and wire_type != want:
                    raise WireError(f"{describe_path(path)}: BlobProto field {number} has wire type {wire_type} "
                                    f"({_WIRE_NAMES.get(wire_type, '?')}), the schema's is {want} "
                                    f"({_WIRE_NAMES[want]})")
            kept.append(mv[tag_start:stop])
        if unpacked:  # values (also) written one by one: protobuf parses the blob, keeping the pieces' order
            return bytes(mv[start:end])
        if pieces:
            values[path] = BlobValues({_BLOB_ARRAYS[n]: _join(n, parts) for n, parts in pieces.items()})
        return b"".join(kept)

    out = _rewrite(mv, 0, len(mv), spec, (), on_blob, top_fields)
    return out, values


def _join(number: int, parts: list) -> np.ndarray:
    """The values of a packed field's pieces, in order: a zero-copy view of the file for one piece, else one
    copy of them all."""
    return np.frombuffer(parts[0] if len(parts) == 1 else b"".join(parts), dtype=_DTYPES[number])


def split_packed(buf: bytes, spec: dict, values_per_field: int) -> bytes:
    """The same message with every packed value field of every blob under ``spec`` cut into consecutive packed
    fields of at most ``values_per_field`` values: legal protobuf meaning the same values (protobuf joins the
    pieces), as some writers produce. For tests and benchmarks of :func:`strip_blobs`."""
    if values_per_field < 1:
        raise ValueError("values_per_field must be at least 1")
    mv = memoryview(buf)

    def on_blob(path: tuple, start: int, end: int) -> bytes:
        out = []
        for number, wire_type, tag_start, payload, stop in _fields(mv, start, end):
            if number not in _BLOB_ARRAYS or wire_type != 2:
                out.append(mv[tag_start:stop])
                continue
            step = values_per_field * _DTYPES[number].itemsize
            tag = _encode_varint(number << 3 | 2)
            for k in range(payload, stop, step):
                piece = mv[k:min(k + step, stop)]
                out += [tag, _encode_varint(len(piece)), piece]
        return b"".join(out)

    return _rewrite(mv, 0, len(mv), spec, (), on_blob)


def splice_blobs(buf: bytes, spec: dict, values: dict[tuple, BlobValues]) -> bytes:
    """Inverse of :func:`strip_blobs`: insert each blob's arrays as packed fields, in field-number order."""
    mv = memoryview(buf)

    def on_blob(path: tuple, start: int, end: int) -> bytes:
        vals = values.get(path)
        pieces = [(number, mv[tag_start:stop]) for number, _, tag_start, _, stop in _fields(mv, start, end)]
        if vals is not None:
            for name, arr in vals.arrays.items():
                num = _NAME_TO_NUM[name]
                raw = np.ascontiguousarray(arr, dtype=_DTYPES[num]).tobytes()
                if raw:
                    pieces.append((num, _encode_varint(num << 3 | 2) + _encode_varint(len(raw)) + raw))
        pieces.sort(key=lambda p: p[0])  # stable: protobuf writes known fields in number order
        return b"".join(p[1] for p in pieces)

    return _rewrite(mv, 0, len(mv), spec, (), on_blob)


def _rewrite(mv: memoryview, start: int, end: int, spec: dict, path: tuple, on_blob,
             seen: set | None = None) -> bytes:
    """Copy a message, replacing the sub-messages that ``spec`` names (recursively) by their rewritten form;
    ``seen`` receives the (number, wire type) of the message's own fields."""
    pieces = []
    counts: dict[int, int] = {}
    last = start
    for number, wire_type, tag_start, payload, stop in _fields(mv, start, end):
        if seen is not None:
            seen.add((number, wire_type))
        sub = spec.get(number)
        if sub is None or wire_type != 2:
            continue
        index = counts.get(number, 0)
        counts[number] = index + 1
        sub_path = path + ((number, index),)
        if sub is BLOB:
            body = on_blob(sub_path, payload, stop)
        else:
            body = _rewrite(mv, payload, stop, sub, sub_path, on_blob)
        pieces.append(mv[last:tag_start])
        pieces.append(_encode_varint(number << 3 | 2))
        pieces.append(_encode_varint(len(body)))
        pieces.append(body)
        last = stop
    pieces.append(mv[last:end])
    return b"".join(pieces)
