"""pycaffe's net_spec.py: nets written in Python, as NetParameter messages (python/caffe/net_spec.py).

``layers.Convolution(bottom, kernel_size=3, num_output=8)`` is a :class:`Top` of a :class:`Function` (a layer
still to be written); ``NetSpec()`` names tops by assignment (``n.conv1 = ...``); ``to_proto`` writes the layers a
set of tops needs, each once, in the order they are first needed. The rules are net_spec.py's:

- a keyword argument ending in ``param`` sets that LayerParameter field (``param=[dict(lr_mult=1)]``,
  ``transform_param=dict(scale=0.5)``); any other sets the field of the type's own ``<type>_param`` message,
  and failing that (no such message, or no such field in it), the LayerParameter field of that name;
- a list sets a repeated field (a list of dicts adds one message each); a dict sets a message's fields; a
  single value given to a repeated field is a list of one;
- ``ntop`` (default 1) is the number of tops (0 returns the layer itself, several a tuple of tops);
  ``in_place=True`` makes the tops the bottoms' names;
- a top without a name is named ``<Type><k>`` (k counting per type across the net), a layer by its first
  top's name, a layer without tops ``<Type><k>``.
"""
from __future__ import annotations

import re
from collections import Counter

from sfport.protos import caffe_pb2


_MESSAGE_NAME = re.compile(r"(\w+)Parameter")   # the schema's <Type>Parameter messages


def _param_message_names() -> dict[str, str]:
    """Layer type -> the stem of its ``<stem>_param`` field, from the schema: the message type of each
    ``*_param`` field, less its suffix (``ConvolutionParameter`` -> ``convolution``)."""
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        m = _MESSAGE_NAME.fullmatch(field.message_type.name) if field.message_type is not None else None
        if field.name.endswith("_param") and m:
            out[m.group(1)] = field.name[:-len("_param")]
    return out


_PARAM_OF_TYPE = _param_message_names()
# <Type> -> the <Type>Parameter message class (``params.Pooling`` is PoolingParameter's enums)
_MESSAGES = {m.group(1): getattr(caffe_pb2, name) for name in caffe_pb2.DESCRIPTOR.message_types_by_name
             if (m := _MESSAGE_NAME.fullmatch(name))}


def assign_proto(proto, name: str, value) -> None:
    """Set field ``name`` of ``proto`` from a Python value (lists for repeated fields, dicts for messages)."""
    target = getattr(proto, name)
    repeated = hasattr(target, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                message = target.add()
                for k, v in item.items():
                    assign_proto(message, k, v)
        else:
            target.extend(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            assign_proto(target, k, v)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer to be written (top ``n`` of ``fn``)."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer this top needs."""
        return to_proto(self)

    def _to_proto(self, layers: dict, names: dict, autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer to be written: its type, its inputs (tops of other layers) and its parameters."""

    def __init__(self, type_name: str, inputs: tuple, params: dict):
        self.type_name = type_name
        for index, value in enumerate(inputs):
            if not isinstance(value, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(value)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _auto(self, key, names: dict, autonames: Counter) -> str:
        autonames[self.type_name] += 1
        names[key] = f"{self.type_name}{autonames[self.type_name]}"
        return names[key]

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        return names[top] if top in names else top.fn._auto(top, names, autonames)

    def _name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            names[self] = self._top_name(self.tops[0], names, autonames) if self.ntop > 0 else \
                self._auto(self, names, autonames)
        return names[self]

    def layer_param(self, field: str | None = None) -> caffe_pb2.LayerParameter:
        """The layer's type and parameters as a LayerParameter (no name, bottoms or tops yet). ``field``: the
        parameter message a keyword goes to when the type's ``<type>_param`` does not take it (net_spec.py
        itself has none: ``Deconvolution(kernel_size=4)`` fails there, as here without ``field``)."""
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_proto(layer, key, value)
                continue
            try:
                assign_proto(getattr(layer, _PARAM_OF_TYPE[self.type_name] + "_param"), key, value)
            except (AttributeError, KeyError):
                if field is not None and hasattr(getattr(layer, field), key):
                    assign_proto(getattr(layer, field), key, value)
                else:
                    assign_proto(layer, key, value)
        return layer

    def _to_proto(self, layers: dict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top._to_proto(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        layer = caffe_pb2.LayerParameter(bottom=bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        layer.MergeFrom(self.layer_param())
        layers[self] = layer


def _net(tops, names: dict) -> caffe_pb2.NetParameter:
    layers: dict = {}
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def to_proto(*tops) -> caffe_pb2.NetParameter:
    """The NetParameter of every layer needed to compute ``tops``, blobs and layers named automatically."""
    return _net(tops, {})


class NetSpec:
    """Tops named by assignment (``n.data, n.label = layers.DummyData(..., ntop=2)``); ``to_proto`` writes the
    layers they need, their blobs named as assigned."""

    def __init__(self):
        super().__setattr__("tops", {})

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, key: str):
        return self.tops[key]

    def to_proto(self) -> caffe_pb2.NetParameter:
        return _net(self.tops.values(), {top: name for name, top in self.tops.items()})


class Layers:
    """``layers.Type(*bottoms, **params)``: a Top (one top), the tops (several) or the Function (none)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            return fn if fn.ntop == 0 else fn.tops[0] if fn.ntop == 1 else fn.tops
        return layer


class Parameters:
    """``params.Pooling.MAX``: the enum values of the schema's ``<Type>Parameter`` messages."""

    def __getattr__(self, type_name: str):
        if type_name not in _MESSAGES:
            raise AttributeError(f"the schema has no {type_name} parameters")
        message = _MESSAGES[type_name]

        class Values:
            def __getattr__(self, name: str):
                return getattr(message, name)
        return Values()


layers = Layers()
params = Parameters()
