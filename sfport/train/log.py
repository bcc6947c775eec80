"""Caffe's log lines: glog's prefix, the C++ float format, a net's outputs as Caffe lists them (solver.cpp
Solver::Step and Solver::Test), and the progress bar the lines are written through."""
from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np
from tqdm import tqdm


class CaffeLog:
    """Caffe's log lines: ``I1125 21:15:37.311690 12345 solver.cpp:218] message`` on stderr (rank 0 only)."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.pid = os.getpid()
        self.bar = None
        self._held: list[str] | None = None

    @contextlib.contextmanager
    def held(self):
        """Hold the lines logged inside: written when it ends, dropped when it raises (so bad input found while a
        run is set up is the one line of its error, not the end of a log)."""
        self._held = []
        try:
            yield
        except BaseException:
            self._held = None
            raise
        lines, self._held = self._held, None
        for line in lines:
            self._write(line)

    def __call__(self, message: str, where: str = "solver.cpp:0", level: str = "I") -> None:
        if not self.enabled:
            return
        now = time.time()
        t = time.localtime(now)
        prefix = f"{level}{t.tm_mon:02d}{t.tm_mday:02d} {time.strftime('%H:%M:%S', t)}.{int(now % 1 * 1e6):06d} " \
                 f"{self.pid} {where}] "
        line = prefix + message
        if self._held is not None:
            self._held.append(line)
        else:
            self._write(line)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def g6(v: float) -> str:
    """C++ ostream's default float format (6 significant digits)."""
    return f"{float(v):.6g}"


def net_outputs(net, blobs) -> list[tuple[str, np.ndarray, float]]:
    """A net's outputs as Caffe lists them (a std::set of names: sorted), values flattened, with loss weights."""
    g = net.graph
    weights = dict(net.module.loss_terms)
    return [(g.caffe_name[u], blobs[u].detach().float().cpu().reshape(-1).numpy(), weights.get(u, 0.0))
            for u in sorted(g.outputs, key=lambda u: g.caffe_name[u]) if u in blobs]


def output_line(kind: str, n: int, name: str, value: float, weight: float) -> str:
    """Solver::Step's / Solver::Test's ``    Train net output #n: name = v (* w = w*v loss)``."""
    extra = f" (* {g6(weight)} = {g6(weight * value)} loss)" if weight else ""
    return f"    {kind} net output #{n}: {name} = {g6(value)}{extra}"


def progress_bar(log: CaffeLog, total: int, initial: int, show: bool | None):
    """A tqdm bar to ``total`` updates (``show`` None: when stderr is a terminal) through which ``log`` then
    writes its lines; None when not shown."""
    if not (show if show is not None else sys.stderr.isatty()):
        return None
    bar = tqdm(total=total, initial=initial, desc="train", unit="iter", leave=False, dynamic_ncols=True)
    log.bar = bar
    return bar
