"""sfport: SphereFace / SphereFace+ Caffe models in PyTorch, exactly.

The package, by concern (ARCHITECTURE.md has one row per module):

- :mod:`sfport.formats`: Caffe's files and sfport's own, read and written safely (no torch needed);
- :mod:`sfport.netdef`: a net definition and its transformations (NetState filtering, wiring, shapes, the graph,
  the deploy and optimized forms, weight matching, inspection, the built-in nets, drawing);
- :mod:`sfport.converters` (the top-level ``converters/``): the layer library, one converter per Caffe type;
- :mod:`sfport.runtime`: the net as a ``torch.nn.Module`` and pycaffe's ``Net``, export, inference backends,
  blob-by-blob verification;
- :mod:`sfport.data`: data layers' readers and pycaffe's ``caffe.io``;
- :mod:`sfport.solver`: Caffe's solver and the verbs of ``caffe.cpp`` (train, test, time);
- :mod:`sfport.face`: the face application (alignment, MTCNN, features, the LFW protocol);
- :mod:`sfport.report`: what is shown while working (glog lines, progress, plots);
- :mod:`sfport.pycaffe`: pycaffe's own names (NetSpec, layer_type_list) and the runner of unchanged pycaffe
  scripts (``python -m sfport.pycaffe script.py``: their ``import caffe`` resolves to sfport);
- :mod:`sfport.commands` and :mod:`sfport.cli`: the command line;
- :mod:`sfport.protos` (the top-level ``protos/``): the Caffe schema and its bindings; ``sfport.proto`` is the same
  package under pycaffe's name (``caffe.proto``).

Reading and writing Caffe files needs only protobuf and numpy; torch is imported by the parts that run nets or
infer shapes (the layer registry). ``import sfport as caffe`` gives pycaffe's names: ``sfport.Net`` is pycaffe's
``caffe.Net`` (:mod:`sfport.pycaffe.net`: blobs with numpy ``data`` / ``diff``), ``sfport.TorchNet`` sfport's torch
handle of a net (:mod:`sfport.runtime.net`: tensors, the nn.Module, export, ``.pt`` files). Public entry points keep
short names: ``sfport.io`` (pycaffe's ``caffe.io``), ``sfport.draw``, ``sfport.verify``, ``sfport.export`` are the modules of their rooms, importable
under either name (``import sfport.io`` and ``import sfport.data.caffe_io`` give the same module object).
"""
import importlib
import importlib.abc
import importlib.util
import sys

from sfport.errors import CaffeFileError
from sfport.protos.caffe_pb2 import TEST, TRAIN
from sfport.formats.caffe_files import (CaffeModel, read_caffemodel, read_net, read_prototxt, read_solver,
                                        read_solverstate, write_caffemodel, write_prototxt, write_solverstate)

__version__ = "0.1.0"

# public short names -> the module of its room (imported on first use: reading files needs no torch)
PUBLIC_MODULES = {"sfport.io": "sfport.data.caffe_io", "sfport.draw": "sfport.netdef.draw",
                  "sfport.verify": "sfport.runtime.verify", "sfport.export": "sfport.runtime.export",
                  "sfport.proto": "sfport.protos", "sfport.coord_map": "sfport.pycaffe.coord_map"}


def alias_target(fullname: str, aliases: dict) -> str | None:
    """The module a second name stands for: an alias, or a submodule of an alias (``sfport.proto.caffe_pb2`` is
    ``sfport.protos.caffe_pb2``), so that no module is ever loaded twice under two names."""
    for short, target in aliases.items():
        if fullname == short or fullname.startswith(short + "."):
            return target + fullname[len(short):]
    return None
# public names -> (module, attribute), imported on first use
PUBLIC_NAMES = {"Net": ("sfport.pycaffe.net", "Net"), "TorchNet": ("sfport.runtime.net", "Net"), "Blob": ("sfport.pycaffe.blob", "Blob"),
                "Layer": ("sfport.pycaffe.layer", "Layer"),
                "Classifier": ("sfport.pycaffe.classifier", "Classifier"),
                "Detector": ("sfport.pycaffe.detector", "Detector"),
                "SGDSolver": ("sfport.pycaffe.solver", "SGDSolver"),
                "NesterovSolver": ("sfport.pycaffe.solver", "NesterovSolver"),
                "AdaGradSolver": ("sfport.pycaffe.solver", "AdaGradSolver"),
                "RMSPropSolver": ("sfport.pycaffe.solver", "RMSPropSolver"),
                "AdaDeltaSolver": ("sfport.pycaffe.solver", "AdaDeltaSolver"),
                "AdamSolver": ("sfport.pycaffe.solver", "AdamSolver"),
                "get_solver": ("sfport.pycaffe.solver", "get_solver"),
                "set_mode_cpu": ("sfport.pycaffe.common", "set_mode_cpu"),
                "set_mode_gpu": ("sfport.pycaffe.common", "set_mode_gpu"),
                "set_device": ("sfport.pycaffe.common", "set_device"),
                "has_nccl": ("sfport.pycaffe.common", "has_nccl"),
                "solver_count": ("sfport.pycaffe.common", "solver_count"),
                "set_solver_count": ("sfport.pycaffe.common", "set_solver_count"),
                "solver_rank": ("sfport.pycaffe.common", "solver_rank"),
                "set_solver_rank": ("sfport.pycaffe.common", "set_solver_rank"),
                "set_multiprocess": ("sfport.pycaffe.common", "set_multiprocess"), "Transformer": ("sfport.data.caffe_io", "Transformer"),
                "merge": ("sfport.netdef.weight_match", "merge"),
                "use_proto": ("sfport.formats.forkschema", "use"),
                "summarize": ("sfport.netdef.inspection", "summarize"),
                # pycaffe's (python/caffe/__init__.py) names that sfport ports so far
                "NetSpec": ("sfport.pycaffe.net_spec", "NetSpec"), "layers": ("sfport.pycaffe.net_spec", "layers"),
                "params": ("sfport.pycaffe.net_spec", "params"), "to_proto": ("sfport.pycaffe.net_spec", "to_proto"),
                "layer_type_list": ("sfport.pycaffe.registry", "layer_type_list"),
                "Timer": ("sfport.pycaffe.common", "Timer"), "init_log": ("sfport.pycaffe.common", "init_log"),
                "log": ("sfport.pycaffe.common", "log"),
                "set_random_seed": ("sfport.pycaffe.common", "set_random_seed")}


class AliasLoader(importlib.abc.Loader):
    """Loads a second name of a module as the very module (one module object under two names): the public short
    names here, pycaffe's ``caffe`` names in :mod:`sfport.pycaffe.importer`. The module keeps its own
    ``__spec__`` (the import system sets the alias's on it; it is put back)."""

    def __init__(self, target: str):
        self.target = target
        self.spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec   # it ran when it was first imported under its own name


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        room = alias_target(fullname, PUBLIC_MODULES)
        if room is None:
            return None
        return importlib.util.spec_from_loader(fullname, AliasLoader(room))


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())   # before the path finders: an alias's submodules too


def __getattr__(name):
    """``sfport.Net`` (pycaffe's), ``sfport.TorchNet``, ``merge`` and ``summarize`` (which ask the torch-based layer registry for
    shapes) are imported on first use: reading files does not need torch. So are pycaffe's ``caffe.io`` as
    ``sfport.io`` (and its ``Transformer`` as ``sfport.Transformer``) and ``caffe.proto`` as ``sfport.proto``
    (``sfport.proto.caffe_pb2``), which need no torch either: ``import sfport as caffe`` ports such scripts."""
    if f"sfport.{name}" in PUBLIC_MODULES:
        # import_module, not ``from sfport import io``: that form asks this very __getattr__ first.
        return importlib.import_module(f"sfport.{name}")
    if name in PUBLIC_NAMES:
        module, attr = PUBLIC_NAMES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sfport' has no attribute {name!r}")


__all__ = sorted({"CaffeFileError", "CaffeModel", "TEST", "TRAIN", "coord_map", "draw", "export", "io", "proto", "verify",
                  "read_caffemodel", "read_net", "read_prototxt", "read_solver", "read_solverstate", "write_caffemodel",
                  "write_prototxt", "write_solverstate", "__version__"} | set(PUBLIC_NAMES))
