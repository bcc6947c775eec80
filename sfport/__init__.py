"""sfport: SphereFace / SphereFace+ Caffe models in PyTorch, exactly.

Reading and writing Caffe files needs only protobuf and numpy; torch is imported by the parts that run nets.
"""
from sfport.errors import CaffeFileError
from sfport.io import (CaffeModel, read_caffemodel, read_net, read_prototxt, read_solver, read_solverstate,
                       write_caffemodel, write_prototxt, write_solverstate)
from sfport.model import merge, summarize

__version__ = "0.1.0"

__all__ = ["CaffeFileError", "CaffeModel", "merge", "read_caffemodel", "read_net", "read_prototxt",
           "read_solver", "read_solverstate", "summarize", "write_caffemodel", "write_prototxt",
           "write_solverstate", "__version__"]
