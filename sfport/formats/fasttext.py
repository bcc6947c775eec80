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

import functools
import re

from google.protobuf import descriptor, text_encoding

# One match: the spaces and comments before a token, then the token in one of five groups: a word, punctuation,
# a string, a number, or any other character (which no rule takes: the parse gives up there). A text's last match
# may be spaces alone.
_TOKEN = re.compile(r"""
    (?:[ \t\r\n\f\v]|\#[^\n]*)*
    (?:(-?[A-Za-z_]\w*)
     | ([{}<>\[\]:,;])
     | ("[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*')
     | ([-+]?(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)(?![A-Za-z0-9_.]))
     | ([\s\S]))?
""", re.VERBOSE | re.ASCII)   # no two ways to match the same text (no backtracking blow-up); \w is [A-Za-z0-9_]
_WORD, _PUNCT, _STRING, _NUMBER = range(4)   # a token's groups (the most frequent first: no two start alike)
_SPACE = ("", "", "", "", "")
_END = (None, None, None, None, None)        # after the last token
_CHUNK = 1 << 16   # characters tokenized at a time (to the end of a line): a parse that gives up stops reading there
_AHEAD = 16        # tokens kept ahead of the cursor at each check point (one field takes at most 5 between two)

_FD = descriptor.FieldDescriptor
_INTS = {_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_SINT32, _FD.TYPE_SINT64,
         _FD.TYPE_FIXED32, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64}
_FLOATS = {_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE}
_TRUE, _FALSE = {"true", "t", "True", "1"}, {"false", "f", "False", "0"}
_SPECIAL = {"inf": float("inf"), "infinity": float("inf"), "-inf": float("-inf"), "-infinity": float("-inf"),
            "nan": float("nan"), "-nan": float("nan")}
# what a field holds, as the parser reads it
_MESSAGE, _ANY, _STR, _BYTES, _INT, _FLOAT, _BOOL, _ENUM, _OTHER = range(9)


class _Fallback(Exception):
    """The text holds something this fast path leaves to protobuf's parser."""


def _chunks(text: str):
    """The tokens of ``text``, a list of them at a time: a chunk of lines at once (``findall``), or, in a line
    longer than a few chunks, match by match."""
    pos, n = 0, len(text)
    while pos < n:
        end = text.find("\n", pos + _CHUNK)
        end = n if end < 0 else end + 1
        if end - pos > 4 * _CHUNK:
            batch = []
            for m in _TOKEN.finditer(text, pos):
                token = m.groups("")
                if token != _SPACE:
                    batch.append(token)
                if len(batch) >= 1024:
                    yield batch
                    batch = []
            yield batch
            return
        found = _TOKEN.findall(text, pos, end)
        while found and found[-1] == _SPACE:
            found.pop()
        yield found
        pos = end


@functools.cache
def _fields(message_descriptor) -> dict:
    """Field name -> (name, what it holds, repeated, enum values by name and by number)."""
    out = {}
    for name, fd in message_descriptor.fields_by_name.items():
        if fd.is_extension:
            continue
        t, enums = fd.type, None
        if t in (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP):
            kind = _ANY if fd.message_type.full_name == "google.protobuf.Any" else _MESSAGE
        elif t == _FD.TYPE_STRING:
            kind = _STR
        elif t == _FD.TYPE_BYTES:
            kind = _BYTES
        elif t in _INTS:
            kind = _INT
        elif t in _FLOATS:
            kind = _FLOAT
        elif t == _FD.TYPE_BOOL:
            kind = _BOOL
        elif t == _FD.TYPE_ENUM:
            kind = _ENUM
            values = fd.enum_type.values
            enums = ({v.name: v.number for v in values}, {v.number: v.number for v in values})
        else:
            kind = _OTHER
        out[name] = (fd.name, kind, fd.is_repeated, enums)
    return out


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
    """Tokens in a list with a cursor ``i``; :meth:`fill` keeps at least _AHEAD tokens (or _END) after it at every
    check point, so the code between two reads ``toks[i + k]`` without a bounds check."""

    def __init__(self, text: str):
        self.chunks = _chunks(text)
        self.toks: list = []
        self.i = 0
        self.fill()

    def fill(self) -> None:
        toks = self.toks
        if self.i:
            del toks[:self.i]
            self.i = 0
        while len(toks) < _AHEAD:
            chunk = next(self.chunks, None)
            if chunk is None:
                toks.extend([_END] * _AHEAD)
                return
            toks.extend(chunk)

    def message(self, msg, close: str | None) -> None:
        fields = _fields(msg.DESCRIPTOR)
        toks = self.toks   # fill() changes this list in place
        while True:
            if len(toks) - self.i < _AHEAD:
                self.fill()
            i = self.i
            t = toks[i]
            word = t[_WORD]
            if not word:
                if t is _END:
                    if close is None:
                        return
                    raise _Fallback
                if close is not None and t[_PUNCT] == close:
                    self.i = i + 1
                    return
                raise _Fallback
            field = fields.get(word)
            if field is None:
                raise _Fallback
            kind, repeated = field[1], field[2]
            nested = kind == _MESSAGE or kind == _ANY
            i += 1
            if toks[i][_PUNCT] == ":":   # optional before a message, required before a value
                i += 1
            elif not nested:
                raise _Fallback
            self.i = i
            read = self._sub_message if nested else self._scalar
            if toks[i][_PUNCT] == "[" and repeated:
                self.i = i + 1
                self._list(msg, field, read)
            else:
                read(msg, field)
            p = toks[self.i][_PUNCT]
            if p == "," or p == ";":
                self.i += 1

    def _sub_message(self, msg, field) -> None:
        p = self.toks[self.i][_PUNCT]
        if p == "{":
            close = "}"
        elif p == "<":
            close = ">"
        else:
            raise _Fallback
        if field[1] == _ANY:
            raise _Fallback
        sub = getattr(msg, field[0]).add() if field[2] else getattr(msg, field[0])
        sub.SetInParent()   # `name { }` sets the field, as protobuf's parser does
        self.i += 1
        self.message(sub, close)

    def _list(self, msg, field, item) -> None:
        """``[a, b, ...]`` of a repeated field (after its ``[``), each element read by ``item``; ``[]`` is empty."""
        toks = self.toks
        if toks[self.i][_PUNCT] == "]":
            self.i += 1
            return
        while True:
            if len(toks) - self.i < _AHEAD:
                self.fill()
            item(msg, field)
            p = toks[self.i][_PUNCT]
            self.i += 1
            if p == "]":
                return
            if p != ",":
                raise _Fallback

    def _scalar(self, msg, field) -> None:
        toks = self.toks
        i = self.i
        t = toks[i]
        i += 1
        name, kind, repeated, enums = field
        if kind == _STR or kind == _BYTES:
            if not t[_STRING]:
                raise _Fallback
            parts = [t[_STRING]]
            while True:   # adjacent strings are one
                if len(toks) - i < _AHEAD:
                    self.i = i
                    self.fill()
                    i = self.i
                s = toks[i][_STRING]
                if not s:
                    break
                parts.append(s)
                i += 1
            if kind == _STR and not any("\\" in p for p in parts):
                v = "".join(p[1:-1] for p in parts)
            else:
                v = raw = b"".join(text_encoding.CUnescape(p[1:-1]) for p in parts)
                if kind == _STR:
                    try:
                        v = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _Fallback from None
        elif kind == _INT:
            if not t[_NUMBER]:
                raise _Fallback
            v = _int(t[_NUMBER])
        elif kind == _FLOAT:
            number, word = t[_NUMBER], t[_WORD]
            if number:
                v = float(number) if not number.lstrip("+-")[:2].lower() == "0x" else float(_int(number))
            elif word and word.lower() in _SPECIAL:
                v = _SPECIAL[word.lower()]
            else:
                raise _Fallback
        elif kind == _BOOL:
            value = t[_WORD] or t[_NUMBER]
            if value in _TRUE:
                v = True
            elif value in _FALSE:
                v = False
            else:
                raise _Fallback
        elif kind == _ENUM:
            if t[_WORD]:
                v = enums[0].get(t[_WORD])
            elif t[_NUMBER]:
                v = enums[1].get(_int(t[_NUMBER]))
            else:
                v = None
            if v is None:
                raise _Fallback
        else:
            raise _Fallback
        self.i = i
        try:
            if repeated:
                getattr(msg, name).append(v)
            else:
                setattr(msg, name, v)
        except (ValueError, TypeError):
            raise _Fallback from None


def merge(text: str, message) -> bool:
    """Merge ``text`` into ``message`` as ``text_format.Merge`` does (a singular field given twice keeps the last
    value, a message given twice is merged); True when done, False (``message`` untouched) when the text holds
    something this fast path leaves to protobuf's parser."""
    fresh = type(message)()
    try:
        _Parser(text).message(fresh, None)
    except (_Fallback, RecursionError, ValueError, OverflowError):   # e.g. an integer of a million digits
        return False
    message.MergeFrom(fresh)
    return True
