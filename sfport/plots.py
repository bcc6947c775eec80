"""Figures through matplotlib (the optional extra ``plot``: ``pip install 'sfport[plot]'``): the one home of the
plotting set-up that the ROC plot (eval --plot), the training curves (train --plot) and the lr schedule
(inspect SOLVER --plot) share. A figure is rendered to bytes and written under a temporary name, then renamed."""
from __future__ import annotations

import io
import os
from pathlib import Path

from sfport.errors import CaffeFileError
from sfport.files import atomic_write

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
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise CaffeFileError(path, f"a plot is written as {', '.join('.' + f for f in FORMATS)}, not "
                                   f"'{Path(path).suffix or 'no extension'}'")
    return ext


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
