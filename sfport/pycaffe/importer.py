"""``import caffe`` resolving to sfport, for an unchanged pycaffe script: ``caffe`` is the module ``sfport``
and ``caffe.X`` the sfport module of pycaffe's ``X`` (:data:`MODULES`), the same objects under both names.

:func:`install` puts the finder first on ``sys.meta_path``. It never shadows a real pycaffe: when ``caffe`` can
be imported already (a Caffe build on ``sys.path``), it installs nothing unless ``shadow`` is asked for.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys

from sfport import AliasLoader

# pycaffe's modules -> sfport's (what sfport ports so far; any other caffe.X is an ImportError naming it)
MODULES = {"caffe": "sfport", "caffe.proto": "sfport.protos", "caffe.proto.caffe_pb2": "sfport.protos.caffe_pb2",
           "caffe.io": "sfport.io", "caffe.draw": "sfport.draw", "caffe.net_spec": "sfport.pycaffe.net_spec",
           "caffe.coord_map": "sfport.pycaffe.coord_map", "caffe.classifier": "sfport.pycaffe.classifier",
           "caffe.detector": "sfport.pycaffe.detector"}


class CaffeFinder(importlib.abc.MetaPathFinder):
    """Finds ``caffe`` and ``caffe.X`` as sfport's modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "caffe" and not fullname.startswith("caffe."):
            return None
        if fullname not in MODULES:
            raise ModuleNotFoundError(f"No module named '{fullname}': sfport does not provide pycaffe's "
                                      f"'{fullname}' (it provides {', '.join(sorted(MODULES))})", name=fullname)
        return importlib.util.spec_from_loader(fullname, AliasLoader(MODULES[fullname]),
                                               is_package=fullname in ("caffe", "caffe.proto"))


def real_caffe() -> str | None:
    """Where an importable pycaffe other than sfport lives, or None."""
    if any(isinstance(f, CaffeFinder) for f in sys.meta_path):
        return None
    spec = importlib.machinery.PathFinder.find_spec("caffe")
    return None if spec is None else (spec.origin or str(list(spec.submodule_search_locations or [])))


def install(shadow: bool = False) -> bool:
    """Make ``import caffe`` give sfport. Returns False (and installs nothing) when a real pycaffe is
    importable and ``shadow`` is false."""
    if any(isinstance(f, CaffeFinder) for f in sys.meta_path):
        return True
    if real_caffe() is not None and not shadow:
        return False
    for name in [m for m in sys.modules if m == "caffe" or m.startswith("caffe.")]:
        del sys.modules[name]   # a pycaffe imported before is replaced, when asked to shadow it
    sys.meta_path.insert(0, CaffeFinder())
    return True
