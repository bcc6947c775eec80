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


@dataclass
class _Field:
    number: int
    wire_type: int
    start: int          # first byte of the tag
    payload: int        # first byte of the payload (after tag and, for LEN, the length)
    end: int            # one past the last byte


def _fields(buf: memoryview, start: int, end: int):
    """Yield the top-level fields of the message in buf[start:end]."""
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = _varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {tag_start}")
        if wire_type == 0:
            _, pos2 = _varint(buf, pos, end)
            yield _Field(number, 0, tag_start, pos, pos2)
            pos = pos2
        elif wire_type in _FIXED_WIDTH:
            width = _FIXED_WIDTH[wire_type]
            if pos + width > end:
                raise WireError(f"truncated {8 * width}-bit field at byte {pos}")
            yield _Field(number, wire_type, tag_start, pos, pos + width)
            pos += width
        elif wire_type == 2:
            length, payload = _varint(buf, pos, end)
            if payload + length > end:
                raise WireError(f"field {number} at byte {tag_start} runs past the end "
                                f"({length} bytes announced, {end - payload} left)")
            yield _Field(number, 2, tag_start, payload, payload + length)
            pos = payload + length
        elif wire_type in (3, 4):
            raise WireError(f"group field at byte {tag_start}: caffe.proto has no groups")
        else:
            raise WireError(f"invalid wire type {wire_type} at byte {tag_start}")


@dataclass
class BlobValues:
    """The numeric payload of one BlobProto: any of data/diff/double_data/double_diff, as numpy arrays."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def strip_blobs(buf: bytes, spec: dict) -> tuple[bytes, dict[tuple, BlobValues]]:
    """Remove packed value fields of every BlobProto under ``spec``.

    Returns the remaining message bytes (valid protobuf, parseable by the schema) and the values keyed by
    their path: a tuple of (field number, index among that field's occurrences) pairs ending at the blob.
    The arrays are read-only views into ``buf``.
    """
    mv = memoryview(buf)
    values: dict[tuple, BlobValues] = {}

    def on_blob(path: tuple, start: int, end: int) -> bytes:
        vals = BlobValues()
        kept = []
        for f in _fields(mv, start, end):
            if f.number in _BLOB_ARRAYS and f.wire_type == 2:
                dt = _DTYPES[f.number]
                n = f.end - f.payload
                if n % dt.itemsize:
                    raise WireError(f"packed field of {n} bytes is not a whole number of values")
                arr = np.frombuffer(buf, dtype=dt, count=n // dt.itemsize, offset=f.payload)
                name = _BLOB_ARRAYS[f.number]
                if name in vals.arrays:  # a packed field may legally come in several pieces
                    arr = np.concatenate([vals.arrays[name], arr])
                vals.arrays[name] = arr
            else:
                kept.append(mv[f.start:f.end])
        if vals.arrays:
            values[path] = vals
        return b"".join(kept)

    out = _rewrite(mv, 0, len(mv), spec, (), on_blob)
    return out, values


def splice_blobs(buf: bytes, spec: dict, values: dict[tuple, BlobValues]) -> bytes:
    """Inverse of :func:`strip_blobs`: insert each blob's arrays as packed fields, in field-number order."""
    mv = memoryview(buf)

    def on_blob(path: tuple, start: int, end: int) -> bytes:
        vals = values.get(path)
        pieces = [(f.number, mv[f.start:f.end]) for f in _fields(mv, start, end)]
        if vals is not None:
            for name, arr in vals.arrays.items():
                num = _NAME_TO_NUM[name]
                raw = np.ascontiguousarray(arr, dtype=_DTYPES[num]).tobytes()
                if raw:
                    pieces.append((num, _encode_varint(num << 3 | 2) + _encode_varint(len(raw)) + raw))
        pieces.sort(key=lambda p: p[0])  # stable: protobuf writes known fields in number order
        return b"".join(p[1] for p in pieces)

    return _rewrite(mv, 0, len(mv), spec, (), on_blob)


def _rewrite(mv: memoryview, start: int, end: int, spec: dict, path: tuple, on_blob) -> bytes:
    """Copy a message, replacing the sub-messages that ``spec`` names (recursively) by their rewritten form."""
    pieces = []
    counts: dict[int, int] = {}
    last = start
    for f in _fields(mv, start, end):
        sub = spec.get(f.number)
        if sub is None or f.wire_type != 2:
            continue
        index = counts.get(f.number, 0)
        counts[f.number] = index + 1
        sub_path = path + ((f.number, index),)
        if sub is BLOB:
            body = on_blob(sub_path, f.payload, f.end)
        else:
            body = _rewrite(mv, f.payload, f.end, sub, sub_path, on_blob)
        pieces.append(mv[last:f.start])
        pieces.append(_encode_varint(f.number << 3 | 2))
        pieces.append(_encode_varint(len(body)))
        pieces.append(body)
        last = f.end
    pieces.append(mv[last:end])
    return b"".join(pieces)
