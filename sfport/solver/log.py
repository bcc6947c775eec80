"""Training's log: the C++ float format, a net's outputs as Caffe lists them (solver.cpp Solver::Step and
Solver::Test), and the progress bar the lines are written through (the glog lines: sfport.report.progress.CaffeLog)."""
from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from sfport.report.progress import CaffeLog
from sfport.solver.curves import KEYWORDS


def g6(v: float) -> str:
    """C++ ostream's default float format (6 significant digits)."""
    return f"{float(v):.6g}"


def net_outputs(net, blobs) -> list[tuple[str, np.ndarray, float]]:
    """A net's outputs as Caffe lists them (a std::set of names: sorted), values flattened, with loss weights."""
    g = net.graph
    weights = dict(net.module.loss_terms)
    return [(g.caffe_name[u], blobs[u].detach().float().cpu().reshape(-1).numpy(), weights.get(u, 0.0))
            for u in sorted(g.outputs, key=lambda u: g.caffe_name[u]) if u in blobs]


def output_rows(net, blobs) -> list[tuple[str, np.ndarray | None]]:
    """A net's outputs in :func:`net_outputs`' order as rows of 5 (DetectionEvaluate's top, read by the SSD
    fork's Solver::TestDetection): the first ``height`` rows of each, float32; None for an output whose (legacy)
    width is not 5."""
    g = net.graph
    out = []
    for u in sorted(g.outputs, key=lambda u: g.caffe_name[u]):
        if u not in blobs:
            continue
        b = blobs[u].detach().float().cpu()
        legacy = [int(b.shape[k]) if k < b.dim() else 1 for k in range(4)]   # Blob::height(), Blob::width()
        rows = b.reshape(-1)[:legacy[2] * 5].reshape(-1, 5).numpy() if legacy[3] == 5 and b.dim() <= 4 else None
        out.append((g.caffe_name[u], rows))
    return out


def output_line(kind: str, n: int, name: str, value: float, weight: float) -> str:
    """Solver::Step's / Solver::Test's ``    Train net output #n: name = v (* w = w*v loss)``."""
    # the product in Dtype (float32), as solver.cpp computes loss_weight * score
    extra = f" (* {g6(weight)} = {g6(float(np.float32(weight) * np.float32(value)))} loss)" if weight else ""
    return f"    {kind} net output #{n}: {name} = {g6(value)}{extra}"


class RecordingLog(CaffeLog):
    """A :class:`CaffeLog` that also keeps the lines the training curves are drawn from
    (:data:`sfport.solver.curves.KEYWORDS`: the iteration, output and test-loss lines), for ``train --plot``."""

    def __init__(self, stream=None, enabled: bool = True):
        super().__init__(stream, enabled)
        self.lines: list[str] = []

    def _write(self, line: str) -> None:
        if any(k in line for k in KEYWORDS):
            self.lines.append(line)
        super()._write(line)


def progress_bar(log: CaffeLog, total: int, initial: int, show: bool | None):
    """A tqdm bar to ``total`` updates (``show`` None: when stderr is a terminal) through which ``log`` then
    writes its lines; None when not shown."""
    if not (show if show is not None else sys.stderr.isatty()):
        return None
    bar = tqdm(total=total, initial=initial, desc="train", unit="iter", leave=False, dynamic_ncols=True)
    log.bar = bar
    return bar
