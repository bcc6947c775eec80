"""Progress of long work: a tqdm bar on a terminal, otherwise a log line every few seconds in the glog format
``train`` logs in (:class:`CaffeLog` below), so that a job under nohup or a scheduler shows it is alive:

    I1203 14:02:11.503188 4242 features.py:0] features: 2048 / 13233 images (15.5%), 88.1 img/s, ETA 2m07s

``show``: True a bar, None (the commands' default) a bar on a terminal and log lines elsewhere, "log" log lines,
False nothing.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

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


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """``with Progress(total, "features", "images") as p: ... p.update(n)``; ``log`` a CaffeLog-like callable
    (default: one to stderr), ``every`` the seconds between log lines (the last line is always written on success),
    ``header`` lines written with the first of them (so work that fails at once shows only its error)."""

    def __init__(self, total: int, desc: str, unit: str = "images", show=None, log=None, every: float = 5.0,
                 where: str | None = None, header=()):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, float(every)
        self.short = {"images": "img", "iterations": "it"}.get(unit, unit)
        self.where = where or f"{desc}.py:0"
        if show is None:
            show = True if sys.stderr.isatty() else "log"
        self.bar = None
        self.log = None
        self.header = list(header)   # lines written before the first progress line (none when it fails first)
        if show == "log":
            self.log = log if log is not None else CaffeLog()
        elif show:
            self.bar = tqdm(total=self.total, desc=desc, unit=self.short, leave=False, dynamic_ncols=True)
            for text in self.header:
                self.bar.write(text, file=sys.stderr)
        self.done = 0
        self.start = self.last = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(ok=kind is None)
        return False

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        pct = f" ({100.0 * self.done / self.total:.1f}%)" if self.total else ""
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f", ETA {_duration(left)}" if self.done < self.total and rate > 0 else \
            ("" if self.done < self.total else f", done in {_duration(elapsed)}")
        return f"{self.desc}: {self.done} / {self.total} {self.unit}{pct}, {rate:.1f} {self.short}/s{eta}"

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(n)
        elif self.log is not None:
            now = time.perf_counter()
            if now - self.last >= self.every and self.done < self.total:
                self.last = now
                self._write(self.line())

    def close(self, ok: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.log is not None and ok:
            self._write(self.line())
            self.log = None

    def _write(self, text: str) -> None:
        for h in self.header:
            self.log(h, self.where)
        self.header = []
        self.log(text, self.where)
