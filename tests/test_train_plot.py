"""Training curves (sfport.solver.curves, `train --plot`) from Caffe's log lines, and the device lines of the log."""
import re
import subprocess
import sys

import matplotlib.image
import pytest
from click.testing import CliRunner

from sfport.solver import sgd
from sfport.cli import cli
from sfport.solver import curves
from sfport.solver.config import read_solver

from conftest import GOLDEN

# Caffe's own lines (solver.cpp Solver::Step / Test / Solve, sgd_solver.cpp), with glog's prefix and without
CAFFE_LOG = """\
I1125 19:13:47.669633 22214 caffe.cpp:211] Use CPU.
I1125 19:13:47.682500 22214 solver.cpp:330] Iteration 0, Testing net (#0)
I1125 19:13:47.682600 22214 solver.cpp:397]     Test net output #0: accuracy = 0.1
I1125 19:13:47.682601 22214 solver.cpp:397]     Test net output #1: loss = 2.5 (* 1 = 2.5 loss)
I1125 19:13:47.682500 22214 solver.cpp:218] Iteration 0 (1.70641e+20 iter/s, 0.005s/10 iters), loss = 2.11235
I1125 19:13:47.682540 22214 solver.cpp:237]     Train net output #0: accuracy = 0.125
I1125 19:13:47.682580 22214 solver.cpp:237]     Train net output #1: loss = 2.11235 (* 1 = 2.11235 loss)
I1125 19:13:47.682581 22214 solver.cpp:237]     Train net output #2: aux = 0.5 (* 0.2 = 0.1 loss)
I1125 19:13:47.682611 22214 sgd_solver.cpp:105] Iteration 0, lr = 0.05
I1125 19:13:48.000000 22214 solver.cpp:218] Iteration 10 (31.2 iter/s, 0.32s/10 iters), loss = 1.5
    Train net output #0: accuracy = 0.5
    Train net output #1: loss = 1.25 (* 1 = 1.25 loss)
    Train net output #2: aux = 0.25 (* 0.2 = 0.05 loss)
Iteration 10, lr = 4.5e-03
I1125 19:13:49.000000 22214 solver.cpp:330] Iteration 20, Testing net (#0)
I1125 19:13:49.100000 22214 solver.cpp:394] Test loss: 1.75
I1125 19:13:49.100000 22214 solver.cpp:397]     Test net output #0: accuracy = 0.625
I1125 19:13:49.100001 22214 solver.cpp:397]     Test net output #1: loss = 1.75 (* 1 = 1.75 loss)
I1125 19:13:49.200000 22214 solver.cpp:310] Iteration 20, loss = 0.875
I1125 19:13:49.200001 22214 solver.cpp:315] Optimization Done.
"""


def test_parse_caffe_log_text():
    c = curves.parse_log(CAFFE_LOG)
    assert c.smoothed == [(0, 2.11235), (10, 1.5), (20, 0.875)]   # the display lines and Solve's last one
    assert c.loss == [(0, pytest.approx(2.11235 + 0.1)), (10, pytest.approx(1.25 + 0.05))]   # weighted sums
    assert c.train == {"accuracy": [(0, 0.125), (10, 0.5)], "loss": [(0, 2.11235), (10, 1.25)],
                       "aux": [(0, 0.5), (10, 0.25)]}
    assert c.test == {(0, "accuracy"): [(0, 0.1), (20, 0.625)], (0, "loss"): [(0, 2.5), (20, 1.75)]}
    assert c.test_loss == {0: [(20, 1.75)]}
    assert c.lr == [(0, 0.05), (10, 0.0045)]
    assert c.losses == {"loss", "aux"}
    fig = curves.curves_figure(c)
    loss_ax, out_ax, lr_ax = fig.axes
    lines = {l.get_label(): l for l in loss_ax.lines}
    assert list(lines["smoothed loss"].get_xdata()) == [0, 10, 20]
    assert list(lines["smoothed loss"].get_ydata()) == [2.11235, 1.5, 0.875]
    assert {l.get_label() for l in out_ax.lines} == {"train accuracy", "test accuracy"}
    assert lr_ax.get_yscale() == "log"   # 0.05 / 0.0045 > 10


def test_parse_a_real_caffe_log():
    """Caffe's own log of the golden multistep run: its display losses, and its lr lines equal sgd's rates."""
    text = (GOLDEN / "solver/runs/multistep/caffe_train.log").read_text()
    c = curves.parse_log(text)
    displayed = [(int(i), float(v)) for i, v in re.findall(r"\] Iteration (\d+) \(.*\), loss = (\S+)", text)]
    assert displayed and c.smoothed[:len(displayed)] == displayed
    sp, _ = read_solver(GOLDEN / "solver/solver_multistep.prototxt")
    step, ours = 0, {}
    for it in range(sp.max_iter):
        rate, step, _ = sgd.learning_rate(sp, it, step)
        ours[it] = rate
    assert [i for i, _ in c.lr] == list(range(sp.max_iter))
    for it, v in c.lr:
        assert v == pytest.approx(ours[it], rel=1e-5)


def test_curves_command_line(tmp_path):
    log = tmp_path / "caffe.log"
    log.write_text(CAFFE_LOG)
    out = tmp_path / "c.png"
    p = subprocess.run([sys.executable, "-m", "sfport.solver.curves", str(log), str(out)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert matplotlib.image.imread(out).ndim == 3   # a PNG matplotlib reads back
    h = subprocess.run([sys.executable, "-m", "sfport.solver.curves", "--help"], capture_output=True, text=True)
    assert "Caffe training log" in h.stdout and "Example: python -m sfport.solver.curves caffe.log" in h.stdout
    (tmp_path / "empty.log").write_text("nothing here\n")
    p = subprocess.run([sys.executable, "-m", "sfport.solver.curves", str(tmp_path / "empty.log"), str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("sfport: error: ") and "no training lines" in p.stderr


def _solver(folder, **fields):
    text = (GOLDEN / "solver/solver_multistep.prototxt").read_text()
    for k, v in fields.items():
        text = re.sub(rf"^{k}:.*$\n?", "", text, flags=re.M) + f"{k}: {v}\n"
    (folder / "s.prototxt").write_text(text)
    return "s.prototxt"


def test_train_plot_draws_the_logged_losses(golden_copy, monkeypatch):
    """A synthetic run (the tiny net does not fix its input: --shape is needed and the error says so) with --plot:
    the figure's smoothed-loss line is the log's display losses, its lr line the log's lr lines; the PNG reads."""
    s = _solver(golden_copy, max_iter=6, snapshot=3, snapshot_prefix='"runs/p/x"')
    r = CliRunner().invoke(cli, ["train", s, "--synthetic-data", "--workers", "0"])
    assert r.exit_code == 2 and "--shape C,H,W (--shape 3,112,96 for SphereFace" in r.stderr
    drawn = []
    real = curves.curves_figure
    monkeypatch.setattr(curves, "curves_figure", lambda c, title=None: drawn.append(c) or real(c, title))
    r = CliRunner().invoke(cli, ["train", s, "--synthetic-data", "--shape", "3,24,20", "--workers", "0",
                                 "--plot", "curves.png"])
    assert r.exit_code == 0, r.output
    assert len(drawn) == 3   # at the snapshots of iterations 3 and 6, and at the end
    logged = [(int(i), float(v)) for i, v in re.findall(r"\] Iteration (\d+) \(.*\), loss = (\S+)", r.stderr)]
    final = [(int(i), float(v)) for i, v in re.findall(r"\] Iteration (\d+), loss = (\S+)", r.stderr)]
    assert [i for i, _ in logged] == list(range(6)) and [i for i, _ in final] == [6]
    assert drawn[-1].smoothed == logged + final
    assert drawn[-1].lr == [(int(i), float(v)) for i, v in re.findall(r"\] Iteration (\d+), lr = (\S+)", r.stderr)]
    assert drawn[0].smoothed == logged[:3]   # the snapshot at iteration 3 drew the log so far
    img = matplotlib.image.imread(golden_copy / "curves.png")
    assert img.ndim == 3 and img.shape[0] > 100
    r = CliRunner().invoke(cli, ["train", s, "--synthetic-data", "--shape", "3,24,20", "--plot", "curves.txt"])
    assert r.exit_code == 2 and "a plot is written as .png, .svg, .pdf" in r.stderr


def test_the_log_names_the_device(golden_copy):
    """caffe.cpp train's 'Use CPU.'; solver_mode GPU (also Caffe's default, when the field is absent) without
    --gpu: a warning that the run is on the CPU and how to use the GPU."""
    args = ["--workers", "0", "--weights", "init.caffemodel", "--max-iter", "1"]
    r = CliRunner().invoke(cli, ["train", _solver(golden_copy, snapshot_prefix='"runs/d/a"'), *args])
    assert r.exit_code == 0, r.output
    first = r.stderr.splitlines()[0]
    assert first.startswith("I") and first.endswith("] Use CPU.")
    assert "solver_mode is GPU" not in r.stderr
    r = CliRunner().invoke(cli, ["train", _solver(golden_copy, solver_mode="GPU", device_id=1,
                                                  snapshot_prefix='"runs/d/b"'), *args])
    assert r.exit_code == 0, r.output
    head = r.stderr.splitlines()[:2]
    assert head[0].endswith("] Use CPU.")
    assert head[1].startswith("W") and head[1].endswith(
        "] solver_mode is GPU, where caffe would train on GPU 1, but no --gpu was given: this run trains on the "
        "CPU; use --gpu 1 to train on the GPU")
    text = re.sub(r"^solver_mode:.*$\n?", "", (golden_copy / "s.prototxt").read_text(), flags=re.M)
    (golden_copy / "s.prototxt").write_text(text.replace("device_id: 1\n", ""))
    r = CliRunner().invoke(cli, ["train", "s.prototxt", *args])
    assert r.exit_code == 0, r.output
    assert "solver_mode is GPU (Caffe's default), where caffe would train on GPU 0" in r.stderr
    assert "use --gpu 0 to train on the GPU" in r.stderr
