"""`sfport inspect SOLVER`: settings, nets, the lr schedule (sfport.solver.sgd's rates against Caffe's formulas written
out here and Caffe's own log), the effective batch, the lr plot."""
import json
import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner

from sfport.solver import sgd, solverinfo
from sfport.cli import cli
from sfport.solver.config import read_solver

from conftest import GOLDEN, UPSTREAM, lenet_solver

SPHEREFACE = UPSTREAM / "sphereface/train"
LENET_NET = Path(__file__).parent / "nets/lenet_train_test.prototxt"
LENET_SOLVER = lenet_solver(LENET_NET, "examples/mnist/lenet")   # the net's path made absolute


def inspect(*args):
    r = CliRunner().invoke(cli, ["inspect", *args])
    assert r.exit_code == 0, r.output
    return r


def sequential_rates(sp):
    """sgd.learning_rate update by update, as the solver calls it (multistep's current_step carried)."""
    out, step = [], 0
    for it in range(sp.max_iter):
        rate, step, _ = sgd.learning_rate(sp, it, step)
        out.append(rate)
    return out


def test_sphereface_solver(monkeypatch):
    """multistep with stepvalues 16000, 24000, 28000 and max_iter 28000: base_lr * gamma^k from each stepvalue
    reached; the net (relative to the folder caffe ran in, train/) with its batch 256."""
    monkeypatch.chdir(SPHEREFACE)
    doc = json.loads(inspect("code/sphereface_solver.prototxt", "--json").stdout)
    base_lr, gamma, steps = 0.1, 0.1, [16000, 24000, 28000]
    expected = [(0, base_lr)] + [(v, base_lr * gamma ** (k + 1)) for k, v in enumerate(steps) if v < 28000]
    got = doc["lr_schedule"]["points"]
    assert [it for it, _ in got] == [0, 16000, 24000]
    for (it, lr), (eit, elr) in zip(got, expected):
        assert it == eit and lr == pytest.approx(elr, rel=1e-6)
    assert doc["lr_schedule"]["sampled"] is False
    s = doc["settings"]
    assert s["lr_policy"] == "multistep" and s["stepvalue"] == steps and s["solver_mode"] == "GPU"
    assert s["base_lr"] == 0.1 and s["momentum"] == 0.9 and s["weight_decay"] == 0.0005
    assert {"type", "iter_size", "regularization_type", "random_seed"} <= set(doc["defaults"])
    assert s["type"] == "SGD" and s["iter_size"] == 1 and s["regularization_type"] == "L2"
    train, = doc["nets"]
    assert train["resolved"] == str(SPHEREFACE / "code/sphereface_model.prototxt")
    assert train["state"] == "TRAIN"
    layers = (SPHEREFACE / "code/sphereface_model.prototxt").read_text().count("layer {")
    assert train["layers"] == layers
    assert train["data"] == [{"layer": "data", "type": "ImageData", "batch_size": 256}]
    assert doc["batch"]["batch_size"] == 256 and doc["batch"]["per_device"] == 256
    text = inspect("code/sphereface_solver.prototxt").stdout
    assert "      16000  0.01\n" in text and "      24000  0.001\n" in text
    assert "stepvalue 28000 not reached" in text
    assert "effective batch: 256 (batch_size) x 1 (iter_size) = 256 per device, x N devices with --gpu" in text
    # every update's rate is the step line's
    sp, _ = read_solver("code/sphereface_solver.prototxt")
    rates = sequential_rates(sp)
    xs, ys = solverinfo.lr_curve(sp)
    for a, b, y in zip(xs, xs[1:] + [sp.max_iter], ys):
        assert all(r == y for r in rates[a:b])


def test_sphereface_solver_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # issue 33, item 11: the solver is fine, its net path is Caffe's run folder's: settings and schedule shown,
    # exit 0, and the net line says which file was not found and where it was looked for
    r = CliRunner().invoke(cli, ["inspect", str(SPHEREFACE / "code/sphereface_solver.prototxt")])
    assert r.exit_code == 0 and r.stderr == ""
    line, = [l for l in r.stdout.splitlines() if l.startswith("  train    ")]
    assert line.startswith("  train    not found: ") and "net 'code/sphereface_model.prototxt' not found in the " \
        f"current directory {tmp_path} nor in the solver's folder {SPHEREFACE / 'code'}" in line
    assert "      16000  0.01\n" in r.stdout


def test_lenet_solver_inv(tmp_path):
    """Caffe's LeNet solver: inv, sampled; base_lr * (1 + gamma*it)^-power; batch 64 (TRAIN), the test net."""
    (tmp_path / "lenet_solver.prototxt").write_text(LENET_SOLVER)
    doc = json.loads(inspect(str(tmp_path / "lenet_solver.prototxt"), "--json").stdout)
    lr = doc["lr_schedule"]
    assert lr["sampled"] is True
    assert [it for it, _ in lr["points"]] == [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 9999]
    for it, v in lr["points"]:
        assert v == pytest.approx(0.01 * (1 + 0.0001 * it) ** -0.75, rel=1e-6)
    train, test = doc["nets"]
    assert (train["state"], test["state"], test["test_iter"]) == ("TRAIN", "TEST", 100)
    assert train["resolved"] == test["resolved"] == str(LENET_NET)
    assert train["data"] == [{"layer": "mnist", "type": "Data", "batch_size": 64}]
    assert test["data"] == [{"layer": "mnist", "type": "Data", "batch_size": 100}]
    total = LENET_NET.read_text().count("layer {")
    test_only = LENET_NET.read_text().count("include { phase: TEST }")   # a data layer, prob, accuracy
    assert (train["layers"], test["layers"]) == (total - test_only, total - 1)   # and one data layer TRAIN only
    assert doc["batch"] == {"batch_size": 64, "iter_size": 1, "per_device": 64,
                            "devices": "x N devices with --gpu (each takes batch_size, as caffe -gpu)"}
    text = inspect(str(tmp_path / "lenet_solver.prototxt")).stdout
    assert "lr schedule (inv; sampled at 11 iterations" in text


def test_golden_inv_against_caffes_log():
    """The golden inv solver (max_iter 10: every update sampled) against the rates Caffe logged."""
    sp, _ = read_solver(GOLDEN / "solver/solver_inv.prototxt")
    points, sampled = solverinfo.lr_schedule(sp)
    logged = [(int(i), float(v)) for i, v in re.findall(r"Iteration (\d+), lr = (\S+)",
                                                        (GOLDEN / "solver/runs/inv/caffe_train.log").read_text())]
    assert sampled and [i for i, _ in points] == [i for i, _ in logged] == list(range(10))
    for (_, ours), (_, caffe) in zip(points, logged):
        assert ours == pytest.approx(caffe, rel=1e-5)   # Caffe prints 6 significant digits


def f32(x):
    """A SolverParameter float field holds the float32 nearest the text."""
    return float(np.float32(x))


FORMULAS = {   # Caffe's SGDSolver::GetLearningRate, written out
    "step": lambda p, it: f32(p["base_lr"]) * f32(p["gamma"]) ** (it // p["stepsize"]),
    "exp": lambda p, it: f32(p["base_lr"]) * f32(p["gamma"]) ** it,
    "poly": lambda p, it: f32(p["base_lr"]) * (1 - it / p["max_iter"]) ** f32(p["power"]),
    "sigmoid": lambda p, it: f32(p["base_lr"]) / (1 + math.exp(-f32(p["gamma"]) * (it - p["stepsize"]))),
}
PARAMS = {
    "step": {"base_lr": 0.1, "gamma": 0.5, "stepsize": 300, "max_iter": 1000},
    "exp": {"base_lr": 0.1, "gamma": 0.999, "max_iter": 1000},
    "poly": {"base_lr": 0.1, "power": 2.0, "max_iter": 1000},
    "sigmoid": {"base_lr": 0.1, "gamma": -0.01, "stepsize": 500, "max_iter": 1000},
}


@pytest.mark.parametrize("policy", list(FORMULAS))
def test_written_solver_policies(tmp_path, policy):
    p = PARAMS[policy]
    fields = "\n".join(f"{k}: {v}" for k, v in p.items())
    path = tmp_path / "s.prototxt"
    path.write_text(f'net: "{LENET_NET}"\nlr_policy: "{policy}"\niter_size: 3\ndisplay: 100\n{fields}\n')
    doc = json.loads(inspect(str(path), "--json").stdout)
    points = doc["lr_schedule"]["points"]
    if policy == "step":   # change points at each stepsize
        assert [it for it, _ in points] == [0, 300, 600, 900] and doc["lr_schedule"]["sampled"] is False
    else:
        assert [it for it, _ in points] == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999]
        assert doc["lr_schedule"]["sampled"] is True
    for it, v in points:
        assert v == pytest.approx(FORMULAS[policy](p, it), rel=2e-6, abs=1e-8)   # float32, as Caffe
    assert doc["settings"]["iter_size"] == 3 and doc["batch"]["per_device"] == 64 * 3
    # the figure's line: sgd's rates at its iterations (a step line holds each change point's rate)
    sp, _ = read_solver(path)
    fig = solverinfo.lr_figure(sp)
    line, marks = fig.axes[0].lines
    xs, ys = list(line.get_xdata()), list(line.get_ydata())
    if policy == "step":
        assert xs == [0, 300, 600, 900, 999] and line.get_drawstyle() == "steps-post"
        assert ys == [sgd.learning_rate(sp, it)[0] for it in xs]
        assert fig.axes[0].get_yscale() == "linear"   # 0.1 to 0.0125: less than 10x
    else:
        assert xs[0] == 0 and xs[-1] == 999 and len(xs) > 400
        assert ys == [sgd.learning_rate(sp, it)[0] for it in xs]
    assert [list(marks.get_xdata()), list(marks.get_ydata())] == [[it for it, _ in points],
                                                                  [sgd.learning_rate(sp, it)[0] for it, _ in points]]


def test_plot_file_and_bad_plot(monkeypatch, tmp_path):
    monkeypatch.chdir(SPHEREFACE)
    out = tmp_path / "lr.png"
    r = inspect("code/sphereface_solver.prototxt", "--plot", str(out))
    assert r.stdout.rstrip().endswith(f"wrote {out}")
    assert matplotlib.image.imread(out).ndim == 3
    sp, _ = read_solver("code/sphereface_solver.prototxt")
    ax = solverinfo.lr_figure(sp).axes[0]
    assert ax.get_yscale() == "log"   # 0.1 to 0.001
    assert list(ax.lines[0].get_xdata()) == [0, 16000, 24000, 27999]
    r = CliRunner().invoke(cli, ["inspect", "code/sphereface_solver.prototxt", "--plot", str(tmp_path / "lr.txt")])
    assert r.exit_code == 2 and "a plot is written as .png, .svg, .pdf" in r.stderr
    assert not (tmp_path / "lr.txt").exists()
