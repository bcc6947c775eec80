"""sfport: SphereFace / SphereFace+ Caffe models in PyTorch, exactly.

Reading and writing Caffe files needs only protobuf and numpy; torch is imported by the parts that run nets or
infer shapes (the layer registry).
"""
import importlib

from sfport.errors import CaffeFileError
from sfport.caffe_files import (CaffeModel, read_caffemodel, read_net, read_prototxt, read_solver, read_solverstate,
                       write_caffemodel, write_prototxt, write_solverstate)

__version__ = "0.1.0"


def __getattr__(name):
    """``sfport.Net`` (pycaffe-like), ``merge`` and ``summarize`` (which ask the torch-based layer registry for
    shapes) are imported on first use: reading files does not need torch. So are pycaffe's ``caffe.io`` as
    ``sfport.io`` (and its ``Transformer`` as ``sfport.Transformer``) and ``caffe.proto`` as ``sfport.proto``
    (``sfport.proto.caffe_pb2``), which need no torch either: ``import sfport as caffe`` ports such scripts."""
    if name in ("io", "proto"):
        # import_module, not ``from sfport import io``: that form asks this very __getattr__ first.
        return importlib.import_module("sfport.io" if name == "io" else "sfport.protos")
    if name == "Transformer":
        from sfport.io import Transformer
        return Transformer
    if name == "Net":
        from sfport.net import Net
        return Net
    if name in ("merge", "summarize"):
        from sfport import model
        return getattr(model, name)
    raise AttributeError(f"module 'sfport' has no attribute {name!r}")

__all__ = ["CaffeFileError", "CaffeModel", "Net", "Transformer", "io", "merge", "proto", "read_caffemodel",
           "read_net", "read_prototxt", "read_solver", "read_solverstate", "summarize", "write_caffemodel",
           "write_prototxt", "write_solverstate", "__version__"]
