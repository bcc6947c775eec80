"""Caffe's signal handling on a real `sfport train` process (util/signal_handler.cpp, caffe.cpp -sigint_effect,
-sighup_effect; SIGTERM as SIGINT): the snapshot written, the log lines, the exit status, and resuming from it equal
to the uninterrupted run, bit for bit. And a snapshot interrupted half-way leaves the earlier one whole."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

import sfport
from sfport.formats import caffe_files

from conftest import GOLDEN

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for f in ("tiny_sphereface.prototxt", "init.caffemodel", "list.txt"):
        shutil.copy(GOLDEN / "solver" / f, tmp_path)
    shutil.copytree(GOLDEN / "solver" / "images", tmp_path / "images")
    text = (GOLDEN / "solver" / "solver_multistep.prototxt").read_text()
    text = re.sub(r"max_iter: \d+", "max_iter: 400", text).replace('snapshot_prefix: "runs/multistep/final"',
                                                                    'snapshot_prefix: "runs/x"')
    (tmp_path / "s.prototxt").write_text(text)
    return tmp_path


class Run:
    """`python -m sfport train` in its own process; stderr read as it comes."""

    def __init__(self, cwd, *args, workers: int = 0, solver: str = "s.prototxt"):
        self.p = subprocess.Popen([sys.executable, "-m", "sfport", "train", solver, "--workers", str(workers),
                                   *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.p.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not any(re.search(pattern, line) for line in list(self.lines)):
            assert time.time() < deadline and self.p.poll() is None, "".join(self.lines)[-3000:]
            time.sleep(0.005)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.p.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code, "".join(self.lines)


def _snapshots(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"Snapshotting solver state to binary proto file runs/x_iter_(\d+)\.solverstate",
                                       log)]


def _train(run_dir, *args) -> None:
    """A whole run in a process of its own, with the same threads as the interrupted one (bit-exact comparisons)."""
    code, log = Run(run_dir, *args).finish()
    assert code == 0, log[-2000:]


def _straight(run_dir, iters: int) -> bytes:
    """The uninterrupted run to ``iters``: its final caffemodel's bytes."""
    _train(run_dir, "--weights", "init.caffemodel", "--max-iter", str(iters))
    return (run_dir / f"runs/x_iter_{iters}.caffemodel").read_bytes()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_snapshots_and_exits_0(run_dir, sig):
    """stop: the iteration ends, a snapshot is written, "Optimization stopped early.", exit status 0; resuming
    from that snapshot to 3 more updates gives the uninterrupted run's weights bit for bit."""
    run = Run(run_dir, "--weights", "init.caffemodel")
    run.wait_for(r"Iteration 5, lr = ")
    run.p.send_signal(getattr(signal, sig))
    code, log = run.finish()
    assert code == 0, log[-3000:]
    assert "Optimization stopped early." in log and "Optimization Done." in log
    n = _snapshots(log)
    assert len(n) == 1 and 5 < n[0] < 400
    st = sfport.read_solverstate(run_dir / f"runs/x_iter_{n[0]}.solverstate")
    assert st.state.iter == n[0] and st.state.learned_net == f"runs/x_iter_{n[0]}.caffemodel"
    stopped_at = n[0]
    _train(run_dir, "--snapshot", f"runs/x_iter_{stopped_at}.solverstate", "--max-iter", str(stopped_at + 3))
    resumed = (run_dir / f"runs/x_iter_{stopped_at + 3}.caffemodel").read_bytes()
    shutil.rmtree(run_dir / "runs")
    assert resumed == _straight(run_dir, stopped_at + 3)


def test_sighup_snapshots_and_goes_on(run_dir):
    """snapshot (SIGHUP's default): one snapshot where it came, the run goes on to max_iter; resuming from that
    snapshot ends where the run did."""
    run = Run(run_dir, "--weights", "init.caffemodel", "--max-iter", "40")
    run.wait_for(r"Iteration 5, lr = ")
    run.p.send_signal(signal.SIGHUP)
    code, log = run.finish()
    assert code == 0, log[-3000:]
    assert "Optimization stopped early." not in log
    n = _snapshots(log)
    assert len(n) == 2 and 5 < n[0] < 40 and n[1] == 40
    final = (run_dir / "runs/x_iter_40.caffemodel").read_bytes()
    (run_dir / "runs/x_iter_40.caffemodel").unlink()
    _train(run_dir, "--snapshot", f"runs/x_iter_{n[0]}.solverstate", "--max-iter", "40")
    assert (run_dir / "runs/x_iter_40.caffemodel").read_bytes() == final


def test_effects_are_options(run_dir):
    """--sigint-effect none: Ctrl-C is ignored; --sighup-effect stop: SIGHUP stops."""
    run = Run(run_dir, "--weights", "init.caffemodel", "--max-iter", "12", "--sigint-effect", "none",
              "--sighup-effect", "stop")
    run.wait_for(r"Iteration 3, lr = ")
    run.p.send_signal(signal.SIGINT)
    run.wait_for(r"Iteration 6, lr = ")
    run.p.send_signal(signal.SIGHUP)
    code, log = run.finish()
    assert code == 0 and "Optimization stopped early." in log
    assert 6 <= _snapshots(log)[0] < 12


def test_ctrl_c_to_the_process_group_with_data_workers(run_dir):
    """A terminal's Ctrl-C reaches the whole process group, the DataLoader workers too: the run still stops after
    the iteration with its snapshot (the workers do not die under it)."""
    run = Run(run_dir, "--weights", "init.caffemodel", workers=2)
    run.wait_for(r"Iteration 3, lr = ")
    os.killpg(run.p.pid, signal.SIGINT)   # the run leads its own session: this is its foreground group
    code, log = run.finish()
    assert code == 0 and "Optimization stopped early." in log, log[-3000:]
    assert len(_snapshots(log)) == 1


def test_an_interrupted_snapshot_leaves_the_earlier_one_whole(run_dir, monkeypatch):
    """A snapshot that fails half-way (here: interrupted while writing its solver state) leaves nothing of itself
    and the earlier snapshot as it was."""
    from sfport import solver as tr
    s = tr.Solver("s.prototxt", tr.Options(weights=["init.caffemodel"], workers=0, max_iter=400, progress=False))
    s.step(2)
    first = s.snapshot()
    before = {p.name: p.read_bytes() for p in (run_dir / "runs").iterdir()}
    assert set(before) == {"x_iter_2.caffemodel", "x_iter_2.solverstate"} and first.endswith("x_iter_2.solverstate")
    s.step(1)

    def interrupted(path, *a, **k):
        open(path, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(caffe_files, "write_solverstate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    assert {p.name: p.read_bytes() for p in (run_dir / "runs").iterdir()} == before


def test_a_default_sfplus_m4_snapshot_is_caffes_two_files(tmp_path, monkeypatch):
    """The shipped SphereFace+ m4 solver, as it is (snapshot_format BINARYPROTO by default), one update on synthetic
    data (batch 256): its snapshot is the
    .caffemodel and the .solverstate, nothing else; the solver state's history blobs fit the caffemodel's
    blobs and it carries the margin layers' counters in its resume record."""
    prototxt = Path(sfport.__file__).resolve().parent.parent / "prototxt"
    for name in ("sfplus_m4_solver.prototxt", "sfplus_m4_train.prototxt"):
        shutil.copy(prototxt / name, tmp_path)
    monkeypatch.chdir(tmp_path)
    code, log = Run(tmp_path, "--synthetic-data", "--shape", "3,112,96", "--max-iter", "1",
                    solver="sfplus_m4_solver.prototxt").finish()
    assert code == 0, log[-3000:]
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == ["sfplus_m4_iter_1.caffemodel",
                                                                         "sfplus_m4_iter_1.solverstate"]
    st = sfport.read_solverstate(tmp_path / "result/sfplus_m4_iter_1.solverstate")
    model = sfport.read_caffemodel(tmp_path / "result/sfplus_m4_iter_1.caffemodel")
    # one history per learnable blob: InterClass's weight is fc6's (a shared param), stored twice in the
    # caffemodel (Net::ToProto writes every layer's blobs) and kept once by the solver
    shapes = [a.shape for layer in model.net.layer if layer.type != "InterClass"
              for a in model.params.get(layer.name, [])]
    assert [h.shape for h in st.history] == shapes and st.state.learned_net == "result/sfplus_m4_iter_1.caffemodel"
    assert sum(h.size for h in st.history) > 28_000_000
    record = json.loads(zlib.decompress(st.resume))
    assert any(k.endswith("iteration") for k in record["buffers"])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_a_signal_while_a_snapshot_is_written(run_dir, sig):
    """A snapshot every update; the signal comes while one is being written (its temporary file exists). SIGINT
    lets it finish, then stops with nothing more to write; SIGKILL leaves only its temporary files. Either way every
    snapshot that exists is whole: its solver state parses and names a model that parses."""
    text = (run_dir / "s.prototxt").read_text()
    (run_dir / "s.prototxt").write_text(text + "snapshot: 1\n")
    run = Run(run_dir, "--weights", "init.caffemodel")
    runs = run_dir / "runs"
    deadline = time.time() + 120
    while not (runs.is_dir() and any(p.name.endswith(".part") and "_iter_3." in p.name for p in runs.iterdir())):
        assert time.time() < deadline and run.p.poll() is None, "".join(run.lines)[-3000:]
    run.p.send_signal(getattr(signal, sig))
    code, log = run.finish()
    states = sorted(runs.glob("x_iter_*.solverstate"), key=lambda p: int(p.stem.split("_")[-1]))
    assert len(states) >= 2
    for p in states:
        st = sfport.read_solverstate(p)
        assert st.state.iter == int(p.stem.split("_")[-1])
        assert sfport.read_caffemodel(run_dir / st.state.learned_net).params["fc6"][0].shape == (8, 32)
    if sig == "SIGINT":
        assert code == 0 and "Optimization stopped early." in log
        assert not any(p.name.endswith(".part") for p in runs.iterdir())
        assert int(states[-1].stem.split("_")[-1]) >= 3   # the snapshot under way was finished
    else:
        assert code == -signal.SIGKILL
