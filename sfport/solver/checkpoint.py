"""Snapshots and resuming, as Caffe's Solver::Snapshot / Restore (solver.cpp, sgd_solver.cpp).

A snapshot is what Caffe writes: ``<prefix>_iter_N.caffemodel`` + ``.solverstate`` (``snapshot_format:
BINARYPROTO``, the default) or ``.caffemodel.h5`` + ``.solverstate.h5`` (``HDF5``). Both files are written under
temporary names and renamed when both are complete, the model first: a ``.solverstate`` that exists always has its
model, an interrupted snapshot leaves nothing of itself, and no earlier snapshot is touched. Where they go is
checked before the first iteration (:func:`check_outputs`, Caffe's Solver::CheckSnapshotWritePermissions).

The ``.solverstate`` also carries sfport's resume record (:data:`RECORD_FORMAT`, zlib-compressed JSON in a field
Caffe's protobuf keeps aside unread; a dataset in the HDF5 form): what Caffe does not keep (the layers' counters, the
torch RNG, the smoothed-loss window, the run's world and iter_size). Resuming a snapshot sfport wrote continues
exactly: the data position is a function of the update count, the rest is in the record. Resuming one Caffe wrote
does what Caffe does: iteration, lr step and histories restored; counters and data start again. Either is checked
whole against the solver and the net before any state changes.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files, disk, hdf5_weights
from sfport.protos import caffe_pb2

RECORD_FORMAT = "sfport-resume"
RECORD_LIMIT = 1 << 26   # 64 MiB of JSON: counters and RNG states are kilobytes
HDF5 = caffe_pb2.SolverParameter.HDF5


def suffixes(sp: caffe_pb2.SolverParameter) -> tuple[str, str]:
    """The model's and the solver state's suffixes of the solver's ``snapshot_format``."""
    if sp.snapshot_format == HDF5:
        return ".caffemodel.h5", ".solverstate.h5"
    return ".caffemodel", ".solverstate"


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
    for suffix in suffixes(sp):
        try:
            disk.check_output(base + suffix, "snapshot")
        except CaffeFileError as e:
            raise CaffeFileError(solver_path, f"snapshot_prefix '{sp.snapshot_prefix}': {e}") from None


def write_snapshot(sp: caffe_pb2.SolverParameter, it: int, write_model, state: caffe_files.SolverStateFile,
                   log) -> tuple[str, str]:
    """Solver::Snapshot of iteration ``it``: ``write_model(path, hdf5)`` writes the weights, ``state`` (its
    learned_net set here) is the solver state; Caffe's log lines; both files or neither. Returns (model, state)."""
    base = snapshot_base(sp, it)
    hdf5 = sp.snapshot_format == HDF5
    final = [base + s for s in suffixes(sp)]
    for p in final:
        disk.check_output(p, "snapshot")
    folder = Path(base).parent
    folder.mkdir(parents=True, exist_ok=True)
    temps = [str(folder / f".{Path(p).name}.part") for p in final]
    state.state.learned_net = final[0]
    try:
        kind = "HDF5 file" if hdf5 else "binary proto file"
        log(f"Snapshotting to {kind} {final[0]}", "solver.cpp:474" if hdf5 else "solver.cpp:464")
        write_model(temps[0], hdf5)
        log(f"Snapshotting solver state to {kind} {final[1]}", "sgd_solver.cpp:296" if hdf5 else "sgd_solver.cpp:284")
        if hdf5:
            hdf5_weights.write_solverstate(temps[1], state)
        else:
            caffe_files.write_solverstate(temps[1], state.state, state.history, state.resume)
        for t, p in zip(temps, final):   # the model first: a solver state never names a missing model
            os.replace(t, p)
    except BaseException as e:
        for t in temps:
            try:
                os.unlink(t)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and not isinstance(e, CaffeFileError):   # a full disk, a vanished folder
            raise CaffeFileError(base, f"cannot write the snapshot of iteration {it} (nothing of it was left): "
                                       f"{e.strerror or e}") from None
        raise
    return final[0], final[1]


def snapshot(solver) -> str:
    """The trainer's snapshot: its net's weights, its solver state and the resume record; returns the solver
    state's path (what ``--snapshot`` resumes)."""
    def write_model(path, hdf5):
        model = solver.net.to_caffemodel()
        if hdf5:
            hdf5_weights.write_model(path, model)
        else:
            caffe_files.write_caffemodel(path, model)

    st = solver.state.to_solverstate("")
    st.resume = zlib.compress(json.dumps(record(solver)).encode())
    return write_snapshot(solver.param, solver.state.iter, write_model, st, solver.log)[1]


def read_state(path) -> caffe_files.SolverStateFile:
    """A ``.solverstate`` or Caffe's HDF5 solver state (``.h5``)."""
    if str(path).endswith(".h5"):
        return hdf5_weights.read_solverstate(path)
    return caffe_files.read_solverstate(path)


def read_model(path) -> caffe_files.CaffeModel:
    """A ``.caffemodel`` or Caffe's HDF5 weights (``.h5``)."""
    if str(path).endswith(".h5"):
        return hdf5_weights.read_model(path)
    return caffe_files.read_caffemodel(path)


def learned_net(st: caffe_files.SolverStateFile, path) -> Path | None:
    """The weights a solver state names (Solver::Restore: ``net_->CopyTrainedLayersFrom(state.learned_net())``),
    found as written or, when that path does not exist, beside the solver state (a moved run folder)."""
    learned = st.state.learned_net
    if not learned:
        return None
    lp = Path(learned)
    if not lp.exists() and not lp.is_absolute():
        lp = Path(path).parent / lp.name
    if not lp.exists():
        lp = Path(path).parent / Path(learned).name
    if not lp.is_file():
        raise CaffeFileError(path, f"learned_net '{learned}' not found (nor beside the solver state)")
    return lp


# -- the resume record ------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.detach().cpu().contiguous().numpy().tobytes()).decode()


def record(solver) -> dict:
    """What an exact resume needs beyond Caffe's files: the module's buffers (the layers' counters), the RNG
    states, the smoothed-loss window, the run's world, iter_size, seed and solver type, and the blob names."""
    cuda = solver.device.type == "cuda"
    buffers = {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "data": _b64(v)}
               for k, v in _buffers(solver.net.module).items()}
    return {"format": RECORD_FORMAT, "version": 1, "type": solver.state.type,
            "blob_names": [b.name for b in solver.state.blobs], "buffers": buffers,
            "rng": _b64(torch.get_rng_state()), "cuda_rng": _b64(torch.cuda.get_rng_state()) if cuda else "",
            "losses": list(solver.losses), "smoothed_loss": solver.smoothed_loss, "world": solver.world,
            "iter_size": max(solver.param.iter_size, 1), "seed": solver.seed}


def _buffers(module) -> dict:
    """The module's state that the caffemodel does not hold: every state_dict entry that is not a parameter."""
    params = {k for k, _ in module.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in module.state_dict().items() if k not in params}


def check_record(solver, data: bytes, path) -> dict:
    """The resume record of ``path`` checked whole against the solver and the net, changing nothing: its keys,
    types, buffers (names, dtypes, shapes), RNG states torch takes. Returns it with the tensors decoded."""
    try:
        d = zlib.decompressobj()
        text = d.decompress(data, RECORD_LIMIT)
        if d.unconsumed_tail:
            raise ValueError(f"it is over {RECORD_LIMIT} bytes")
        rec = json.loads(text.decode())
    except (zlib.error, UnicodeDecodeError, ValueError) as e:
        raise CaffeFileError(path, f"sfport's resume record is not zlib-compressed JSON: {e}") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
        raise CaffeFileError(path, "sfport's resume record has another format")
    if rec.get("version") != 1:
        raise CaffeFileError(path, f"resume record 'version' is {rec.get('version')!r}: this sfport reads version 1")
    if rec.get("type") != solver.state.type:
        raise CaffeFileError(path, f"resume record: written by a {str(rec.get('type'))[:40]} solver, this solver is "
                                   f"{solver.state.type}")
    names = rec.get("blob_names")
    ours = [b.name for b in solver.state.blobs]
    if names != ours:
        diff = "not a list of names" if not isinstance(names, list) else next(
            (f"blob {i} is '{a}', the net's is '{b}'" for i, (a, b) in enumerate(zip(names, ours)) if a != b),
            f"{len(names)} blobs, the net has {len(ours)}")
        raise CaffeFileError(path, f"resume record: 'blob_names' are those of another net: {diff}")
    want = _buffers(solver.net.module)
    got = rec.get("buffers")
    if not isinstance(got, dict) or set(got) != set(want):
        raise CaffeFileError(path, "resume record: 'buffers' are not the net's layer counters "
                                   f"(the net has {', '.join(sorted(want)) or 'none'})")
    buffers = {}
    for k, v in want.items():
        buffers[k] = _tensor(got[k], v, f"buffer '{k}'", path)
    rng = _bytes(rec.get("rng"), "rng", path)
    cuda_rng = _bytes(rec.get("cuda_rng", ""), "cuda_rng", path)
    devices = [("rng", rng, "cpu")] + ([("cuda_rng", cuda_rng, "cuda")]
                                       if solver.device.type == "cuda" and cuda_rng.numel() else [])
    for key, state, device in devices:
        try:   # on a scratch generator: the process's own RNG changes only once everything is checked
            torch.Generator(device=solver.device if device == "cuda" else "cpu").set_state(state)
        except (RuntimeError, ValueError, TypeError):
            raise CaffeFileError(path, f"resume record: '{key}' is not a torch RNG state ({state.numel()} bytes)") \
                from None
    for key in ("world", "iter_size", "seed"):
        v = rec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or (key != "seed" and v < 1):
            raise CaffeFileError(path, f"resume record: '{key}' is {str(v)[:40]!r}, not a positive integer")
    if not (isinstance(rec.get("losses"), list) and all(_is_number(v) for v in rec["losses"])):
        raise CaffeFileError(path, "resume record: 'losses' is not a list of numbers")
    if not _is_number(rec.get("smoothed_loss")):
        raise CaffeFileError(path, "resume record: 'smoothed_loss' is not a number")
    return dict(rec, buffers=buffers, rng=rng, cuda_rng=cuda_rng)


def _bytes(text, key: str, path) -> torch.Tensor:
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise CaffeFileError(path, f"resume record: '{key}' is not base64 bytes")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)


def _tensor(doc, like: torch.Tensor, what: str, path) -> torch.Tensor:
    if not isinstance(doc, dict) or doc.get("dtype") != str(like.dtype).replace("torch.", "") or \
            doc.get("shape") != list(like.shape):
        raise CaffeFileError(path, f"resume record: {what} is not {str(like.dtype)[6:]} {list(like.shape)}")
    raw = _bytes(doc.get("data"), what, path)
    if raw.numel() != like.numel() * like.element_size():
        raise CaffeFileError(path, f"resume record: {what} holds {raw.numel()} bytes, not {like.numel()} values")
    return torch.from_numpy(np.frombuffer(raw.numpy().tobytes(), dtype=like.cpu().numpy().dtype)
                            .reshape(like.shape).copy())


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)   # a NaN loss too (--keep-going)


# -- Solver::Restore --------------------------------------------------------------------------------------------
def restore(solver, path: str) -> None:
    """``--snapshot``: a ``.solverstate`` or ``.solverstate.h5`` (sfport's or Caffe's), checked whole before
    anything changes: the histories (Caffe's RestoreSolverStateFromBinaryProto / FromHDF5), the learned_net's
    weights, and the resume record when there is one."""
    if caffe_files.is_torch_pt(path):
        raise CaffeFileError(path, "a .pt training checkpoint of an earlier sfport: resume from the .solverstate "
                                   "written beside it (the snapshot is now Caffe's two files)")
    st = read_state(path)
    counts = solver.state.check_solverstate(st)
    rec = check_record(solver, st.resume, path) if st.resume is not None else None
    lp = learned_net(st, path)
    if lp is not None:
        solver.copy_weights(read_model(lp))
    solver.state.apply(*counts)
    if rec is None:
        solver.log(f"Restoring previous solver status from {path} (Caffe resume: layer counters and data position "
                   f"start again)", "solver.cpp:296")
        return
    solver.net.module.load_state_dict(rec["buffers"], strict=False)
    torch.set_rng_state(rec["rng"])
    if solver.device.type == "cuda" and rec["cuda_rng"].numel():
        torch.cuda.set_rng_state(rec["cuda_rng"], solver.device)
    for key, now in (("world", solver.world), ("iter_size", max(solver.param.iter_size, 1))):
        if rec[key] != now:
            solver.log(f"The snapshot was written with {key} {rec[key]}, this run has {now}: the data positions go "
                       f"on as this run's", "solver.cpp:0", "W")
    solver.log(f"Restoring previous solver status from {path}", "solver.cpp:296")
