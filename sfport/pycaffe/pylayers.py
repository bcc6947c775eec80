"""Python layers in sfport's own nets (the command line's ``sfport --python-layers``): a converter for Caffe's
``Python`` type whose module runs the user's :class:`sfport.pycaffe.layer.Layer` subclass, as Caffe built with
WITH_PYTHON_LAYER does (python_layer.hpp), forward on numpy blobs and backward into torch's autograd.

Importing the module a model file names runs that module's code, so nothing here is registered until
:func:`enable` is called: by ``sfport --python-layers`` (the user's explicit opt-in) or by a pycaffe script, whose
own ``caffe.Net`` imports the layers it names as pycaffe does (:class:`sfport.pycaffe.layer.PythonDriver`).
A Python layer that keeps learnable blobs of its own runs through the pycaffe API (``caffe.Net``,
``caffe.SGDSolver``), which holds them; here it is refused.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

from sfport import converters
from sfport.errors import CaffeFileError
from sfport.netdef import datalayers
from sfport.netdef.wiring import about_layer
from sfport.protos import caffe_pb2
from sfport.pycaffe.blob import Blob
from sfport.pycaffe.layer import PythonDriver


def _driver(layer, phase: int, bottom_shapes) -> tuple[PythonDriver, list[Blob], list[Blob]]:
    """The user's layer made and set up (python_param's module imported) for bottoms of these shapes."""
    driver = PythonDriver(layer, phase)
    bottom = [Blob(*s) for s in bottom_shapes]
    top = [Blob() for _ in layer.top]
    driver.setup(bottom, top)
    if len(driver.blobs):
        raise CaffeFileError(None, about_layer(layer, f"the Python layer keeps {len(driver.blobs)} learnable blobs "
                                                      f"of its own: run it through the pycaffe API (caffe.Net, "
                                                      f"caffe.SGDSolver), which holds them"))
    return driver, bottom, top


class _Run(torch.autograd.Function):
    """The user's forward on the bottoms' values, and its backward on the tops' gradients."""

    @staticmethod
    def forward(ctx, module, *xs):
        driver, bottom, top = module.driver, [Blob() for _ in xs], [Blob() for _ in module.driver.layer_param.top]
        driver.layer.phase = caffe_pb2.TRAIN if module.training else caffe_pb2.TEST
        for blob, x in zip(bottom, xs):
            blob.set_data(x.detach().cpu().float())
        driver.forward(bottom, top)
        ctx.blobs = (driver, bottom, top)
        ctx.devices = [x.device for x in xs]
        return tuple(t.tensor.clone().to(xs[0].device if xs else "cpu") for t in top)

    @staticmethod
    def backward(ctx, *grads):
        driver, bottom, top = ctx.blobs
        for blob, g in zip(top, grads):
            blob.set_diff(None if g is None else g.detach().cpu().float())
        down = list(ctx.needs_input_grad[1:])
        driver.backward(top, down, bottom)
        return (None,) + tuple(b.grad.clone().to(dev) if d else None for b, d, dev in zip(bottom, down, ctx.devices))


class PythonLayerModule(nn.Module):
    caffe_blobs = ()

    def __init__(self, driver: PythonDriver):
        super().__init__()
        self.driver = driver

    def forward(self, *xs):
        out = _Run.apply(self, *xs)
        return out[0] if len(out) == 1 else out


class PythonLayerConverter(converters.Converter):
    """``type: "Python"`` with bottoms: the user's layer (python_param ``module``, ``layer``, ``param_str``)."""

    def top_shapes(self, layer, bottom_shapes):
        _, _, top = _driver(layer, caffe_pb2.TEST, bottom_shapes)
        return [t.shape for t in top]

    def param_shapes(self, layer, bottom_shapes):
        return []

    def build(self, layer, bottom_shapes):
        driver, _, _ = _driver(layer, caffe_pb2.TEST, bottom_shapes)
        return PythonLayerModule(driver)


def enable() -> None:
    """Let nets built from here on run Python layers: the converter registered, and the working directory on
    ``sys.path`` (where Caffe's tool finds a layer's module, besides PYTHONPATH)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    converters.register(datalayers.PYTHON)(PythonLayerConverter)


def disable() -> None:
    """Python layers refused again (what :func:`enable` registered is removed)."""
    converters.unregister(datalayers.PYTHON)
