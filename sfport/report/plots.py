"""Figures through matplotlib (the optional extra ``plot``: ``pip install 'sfport[plot]'``): the one home of the
plotting set-up that the ROC plot (eval --plot), the training curves (train --plot) and the lr schedule
(inspect SOLVER --plot) share. A figure is rendered to bytes and written under a temporary name, then renamed."""
from __future__ import annotations

import io
import os

import numpy as np

from sfport.errors import CaffeFileError
from sfport.formats import disk
from sfport.formats.disk import atomic_write

FORMATS = ("png", "svg", "pdf")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen needed); a one-line error when matplotlib is absent."""
    try:
        import matplotlib
    except ImportError:
        raise CaffeFileError(None, "plots need matplotlib: pip install 'sfport[plot]' (or matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_format(path: str | os.PathLike) -> str:
    """The figure format a path's extension names (png, svg or pdf); a one-line error for anything else."""
    return disk.output_format(path, FORMATS, "plot")


def figure_bytes(fig, fmt: str = "png", dpi: int = 120) -> bytes:
    """The figure rendered in ``fmt``; the figure is closed (matplotlib keeps open figures alive)."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def save(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write the figure to ``path`` (format from the extension), whole or not at all."""
    atomic_write(path, figure_bytes(fig, plot_format(path), dpi))


# the operating points an ROC figure marks, and their markers
ROC_POINTS = {"far_1e-3": ("TAR at FAR 1e-3", "o"), "far_1e-2": ("TAR at FAR 1e-2", "s"),
              "threshold": ("the protocol's thresholds", "*")}


def roc_figure(runs: list[dict]):
    """A ROC figure, returned before it is rendered: TAR against FAR on a log FAR axis, one curve per run.

    A run is a dict: ``label``, ``far`` and ``tar`` (the curve's points), ``accuracy``, ``auc`` (shown in the
    legend) and ``points`` ({key of :data:`ROC_POINTS`: (far, tar)}, each marked on its curve). The FAR axis
    starts at the decade at or below 1e-4 and the smallest non-zero FAR of the runs; FAR 0 is drawn there.
    Each curve has the gid ``roc:K`` and each marker ``roc:K:KEY`` (K the run's index)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    positive = [float(np.min(f[f > 0])) for f in (np.asarray(r["far"], float) for r in runs) if np.any(f > 0)]
    lo = 10.0 ** np.floor(np.log10(min([1e-4] + positive)))
    for k, run in enumerate(runs):
        far = np.maximum(np.asarray(run["far"], float), lo)
        (curve,) = ax.plot(far, run["tar"], lw=1.6, gid=f"roc:{k}",
                           label=f"{run['label']}: accuracy {100 * run['accuracy']:.2f}%, AUC {run['auc']:.4f}")
        for key, (x, y) in run["points"].items():
            ax.plot([max(x, lo)], [y], ROC_POINTS[key][1], color=curve.get_color(), ms=8 if key == "threshold" else 6,
                    mec="black", mew=0.6, gid=f"roc:{k}:{key}", label="_nolegend_")
    curves = ax.get_legend_handles_labels()
    marks = [plt.Line2D([], [], ls="none", marker=m, color="0.6", mec="black", mew=0.6, label=name)
             for name, m in ROC_POINTS.values()]
    ax.legend(curves[0] + marks, curves[1] + [m.get_label() for m in marks], loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0.0, 1.005)
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", alpha=0.15)
    ax.set_xlabel("false accept rate (FAR, log scale)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title("ROC")
    return fig
