"""A fast path for protobuf's text format as Caffe files write it: one regular expression tokenizes the text and
the fields are set through the message's descriptors, several times faster than protobuf's pure-Python
``text_format.Merge`` (which upb does not implement in C).

It reads what Caffe's prototxts hold: ``name: value`` and ``name { ... }`` / ``name < ... >`` fields, an optional
colon before a message, ``[a, b]`` lists, ``,`` / ``;`` separators, ``#`` comments, double- or single-quoted
strings (adjacent ones joined, C escapes), integers (decimal, hex, octal), floats, ``inf`` / ``nan``, enum values by
name or number and the boolean spellings protobuf accepts. Anything else (extensions, ``Any``, a value out of its
field's range, a syntax error, an unknown field) is not decided here: :func:`merge` returns False and the caller
parses the text with ``text_format.Merge``, whose result (and error message, with its line and column) is then the
one the file gets. Where it returns True the message equals what ``text_format.Merge`` gives (the tests parse every
prototxt of the fixtures both ways and compare the bytes)."""
from __future__ import annotations

import re

from google.protobuf import descriptor, text_encoding

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)(?![A-Za-z0-9_.]))
  | (?P<word>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>\[\]:,;])
""", re.VERBOSE)

_FD = descriptor.FieldDescriptor
_INTS = {_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_SINT32, _FD.TYPE_SINT64,
         _FD.TYPE_FIXED32, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64}
_FLOATS = {_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE}
_TRUE, _FALSE = {"true", "t", "True", "1"}, {"false", "f", "False", "0"}
_SPECIAL = {"inf": float("inf"), "infinity": float("inf"), "-inf": float("-inf"), "-infinity": float("-inf"),
            "nan": float("nan"), "-nan": float("nan")}


class _Fallback(Exception):
    """The text holds something this fast path leaves to protobuf's parser."""


def _tokens(text: str):
    """The tokens of ``text`` as (kind, text), lazily: a parse that gives up stops reading there (a 10 MB file of
    garbage costs nothing more than its first bad token)."""
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:   # a character no token starts with
            raise _Fallback
        pos = m.end()
        kind = m.lastgroup
        if kind != "space":
            yield kind, m.group()
    if pos != len(text):
        raise _Fallback


def _int(token: str) -> int:
    sign, body = (-1, token[1:]) if token[:1] == "-" else (1, token.lstrip("+"))
    if body[:2] in ("0x", "0X"):
        return sign * int(body, 16)
    if len(body) > 1 and body[0] == "0" and body.isdigit():
        return sign * int(body, 8)
    if not body.isdigit():
        raise _Fallback
    return sign * int(body)


class _Parser:
    _END = (None, None)

    def __init__(self, tokens):
        self._next = tokens.__next__
        self.head = self._pull()

    def _pull(self):
        try:
            return self._next()
        except StopIteration:
            return self._END

    def peek(self):
        return self.head

    def take(self):
        tok = self.head
        self.head = self._pull()
        return tok

    def skip(self) -> None:
        self.head = self._pull()

    def message(self, msg, close: str | None) -> None:
        fields = msg.DESCRIPTOR.fields_by_name
        while True:
            kind, value = self.peek()
            if kind is None:
                if close is not None:
                    raise _Fallback
                return
            if kind == "punct" and value == close:
                self.skip()
                return
            if kind != "word":
                raise _Fallback
            self.skip()
            field = fields.get(value)
            if field is None or field.is_extension:
                raise _Fallback
            kind, value = self.peek()
            nested = field.type in (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP)
            if kind == "punct" and value == ":":   # optional before a message, required before a value
                self.skip()
                kind, value = self.peek()
            elif not nested:
                raise _Fallback
            read = self._sub_message if nested else self._scalar
            if kind == "punct" and value == "[" and field.is_repeated:
                self.skip()
                self._list(msg, field, read)
            else:
                read(msg, field)
            kind, value = self.peek()
            if kind == "punct" and value in ",;":
                self.skip()

    def _sub_message(self, msg, field) -> None:
        kind, value = self.take()
        if kind != "punct" or value not in "{<":
            raise _Fallback
        if field.message_type.full_name == "google.protobuf.Any":
            raise _Fallback
        sub = getattr(msg, field.name).add() if field.is_repeated else getattr(msg, field.name)
        sub.SetInParent()   # `name { }` sets the field, as protobuf's parser does
        self.message(sub, "}" if value == "{" else ">")

    def _list(self, msg, field, item) -> None:
        """``[a, b, ...]`` of a repeated field (after its ``[``), each element read by ``item``; ``[]`` is empty."""
        kind, value = self.peek()
        if kind == "punct" and value == "]":
            self.skip()
            return
        while True:
            item(msg, field)
            kind, value = self.take()
            if kind == "punct" and value == "]":
                return
            if not (kind == "punct" and value == ","):
                raise _Fallback

    def _scalar(self, msg, field) -> None:
        kind, value = self.take()
        t = field.type
        if t == _FD.TYPE_STRING or t == _FD.TYPE_BYTES:
            if kind != "string":
                raise _Fallback
            parts = [value]
            while self.peek()[0] == "string":   # adjacent strings are one
                parts.append(self.take()[1])
            if t == _FD.TYPE_STRING and not any("\\" in p for p in parts):
                v = "".join(p[1:-1] for p in parts)
            else:
                raw = b"".join(text_encoding.CUnescape(p[1:-1]) for p in parts)
                v = raw
            if t == _FD.TYPE_STRING and isinstance(v, bytes):
                try:
                    v = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Fallback from None
        elif t in _INTS:
            if kind != "number":
                raise _Fallback
            v = _int(value)
        elif t in _FLOATS:
            if kind == "number":
                v = float(value) if not value.lstrip("+-")[:2].lower() == "0x" else float(_int(value))
            elif kind == "word" and value.lower() in _SPECIAL:
                v = _SPECIAL[value.lower()]
            else:
                raise _Fallback
        elif t == _FD.TYPE_BOOL:
            if value in _TRUE and kind in ("word", "number"):
                v = True
            elif value in _FALSE and kind in ("word", "number"):
                v = False
            else:
                raise _Fallback
        elif t == _FD.TYPE_ENUM:
            enum = field.enum_type
            if kind == "word":
                ev = enum.values_by_name.get(value)
            elif kind == "number":
                ev = enum.values_by_number.get(_int(value))
            else:
                ev = None
            if ev is None:
                raise _Fallback
            v = ev.number
        else:
            raise _Fallback
        try:
            if field.is_repeated:
                getattr(msg, field.name).append(v)
            else:
                setattr(msg, field.name, v)
        except (ValueError, TypeError):
            raise _Fallback from None


def merge(text: str, message) -> bool:
    """Merge ``text`` into ``message`` as ``text_format.Merge`` does (a singular field given twice keeps the last
    value, a message given twice is merged); True when done, False (``message`` untouched) when the text holds
    something this fast path leaves to protobuf's parser."""
    fresh = type(message)()
    try:
        _Parser(_tokens(text)).message(fresh, None)
    except (_Fallback, RecursionError, ValueError, OverflowError):   # e.g. an integer of a million digits
        return False
    message.MergeFrom(fresh)
    return True
