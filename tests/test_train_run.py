"""`sfport train` as a program: several processes (DDP over gloo) against iter_size, resuming after SIGKILL, bad
data, divergence, snapshots."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sfport
from sfport import solver as tr
from sfport.cli import cli

from conftest import GOLDEN

SOLVER = GOLDEN / "solver"


def write_solver(path, **changes):
    """solver_multistep.prototxt with some fields replaced or added."""
    lines = (SOLVER / "solver_multistep.prototxt").read_text().splitlines()
    out = []
    for line in lines:
        key = line.split(":")[0].strip()
        if key in changes:
            continue
        out.append(line)
    for k, v in changes.items():
        out.append(f'{k}: "{v}"' if isinstance(v, str) else f"{k}: {v}")
    path.write_text("\n".join(out) + "\n")
    return path


def params(path):
    return sfport.read_caffemodel(path).params


def max_rel(a, b):
    return max(float(np.abs(x.astype(np.float64) - y).max() / max(1, np.abs(y).max()))
               for k in b for x, y in zip(a[k], b[k]))


def test_two_processes_equal_iter_size_two(golden_copy):
    """2 processes (gloo, batch 8 each, iter_size 1) = 1 process with iter_size 2 (batch 8), after 10 updates."""
    write_solver(golden_copy / "one.prototxt", iter_size=2, max_iter=10, snapshot_prefix="runs/one/x")
    write_solver(golden_copy / "two.prototxt", iter_size=1, max_iter=10, snapshot_prefix="runs/two/x")
    r = CliRunner().invoke(cli, ["train", "one.prototxt", "--weights", "init.caffemodel", "--workers", "0"])
    assert r.exit_code == 0, r.output
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "sfport", "train", "two.prototxt", "--weights", "init.caffemodel", "--workers", "0"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    one, two = params(golden_copy / "runs/one/x_iter_10.caffemodel"), params(golden_copy / "runs/two/x_iter_10.caffemodel")
    assert max_rel(two, one) <= 1e-6
    # and it is not trivially so: one process with iter_size 1 ends elsewhere
    write_solver(golden_copy / "single.prototxt", iter_size=1, max_iter=10, snapshot_prefix="runs/single/x")
    r = CliRunner().invoke(cli, ["train", "single.prototxt", "--weights", "init.caffemodel", "--workers", "0"])
    assert max_rel(params(golden_copy / "runs/single/x_iter_10.caffemodel"), one) > 1e-3
    assert p.stderr.count("Iteration 9, lr = ") == 1  # rank 0 logs, rank 1 does not


def run_cli(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "sfport", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_resume_after_sigkill_is_bit_exact(golden_copy):
    """Kill -9 the run right after a snapshot; resuming from the newest .solverstate gives the same files, bit for
    bit, as the uninterrupted run (BatchNorm sums, layer counters and data position included)."""
    write_solver(golden_copy / "s.prototxt", net="tiny_bn.prototxt", iter_size=2, max_iter=40, snapshot=2,
                 snapshot_prefix="runs/k/x", display=0)
    full = run_cli("train", "s.prototxt", "--weights", "init_bn.caffemodel", "--workers", "0", cwd=golden_copy)
    assert full.wait(timeout=300) == 0, full.stderr.read()[-2000:]
    reference = {n: (golden_copy / "runs/k" / n).read_bytes() for n in ("x_iter_40.caffemodel", "x_iter_40.solverstate")}
    shutil.rmtree(golden_copy / "runs/k")
    victim = run_cli("train", "s.prototxt", "--weights", "init_bn.caffemodel", "--workers", "0", cwd=golden_copy)
    deadline = time.time() + 120
    while not (golden_copy / "runs/k/x_iter_6.solverstate").exists():
        assert time.time() < deadline and victim.poll() is None, "the run ended before the snapshot"
        time.sleep(0.001)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = sorted(golden_copy.glob("runs/k/x_iter_*.solverstate"), key=lambda p: int(p.stem.split("_")[-1]))
    last = done[-1]
    assert int(last.stem.split("_")[-1]) < 40
    for p in done:  # every solver state written so far is complete, and so is the model it names
        st = sfport.read_solverstate(p)
        assert st.state.iter == int(p.stem.split("_")[-1]) and st.resume is not None
        assert sfport.read_caffemodel(golden_copy / st.state.learned_net).params
    resumed = run_cli("train", "s.prototxt", "--snapshot", str(last), "--workers", "0", cwd=golden_copy)
    err = resumed.communicate(timeout=300)[1]
    assert resumed.returncode == 0, err[-2000:]
    for name, data in reference.items():
        assert (golden_copy / "runs/k" / name).read_bytes() == data, name


def test_caffe_style_resume_from_solverstate(golden_copy):
    """A .solverstate without sfport's resume record (as Caffe writes it): iteration, lr step and history
    restored; the log says what is not."""
    write_solver(golden_copy / "s.prototxt", max_iter=6, snapshot=4, snapshot_prefix="runs/c/x")
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--weights", "init.caffemodel", "--workers", "0"])
    assert r.exit_code == 0
    st = sfport.read_solverstate(golden_copy / "runs/c/x_iter_4.solverstate")
    sfport.write_solverstate(golden_copy / "caffe.solverstate", st.state, st.history)
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--snapshot", "caffe.solverstate", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "Restoring previous solver status from caffe.solverstate (Caffe resume" in r.stderr
    assert "Iteration 4, lr = " in r.stderr and "Iteration 3, lr = " not in r.stderr
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--snapshot", "runs/c/x_iter_4.solverstate", "--workers", "0"])
    assert r.exit_code == 0 and "Caffe resume" not in r.stderr


def test_weights_and_snapshot_together_are_refused(golden_copy):
    """caffe.cpp train: "Give a snapshot to resume training or weights to finetune but not both." """
    write_solver(golden_copy / "s.prototxt", max_iter=2, snapshot_prefix="runs/ws/x")
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--weights", "init.caffemodel", "--snapshot", "a.solverstate"])
    assert r.exit_code == 2
    assert r.stderr.strip() == ("sfport: error: give --snapshot to resume training or --weights to finetune, but "
                                "not both")


def test_missing_image_names_its_list_line(golden_copy):
    lines = (golden_copy / "list.txt").read_text().splitlines()
    lines[5] = "images/missing.png 5"
    (golden_copy / "list.txt").write_text("\n".join(lines) + "\n")
    write_solver(golden_copy / "s.prototxt", max_iter=2, snapshot_prefix="runs/m/x")
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--weights", "init.caffemodel", "--workers", "0"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == \
        "sfport: error: list.txt: line 6: image './images/missing.png' is missing"
    assert not (golden_copy / "runs/m").exists() or not list((golden_copy / "runs/m").iterdir())
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--weights", "init.caffemodel", "--workers", "0",
                                 "--skip-bad-images"])
    assert r.exit_code == 0, r.output
    assert "Skipped 1 unreadable images" in r.stderr


def test_divergence_stops_with_the_last_good_snapshot(golden_copy):
    write_solver(golden_copy / "s.prototxt", base_lr=500.0, max_iter=30, snapshot=1, snapshot_prefix="runs/d/x")
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--weights", "init.caffemodel", "--workers", "0"])
    assert r.exit_code == 3, r.output
    msg = r.stderr.strip().splitlines()[-1]
    assert msg.startswith("sfport: stopped: Iteration ") and "training diverged. Last good snapshot: runs/d/x_iter_" in msg
    assert ("87.3365" in msg) or ("nan" in msg) or ("inf" in msg)
    last = msg.rsplit(" ", 1)[-1]
    assert (golden_copy / last).exists()


def test_weights_report_and_bad_files(golden_copy):
    write_solver(golden_copy / "s.prototxt", max_iter=1, snapshot_prefix="runs/w/x")
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--weights", "nope.caffemodel"])
    assert r.exit_code == 2 and "nope.caffemodel: no such file" in r.stderr
    r = CliRunner().invoke(cli, ["train", "list.txt"])
    assert r.exit_code == 2 and r.stderr.startswith("sfport: error: list.txt")
    r = CliRunner().invoke(cli, ["train", "s.prototxt", "--weights", "init.caffemodel", "--workers", "0"])
    assert "Copied weights of 10 layers" in r.stderr


def test_start_checks_the_device_request(golden_copy):
    """sfport.solver.start: --gpu on a machine without CUDA, bad GPU ids and --amp on the CPU are input errors."""
    write_solver(golden_copy / "s.prototxt", max_iter=1, snapshot_prefix="runs/g/x")
    if torch.cuda.is_available():
        with pytest.raises(sfport.CaffeFileError, match="give GPU ids like 0 or 0,1"):
            tr.start("s.prototxt", gpu="first")
        with pytest.raises(sfport.CaffeFileError, match="this machine has GPUs 0 to"):
            tr.start("s.prototxt", gpu=str(torch.cuda.device_count()))
    else:
        with pytest.raises(sfport.CaffeFileError, match="no CUDA device is available"):
            tr.start("s.prototxt", gpu="0")
    with pytest.raises(sfport.CaffeFileError, match="--amp needs a GPU"):
        tr.start("s.prototxt", amp=True, workers=0)
    assert not (golden_copy / "runs/g").exists()
