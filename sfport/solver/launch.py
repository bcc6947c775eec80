"""Where training runs: one process, the torchrun environment, or one spawned process per GPU (``--gpu 0,1``),
and :func:`start`, the entry point of ``sfport train`` (devices resolved as ``caffe train -gpu`` does)."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sfport.formats import disk
from sfport.report import plots
from sfport.errors import CaffeFileError
from sfport.solver.config import Options, gpu_ids
from sfport.solver.loop import Solver
from sfport.solver import signals


def dist_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process as one of several."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None


def run(solver_path, opts: Options, rank: int = 0, world: int = 1) -> Solver:
    """Train in this process (rank ``rank`` of ``world``; a process group is set up when world > 1)."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if opts.device.startswith("cuda") else "gloo", rank=rank, world_size=world)
    s = Solver(solver_path, opts, rank, world)
    try:
        s.log("Starting Optimization", "caffe.cpp:248")
        s.solve()
        s.log("Optimization Done.", "caffe.cpp:259")
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return s


def _spawned(rank: int, solver_path, opts: Options, gpus: list[int], port: int):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    opts.device = f"cuda:{gpus[rank]}"
    torch.cuda.set_device(gpus[rank])
    run(solver_path, opts, rank, len(gpus))


def launch(solver_path, opts: Options, gpus: list[int] | None) -> None:
    """One process per GPU (``--gpu 0,1``), the torchrun environment, or a single process."""
    env = dist_env()
    if env is not None:
        rank, world, local = env
        if torch.cuda.is_available() and opts.device.startswith("cuda"):
            dev = (gpus or list(range(torch.cuda.device_count())))[local]
            opts.device = f"cuda:{dev}"
            torch.cuda.set_device(dev)
        run(solver_path, opts, rank, world)
        return
    if gpus and len(gpus) > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_spawned, args=(solver_path, opts, gpus, port), nprocs=len(gpus), join=True)
        return
    run(solver_path, opts)


def start(solver_path, gpu: str | None = None, *, weights=(), snapshot: str | None = None,
          data_root: str | None = None, source: str | None = None, seed: int | None = None, amp: bool = False,
          workers: int | None = None, skip_bad_images: bool = False, keep_going: bool = False,
          synthetic_data: bool = False, data_shape: tuple | None = None, max_iter: int | None = None,
          progress: bool | None = None, margin_grad: str | None = None, plot: str | None = None,
          sigint_effect: str = "stop", sighup_effect: str = "snapshot", sigterm_effect: str | None = None) -> None:
    """``sfport train`` (caffe.cpp train): resolve ``gpu`` ('0', '0,1', 'all'; None: the CPU, or CUDA when
    torchrun set up several processes) and ``workers`` (None: the data layer's default, :class:`sfport.data.feed.Feeder`), then :func:`launch`
    with the other :class:`Options` (on CUDA: channels_last, cudnn.benchmark). ``plot``: the training curves'
    figure (png, svg, pdf; checked before training). Bad input (GPU ids, --amp without
    a GPU, the files) raises :class:`~sfport.errors.CaffeFileError`; divergence raises
    :class:`~sfport.solver.loop.TrainingStopped`."""
    if weights and snapshot:   # caffe.cpp train: CHECK(!FLAGS_snapshot.size() || !FLAGS_weights.size())
        raise CaffeFileError(None, "give --snapshot to resume training or --weights to finetune, but not both")
    for option, effect in (("--sigint-effect", sigint_effect), ("--sighup-effect", sighup_effect),
                           ("--sigterm-effect", sigterm_effect or sigint_effect)):
        signals.check_effect(option, effect)
    if workers is not None and workers < 0:
        raise CaffeFileError(None, f"--workers {workers}: give 0 (read in this process) or more worker processes")
    if seed is not None and not 0 <= seed < 2**63:   # torch.manual_seed and numpy's SeedSequence take these
        raise CaffeFileError(None, f"--seed {seed}: give a seed from 0 to 2^63-1")
    if max_iter is not None and max_iter < 0:
        raise CaffeFileError(None, f"--max-iter {max_iter}: must not be negative")
    if plot:   # before any work: the format, matplotlib, a writable place
        plots.plot_format(plot)
        plots.pyplot()
        disk.check_output(plot, "plot")
    gpus = None
    device = "cpu"
    if gpu:
        gpus = gpu_ids(gpu)
        device = f"cuda:{gpus[0]}"
        torch.backends.cudnn.benchmark = True
    elif dist_env() is not None and torch.cuda.is_available():
        device = "cuda"
    if amp and not device.startswith("cuda"):
        raise CaffeFileError(None, "--amp needs a GPU (--gpu)")
    opts = Options(weights=list(weights), snapshot=snapshot, data_root=data_root, source=source, seed=seed,
                   device=device, amp=amp, workers=workers,
                   skip_bad_images=skip_bad_images, keep_going=keep_going, synthetic_data=synthetic_data,
                   data_shape=tuple(data_shape) if data_shape else None, max_iter=max_iter, progress=progress,
                   channels_last=device.startswith("cuda"), margin_grad=margin_grad, gpus=tuple(gpus or ()),
                   plot=plot, sigint_effect=sigint_effect, sighup_effect=sighup_effect, sigterm_effect=sigterm_effect)
    launch(solver_path, opts, gpus)
