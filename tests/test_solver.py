"""Caffe's SGD solver: the update rule against an independent numpy version of sgd_solver.cpp, and whole runs
against real BVLC Caffe 1.0 (golden/solver: weights after every update, the final snapshot, lr/loss per
iteration, the log lines)."""
import io as _io
import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sfport
from sfport.solver import sgd, state
from sfport import solver as tr
from sfport.cli import cli
from sfport.protos import caffe_pb2

from conftest import GOLDEN

SOLVER = GOLDEN / "solver"
RUNS = {"multistep": 12, "inv": 10, "poly": 10, "bn_multistep": 6}


# ---------------------------------------------------------------------------------------------------------
# the update rule
# ---------------------------------------------------------------------------------------------------------

def np_rate(policy, it, step, p):
    """SGDSolver::GetLearningRate, with multistep's current_step advancing by at most one per update."""
    if policy == "multistep":
        if step < len(p["stepvalue"]) and it >= p["stepvalue"][step]:
            step += 1
        return p["base_lr"] * p["gamma"] ** step, step
    return {
        "fixed": lambda: p["base_lr"],
        "step": lambda: p["base_lr"] * p["gamma"] ** (it // p["stepsize"]),
        "exp": lambda: p["base_lr"] * p["gamma"] ** it,
        "inv": lambda: p["base_lr"] * (1 + p["gamma"] * it) ** (-p["power"]),
        "poly": lambda: p["base_lr"] * (1 - it / p["max_iter"]) ** p["power"],
        "sigmoid": lambda: p["base_lr"] / (1 + math.exp(-p["gamma"] * (it - p["stepsize"]))),
    }[policy](), step


@pytest.mark.parametrize("policy", sgd.POLICIES)
def test_lr_policies(policy):
    p = dict(base_lr=0.1, gamma=0.9 if policy != "inv" else 0.01, power=0.75, stepsize=7, max_iter=60,
             stepvalue=[5, 6, 30])
    sp = caffe_pb2.SolverParameter(lr_policy=policy, base_lr=p["base_lr"], gamma=p["gamma"], power=p["power"],
                                   stepsize=p["stepsize"], max_iter=p["max_iter"], stepvalue=p["stepvalue"])
    p = dict(p, base_lr=sp.base_lr, gamma=sp.gamma, power=sp.power)  # the float32 values Caffe holds
    step = ours = 0
    for it in range(60):
        ref, step = np_rate(policy, it, step, p)
        rate, ours, _ = sgd.learning_rate(sp, it, ours)
        assert rate == pytest.approx(ref, rel=1e-6, abs=1e-12), it
        assert ours == step or policy != "multistep"
    if policy == "multistep":
        assert ours == 3  # 5, 6 (one step per update even when two are due), 30


def np_solver(params, grads_per_step, lr_mult, decay_mult, p, reg, clip, iter_size):
    """SGDSolver::ApplyUpdate, independent of sfport: returns the params after all updates."""
    w = [x.copy() for x in params]
    h = [np.zeros_like(x) for x in params]
    step = 0
    for it, grads in enumerate(grads_per_step):
        rate, step = np_rate("multistep", it, step, p)
        g = [sum(micro[j] for micro in grads) * (lr_mult[j] != 0) for j in range(len(w))]  # accumulated
        if clip >= 0:
            norm = math.sqrt(sum((x ** 2).sum() for x in g))
            if norm > clip:
                g = [x * (clip / norm) for x in g]
        for j in range(len(w)):
            if lr_mult[j] == 0:
                continue
            gj = g[j] / iter_size
            decay = p["weight_decay"] * decay_mult[j]
            gj = gj + decay * (w[j] if reg == "L2" else np.sign(w[j]))
            h[j] = p["momentum"] * h[j] + rate * lr_mult[j] * gj
            w[j] = w[j] - h[j]
    return w, h


@pytest.mark.parametrize("reg", ["L2", "L1"])
@pytest.mark.parametrize("clip", [-1.0, 0.9])
def test_update_rule_matches_numpy(reg, clip):
    rng = np.random.default_rng(5)
    shapes = [(4, 3), (4,), (5,), (2, 2)]
    lr_mult, decay_mult = [1.0, 2.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]
    p = dict(base_lr=0.05, gamma=0.5, stepvalue=[10, 11, 30], momentum=0.9, weight_decay=0.01)
    iter_size, steps = 2, 50
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[[rng.standard_normal(s) * (0.2 + it % 3) for s in shapes] for _ in range(iter_size)]
             for it in range(steps)]
    blobs = [sgd.Blob(str(j), torch.tensor(x, dtype=torch.float64), torch.zeros(s, dtype=torch.float64), lm, dm)
             for j, (x, s, lm, dm) in enumerate(zip(params, shapes, lr_mult, decay_mult))]
    sp = caffe_pb2.SolverParameter(lr_policy="multistep", base_lr=p["base_lr"], gamma=p["gamma"],
                                   stepvalue=p["stepvalue"])
    p = dict(p, base_lr=sp.base_lr, gamma=sp.gamma)
    step, clipped = 0, 0
    for it in range(steps):
        for j, b in enumerate(blobs):  # iter_size backward passes add into .grad
            b.param.grad = None if lr_mult[j] == 0 else torch.tensor(sum(m[j] for m in grads[it]))
        rate, step, _ = sgd.learning_rate(sp, it, step)
        info = sgd.sgd_update(blobs, rate, sgd.Hyper(p["momentum"], p["weight_decay"], iter_size, reg, clip))
        clipped += info.clip_scale is not None
    ref_w, ref_h = np_solver(params, grads, lr_mult, decay_mult, p, reg, clip, iter_size)
    for b, w, h in zip(blobs, ref_w, ref_h):
        # the rate is float32 in Caffe (and here); the numpy reference uses the same float32 rate values
        assert np.allclose(b.param.numpy(), w, rtol=1e-6, atol=1e-7), b.name
        assert np.allclose(b.history.numpy(), h, rtol=1e-6, atol=1e-7), b.name
    assert np.array_equal(blobs[2].param.numpy(), params[2])  # lr_mult 0: never moves
    assert np.all(blobs[2].history.numpy() == 0)
    if clip > 0:
        assert 0 < clipped < steps  # both branches of clipping were exercised
    assert step == 3


def test_rate_is_inside_the_history():
    """Caffe's h = mu*h + lr*g differs from torch.optim.SGD's v = mu*v + g; w -= lr*v once the rate changes."""
    w = torch.zeros(1, dtype=torch.float64)
    b = sgd.Blob("w", w, torch.zeros(1, dtype=torch.float64))
    for rate in (1.0, 0.1):
        b.param.grad = torch.ones(1, dtype=torch.float64)
        sgd.sgd_update([b], rate, sgd.Hyper(momentum=0.9))
    assert float(w) == pytest.approx(-(1.0 + (0.9 * 1.0 + 0.1)))       # Caffe: -1 - 1.0
    t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([t], lr=1.0, momentum=0.9)
    for rate in (1.0, 0.1):
        opt.param_groups[0]["lr"] = rate
        t.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
    assert float(t.detach()) == pytest.approx(-(1.0 + 0.1 * 1.9))                # torch: -1 - 0.19


def _state(*shapes):
    return state.SGDState([(f"l/{j}", torch.nn.Parameter(torch.randn(s)), 1.0, 1.0) for j, s in enumerate(shapes)])


def test_sgd_state_steps_and_round_trips(tmp_path):
    """SGDState.step is the rate, the update and iter += 1; state_dict and .solverstate give the same state back."""
    st = _state((3, 2), (4,))
    sp = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="multistep", gamma=0.5, stepvalue=[1], momentum=0.9)
    infos = []
    for _ in range(3):
        for b in st.blobs:
            b.param.grad = torch.ones_like(b.param)
        infos.append(st.step(sp))
    assert [(i.iter, i.rate, i.message) for i in infos] == \
        [(0, pytest.approx(0.1), None), (1, pytest.approx(0.05), "MultiStep Status: Iteration 1, step = 1"),
         (2, pytest.approx(0.05), None)]
    assert (st.iter, st.current_step) == (3, 1)
    for load in ("state_dict", "solverstate"):
        other = _state((3, 2), (4,))
        if load == "state_dict":
            other.load_state_dict(st.state_dict())
        else:
            f = st.to_solverstate("x.caffemodel")
            sfport.formats.caffe_files.write_solverstate(tmp_path / "x.solverstate", f.state, f.history)
            other.load_solverstate(sfport.read_solverstate(tmp_path / "x.solverstate"))
        assert (other.iter, other.current_step) == (3, 1)
        for a, b in zip(other.blobs, st.blobs):
            assert torch.equal(a.history, b.history) and a.history is not b.history


def test_sgd_state_checks_what_it_loads():
    """A checkpoint of the wrong structure is one line of CaffeFileError naming the file; the state is untouched."""
    st = _state((3, 2), (4,))
    good = st.state_dict()
    other = _state((3, 2), (4,))
    bad = {"iter missing": {k: v for k, v in good.items() if k != "iter"},
           "iter not an int": dict(good, iter=2.0), "iter a bool": dict(good, iter=True),
           "negative": dict(good, current_step=-1), "history not a list": dict(good, history=None),
           "one history": dict(good, history=good["history"][:1]),
           "wrong shape": dict(good, history=[torch.zeros(2, 3), torch.zeros(4)]),
           "not a tensor": dict(good, history=[torch.zeros(3, 2), [0.0] * 4])}
    for case, d in bad.items():
        with pytest.raises(sfport.CaffeFileError) as e:
            other.load_state_dict(d, "ck.pt")
        assert str(e.value).startswith("ck.pt: ") and "\n" not in str(e.value), case
        assert other.iter == 0 and all(float(b.history.abs().sum()) == 0 for b in other.blobs), case
    f = st.to_solverstate("x.caffemodel")
    with pytest.raises(sfport.CaffeFileError, match="1 history blobs, where the SGD solver of this net has 2"):
        other.load_solverstate(type(f)("x.solverstate", f.state, f.history[:1]))
    with pytest.raises(sfport.CaffeFileError, match=r"history of l/1: \[5\] does not fit \[4\]"):
        other.load_solverstate(type(f)("x.solverstate", f.state, [f.history[0], np.zeros(5, np.float32)]))


# ---------------------------------------------------------------------------------------------------------
# real Caffe runs
# ---------------------------------------------------------------------------------------------------------

def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


_PREFIX = re.compile(r"^[IWEF](?:\d{4}|\d{8}) [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$")


def parse_log(text: str) -> list[tuple]:
    """The lines Caffe's tools/extra/parse_log.py and plot tools read, as (kind, iteration, values...)."""
    events = []
    for line in text.splitlines():
        m = _PREFIX.match(line)
        if not m:
            continue
        msg = m.group(1)
        if mm := re.match(r"Iteration (\d+) \(([-+\d.e]+) iter/s, ([\d.e+-]+)s/(\d+) iters\), loss = ([-+\d.e]+)$", msg):
            events.append(("display", int(mm.group(1)), float(mm.group(5))))
        elif mm := re.match(r"\s+Train net output #(\d+): (\S+) = ([\.\deE+-]+)( \(\* ([\d.e+-]+) = ([\d.e+-]+) loss\))?$",
                            msg):
            events.append(("output", int(mm.group(1)), mm.group(2), float(mm.group(3))))
        elif mm := re.match(r"Iteration (\d+), lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)$", msg):
            events.append(("lr", int(mm.group(1)), float(mm.group(2))))
        elif mm := re.match(r"MultiStep Status: Iteration (\d+), step = (\d+)$", msg):
            events.append(("multistep", int(mm.group(1)), int(mm.group(2))))
        elif mm := re.match(r"Gradient clipping: scaling down gradients \(L2 norm ([\d.e+-]+) > ([\d.e+-]+)\) by scale "
                            r"factor ([\d.e+-]+)$", msg):
            events.append(("clip", float(mm.group(1)), float(mm.group(3))))
        elif mm := re.match(r"Snapshotting (solver state )?to binary proto file (\S+)$", msg):
            events.append(("snapshot", mm.group(2)))
        elif mm := re.match(r"Iteration (\d+), loss = ([-+\d.e]+)$", msg):
            events.append(("final", int(mm.group(1)), float(mm.group(2))))
        elif msg == "Optimization Done.":
            events.append(("done",))
    return events


def same_events(ours, theirs, rel=2e-5):
    assert [e[0] for e in ours] == [e[0] for e in theirs]
    for a, b in zip(ours, theirs):
        for x, y in zip(a[1:], b[1:]):
            if isinstance(y, float):
                assert x == pytest.approx(y, rel=rel, abs=1e-6), (a, b)
            else:
                assert x == y, (a, b)


@pytest.mark.parametrize("run", list(RUNS))
def test_golden_run_through_the_cli(run, golden_copy, capsys):
    T = RUNS[run]
    init = "init_bn.caffemodel" if run.startswith("bn") else "init.caffemodel"
    r = CliRunner().invoke(cli, ["train", f"solver_{run}.prototxt", "--weights", init, "--workers", "0"])
    assert r.exit_code == 0, r.output
    ref_dir = SOLVER / "runs" / run
    ours = sfport.read_caffemodel(golden_copy / "runs" / run / f"final_iter_{T}.caffemodel").params
    ref = sfport.read_caffemodel(ref_dir / f"final_iter_{T}.caffemodel").params
    assert set(ours) == set(ref)
    for layer in ref:
        for a, b in zip(ours[layer], ref[layer]):
            assert relerr(a, b) <= 1e-5, layer
    st = sfport.read_solverstate(golden_copy / "runs" / run / f"final_iter_{T}.solverstate")
    st_ref = sfport.read_solverstate(ref_dir / f"final_iter_{T}.solverstate")
    assert (st.state.iter, st.state.current_step, st.state.learned_net) == \
        (st_ref.state.iter, st_ref.state.current_step, st_ref.state.learned_net)
    assert len(st.history) == len(st_ref.history)
    for a, b in zip(st.history, st_ref.history):
        assert a.shape == b.shape and relerr(a, b) <= 1e-5
    # the log: the same lines as Caffe's, parsed as Caffe's log tools parse them
    same_events(parse_log(r.stderr if r.stderr_bytes is not None else r.output),
                parse_log((ref_dir / "caffe_train.log").read_text()))


@pytest.mark.parametrize("run", list(RUNS))
def test_golden_run_update_by_update(run, golden_copy):
    """Driving the solver one update at a time (as the golden data was made): the weights after every update
    equal Caffe's iter_XX.caffemodel, and lr, loss, smoothed loss and clipping equal trajectory.npz."""
    T = RUNS[run]
    init = "init_bn.caffemodel" if run.startswith("bn") else "init.caffemodel"
    s = tr.Solver(f"solver_{run}.prototxt", tr.Options(weights=[init], workers=0), log=tr.CaffeLog(enabled=False))
    traj = np.load(SOLVER / "runs" / run / "trajectory.npz")
    grads = np.load(SOLVER / "runs" / run / "grads.npz")
    worst = 0.0
    for t in range(T):
        # gradients when ready (accumulated over iter_size, before clipping), as in grads.npz
        s.state.zero_grad()
        s.feeder.start(s.state.iter)
        loss = 0.0
        for _ in range(max(s.param.iter_size, 1)):
            l, _ = s._forward_backward(s.feeder.next())
            loss += l
        loss /= max(s.param.iter_size, 1)
        for b in s.state.blobs:
            key = b.name
            g = b.param.grad if b.param.grad is not None else torch.zeros_like(b.param)
            assert relerr(g.numpy(), grads[key][t]) <= 1e-5, (t, key)
        info = s.apply_update()  # the update and iter += 1
        assert (info.iter, s.state.iter) == (t, t + 1)
        assert info.rate == pytest.approx(float(traj["lr"][t]), rel=1e-7)
        assert loss == pytest.approx(float(traj["loss"][t]), rel=1e-5)
        assert s.state.current_step == traj["multistep_current_step"][t]
        if "clip_scale_logged" in traj.files:
            assert info.clip_scale == pytest.approx(float(traj["clip_scale_logged"][t]), rel=1e-5)
        ref = sfport.read_caffemodel(SOLVER / "runs" / run / f"iter_{t + 1:02d}.caffemodel").params
        for layer, arrays in ref.items():
            for a, p in zip(arrays, s.net.params[layer]):
                err = relerr(p.detach().numpy(), a)
                worst = max(worst, err)
                assert err <= 1e-5, (t + 1, layer)
    assert worst < 1e-5


def test_smoothed_loss_of_an_uninterrupted_run(golden_copy):
    s = tr.Solver("solver_poly.prototxt", tr.Options(weights=["init.caffemodel"], workers=0),
                  log=tr.CaffeLog(enabled=False))
    s.solve()
    traj = np.load(SOLVER / "runs" / "poly" / "trajectory.npz")
    assert [r["lr"] for r in s.trajectory] == pytest.approx(traj["lr"].tolist(), rel=1e-7)
    assert [r["smoothed_loss"] for r in s.trajectory] == pytest.approx(traj["smoothed_loss"].tolist(), rel=1e-5)


def test_test_nets_run_as_caffe(golden_copy):
    """test_iter / test_interval / test_initialization: the TEST net shares the train net's weights, its data
    cursor runs on across tests, and the logged outputs are the means over test_iter batches."""
    text = (golden_copy / "tiny_sphereface.prototxt").read_text()
    train_data = text.index('layer {\n  name: "data"')
    end = text.index("}\n}\n", train_data) + 4
    data = text[train_data:end]
    test_data = data.replace('name: "data"', 'name: "data_test"', 1).replace("{\n  name", "{\n  name", 1)
    data = data.replace('type: "ImageData"', 'type: "ImageData"\n  include { phase: TRAIN }', 1)
    test_data = test_data.replace('type: "ImageData"', 'type: "ImageData"\n  include { phase: TEST }', 1)
    (golden_copy / "tt.prototxt").write_text(text[:train_data] + data + test_data + text[end:])
    (golden_copy / "s.prototxt").write_text((golden_copy / "solver_inv.prototxt").read_text().replace(
        "tiny_sphereface.prototxt", "tt.prototxt") + "test_iter: 2\ntest_interval: 3\n")
    stream = _io.StringIO()
    s = tr.Solver("s.prototxt", tr.Options(weights=["init.caffemodel"], workers=0, max_iter=6),
                  log=tr.CaffeLog(stream))
    assert len(s.test_nets) == 1
    s.solve()
    lines = [l.split("] ", 1)[1] for l in stream.getvalue().splitlines() if "] " in l]
    tests = [i for i, l in enumerate(lines) if l.startswith("Iteration") and "Testing net (#0)" in l]
    assert [lines[i] for i in tests] == [f"Iteration {n}, Testing net (#0)" for n in (0, 3, 6)]
    batches = np.load(SOLVER / "input_batches.npz")
    ref_net = sfport.TorchNet("tt.prototxt", phase="test", input_shapes={"data": (8, 3, 24, 20)})
    for k, i in enumerate(tests):
        weights = "init.caffemodel" if k == 0 else SOLVER / "runs" / "inv" / f"iter_{3 * k:02d}.caffemodel"
        ref_net.load_weights(sfport.read_caffemodel(weights))
        acc = loss = 0.0
        for b in (2 * k, 2 * k + 1):  # the test cursor runs on: batches 0-1, 2-3, 4-5
            out = ref_net.forward(data=batches["data"][8 * b:8 * b + 8], label=batches["label"][8 * b:8 * b + 8])
            acc += float(out["accuracy"]) / 2
            loss += float(out["loss"]) / 2
        got_acc = float(lines[i + 1].split(" = ")[1])
        got_loss = float(lines[i + 2].split(" = ")[1].split()[0])
        assert lines[i + 1].startswith("    Test net output #0: accuracy = ")
        assert lines[i + 2].startswith("    Test net output #1: loss = ") and lines[i + 2].endswith(" loss)")
        assert got_acc == pytest.approx(acc, abs=1e-6)
        assert got_loss == pytest.approx(loss, rel=2e-5), k


@pytest.mark.parametrize("iter_size", [1, 2])
def test_margin_counter_advances_per_forward_under_the_solver(golden_copy, iter_size):
    """A-Softmax's lambda counts forward passes: with iter_size 2 it advances twice per solver update
    (margin_inner_product_layer.cpp), and the logged lambda is the formula at that count."""
    text = (golden_copy / "tiny_sphereface.prototxt").read_text()
    old = text[text.index('  name: "fc6"'):text.index('layer {\n  name: "loss"')]
    new = ('  name: "fc6_margin"\n  type: "MarginInnerProduct"\n  bottom: "fc5"\n  bottom: "label"\n  top: "fc6"\n'
           '  top: "lambda"\n  margin_inner_product_param { num_output: 8 type: QUADRUPLE weight_filler { type: '
           '"xavier" } base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 0 }\n}\n')
    (golden_copy / "m.prototxt").write_text(text.replace(old, new))
    (golden_copy / "s.prototxt").write_text((golden_copy / "solver_multistep.prototxt").read_text()
                                            .replace("tiny_sphereface.prototxt", "m.prototxt")
                                            .replace("iter_size: 2", f"iter_size: {iter_size}"))
    stream = _io.StringIO()
    s = tr.Solver("s.prototxt", tr.Options(weights=["init.caffemodel"], workers=0, max_iter=5),
                  log=tr.CaffeLog(stream))
    report = "\n".join(s.weights_report)
    assert "Layer fc6_margin: no weights in the file; initialised by its filler (xavier)" in report
    assert "Ignoring 1 weight layers the net does not have: fc6" in report
    s.step(5)
    fc6 = s.net.module.module_of("fc6_margin")
    assert fc6._count == int(fc6.iteration) == 5 * iter_size
    logged = [float(l.split(" = ")[1]) for l in stream.getvalue().splitlines() if "Train net output" in l
              and "lambda" in l]
    expected = [max(1000 / (1 + np.float32(0.12) * ((t + 1) * iter_size)), 5) for t in range(5)]
    assert logged == pytest.approx(expected, rel=1e-5)
