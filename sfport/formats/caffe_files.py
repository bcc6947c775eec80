"""Read and write Caffe files without Caffe: prototxt (text), caffemodel (binary), solver, solverstate.

Every reader raises :class:`~sfport.errors.CaffeFileError` (one line: file, position, what is wrong) for bad
input, and applies Caffe's legacy upgrades (:mod:`sfport.formats.upgrade`), listing what it did.
"""
from __future__ import annotations

import codecs
import enum
import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from sfport.errors import CaffeFileError
from sfport.formats import disk
from sfport.formats.disk import atomic_write, check_readable_file, max_file_bytes
from sfport.protos import caffe_pb2
from sfport.formats import fasttext, forkschema, upgrade, wire

TEXT = "text"
BINARY = "binary"

_TEXT_SUFFIXES = {".prototxt", ".pbtxt", ".txt"}
_BINARY_SUFFIXES = {".caffemodel", ".solverstate", ".binaryproto"}
_SNIFF_BYTES = 65536
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13)) + b"\x7f"


# --------------------------------------------------------------------------------------------------------
# Bytes in, bytes out
# --------------------------------------------------------------------------------------------------------

# Every file is held to files.max_file_bytes (a crafted 50 GB file or /dev/zero must not exhaust memory); its
# default is Caffe's own: io.cpp ReadProtoFromBinaryFile, SetTotalBytesLimit(kProtoReadBytesLimit) with
# kProtoReadBytesLimit = INT_MAX, the most protobuf reads for one message.
def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes, or a one-line error for a missing, unreadable, non-regular, oversized or empty file:
    :func:`check_readable_file` first, then at most the limit + 1 bytes are read (a file growing meanwhile)."""
    check_readable_file(path)
    limit = max_file_bytes()
    try:
        with open(path, "rb") as f:
            # read(limit + 1) alone would allocate the whole limit (2 GiB) first: the file's own size + 1, and
            # the rest up to the limit + 1 only when it grew meanwhile
            want = min(limit, os.fstat(f.fileno()).st_size) + 1
            data = f.read(want)
            if len(data) == want and want <= limit:
                data += f.read(limit + 1 - want)
    except PermissionError:
        raise CaffeFileError(path, "permission denied") from None
    except OSError as e:
        raise CaffeFileError(path, f"cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise CaffeFileError(path, f"grew past the {limit:,}-byte limit for one input file while being read")
    if not data:
        raise CaffeFileError(path, "empty file")
    return data


def sniff(data: bytes) -> str:
    """Protobuf text or binary? Text has (almost) no control bytes; binary protobuf is full of them."""
    sample = data[:_SNIFF_BYTES]
    control = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    # A text file with a few damaged bytes stays text (and gets a line:column error from the parser).
    return BINARY if control > max(2, len(sample) // 100) else TEXT


def is_torch_pt(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read as a torch.save file (sfport's converted ``.pt``, an earlier sfport's training
    checkpoint): a name ending in ``.pt`` whose first bytes are not protobuf text. py-faster-rcnn and R-FCN name
    their net definitions ``.pt`` (models/*/faster_rcnn_alt_opt/faster_rcnn_test.pt, rpn_test.pt, ...), and Caffe
    reads a file whatever its name: those are prototxts, UTF-8 text (a pickle's first byte, 0x80, is not). What is
    not a regular readable file counts as a torch file (never opened here: a FIFO would block; its reader says
    what is wrong)."""
    if not str(path).endswith(".pt"):
        return False
    if not os.path.isfile(path):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)   # a character cut at the end is fine
    except (OSError, UnicodeDecodeError):
        return True
    return not head or head[:4] == disk.ZIP_MAGIC or sniff(head) != TEXT


def _kind_by_suffix(path: str | os.PathLike) -> str | None:
    suffix = Path(path).suffix.lower()
    if suffix in _TEXT_SUFFIXES:
        return TEXT
    if suffix in _BINARY_SUFFIXES:
        return BINARY
    return None


# --------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------

def as_text(value) -> str:
    """A proto2 string field as str: invalid UTF-8 in a binary file comes back from protobuf as bytes."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _decode(data: bytes, path=None) -> str:
    """The text of a protobuf text file (an editor's byte-order mark dropped). Bytes that are not UTF-8 are
    harmless in a comment (Caffe's parser skips them); in a name or other value Caffe keeps them raw, which a
    Python string cannot, so with ``path`` that is a one-line error at the byte (never a silently changed
    name)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if path is not None:
            _check_non_utf8_in_comments(path, data)
    return text.removeprefix("\ufeff")


def _check_non_utf8_in_comments(path, data: bytes) -> None:
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            line.decode("utf-8")
            continue
        except UnicodeDecodeError as e:
            bad = e.start
        # where a comment starts: the first '#' outside a quoted string (protobuf's tokenizer; strings end at
        # the line's end)
        quote, escaped, comment = None, False, len(line)
        for i, c in enumerate(line):
            if quote is not None:
                if escaped:
                    escaped = False
                elif c == 0x5C:  # backslash
                    escaped = True
                elif c == quote:
                    quote = None
            elif c in (0x22, 0x27):
                quote = c
            elif c == 0x23:
                comment = i
                break
        if bad < comment:
            col = len(line[:bad].decode("utf-8")) + 1
            raise CaffeFileError(f"{path}:{number}:{col}", f"byte 0x{line[bad]:02X} is not UTF-8 text: Caffe would "
                                                           f"keep it raw in the value; save the file as UTF-8")


def _shorten(message: str, keep: int = 60) -> str:
    """A parser message with any long quoted token (a 10 MB line of garbage, say) cut to ``keep`` characters."""
    message = re.sub(r"([\"'])([^\"']{%d})[^\"']{20,}\1" % keep, lambda m: f"{m[1]}{m[2]}...{m[1]}", message)
    return message if len(message) <= 400 else message[:400] + "..."


def _parse_text(path, data: bytes, message):
    disk.check_text_size(path, data)
    text = _decode(data, path)
    if fasttext.merge(text, message):   # the common case, several times faster; anything else as protobuf reads it
        return message
    try:
        text_format.Merge(text, message)  # Merge: a repeated singular field keeps the last value
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = str(e)
        prefix = f"{line}:{col} : "
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
        where = f"{path}:{line}:{col}" if line is not None else str(path)
        if "has no field named" in msg:   # a fork's field: its own caffe.proto can be merged
            msg = msg.rstrip(".") + (" (the field of a Caffe fork? give that fork's caffe.proto with --proto)" if
                    forkschema.in_use() is None else f" (nor has the schema of --proto {forkschema.in_use()})")
        raise CaffeFileError(where, f"syntax error: {_shorten(msg)}") from None
    return message


def _error_position(data: bytes, message) -> tuple[int, int] | None:
    """(line, column) where protobuf's text parser stops reading ``data`` as ``message``; None when it reads it
    whole (the fast path first)."""
    text = _decode(data)
    if fasttext.merge(text, message):
        return None
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        return (e.GetLine() or 0, e.GetColumn() or 0)
    return None


def _parses_as(data: bytes, message) -> bool:
    return _error_position(data, message) is None


# The binary Caffe files, by message name: what each is to the user.
_BINARY_KINDS = {
    "NetParameter": "a Caffe NetParameter (.caffemodel)",
    "SolverState": "a Caffe SolverState (.solverstate)",
    "BlobProto": "a Caffe BlobProto (.binaryproto, a mean file?)",
}
_FIXED32 = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}
_FIXED64 = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_LEN = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}
_WIRE_NAMES = {0: "an integer", 1: "a 64-bit value", 2: "a string or message", 5: "a 32-bit value"}


@functools.cache
def _wire_types(descriptor) -> dict[int, tuple[str, frozenset]]:
    """Field number -> (name, the wire types protobuf takes for it: a repeated number also packed)."""
    out = {}
    for fd in descriptor.fields:
        wt = 2 if fd.type in _LEN else 5 if fd.type in _FIXED32 else 1 if fd.type in _FIXED64 else 0
        ok = {wt} | ({2} if fd.is_repeated else set())
        out[fd.number] = (fd.name, frozenset(ok))
    return out


def _misfits(top_fields: set, descriptor) -> tuple[list, list]:
    """The message's own fields that ``descriptor`` has no number for, and those of the wrong wire type."""
    types = _wire_types(descriptor)
    unknown = sorted(n for n, _ in top_fields if n not in types)
    wrong = sorted((n, wt) for n, wt in top_fields if n in types and wt not in types[n][1])
    return unknown, wrong


def _check_message_kind(path, top_fields: set, message) -> None:
    """The bytes are the message the reader expects, not another kind of Caffe file: protobuf itself parses a
    caffemodel as a SolverState (every field mismatched or unknown, kept aside) into an empty one. A file that
    fits another Caffe message exactly is named as that; a field of the wrong wire type is refused; unknown
    field numbers alone are let through (another Caffe fork's fields), as Caffe's protobuf does."""
    name = message.DESCRIPTOR.name
    unknown, wrong = _misfits(top_fields, message.DESCRIPTOR)
    if not unknown and not wrong:
        return
    for other, label in _BINARY_KINDS.items():
        if other != name and top_fields and _misfits(top_fields, getattr(caffe_pb2, other).DESCRIPTOR) == ([], []):
            raise CaffeFileError(path, f"is {label}, not {_BINARY_KINDS[name]}")
    if wrong:
        number, wt = wrong[0]
        field_name, ok = _wire_types(message.DESCRIPTOR)[number]
        raise CaffeFileError(path, f"not {_BINARY_KINDS[name]} (another kind of protobuf file?): its field {number} "
                                   f"is {_WIRE_NAMES.get(wt, f'wire type {wt}')}, but {name}.{field_name} is "
                                   f"{_WIRE_NAMES[min(ok)]}")


def _parse_binary(path, data: bytes, message, spec: dict, what: str):
    top_fields: set = set()
    try:
        stripped, values = wire.strip_blobs(data, spec, top_fields)
    except wire.WireError as e:
        try:  # another kind of file fails inside (a solverstate's learned_net string read as a V1 layer)
            top_fields = wire.top_fields(data)
        except wire.WireError:
            top_fields = set()
        if top_fields:
            _check_message_kind(path, top_fields, message)
        raise CaffeFileError(path, f"not a valid binary {what} (truncated or corrupt file?): {e}") from None
    _check_message_kind(path, top_fields, message)
    data = stripped
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        detail = str(e) or "protobuf decoding failed"
        raise CaffeFileError(path, f"not a valid binary {what} (truncated or corrupt file?): {detail}") from None
    return message, values


def has_legacy_shape(blob) -> bool:
    """Whether a BlobProto gives its shape in the deprecated 4-D num/channels/height/width fields."""
    has = blob.HasField
    return has("num") or has("channels") or has("height") or has("width")


def blob_shape(blob) -> tuple[int, ...]:
    """Caffe Blob::FromProto: the legacy 4-D num/channels/height/width when any is set, else ``shape``."""
    if has_legacy_shape(blob):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(blob.shape.dim)


_VALUE_FIELDS = (("data", "<f4"), ("diff", "<f4"), ("double_data", "<f8"), ("double_diff", "<f8"))


def _take_message_values(blob, values: wire.BlobValues) -> None:
    """Move values that protobuf parsed itself (text files, blobs written value by value) into ``values``, each
    field converted once. (wire.strip_blobs leaves such a blob whole to protobuf, so a field's values come from
    one side only; were both there, they would be joined in one copy.)"""
    for name, dtype in _VALUE_FIELDS:
        field_values = getattr(blob, name)
        if len(field_values):
            arr = np.array(field_values, dtype=dtype)
            if name in values.arrays:
                arr = np.concatenate([values.arrays[name], arr])
            values.arrays[name] = arr
            blob.ClearField(name)


INT_MAX = 2 ** 31 - 1
MAX_BLOB_AXES = 32   # blob.hpp kMaxBlobAxes


def blob_count(shape) -> int:
    """The element count of a blob of ``shape``, with Blob::Reshape's CHECKs (blob.cpp) in exact integers (an
    int64 product of [2^32, 2^32] wraps to 0): at most kMaxBlobAxes axes (CHECK_LE(shape.size(),
    kMaxBlobAxes)), no negative dimension (CHECK_GE(shape[i], 0)), at most INT_MAX elements (CHECK_LE(shape[i],
    INT_MAX / count_) "blob size exceeds INT_MAX"). ValueError says which."""
    dims = [int(d) for d in shape]
    if len(dims) > MAX_BLOB_AXES:
        raise ValueError(f"blob shape has {len(dims):,} axes (Caffe's limit is {MAX_BLOB_AXES})")
    if dims and min(dims) < 0:
        raise ValueError(f"negative dimension in blob shape {dims}")
    count = math.prod(dims)
    if count > INT_MAX:
        raise ValueError(f"blob shape {dims} has {count:,} elements: blob size exceeds INT_MAX")
    return count


def _check_blob(path, where, blob, values: wire.BlobValues) -> None:
    """Blob::FromProto's CHECKs: a shape :func:`blob_count` accepts, and exactly that many stored values (and
    diffs, when stored). ``where()`` names the blob in a message."""
    shape = blob_shape(blob)
    try:
        count = blob_count(shape)
    except ValueError as e:
        raise CaffeFileError(path, f"{where()}: {e}") from None
    stored = values.arrays.get("data")
    if stored is None:
        stored = values.arrays.get("double_data")
    n = 0 if stored is None else stored.size
    if n != count:
        raise CaffeFileError(path, f"{where()}: blob holds {n} values but its shape {list(shape)} needs {count}")
    for name in ("diff", "double_diff"):
        d = values.arrays.get(name)
        if d is not None and d.size != count:
            raise CaffeFileError(path, f"{where()}: blob {name} holds {d.size} values but its shape needs {count}")


# --------------------------------------------------------------------------------------------------------
# Nets and models
# --------------------------------------------------------------------------------------------------------

@dataclass
class CaffeModel:
    """A Caffe net as read from disk: the (upgraded) NetParameter and its blobs' values.

    ``net`` holds the whole definition; its ``BlobProto`` messages keep their shapes but not their values,
    which live in ``values[i][j]`` for blob ``j`` of ``net.layer[i]`` (numpy, possibly read-only views of the
    file). ``upgrades`` lists the legacy conversions applied, in Caffe's words.
    """
    path: str | None
    net: caffe_pb2.NetParameter
    values: list[list[wire.BlobValues]]
    upgrades: list[str] = field(default_factory=list)
    kind: str = BINARY

    @classmethod
    def from_net(cls, net, path: str | None = None) -> "CaffeModel":
        """A model of a NetParameter built in code (no blob values, no upgrades)."""
        return cls(path, net, [[] for _ in net.layer], [], TEXT)

    def blob_arrays(self, layer_index: int) -> list[np.ndarray]:
        """The layer's parameter blobs as arrays in their stored shape (float32, or float64 if so stored)."""
        out = []
        for blob, vals in zip(self.net.layer[layer_index].blobs, self.values[layer_index]):
            arr = vals.arrays.get("data")
            if arr is None:
                arr = vals.arrays.get("double_data")
            out.append(arr.reshape(blob_shape(blob)))
        return out

    def set_blob_arrays(self, layer_index: int, arrays) -> None:
        """Replace the layer's parameter blobs by ``arrays`` (stored as float32, with ``shape`` set from each
        array), e.g. to write changed weights back to a caffemodel."""
        layer = self.net.layer[layer_index]
        del layer.blobs[:]
        row = []
        for arr in arrays:
            arr = np.asarray(arr, dtype=np.float32)
            layer.blobs.add().shape.dim.extend(int(d) for d in arr.shape)
            row.append(wire.BlobValues({"data": arr.ravel()}))
        while len(self.values) < len(self.net.layer):
            self.values.append([])
        self.values[layer_index] = row

    def weight_layers(self) -> dict[str, int]:
        """Layer name -> index, for layers that have blobs; the last layer of a name wins, as in Caffe's
        layer_names_index_ (CopyTrainedLayersFrom) and pycaffe's ``net.params``."""
        return {layer.name: i for i, layer in enumerate(self.net.layer) if len(layer.blobs)}

    @property
    def params(self) -> dict[str, list[np.ndarray]]:
        """Layer name -> parameter arrays, for layers that have blobs."""
        return {name: self.blob_arrays(i) for name, i in self.weight_layers().items()}

    def has_weights(self) -> bool:
        return any(len(layer.blobs) for layer in self.net.layer)


def iter_blob_messages(net) -> Iterator[tuple[tuple, object]]:
    """(wire path, BlobProto) for every blob of a NetParameter, in the order the schema stores them."""
    for i, v1 in enumerate(net.layers):
        for j, b in enumerate(v1.blobs):
            yield ((2, i), (6, j)), b
        if v1.HasField("layer"):
            for j, b in enumerate(v1.layer.blobs):
                yield ((2, i), (1, 0), (50, j)), b
    for i, layer in enumerate(net.layer):
        for j, b in enumerate(layer.blobs):
            yield ((100, i), (7, j)), b


def _net_from_bytes(path, data: bytes, kind: str) -> CaffeModel:
    net = caffe_pb2.NetParameter()
    if kind == TEXT:
        disk.check_text_size(path, data)
        try:
            _parse_text(path, data, net)
        except CaffeFileError:
            solver_stop = _error_position(data, caffe_pb2.SolverParameter())
            if solver_stop is None:
                raise CaffeFileError(path, "is a solver prototxt, not a net definition") from None
            net_stop = _error_position(data, caffe_pb2.NetParameter())   # None: the net's own error is not syntax
            if net_stop is not None and solver_stop > net_stop:
                # read further as a solver: a fork's solver (DeepLab's lr_policy "stepearly" with its stepearly
                # field) gets the solver's own error, which names its line and the SolverParameter field it lacks
                _parse_text(path, data, caffe_pb2.SolverParameter())
            raise
        values = {}
    else:
        net, values = _parse_binary(path, data, net, wire.NET_SPEC, "Caffe NetParameter")
    # Values in the order the blobs appear, so they follow their blobs through the upgrades.
    ordered = []
    for key, blob in iter_blob_messages(net):
        vals = values.pop(key, None)
        if vals is None:   # else wire.strip_blobs took every value field out of this blob
            vals = wire.BlobValues()
            _take_message_values(blob, vals)
        ordered.append(vals)
    if values:
        raise CaffeFileError(path, "blob values found where the schema has no blob")
    notes = upgrade.upgrade_net(net, path=path)
    if sum(len(layer.blobs) for layer in net.layer) != len(ordered):
        raise CaffeFileError(path, "legacy upgrade lost parameter blobs (mixed V1 'layers' and 'layer' fields?)")
    values_by_layer: list[list[wire.BlobValues]] = []
    k = 0
    for i, layer in enumerate(net.layer):
        row = ordered[k:k + len(layer.blobs)]
        k += len(layer.blobs)
        for j, (b, v) in enumerate(zip(layer.blobs, row)):
            _check_blob(path, lambda: f"layer '{layer.name}' ({layer.type}) blob {j}", b, v)
        values_by_layer.append(row)
    return CaffeModel(str(path), net, values_by_layer, notes, kind)


class Expect(enum.Enum):
    """What kind of net file a caller needs: ``read_net`` checks the file against it."""
    DEFINITION = "definition"   # a text prototxt, as Caffe requires for net definitions (ReadNetParamsFromTextFile)
    WEIGHTS = "weights"         # a binary caffemodel with blobs (ReadNetParamsFromBinaryFile)
    ANY = "any"                 # either, sniffed; the name's suffix must not contradict the contents


def read_net(path: str | os.PathLike, expect: Expect = Expect.ANY) -> CaffeModel:
    """Read a net from a text prototxt or a binary caffemodel (sniffed), upgraded to the current format; the
    file must be of the kind ``expect`` names."""
    if not isinstance(expect, Expect):
        raise TypeError(f"expect must be a caffe_files.Expect, not {expect!r}")
    data = read_bytes(path)
    kind = sniff(data)
    if expect is Expect.DEFINITION and kind == BINARY:
        raise CaffeFileError(path, "is a binary protobuf (a .caffemodel?), but a text .prototxt net "
                                   "definition was expected")
    if expect is Expect.WEIGHTS and kind == TEXT:
        raise CaffeFileError(path, "is a text prototxt, but a binary .caffemodel with weights was expected")
    if expect is Expect.ANY and kind == TEXT and _kind_by_suffix(path) == BINARY:
        raise CaffeFileError(path, "is text (a .prototxt?) but named like a binary Caffe file")
    if expect is Expect.ANY and kind == BINARY and _kind_by_suffix(path) == TEXT:
        raise CaffeFileError(path, "is binary (a .caffemodel?) but named like a text .prototxt")
    model = _net_from_bytes(path, data, kind)
    if kind == BINARY and not len(model.net.layer) and not model.net.name:
        raise CaffeFileError(path, "decodes as protobuf but holds no Caffe layers (not a caffemodel?)")
    return model


def read_prototxt(path: str | os.PathLike) -> CaffeModel:
    """A text net definition (deploy or train/test prototxt)."""
    return read_net(path, Expect.DEFINITION)


def read_caffemodel(path: str | os.PathLike) -> CaffeModel:
    """A binary caffemodel: the net Caffe stored with the weights, and the weights."""
    return read_net(path, Expect.WEIGHTS)


def net_to_bytes(model: CaffeModel) -> bytes:
    """Binary NetParameter of ``model``, values included: exactly what Caffe's WriteProtoToBinaryFile writes."""
    stripped = model.net.SerializeToString()
    values = {}
    for i, row in enumerate(model.values):
        for j, vals in enumerate(row):
            values[((100, i), (7, j))] = vals
    return wire.splice_blobs(stripped, wire.NET_SPEC, values)


def write_caffemodel(path: str | os.PathLike, model: CaffeModel) -> None:
    """Write a binary caffemodel (atomically)."""
    atomic_write(path, net_to_bytes(model))


def net_to_text(net) -> str:
    """Protobuf text of a NetParameter (values stripped by the readers are not part of ``net``)."""
    return text_format.MessageToString(net)


def write_prototxt(path: str | os.PathLike, net) -> None:
    """Write a net definition as a text prototxt (atomically); blob values are never written to text. A solver
    is written by :func:`write_solver`."""
    if not isinstance(net, caffe_pb2.NetParameter):
        other = "; write_solver writes a SolverParameter" if isinstance(net, caffe_pb2.SolverParameter) else ""
        raise TypeError(f"write_prototxt writes a NetParameter, not a {type(net).__name__}{other}")
    definition = caffe_pb2.NetParameter()
    definition.CopyFrom(net)
    for layer in definition.layer:
        layer.ClearField("blobs")
    atomic_write(path, net_to_text(definition).encode())


# --------------------------------------------------------------------------------------------------------
# Solvers and solver states
# --------------------------------------------------------------------------------------------------------

@dataclass
class Solver:
    path: str | None
    param: caffe_pb2.SolverParameter
    upgrades: list[str] = field(default_factory=list)


def write_solver(path: str | os.PathLike, solver) -> None:
    """Write a SolverParameter (or a :class:`Solver`'s) as a text solver prototxt, atomically."""
    param = solver.param if isinstance(solver, Solver) else solver
    if not isinstance(param, caffe_pb2.SolverParameter):
        raise TypeError(f"write_solver writes a SolverParameter, not a {type(param).__name__}")
    atomic_write(path, text_format.MessageToString(param).encode())


def is_solver_prototxt(path: str | os.PathLike) -> bool:
    """Is ``path`` a text solver prototxt (it parses as a SolverParameter and not as a NetParameter)?"""
    data = read_bytes(path)
    if sniff(data) == TEXT:
        disk.check_text_size(path, data)
    return sniff(data) == TEXT and not _parses_as(data, caffe_pb2.NetParameter()) and \
        _parses_as(data, caffe_pb2.SolverParameter())


def read_solver(path: str | os.PathLike) -> Solver:
    """A text solver prototxt, upgraded as Caffe's UpgradeSolverAsNeeded does."""
    data = read_bytes(path)
    if sniff(data) == BINARY:
        raise CaffeFileError(path, "is a binary protobuf, but a text solver .prototxt was expected")
    disk.check_text_size(path, data)
    try:
        param = _parse_text(path, data, caffe_pb2.SolverParameter())
    except CaffeFileError:
        if _parses_as(data, caffe_pb2.NetParameter()):
            raise CaffeFileError(path, "is a net definition, not a solver prototxt") from None
        raise
    try:
        notes = upgrade.upgrade_solver(param)
    except ValueError as e:
        raise CaffeFileError(path, str(e)) from None
    return Solver(str(path), param, notes)


@dataclass
class SolverStateFile:
    """A ``.solverstate``: iteration, lr step, learned_net, the solver's history arrays (one per learnable blob,
    two for AdaDelta and Adam) and ``resume``, sfport's resume record when the file has one (see
    :data:`RESUME_FIELD`)."""
    path: str | None
    state: caffe_pb2.SolverState
    history: list[np.ndarray]
    resume: bytes | None = None


# sfport's resume record in a .solverstate: a length-delimited field of a number no Caffe schema uses, which Caffe's
# protobuf keeps aside as an unknown field (ReadProtoFromBinaryFile succeeds; nothing of Caffe reads it)
RESUME_FIELD = 1001


def read_solverstate(path: str | os.PathLike) -> SolverStateFile:
    data = read_bytes(path)
    if sniff(data) == TEXT:
        raise CaffeFileError(path, "is text, but a binary .solverstate was expected")
    state, values = _parse_binary(path, data, caffe_pb2.SolverState(), wire.SOLVERSTATE_SPEC, "Caffe SolverState")
    if not state.ListFields():
        raise CaffeFileError(path, "decodes as protobuf but holds no Caffe solver state (not a .solverstate?)")
    history = []
    for j, blob in enumerate(state.history):
        vals = values.pop(((3, j),), None) or wire.BlobValues()
        _take_message_values(blob, vals)
        _check_blob(path, lambda: f"history blob {j}", blob, vals)
        arr = vals.arrays.get("data")
        if arr is None:
            arr = vals.arrays.get("double_data")
        history.append(arr.reshape(blob_shape(blob)))
    return SolverStateFile(str(path), state, history, wire.last_field(data, RESUME_FIELD))


def write_solverstate(path: str | os.PathLike, state, history: list[np.ndarray],
                      resume: bytes | None = None) -> None:
    """Write a binary ``.solverstate`` (atomically); history blobs get their shapes from the arrays; ``resume``
    (sfport's resume record) goes last, in field :data:`RESUME_FIELD`."""
    msg = caffe_pb2.SolverState()
    msg.CopyFrom(state)
    msg.DiscardUnknownFields()   # a record read with the state is not carried over: ``resume`` is the one written
    del msg.history[:]
    values = {}
    for j, arr in enumerate(history):
        blob = msg.history.add()
        blob.shape.dim.extend(int(d) for d in np.shape(arr))
        values[((3, j),)] = wire.BlobValues({"data": np.asarray(arr, dtype="<f4").ravel()})
    data = wire.splice_blobs(msg.SerializeToString(), wire.SOLVERSTATE_SPEC, values)
    atomic_write(path, data + (wire.length_delimited(RESUME_FIELD, resume) if resume is not None else b""))
