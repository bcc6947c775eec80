"""Snapshots and resuming (Caffe's Solver::Snapshot / Restore).

A snapshot writes ``<prefix>_iter_N.caffemodel`` and ``.solverstate`` in Caffe's binary formats and
``<prefix>_iter_N.pt``, an sfport checkpoint with what Caffe does not keep (the layers' counters, the torch RNG,
the smoothed-loss window). The three files are written under temporary names and renamed when all three are
complete (the ``.pt`` last), so a failed or interrupted snapshot leaves no half-written file and an existing
``.pt`` means its snapshot is whole. Where they go is checked before the first iteration
(:func:`check_outputs`, Caffe's Solver::CheckSnapshotWritePermissions).

Resuming from the ``.pt`` continues exactly (the data position is a function of the update count); resuming from
a ``.solverstate`` does what Caffe does (iteration, lr step and history restored; counters and data start
again). Either file is checked whole against the solver and the net before any state changes.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from sfport.formats import caffe_files, disk
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

CKPT_FORMAT = "sfport-checkpoint"
SUFFIXES = (".caffemodel", ".solverstate", ".pt")


def snapshot_base(sp: caffe_pb2.SolverParameter, it: int) -> str:
    """Solver::SnapshotFilename without its extension: ``<snapshot_prefix>_iter_<it>`` (the prefix as
    :func:`sfport.solver.config.read_solver` settled it)."""
    return f"{sp.snapshot_prefix}_iter_{it}"


def check_outputs(solver_path, sp: caffe_pb2.SolverParameter, it: int) -> None:
    """Solver::CheckSnapshotWritePermissions (solver.cpp), before the nets are built: the snapshot files of
    iteration ``it`` can be written (not folders, their folder a folder and writable: probed, nothing stays).
    Caffe probes only when ``snapshot`` is set; sfport also when ``snapshot_after_train`` will write at the end."""
    if not (sp.snapshot or sp.snapshot_after_train):
        return
    base = snapshot_base(sp, it)
    for suffix in SUFFIXES:
        try:
            disk.check_output(base + suffix, "snapshot")
        except CaffeFileError as e:
            raise CaffeFileError(solver_path, f"snapshot_prefix '{sp.snapshot_prefix}': {e}") from None


def snapshot(solver) -> str:
    """Write the three files of ``solver`` at its iteration, all or none; returns their common prefix."""
    sp = solver.param
    if sp.snapshot_format == caffe_pb2.SolverParameter.HDF5:
        solver.log("HDF5 snapshots are not supported; writing binary proto files", "solver.cpp:0", "W")
    base = snapshot_base(sp, solver.state.iter)
    final = {s: base + s for s in SUFFIXES}
    for p in final.values():
        disk.check_output(p, "snapshot")
    folder = Path(base).parent
    folder.mkdir(parents=True, exist_ok=True)
    temps = {s: str(folder / f".{Path(p).name}.part") for s, p in final.items()}
    try:
        solver.log(f"Snapshotting to binary proto file {final['.caffemodel']}", "solver.cpp:447")
        solver.net.save_caffemodel(temps[".caffemodel"])
        solver.log(f"Snapshotting solver state to binary proto file {final['.solverstate']}", "sgd_solver.cpp:273")
        st = solver.state.to_solverstate(final[".caffemodel"])
        caffe_files.write_solverstate(temps[".solverstate"], st.state, st.history)
        cuda = solver.device.type == "cuda"
        ckpt = {"format": CKPT_FORMAT, "version": 1, **solver.state.state_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in solver.net.module.state_dict().items()},
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if cuda else torch.zeros(0, dtype=torch.uint8),
                "losses": list(solver.losses), "smoothed_loss": solver.smoothed_loss,
                "world": solver.world, "iter_size": max(sp.iter_size, 1), "seed": solver.seed}
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        disk.atomic_write(temps[".pt"], buf.getvalue())
        for s in SUFFIXES:   # the .pt last: it exists only when its snapshot is whole
            os.replace(temps[s], final[s])
    except BaseException as e:
        for t in temps.values():
            try:
                os.unlink(t)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and not isinstance(e, CaffeFileError):   # a full disk, a vanished folder
            raise CaffeFileError(base, f"cannot write the snapshot of iteration {solver.state.iter} "
                                       f"(nothing of it was left): {e.strerror or e}") from None
        raise
    return base


def restore(solver, path: str) -> None:
    """``-snapshot``: an sfport ``.pt`` (exact continuation) or a Caffe ``.solverstate`` (Caffe's resume), checked
    whole before anything changes."""
    if str(path).endswith(".pt"):
        ck = disk.load_torch_file(path, CKPT_FORMAT, "an sfport training checkpoint (.pt written by sfport train)")
        counts = check_checkpoint(solver, ck, path)
        solver.net.module.load_state_dict(ck["state_dict"])
        solver.state.apply(*counts)
        torch.set_rng_state(ck["rng"])
        if solver.device.type == "cuda" and ck["cuda_rng"].numel():
            torch.cuda.set_rng_state(ck["cuda_rng"], solver.device)
        for key, now in (("world", solver.world), ("iter_size", max(solver.param.iter_size, 1))):
            if ck.get(key, now) != now:
                solver.log(f"The checkpoint was written with {key} {ck[key]}, this run has {now}: the data "
                           f"positions go on as this run's", "solver.cpp:0", "W")
        solver.log(f"Restoring previous solver status from {path}", "sgd_solver.cpp:318")
        return
    st = caffe_files.read_solverstate(path)
    counts = solver.state.check_solverstate(st)   # sgd_solver.cpp RestoreSolverStateFromBinaryProto
    learned = st.state.learned_net
    if learned:   # Caffe: net_->CopyTrainedLayersFrom(state.learned_net())
        lp = Path(learned)
        if not lp.exists() and not lp.is_absolute():
            lp = Path(path).parent / Path(learned).name
        if not lp.is_file():
            raise CaffeFileError(path, f"learned_net '{learned}' not found (nor beside the .solverstate)")
        solver.copy_weights(caffe_files.read_caffemodel(lp))
    solver.state.apply(*counts)
    solver.log(f"Restoring previous solver status from {path} (Caffe resume: layer counters and data position "
               f"start again; use the .pt to continue exactly)", "sgd_solver.cpp:318")


def check_checkpoint(solver, ck: dict, path) -> tuple:
    """Every key of an sfport checkpoint against the solver and the net, changing nothing: the net's tensors
    (the same names, shapes and dtypes), the SGD state (:meth:`sfport.solver.sgd.SGDState.check_state_dict`), RNG
    states torch takes, and the types of the bookkeeping keys. Returns what ``state.apply`` takes."""
    if ck.get("version", 1) != 1:
        raise CaffeFileError(path, f"'version' is {ck.get('version')!r}: this sfport reads version 1")
    sd = ck.get("state_dict")
    if not isinstance(sd, dict):
        raise CaffeFileError(path, "'state_dict' is missing or not a dict")
    ours = solver.net.module.state_dict()
    missing = [k for k in ours if k not in sd]
    if missing:
        raise CaffeFileError(path, f"'state_dict' lacks '{missing[0]}'" +
                             (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "") + " of the net")
    extra = [k for k in sd if k not in ours]
    if extra:
        raise CaffeFileError(path, f"'state_dict' has '{str(extra[0])[:80]}', which the net does not have" +
                             (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for k, v in ours.items():
        got = sd[k]
        if not isinstance(got, torch.Tensor):
            raise CaffeFileError(path, f"'state_dict' '{k}' is not a tensor")
        if got.shape != v.shape:
            raise CaffeFileError(path, f"'state_dict' '{k}' is {list(got.shape)}, the net's is {list(v.shape)}")
        if got.dtype != v.dtype:
            raise CaffeFileError(path, f"'state_dict' '{k}' is {str(got.dtype)[6:]}, the net's is "
                                       f"{str(v.dtype)[6:]}")
    for key in ("rng", "cuda_rng"):
        if not isinstance(ck.get(key), torch.Tensor):
            raise CaffeFileError(path, f"'{key}' is missing or not a Tensor")
        if ck[key].dtype != torch.uint8:
            raise CaffeFileError(path, f"'{key}' is not a torch RNG state (uint8)")
    devices = ["cpu"] + (["cuda"] if solver.device.type == "cuda" and ck["cuda_rng"].numel() else [])
    for key, device in zip(("rng", "cuda_rng"), devices):
        try:   # on a scratch generator: the process's own RNG changes only once everything is checked
            torch.Generator(device=solver.device if device == "cuda" else "cpu").set_state(ck[key])
        except (RuntimeError, ValueError, TypeError):
            raise CaffeFileError(path, f"'{key}' is not a torch RNG state ({ck[key].numel()} bytes)") from None
    for key, kind in (("world", int), ("iter_size", int), ("seed", int)):
        if key in ck and (not isinstance(ck[key], int) or isinstance(ck[key], bool) or
                          (key != "seed" and ck[key] < 1)):
            raise CaffeFileError(path, f"'{key}' is {str(ck[key])[:40]!r}, not a positive integer"
                                 if key != "seed" else f"'seed' is {str(ck[key])[:40]!r}, not an integer")
    if "losses" in ck and not (isinstance(ck["losses"], list) and all(_is_number(v) for v in ck["losses"])):
        raise CaffeFileError(path, "'losses' is not a list of numbers")
    if "smoothed_loss" in ck and not _is_number(ck["smoothed_loss"]):
        raise CaffeFileError(path, "'smoothed_loss' is not a number")
    return solver.state.check_state_dict(ck, path)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)   # a NaN loss too (--keep-going)
