"""sfport: SphereFace / SphereFace+ Caffe models in PyTorch, exactly.

Reading and writing Caffe files needs only protobuf and numpy; torch is imported by the parts that run nets.
"""
from sfport.errors import CaffeFileError
from sfport.io import (CaffeModel, read_caffemodel, read_net, read_prototxt, read_solver, read_solverstate,
                       write_caffemodel, write_prototxt, write_solverstate)
from sfport.model import merge, summarize

__version__ = "0.1.0"


def __getattr__(name):
    """``sfport.Net`` (pycaffe-like) is imported on first use: reading files does not need torch."""
    if name == "Net":
        from sfport.net import Net
        return Net
    raise AttributeError(f"module 'sfport' has no attribute {name!r}")

__all__ = ["CaffeFileError", "CaffeModel", "Net", "merge", "read_caffemodel", "read_net", "read_prototxt",
           "read_solver", "read_solverstate", "summarize", "write_caffemodel", "write_prototxt",
           "write_solverstate", "__version__"]
