"""Snapshots and resuming (Caffe's Solver::Snapshot / Restore).

A snapshot writes ``<prefix>_iter_N.caffemodel`` and ``.solverstate`` in Caffe's binary formats and
``<prefix>_iter_N.pt``, an sfport checkpoint with what Caffe does not keep (the layers' counters, the torch RNG,
the smoothed-loss window); each file goes to a temporary name and is renamed. Resuming from the ``.pt``
continues exactly (the data position is a function of the update count); resuming from a ``.solverstate`` does
what Caffe does (iteration, lr step and history restored; counters and data start again).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from sfport import caffe_files, files
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

CKPT_FORMAT = "sfport-checkpoint"


def snapshot(solver) -> str:
    """Write the three files of ``solver`` at its iteration; returns their common prefix."""
    sp = solver.param
    if sp.snapshot_format == caffe_pb2.SolverParameter.HDF5:
        solver.log("HDF5 snapshots are not supported; writing binary proto files", "solver.cpp:0", "W")
    base = f"{sp.snapshot_prefix or str(Path(solver.path).with_suffix(''))}_iter_{solver.state.iter}"
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    model_path = base + ".caffemodel"
    solver.log(f"Snapshotting to binary proto file {model_path}", "solver.cpp:447")
    solver.net.save_caffemodel(model_path)
    state_path = base + ".solverstate"
    solver.log(f"Snapshotting solver state to binary proto file {state_path}", "sgd_solver.cpp:273")
    st = solver.state.to_solverstate(model_path)
    caffe_files.write_solverstate(state_path, st.state, st.history)
    cuda = solver.device.type == "cuda"
    ckpt = {"format": CKPT_FORMAT, "version": 1, **solver.state.state_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in solver.net.module.state_dict().items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if cuda else torch.zeros(0, dtype=torch.uint8),
            "losses": list(solver.losses), "smoothed_loss": solver.smoothed_loss,
            "world": solver.world, "iter_size": max(sp.iter_size, 1), "seed": solver.seed}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    files.atomic_write(base + ".pt", buf.getvalue())
    return base


def restore(solver, path: str) -> None:
    """``-snapshot``: an sfport ``.pt`` (exact continuation) or a Caffe ``.solverstate`` (Caffe's resume)."""
    if str(path).endswith(".pt"):
        ck = files.load_torch_file(path, CKPT_FORMAT, "an sfport training checkpoint (.pt written by sfport train)")
        for key, kind in (("state_dict", dict), ("rng", torch.Tensor), ("cuda_rng", torch.Tensor)):
            if not isinstance(ck.get(key), kind):
                raise CaffeFileError(path, f"'{key}' is missing or not a {kind.__name__}")
        if ck["rng"].dtype != torch.uint8:
            raise CaffeFileError(path, "'rng' is not a torch RNG state (uint8)")
        try:
            solver.net.module.load_state_dict(ck["state_dict"])
        except RuntimeError as e:
            raise CaffeFileError(path, f"does not fit this net: {str(e).splitlines()[0]}") from None
        solver.state.load_state_dict(ck, path)
        torch.set_rng_state(ck["rng"])
        if solver.device.type == "cuda" and ck["cuda_rng"].numel():
            torch.cuda.set_rng_state(ck["cuda_rng"])
        solver.log(f"Restoring previous solver status from {path}", "sgd_solver.cpp:318")
        return
    st = caffe_files.read_solverstate(path)
    learned = st.state.learned_net
    if learned:
        lp = Path(learned)
        if not lp.exists() and not lp.is_absolute():
            lp = Path(path).parent / Path(learned).name
        solver.net.load_weights(caffe_files.read_caffemodel(lp))
    solver.state.load_solverstate(st)
    solver.log(f"Restoring previous solver status from {path} (Caffe resume: layer counters and data position "
               f"start again; use the .pt to continue exactly)", "sgd_solver.cpp:318")
