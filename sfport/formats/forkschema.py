"""``--proto``: a Caffe fork's own ``caffe.proto`` merged with sfport's schema at run time, so that the fork's files
parse (issue 31).

The fork's file is compiled in process by protoc as the ``grpcio-tools`` package ships it (``pip install
sfport[proto]``; no protoc program, no network). Its messages are merged into sfport's by name: a message sfport
lacks is added whole; a field sfport lacks is added to sfport's message; an enum value likewise. A field whose
number sfport already uses for another field keeps its name and gets a free number of sfport's (text files, which
name fields, parse; in a binary file of that fork the number is sfport's field: the notes say which). The merged
schema replaces the message classes of :mod:`sfport.protos.caffe_pb2` for the rest of the process, so every reader
and writer uses it.

A layer that sets a field the fork added is built only by a converter that says it reads that field
(``Converter.fork_fields``): :func:`check_layer` names any other, so a fork's setting is never ignored silently.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sfport.errors import CaffeFileError
from sfport.formats import disk
from sfport.protos import caffe_pb2

_ORIGINAL: dict = {}          # the committed classes, put back by reset()
STATE: dict = {"path": None, "added": {}, "notes": []}
FIRST_FREE = 400_000_000      # where renumbered fork fields go (far above any Caffe fork's numbers)


def in_use() -> str | None:
    """The fork schema merged in this process (its path), or None."""
    return STATE["path"]


def compile_proto(path) -> descriptor_pb2.FileDescriptorSet:
    """The fork's ``.proto`` compiled by grpcio-tools' protoc (its imports from its own folder and protobuf's
    well-known types); protoc's messages in the error."""
    disk.check_readable_file(path)
    try:
        import grpc_tools               # an optional extra (sfport[proto]), needed only with --proto
        from grpc_tools import protoc
    except ImportError:
        raise CaffeFileError(path, "--proto needs the grpcio-tools package, which compiles the fork's caffe.proto "
                                   "without a protoc program: pip install 'sfport[proto]'") from None
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    src = Path(path).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        err = Path(tmp) / "stderr"
        saved = os.dup(2)
        try:
            with open(err, "wb") as f:
                os.dup2(f.fileno(), 2)   # protoc writes its messages to the process's stderr
                rc = protoc.main(["protoc", f"-I{src.parent}", f"-I{wkt}", f"--descriptor_set_out={out}",
                                  "--include_imports", str(src)])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if rc != 0 or not out.exists():
            text = " ".join(err.read_text(errors="replace").split())[:400] or f"protoc exit status {rc}"
            raise CaffeFileError(path, f"does not compile as a .proto: {text}")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


def _merge_enum(ours: descriptor_pb2.EnumDescriptorProto, theirs, where: str, notes: list) -> None:
    names = {v.name for v in ours.value}
    numbers = {v.number for v in ours.value}
    for v in theirs.value:
        if v.name in names:
            continue
        if v.number in numbers:
            notes.append(f"enum value {where}.{v.name} = {v.number} has the number of another of sfport's values: "
                         f"left out")
            continue
        ours.value.add().CopyFrom(v)


def _merge_message(ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto, full: str,
                   added: dict, notes: list, counter: list) -> None:
    by_name = {f.name: f for f in ours.field}
    numbers = {f.number for f in ours.field}
    for f in theirs.field:
        if f.name in by_name:
            continue
        new = ours.field.add()
        new.CopyFrom(f)
        if f.number in numbers:
            new.number = counter[0]
            counter[0] += 1
            notes.append(f"{full}.{f.name} = {f.number} is sfport's {next(g.name for g in ours.field if g.number == f.number)}"
                         f" there: text files name it and parse; in a binary file the number reads as sfport's field")
        numbers.add(new.number)
        added.setdefault(full, set()).add(f.name)
    nested = {m.name: m for m in ours.nested_type}
    for m in theirs.nested_type:
        if m.name in nested:
            _merge_message(nested[m.name], m, f"{full}.{m.name}", added, notes, counter)
        else:
            ours.nested_type.add().CopyFrom(m)
    _merge_enums(ours.enum_type, theirs.enum_type, full, notes)


def _merge_enums(ours, theirs, scope: str, notes: list) -> None:
    """The enums of a message or file: one sfport lacks is added whole, one it has gets the values it lacks."""
    by_name = {e.name: e for e in ours}
    for e in theirs:
        if e.name in by_name:
            _merge_enum(by_name[e.name], e, f"{scope}.{e.name}", notes)
        else:
            ours.add().CopyFrom(e)


def merge(ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto) -> tuple:
    """(merged file, {message full name: added field names}, notes): ``theirs`` merged into a copy of ``ours``."""
    merged = descriptor_pb2.FileDescriptorProto()
    merged.CopyFrom(ours)
    added: dict = {}
    notes: list = []
    counter = [FIRST_FREE]
    messages = {m.name: m for m in merged.message_type}
    for m in theirs.message_type:
        full = f"caffe.{m.name}"
        if m.name in messages:
            _merge_message(messages[m.name], m, full, added, notes, counter)
        else:
            merged.message_type.add().CopyFrom(m)
            added[full] = {"*"}
    _merge_enums(merged.enum_type, theirs.enum_type, "caffe", notes)
    return merged, added, notes


def use(path) -> list[str]:
    """Merge the fork's ``caffe.proto`` at ``path`` into the schema of this process; returns the notes (fields
    renumbered, values left out). A second call starts again from sfport's own schema."""
    reset()
    fds = compile_proto(path)
    theirs = [f for f in fds.file if f.package == "caffe"]
    if not theirs:
        raise CaffeFileError(path, "declares no `package caffe;`: not a Caffe fork's caffe.proto")
    ours = descriptor_pb2.FileDescriptorProto()
    ours.ParseFromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    merged, added, notes = ours, {}, []
    for f in theirs:
        merged, more, n = merge(merged, f)
        for k, v in more.items():
            added.setdefault(k, set()).update(v)
        notes += n
    pool = descriptor_pool.DescriptorPool()
    for dep in fds.file:
        if dep.package != "caffe" and dep.name in merged.dependency:
            pool.Add(dep)
    del merged.dependency[:]
    try:
        pool.Add(merged)
    except (TypeError, ValueError) as e:
        raise CaffeFileError(path, f"cannot be merged with sfport's schema: {e}") from None
    for name in [m.name for m in merged.message_type]:
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
        if hasattr(caffe_pb2, name):
            _ORIGINAL.setdefault(name, getattr(caffe_pb2, name))
        else:
            _ORIGINAL.setdefault(name, None)
        setattr(caffe_pb2, name, cls)
    STATE.update(path=str(path), added=added, notes=notes)
    return notes


def reset() -> None:
    """sfport's own schema again."""
    for name, cls in _ORIGINAL.items():
        if cls is None:
            delattr(caffe_pb2, name)
        else:
            setattr(caffe_pb2, name, cls)
    _ORIGINAL.clear()
    STATE.update(path=None, added={}, notes=[])


def fork_fields(message, prefix: str = "") -> list[str]:
    """The fields set in ``message`` (and in the messages it holds) that the fork's schema added, as dotted paths
    from it (``my_param``, ``convolution_param.my_flag``)."""
    added = STATE["added"]
    if not added:
        return []
    out = []
    full = message.DESCRIPTOR.full_name
    mine = added.get(full, set())
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        if "*" in mine or fd.name in mine:
            out.append(path)
            continue
        if fd.message_type is not None:
            items = value if fd.is_repeated else [value]
            for item in items:
                out += fork_fields(item, path + ".")
    return sorted(set(out))


def check_layer(layer, converter) -> None:
    """A layer setting a field of the fork's schema is built only by a converter that names it (or the
    parameter message holding it) in ``fork_fields``; else the one line naming the layer, the field and the
    fork's file."""
    if not STATE["added"]:
        return
    reads = set(getattr(converter, "fork_fields", ()) or ())
    for path in fork_fields(layer):
        if path in reads or path.split(".")[0] in reads:
            continue
        who = f"sfport's {layer.type} {'data layer' if converter is None else 'converter'}"
        raise CaffeFileError(None, f"layer '{layer.name}' ({layer.type}): field '{path}' of {STATE['path']} is not "
                                   f"read by {who}: register a converter whose fork_fields name it")
