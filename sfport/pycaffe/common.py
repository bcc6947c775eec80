"""pycaffe's process-wide names of _caffe.cpp that sfport gives: ``Timer`` (util/benchmark.cpp on the CPU),
``init_log`` / ``log`` (glog's lines, through sfport's CaffeLog) and ``set_random_seed`` (Caffe::set_random_seed:
the one generator fillers and dropout draw from, torch's here)."""
from __future__ import annotations

import time

import torch

from sfport.report.progress import CaffeLog

_LEVELS = "IWEF"   # glog's INFO, WARNING, ERROR, FATAL: FLAGS_minloglevel 0..3
_min_level = 0


def init_log(level: int = 0, stderr: bool = True) -> None:
    """_caffe.cpp InitLog / InitLogLevel / InitLogLevelPipe: lines below ``level`` (0 INFO .. 3 FATAL) are not
    written; they go to standard error (glog's files are not kept)."""
    global _min_level
    _min_level = int(level)


def log(message: str, level: int = 0) -> None:
    """_caffe.cpp Log: ``message`` as one glog INFO line on standard error."""
    if level >= _min_level:
        CaffeLog()(str(message), "_caffe.cpp:68", _LEVELS[min(max(level, 0), 3)])   # today's standard error


def set_random_seed(seed: int) -> None:
    """Caffe::set_random_seed: what is drawn afterwards (fillers of nets built, dropout masks) repeats for the
    same seed. sfport draws from torch's generator, so its numbers are not Caffe's."""
    torch.manual_seed(int(seed) & 0xFFFFFFFF)   # an unsigned int in _caffe.cpp


class Timer:
    """util/benchmark.cpp Timer on the CPU: ``start()`` (if not running), ``stop()`` (if running), ``ms`` the time
    between the last start and stop in whole milliseconds (boost's total_milliseconds), stopping a running timer;
    0, with a warning, before it ever ran."""

    def __init__(self):
        self._start = self._stop = None
        self.running = False

    def start(self) -> None:
        if not self.running:
            self._start = time.perf_counter()
            self.running = True

    def stop(self) -> None:
        if self.running:
            self._stop = time.perf_counter()
            self.running = False

    @property
    def ms(self) -> float:
        if self._start is None:
            log("Timer has never been run before reading time.", 1)
            return 0.0
        if self.running:
            self.stop()
        return float(int((self._stop - self._start) * 1000))


_mode = {"device": "cpu", "id": 0}


def set_mode_cpu() -> None:
    """Caffe::set_mode(CPU): nets compute on the CPU."""
    _mode["device"] = "cpu"


def set_mode_gpu() -> None:
    """Caffe::set_mode(GPU): nets compute on the GPU chosen by :func:`set_device` (CUDA through torch); a machine
    without one is told so here, as Caffe fails at its first CUDA call."""
    if not torch.cuda.is_available():
        raise RuntimeError("set_mode_gpu: this torch has no CUDA device (torch.cuda.is_available() is False)")
    _mode["device"] = "cuda"


def set_device(device_id: int) -> None:
    """Caffe::SetDevice: the GPU that GPU mode computes on."""
    _mode["id"] = int(device_id)


def device() -> torch.device:
    """Where nets compute now: the CPU, or ``cuda:<set_device>`` in GPU mode."""
    return torch.device("cpu") if _mode["device"] == "cpu" else torch.device("cuda", _mode["id"])


_solvers = {"count": 1, "rank": 0, "multiprocess": False}


def has_nccl() -> bool:
    """_caffe.cpp HasNCCL: sfport has no NCCL build (several GPUs train through torch.distributed:
    ``sfport train --gpu 0,1``)."""
    return False


def solver_count() -> int:
    return _solvers["count"]


def set_solver_count(count: int) -> None:
    _solvers["count"] = int(count)


def solver_rank() -> int:
    return _solvers["rank"]


def set_solver_rank(rank: int) -> None:
    _solvers["rank"] = int(rank)


def set_multiprocess(value: bool) -> None:
    _solvers["multiprocess"] = bool(value)
