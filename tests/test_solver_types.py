"""Caffe's five other solvers (Nesterov, AdaGrad, RMSProp, AdaDelta, Adam): whole trajectories of ``sfport train``'s
Solver against a real Caffe (tests/data/solvers, made by tests/data/solvers/make_reference.py with the oracle pycaffe
of ../shared/tools/build-caffe-oracle.sh), resume from a Caffe-written ``.solverstate``, the ``.solverstate`` layout,
and each rule against an independent numpy transcription of its ComputeUpdateValue."""
import math
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sfport
from sfport.cli import cli
from sfport import solver as tr
from sfport.errors import CaffeFileError
from sfport.solver import rules, state
from sfport.protos import caffe_pb2

from conftest import GOLDEN

DATA = Path(__file__).parent / "data" / "solvers"
KINDS = ("Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
ITERS = 10


def _net_text() -> str:
    """The golden tiny net with its ImageData replaced by HDF5Data over the same batches (as make_reference.py)."""
    text = (GOLDEN / "solver" / "tiny_sphereface.prototxt").read_text()
    start = text.index("layer {")
    end = text.index("layer {", start + 1)
    data = ('layer {\n  name: "data"\n  type: "HDF5Data"\n  top: "data"\n  top: "label"\n'
            '  hdf5_data_param {\n    source: "train_h5.txt"\n    batch_size: 8\n  }\n}\n')
    return text[:start] + data + text[end:]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("solvers")
    batches = np.load(GOLDEN / "solver" / "input_batches.npz")
    with h5py.File(d / "train.h5", "w") as f:
        f["data"] = batches["data"].astype(np.float32)
        f["label"] = batches["label"].astype(np.float32)
    (d / "train_h5.txt").write_text("train.h5\n")
    (d / "net.prototxt").write_text(_net_text())
    shutil.copy(GOLDEN / "solver" / "init.caffemodel", d)
    return d


def _solver(run_dir, kind, **extra) -> tuple[Path, dict]:
    ref = dict(np.load(DATA / f"{kind}.npz"))
    text = str(ref["solver"]).replace(f'snapshot_prefix: "{kind}"', f'snapshot_prefix: "{run_dir / kind}"')
    for k, v in extra.items():
        text = text.replace(f"{k}: ", f"# {k}: ") + f"{k}: {v}\n"
    path = run_dir / f"{kind}.prototxt"
    path.write_text(text)
    return path, ref


def _weights(solver) -> dict:
    return {f"{layer}/{j}": p.detach().cpu().numpy().copy() for layer, params in solver.net.params.items()
            for j, p in enumerate(params)}


def _compare(ours: dict, ref: dict, it: int, sample) -> float:
    worst = 0.0
    for key, want in ((k[len(f"w{it}/"):], v) for k, v in ref.items() if k.startswith(f"w{it}/")):
        got = ours[key].reshape(-1)[sample] if key == "fc5/0" else ours[key]
        err = float(np.abs(got.reshape(want.shape) - want).max()) / max(1.0, float(np.abs(want).max()))
        worst = max(worst, err)
        assert err <= 1e-5, f"update {it}, {key}: rel err {err:.3g}"
    return worst


@pytest.mark.parametrize("kind", KINDS)
def test_trajectory_matches_caffe(run_dir, kind):
    """Ten updates with iter_size 2, weight decay (L1 for Nesterov) and clipping that bites on some of them: every
    learnable blob after every update within 1e-5 of the blob's max, as the golden SGD runs."""
    path, ref = _solver(run_dir, kind, snapshot=0, snapshot_after_train="false")
    s = tr.Solver(str(path), tr.Options(weights=[str(run_dir / "init.caffemodel")], progress=False))
    assert type(s.state).__name__ == f"{kind}State"
    worst = 0.0
    clipped = 0
    for it in range(1, ITERS + 1):
        s.step(1)
        clipped += s.trajectory[-1]["clip_scale"] is not None
        worst = max(worst, _compare(_weights(s), ref, it, ref["fc5_sample"]))
    assert clipped >= 1   # the clipping path is exercised
    assert worst <= 1e-5


def _caffe_solverstate(kind: str, folder: Path) -> Path:
    """The .solverstate Caffe wrote at update 5, written back from its fields (tests/data/solvers/<kind>.npz) with
    plain protobuf in SGDSolver::SnapshotSolverStateToBinaryProto's field order: the bytes of Caffe's file (see
    make_reference.py), none of sfport's writing code involved."""
    with np.load(DATA / f"{kind}.npz") as z:
        state = caffe_pb2.SolverState(iter=int(z["caffe_state_iter"]), learned_net=str(z["caffe_state_learned_net"]),
                                      current_step=int(z["caffe_state_current_step"]))
        for i in range(int(z["caffe_state_histories"])):
            h = z[f"caffe_history_{i}"]
            state.history.add(data=h.reshape(-1).tolist(), shape=caffe_pb2.BlobShape(dim=list(h.shape)))
    path = folder / f"{kind}_caffe_iter_5.solverstate"
    path.write_bytes(state.SerializeToString())
    return path


@pytest.mark.parametrize("kind", ("AdaDelta", "Adam"))
def test_caffe_solverstate_resumes_in_sfport(run_dir, kind, tmp_path):
    """A .solverstate Caffe wrote at update 5 (2 x 16 history blobs: Caffe's history_ with the second set after
    the first) resumes sfport's solver, which then follows Caffe's own trajectory to update 10."""
    path, ref = _solver(run_dir, kind, snapshot=0, snapshot_after_train="false")
    s = tr.Solver(str(path), tr.Options(weights=[str(run_dir / "init.caffemodel")], progress=False))
    s.step(5)
    model = tmp_path / "own_iter_5.caffemodel"
    s.net.save_caffemodel(str(model))
    st = sfport.read_solverstate(_caffe_solverstate(kind, tmp_path))
    assert len(st.history) == 2 * len(s.state.blobs) and st.state.iter == 5
    st.state.learned_net = str(model)
    mixed = tmp_path / "caffe_iter_5.solverstate"
    sfport.write_solverstate(mixed, st.state, st.history)
    resumed = tr.Solver(str(path), tr.Options(snapshot=str(mixed), progress=False))
    assert resumed.state.iter == 5
    for it in range(6, ITERS + 1):
        resumed.step(1)
        _compare(_weights(resumed), ref, it, ref["fc5_sample"])


@pytest.mark.parametrize("kind", KINDS)
def test_solverstate_round_trip_and_layout(run_dir, kind, tmp_path):
    """sfport's snapshot at update 5 has Caffe's layout (as many history blobs as Caffe's, each the shape of its
    parameter, in Caffe's order) and resuming from it is bit-identical to the straight run."""
    path, _ = _solver(run_dir, kind, snapshot=5, snapshot_after_train="false")
    straight = tr.Solver(str(path), tr.Options(weights=[str(run_dir / "init.caffemodel")], progress=False))
    straight.step(ITERS)
    st = sfport.read_solverstate(run_dir / f"{kind}_iter_5.solverstate")
    sets = 2 if kind in ("AdaDelta", "Adam") else 1
    shapes = [tuple(b.param.shape) for b in straight.state.blobs]
    assert [tuple(h.shape) for h in st.history] == shapes * sets
    if kind in ("AdaDelta", "Adam"):
        caffe = sfport.read_solverstate(_caffe_solverstate(kind, tmp_path))
        assert [tuple(h.shape) for h in caffe.history] == shapes * sets
        for ours, theirs in zip(st.history, caffe.history):
            assert np.abs(ours - theirs).max() <= 1e-5 * max(1.0, float(np.abs(theirs).max()))
    resumed = tr.Solver(str(path), tr.Options(snapshot=str(run_dir / f"{kind}_iter_5.solverstate"), progress=False))
    resumed.step(ITERS - 5)
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    for h1, h2 in zip(straight.state.histories, resumed.state.histories):
        assert torch.equal(h1, h2)


def test_a_solverstate_of_another_layout_is_refused(run_dir, tmp_path):
    """RestoreSolverStateFromBinaryProto's CHECK_EQ(history_size, history_.size()): an SGD state (16 histories)
    does not resume an Adam solver (32)."""
    path, _ = _solver(run_dir, "Adam", snapshot=0, snapshot_after_train="false")
    s = tr.Solver(str(path), tr.Options(weights=[str(run_dir / "init.caffemodel")], progress=False))
    sgd_state = sfport.read_solverstate(_caffe_solverstate("AdaDelta", tmp_path))
    sgd_state.history = sgd_state.history[:16]
    with pytest.raises(CaffeFileError, match=r"incorrect length of history blobs: 16 history blobs, where the Adam "
                                             r"solver of this net has 32 \(2 per learnable blob\)"):
        s.state.check_solverstate(sgd_state)


# ---------------------------------------------------------------------------------------------------------------
# each rule against a numpy transcription of its ComputeUpdateValue (float64 arrays; the coefficients float32 as
# Caffe's Dtype computes them)
# ---------------------------------------------------------------------------------------------------------------

def _om(x):
    """Caffe's ``Dtype(1) - x`` in float32."""
    return float(np.float32(1) - np.float32(x))


def _np_rule(kind, g, w, h, h2, lr, hp, t):
    if kind == "Nesterov":
        h_new = hp["momentum"] * h + lr * g
        return w - (float(np.float32(1) + np.float32(hp["momentum"])) * h_new - hp["momentum"] * h), h_new, h2
    if kind == "AdaGrad":
        h_new = h + g ** 2
        return w - lr * g / (np.sqrt(h_new) + hp["delta"]), h_new, h2
    if kind == "RMSProp":
        h_new = hp["rms_decay"] * h + _om(hp["rms_decay"]) * g ** 2
        return w - lr * g / (np.sqrt(h_new) + hp["delta"]), h_new, h2
    if kind == "AdaDelta":
        m, d = hp["momentum"], hp["delta"]
        h_new = m * h + _om(m) * g ** 2
        u = g * np.sqrt((h2 + d) / (h_new + d))
        return w - lr * u, h_new, m * h2 + _om(m) * u ** 2
    if kind == "Adam":
        b1, b2 = hp["momentum"], hp["momentum2"]
        m_new, v_new = b1 * h + _om(b1) * g, b2 * h2 + _om(b2) * g ** 2
        corr = float(np.float32(math.sqrt(1 - b2 ** t) / (1 - b1 ** t)))
        return w - float(np.float32(lr) * np.float32(corr)) * m_new / (np.sqrt(v_new) + hp["delta"]), m_new, v_new
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_rule_matches_numpy(kind, reg):
    rng = np.random.default_rng(3)
    hp = {"momentum": 0.0 if kind in ("AdaGrad", "RMSProp") else 0.9, "momentum2": 0.99, "delta": 1e-6,
          "rms_decay": 0.9, "weight_decay": 0.01}
    hp = {k: float(np.float32(v)) for k, v in hp.items()}   # Caffe's Dtype fields
    shapes = [(4, 3), (5,), (2, 2, 3)]
    mults = [(1.0, 1.0), (2.0, 0.0), (0.0, 1.0)]   # an lr_mult 0 blob: its histories move, its weights do not
    p = caffe_pb2.SolverParameter(type=kind, base_lr=0.05, lr_policy="fixed", momentum=hp["momentum"],
                                  momentum2=hp["momentum2"], delta=hp["delta"], rms_decay=hp["rms_decay"],
                                  weight_decay=hp["weight_decay"], iter_size=2, regularization_type=reg)
    params = [(f"b{i}", torch.nn.Parameter(torch.tensor(rng.normal(size=s), dtype=torch.float64)), lm, dm)
              for i, (s, (lm, dm)) in enumerate(zip(shapes, mults))]
    st = state.STATES[kind](params)
    ref = [(p_.detach().numpy().copy(), np.zeros(s), np.zeros(s)) for (_, p_, _, _), s in zip(params, shapes)]
    for t in range(1, 5):
        grads = [rng.normal(size=s) for s in shapes]
        for (_, prm, _, _), g in zip(params, grads):
            prm.grad = torch.tensor(g)
        st.step(p)
        new = []
        for (w, h, h2), g, (lm, dm) in zip(ref, grads, mults):
            g = g / 2 + float(np.float32(hp["weight_decay"]) * np.float32(dm)) * (w if reg == "L2" else np.sign(w))
            new.append(_np_rule(kind, g, w, h, h2, float(np.float32(0.05) * np.float32(lm)), hp, t))
        ref = new
        for b, (w, h, h2) in zip(st.blobs, ref):
            np.testing.assert_allclose(b.param.detach().numpy(), w, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(b.history.numpy(), h, rtol=1e-9, atol=1e-12)
            if st.sets == 2:
                np.testing.assert_allclose(b.history2.numpy(), h2, rtol=1e-9, atol=1e-12)
    assert np.array_equal(st.blobs[2].param.detach().numpy(), params[2][1].detach().numpy())


def test_adam_correction_is_computed_in_double():
    """adam_solver.cpp: sqrt(Dtype(1) - pow(beta2, t)) / (Dtype(1.) - pow(beta1, t)), pow(float, int) in double."""
    for t in (1, 2, 10, 1000):
        b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))
        assert rules.adam_correction(0.9, 0.999, t) == float(np.float32(math.sqrt(1 - b2 ** t) / (1 - b1 ** t)))


@pytest.mark.parametrize("text, message", [
    ('type: "AdaGrad"\nmomentum: 0.9', "momentum cannot be used with AdaGrad"),
    ('type: "RMSProp"\nrms_decay: 1.0', "rms_decay should lie between 0 and 1"),
    ('type: "RMSProp"\nmomentum: 0.5', "momentum cannot be used with RMSProp"),
    ('type: "Adagrad"', "unknown solver type 'Adagrad' \\(known types: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam\\)"),
])
def test_the_solvers_own_checks(tmp_path, text, message):
    """sgd_solvers.hpp constructor_sanity_check and SolverRegistry::CreateSolver, as one line naming the file."""
    path = tmp_path / "s.prototxt"
    path.write_text(f'net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n{text}\n')
    with pytest.raises(CaffeFileError, match=message):
        tr.config.read_solver(path)


def test_legacy_solver_type_enum_is_upgraded(tmp_path):
    path = tmp_path / "s.prototxt"
    path.write_text('net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nsolver_type: ADAM\n')
    sp, notes = tr.config.read_solver(path)
    assert sp.type == "Adam" and any("solver_type: ADAM" in n for n in notes)


@pytest.mark.parametrize("kind, fields", [("Adam", ("momentum", "momentum2", "delta")), ("RMSProp", ("rms_decay", "delta")),
                                          ("AdaDelta", ("momentum", "delta")), ("AdaGrad", ("delta",))])
def test_inspect_shows_each_rules_settings(run_dir, kind, fields):
    """`sfport inspect SOLVER` lists the fields the rule reads, with Caffe's defaults marked when not in the file."""
    path, _ = _solver(run_dir, kind)
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].endswith(f"{kind} solver, lr_policy " + str(np.load(DATA / f"{kind}.npz")["solver"])
                                             .split('lr_policy: "')[1].split('"')[0] + ", max_iter 10, solver_mode CPU")
    shown = {line.split()[0]: line for line in r.output.splitlines() if line.startswith("  ") and len(line.split()) > 1}
    for f in fields:
        assert f in shown, (f, r.output)
    if kind == "Adam":
        assert re.search(r"momentum2\s+0\.999$", shown["momentum2"]) and "1e-08" in shown["delta"]
