"""The layer library: one registered converter per Caffe layer type (installed as ``sfport.converters``).

A converter knows three things about its Caffe type: how to build the torch module from the ``LayerParameter``
and the bottom shapes, how to load Caffe's blobs into it and how to save them back. Modules keep their
parameters in Caffe's layout and order (``module.caffe_blobs`` names them), so loading and saving are plain
copies and a round trip is exact.

Adding a type, also from outside sfport::

    from sfport.converters import Converter, register

    @register("MyLayer")
    class MyLayer(Converter):
        def build(self, layer, bottom_shapes):
            return MyModule(...)          # an nn.Module; list its nn.Parameters in .caffe_blobs

Put that in a module and either import it before building a net, name it in the environment variable
``SFPORT_CONVERTERS`` (comma-separated module names), or declare it as an entry point of the group
``sfport.converters`` in your package.
"""
from __future__ import annotations

import importlib
import os

import numpy as np
import torch
from torch import nn

from sfport.errors import CaffeFileError

_REGISTRY: dict[str, "Converter"] = {}
_PLUGINS_LOADED = False


class UnknownLayerType(CaffeFileError):
    """No converter is registered for a layer's type (bad input: one line, exit status 2 on the command line)."""

    def __init__(self, layer_name: str, layer_type: str):
        self.layer_name, self.layer_type = layer_name, layer_type
        super().__init__(None, f"layer '{layer_name}' has type '{layer_type}', which sfport has no converter for; "
                               f"register one with @sfport.converters.register('{layer_type}') in a module named "
                               f"in SFPORT_CONVERTERS or in the 'sfport.converters' entry-point group")


class Converter:
    """Base class: subclasses implement ``build``; ``load``/``save`` copy ``module.caffe_blobs`` in order."""

    types: tuple[str, ...] = ()

    def build(self, layer, bottom_shapes: list) -> nn.Module:
        raise NotImplementedError

    def fillers(self, layer) -> list:
        """The FillerParameter of each Caffe blob (None: keep the value the module was built with)."""
        return []

    def params(self, module: nn.Module) -> list[nn.Parameter]:
        return [getattr(module, name) for name in getattr(module, "caffe_blobs", ())]

    def load(self, module: nn.Module, arrays: list[np.ndarray], layer_name: str = "") -> None:
        """Copy Caffe blobs into the module's parameters (a legacy 4-D blob loads into any shape of its size)."""
        params = self.params(module)
        if len(arrays) != len(params):
            raise ValueError(f"layer '{layer_name}': {len(arrays)} blobs given, the layer has {len(params)}")
        with torch.no_grad():
            for j, (p, a) in enumerate(zip(params, arrays)):
                a = np.asarray(a)
                if a.size != p.numel():
                    raise ValueError(f"layer '{layer_name}' blob {j}: {list(a.shape)} does not fit {list(p.shape)}")
                p.copy_(torch.tensor(np.asarray(a, dtype=np.float32)).reshape(p.shape))

    def save(self, module: nn.Module) -> list[np.ndarray]:
        return [p.detach().cpu().float().numpy().copy() for p in self.params(module)]


def register(*types: str):
    """Class decorator: register a Converter subclass for one or more Caffe type names (replacing any)."""
    def deco(cls):
        inst = cls()
        inst.types = tuple(types)
        for t in types:
            _REGISTRY[t] = inst
        return cls
    return deco


def load_plugins() -> None:
    """Import converter modules named in SFPORT_CONVERTERS and the 'sfport.converters' entry points (once)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for name in filter(None, (s.strip() for s in os.environ.get("SFPORT_CONVERTERS", "").split(","))):
        importlib.import_module(name)
    from importlib.metadata import entry_points
    for ep in entry_points(group="sfport.converters"):
        ep.load()


def get(layer_type: str, layer_name: str = "") -> Converter:
    load_plugins()
    try:
        return _REGISTRY[layer_type]
    except KeyError:
        raise UnknownLayerType(layer_name, layer_type) from None


def registered_types() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


# The built-in families register themselves on import.
from . import activations, conv, linear, loss, margin, norm, pooling, structure  # noqa: E402,F401
