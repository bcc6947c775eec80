"""Where the paths of a solver and its nets point: one rule for all of them, and the log line of each.

The rule (:func:`resolve_path`): an absolute path is itself; a relative one is taken from the **current
directory when it exists there** (Caffe opens every path relative to the working directory, and caffe is run
from the repository root), **else from the solver's folder when it exists there**, else from the current
directory (so that an error names what Caffe would have opened). An output (``snapshot_prefix``) is placed by
its folder the same way. It applies to ``net``, ``train_net``, ``test_net``, the solver's ``weights``,
``snapshot_prefix``, the data layers' ``source`` (ImageData, Data, HDF5Data) and ``mean_file``, ``root_folder``
(where "exists" is tested on the list's first image, :meth:`sfport.data.imagedata.ImageDataset.from_layer`) and the
command line's ``--weights`` and ``--snapshot``. Each resolved path is logged once: ``Resolved net:
code/sphereface_model.prototxt -> /abs/path``.
"""
from __future__ import annotations

import os
from pathlib import Path

from sfport.data.imagedata import resolve
from sfport.netdef import datalayers
from sfport.errors import CaffeFileError

RULE = "relative paths are taken from the current directory if they exist there, else from the solver's folder"


def resolve_path(path: str | os.PathLike, base: Path | None, output: bool = False) -> Path:
    """``path`` by the rule of this module (``base``: the solver's folder): the current directory if it exists
    there, else ``base`` if it exists there, else the current directory; ``output``: the same for its folder.
    Inputs are :func:`sfport.data.imagedata.resolve`, the function the data layers' sources go through."""
    if output:
        p = Path(path)
        return p if p.is_absolute() else resolve(p.parent, base) / p.name
    return resolve(path, base)


def existing(path: str, base: Path | None, what: str, solver_path) -> Path:
    """:func:`resolve_path` of an input that must exist: else one error naming both places looked in."""
    p = resolve_path(path, base)
    if not p.exists():
        where = f"the current directory {Path.cwd()}" + (f" nor in the solver's folder {base}" if base else "")
        raise CaffeFileError(solver_path, f"{what} '{path}' not found in {where} ({RULE}; Caffe opens it from "
                                          f"the directory caffe is run in)")
    return p


class PathLog:
    """Resolves paths by the rule and logs each (kind, path) once: ``Resolved net: X -> /abs/X``."""

    def __init__(self, log, base: Path | None):
        self.log, self.base, self.seen = log, base, set()

    def __call__(self, kind: str, path: str, output: bool = False) -> str:
        resolved = str(resolve_path(path, self.base, output))
        self.note(kind, path, resolved)
        return resolved

    def note(self, kind: str, path, resolved) -> None:
        if (kind, str(path)) not in self.seen:
            self.seen.add((kind, str(path)))
            self.log(f"Resolved {kind}: {path} -> {os.path.abspath(resolved)}", "solver.cpp:0")

    def data(self, feeder, data_root: str | None = None) -> None:
        """The paths the data layer of ``feeder`` (:class:`sfport.data.feed.Feeder`) was read from."""
        layer, ds = feeder.layer, feeder.dataset
        if ds is None:   # synthetic data
            return
        params = datalayers.params_of(layer)
        self.note("source", params.source, getattr(ds, "list_path", None) or ds.source)
        if datalayers.spec_of(layer).reader == datalayers.LIST and (data_root or params.root_folder):
            self.note("root_folder", data_root or layer.image_data_param.root_folder, ds.root)
        transform = getattr(ds, "transform", None)
        if transform is not None and transform.mean_path:
            self.note("mean_file", layer.transform_param.mean_file, transform.mean_path)
