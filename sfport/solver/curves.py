"""Training curves from a Caffe log: the loss (smoothed and per display), the test nets' outputs and the learning
rate against the iteration, parsed from Caffe's own log lines as Caffe's ``tools/extra/parse_log.py`` reads them
(and as :mod:`sfport.solver.loop` writes them, behind glog's prefix or without it):

    Iteration 100 (2.1 iter/s, 47.6s/100 iters), loss = 8.93          solver.cpp:218 Solver::Step (smoothed)
        Train net output #0: softmax_loss = 8.91 (* 1 = 8.91 loss)    solver.cpp:237
    Iteration 100, lr = 0.1                                           sgd_solver.cpp:105
    Iteration 500, Testing net (#0)                                   solver.cpp:330 Solver::Test
    Test loss: 2.3                                                    solver.cpp:394 (test_compute_loss)
        Test net output #0: accuracy = 0.91                           solver.cpp:397
    Iteration 28000, loss = 0.55                                      solver.cpp:310 Solver::Solve (the end)

``sfport train --plot curves.png`` draws them from its own log at each snapshot and at the end; for any saved
log (``caffe train ... 2>&1 | tee caffe.log``)::

    python -m sfport.solver.curves caffe.log curves.png
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field

from sfport.formats import disk
from sfport.report import plots
from sfport.errors import CaffeFileError

_NUM = r"([-+]?(?:nan|inf|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?))"
DISPLAY = re.compile(rf"Iteration (\d+) \([^)]*\), loss = {_NUM}")
FINAL = re.compile(rf"Iteration (\d+), loss = {_NUM}\s*$")
LR = re.compile(rf"Iteration (\d+), lr = {_NUM}")
TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
OUTPUT = re.compile(rf"(Train|Test) net output #\d+: (\S+) = {_NUM}(?: \(\* {_NUM} = {_NUM} loss\))?")
TEST_LOSS = re.compile(rf"Test loss: {_NUM}")
KEYWORDS = ("Iteration ", "net output #", "Test loss: ")   # what a line needs to matter here

Series = list[tuple[int, float]]


@dataclass
class Curves:
    """The series of a log, each a list of (iteration, value). ``smoothed``: the display loss (Caffe's smoothed
    loss over ``average_loss``); ``loss``: the display iteration's own loss (the sum of the weighted loss outputs
    of the Train net output lines); ``train`` / ``test``: each output by name (``test`` keyed by (test net,
    name); an output of several elements, one line each in the log, as ``name[0]``, ``name[1]``, ...);
    ``losses``: the output names that carry a loss weight; ``test_loss``: the ``Test loss`` lines by test
    net; ``lr``: the ``lr =`` lines."""
    smoothed: Series = field(default_factory=list)
    loss: Series = field(default_factory=list)
    train: dict[str, Series] = field(default_factory=dict)
    test: dict[tuple[int, str], Series] = field(default_factory=dict)
    test_loss: dict[int, Series] = field(default_factory=dict)
    lr: Series = field(default_factory=list)
    losses: set = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.smoothed or self.train or self.test or self.lr)


def parse_log(text: str) -> Curves:
    """The curves of a Caffe training log (text): the lines listed in this module's docstring, anywhere in a line
    (so glog's prefix and other tools' prefixes are skipped); every other line is ignored."""
    c = Curves()
    display_it, test_it, test_net = None, None, 0
    elements: dict = {}   # (kind, name) -> how many of its lines this display or test has had (its element)
    train: dict[tuple[str, int], Series] = {}
    test: dict[tuple[int, str, int], Series] = {}
    for line in text.splitlines():
        if m := DISPLAY.search(line):
            display_it = int(m.group(1))
            c.smoothed.append((display_it, float(m.group(2))))
            elements = {k: n for k, n in elements.items() if k[0] != "Train"}
        elif m := LR.search(line):
            c.lr.append((int(m.group(1)), float(m.group(2))))
        elif m := TESTING.search(line):
            test_it, test_net = int(m.group(1)), int(m.group(2))
            elements = {k: n for k, n in elements.items() if k[0] != "Test"}
        elif m := TEST_LOSS.search(line):
            if test_it is not None:
                c.test_loss.setdefault(test_net, []).append((test_it, float(m.group(1))))
        elif m := OUTPUT.search(line):
            kind, name, value, weighted = m.group(1), m.group(2), float(m.group(3)), m.group(5)
            if weighted is not None:
                c.losses.add(name)
            j = elements.get((kind, name), 0)   # an output of several elements: one line per element
            elements[(kind, name)] = j + 1
            if kind == "Train" and display_it is not None:
                train.setdefault((name, j), []).append((display_it, value))
                if weighted is not None:   # the iteration's loss: the sum of the weighted loss outputs
                    if c.loss and c.loss[-1][0] == display_it:
                        c.loss[-1] = (display_it, c.loss[-1][1] + float(weighted))
                    else:
                        c.loss.append((display_it, float(weighted)))
            elif kind == "Test" and test_it is not None:
                test.setdefault((test_net, name, j), []).append((test_it, value))
        elif m := FINAL.search(line):
            c.smoothed.append((int(m.group(1)), float(m.group(2))))
    several = {k[:-1] for k in (*train, *test) if k[-1] > 0}
    c.train = {_element(name, j, (name,) in several): s for (name, j), s in train.items()}
    c.test = {(net, _element(name, j, (net, name) in several)): s for (net, name, j), s in test.items()}
    c.losses |= {k for k in c.train if _output_name(k) in c.losses} | {k for _, k in c.test
                                                                        if _output_name(k) in c.losses}
    return c


def _element(name: str, j: int, several: bool) -> str:
    """An output's series name: the output's, or ``name[j]`` for element j of an output of several elements."""
    return f"{name}[{j}]" if several or j else name


def _output_name(series: str) -> str:
    return series.rsplit("[", 1)[0] if series.endswith("]") else series


def curves_figure(c: Curves, title: str | None = None):
    """The figure of ``c`` (not rendered): a loss panel (smoothed loss, the display iterations' loss, every loss
    output of the train and test nets), an outputs panel (every output without a loss weight: accuracy, ...; an
    output of several elements one line per element) when there are any, and the learning rate (a log axis when
    it spans more than 10x). Every ``Train net output`` and ``Test net output`` of the log is a line."""
    plt = plots.pyplot()
    several = len({net for net, _ in c.test} | set(c.test_loss)) > 1
    test_label = (lambda net, name: f"test #{net} {name}") if several else (lambda net, name: f"test {name}")
    metrics = {n: s for n, s in c.train.items() if n not in c.losses}
    test_metrics = {k: s for k, s in c.test.items() if k[1] not in c.losses}
    panels = ["loss"] + (["outputs"] if metrics or test_metrics else []) + (["lr"] if c.lr else [])
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 2.6 * len(panels) + 0.6), squeeze=False)
    ax = dict(zip(panels, axes[:, 0]))

    def draw(a, series, label, **kw):
        a.plot([i for i, _ in series], [v for _, v in series], label=label, **kw)

    train_losses = {n: s for n, s in c.train.items() if n in c.losses}
    if c.loss and list(train_losses.values()) != [c.loss]:   # the sum, where it is not the one loss output's line
        draw(ax["loss"], c.loss, "loss (weighted sum)", color="0.7", linewidth=0.8)
    if c.smoothed:
        draw(ax["loss"], c.smoothed, "smoothed loss", color="C0")
    for name, s in train_losses.items():
        draw(ax["loss"], s, f"train {name}")
    for (net, name), s in c.test.items():
        if name in c.losses:
            draw(ax["loss"], s, test_label(net, name), marker="o")
    for net, s in c.test_loss.items():
        draw(ax["loss"], s, test_label(net, "loss (Test loss)"), marker="s")
    ax["loss"].set_ylabel("loss")
    if "outputs" in ax:
        for name, s in metrics.items():
            draw(ax["outputs"], s, f"train {name}")
        for (net, name), s in test_metrics.items():
            draw(ax["outputs"], s, test_label(net, name), marker="o")
        ax["outputs"].set_ylabel("outputs")
    if "lr" in ax:
        draw(ax["lr"], c.lr, "lr", color="C3", drawstyle="steps-post")
        rates = [v for _, v in c.lr if v > 0 and math.isfinite(v)]
        if rates and max(rates) > 10 * min(rates):
            ax["lr"].set_yscale("log")
        ax["lr"].set_ylabel("learning rate")
    for a in ax.values():
        a.grid(True, alpha=0.3)
        if a.lines:
            a.legend(fontsize="small", loc="best")
    axes[-1, 0].set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    return fig


def plot_text(text: str, out_path, source=None) -> Curves:
    """Parse a log's text and write its figure to ``out_path`` (png, svg, pdf); nothing to draw is an error naming
    ``source``."""
    plots.plot_format(out_path)
    c = parse_log(text)
    if not c:
        raise CaffeFileError(source, "no training lines to draw (Caffe's 'Iteration N (...), loss = X', "
                                     "'Train/Test net output #k: ...', 'Iteration N, lr = X')")
    plots.save(curves_figure(c, title=None if source is None else str(source)), out_path)
    return c


def plot_log(log_path, out_path) -> Curves:
    """The curves of the Caffe log file ``log_path`` (a saved ``caffe train`` or ``sfport train`` log), drawn to
    ``out_path``; returns what was parsed."""
    disk.check_readable_file(log_path, "log file")
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return plot_text(text, out_path, log_path)


def main(argv=None) -> int:
    """``python -m sfport.solver.curves LOG OUT``."""
    ap = argparse.ArgumentParser(
        prog="python -m sfport.solver.curves",
        description="Draw the training curves (loss and smoothed loss, test outputs, learning rate against the "
                    "iteration) of a Caffe training log: one written by `caffe train` (glog's lines, e.g. "
                    "`caffe train -solver S 2>&1 | tee caffe.log`) or by `sfport train`.",
        epilog="Example: python -m sfport.solver.curves caffe.log curves.png")
    ap.add_argument("log", help="the training log (text)")
    ap.add_argument("out", help="the figure to write: .png, .svg or .pdf")
    args = ap.parse_args(argv)
    try:
        c = plot_log(args.log, args.out)
    except CaffeFileError as e:
        print(f"sfport: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(c.smoothed)} loss points, {len(c.test)} test outputs, {len(c.lr)} lr points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
