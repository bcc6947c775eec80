"""bench/gpu_check.sh (issue 15, item 6; issue 32, item 4): one script for the GPU checks, with one summary table
and one table of ratios (sfport against its plain-PyTorch peer) at the end.

On a machine without CUDA the script skips every step that needs it in a few seconds ("skipped: no CUDA device"),
exits 0 and still prints every row; on a CUDA machine it runs them (a few minutes) and every row says passed
(the 2-GPU row is skipped on a one-GPU machine). With GPU_CHECK_CPU_SMOKE=1 the new steps (forward paths, the
SphereFace+ m4 training runs and their peer) run on the CPU, tiny, so that their code runs here too.
"""
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
HEADER = "| step | status | seconds | key number |"
RATIOS = "| comparison | sfport | peer (plain PyTorch) | sfport / peer |"
NO_CUDA = "skipped: no CUDA device"
SMOKE = "skipped: CPU smoke mode"
# the first words of each row's step, in order: the device probe, then the steps that need CUDA
DETECT = "detect CUDA devices"
OLD_STEPS = ["GPU tests: pytest tests/test_train_run.py", "bench_train --device cuda (fp32)",
             "bench_train --device cuda --amp", "sfport train SF-20 --gpu 0 ", "sfport train SF-20 --gpu 0,1 "]
NEW_STEPS = ["SF-20 forward --device ", "sfport train SF+ m4 --device ", "peer: plain PyTorch loop, SF+ m4 ",
             "sfport train SF+ m4 --device "]
CUDA_STEPS = OLD_STEPS + NEW_STEPS
PEER_ROWS = ["SF-20 forward, batch ", "SF+ m4 train, batch ", "SF+ m4 train, batch "]   # first words; see ratio_rows


def table_after(stdout: str, header: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines.count(header) == 1, stdout
    rows = []
    for line in lines[lines.index(header) + 2:]:   # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def summary_rows(stdout: str) -> list[list[str]]:
    return table_after(stdout, HEADER)


def ratio_rows(stdout: str) -> list[list[str]]:
    rows = table_after(stdout, RATIOS)
    assert all(len(r) == 4 for r in rows), rows
    forward = [r for r in rows if r[0].startswith("SF-20 forward, batch ")]
    train = [r for r in rows if r[0].startswith("SF+ m4 train, batch ")]
    assert len(forward) + len(train) == len(rows), rows
    assert {p for r in forward for p in ("fp32", "tf32", "bf16") if f", {p}: " in r[0]} == {"fp32", "tf32", "bf16"}
    assert len(train) == 2 and "synthetic data: sfport train vs torch.optim.SGD loop" in train[0][0], train
    assert "JPEGs through ImageData" in train[1][0], train
    return rows


def number(text: str) -> float:
    m = re.match(r"\s*([0-9.]+(?:e[-+]?\d+)?)", text)
    assert m, text
    return float(m[1])


def test_script_is_an_executable_bash_script():
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(SCRIPT, os.X_OK), "chmod +x bench/gpu_check.sh"
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_is_clean():
    r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gpu_check_runs_and_prints_every_row(tmp_path):
    """Run from another folder (the script finds the repository itself), with this interpreter as $PYTHON."""
    cuda = torch.cuda.is_available()
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("GPU_CHECK_CPU_SMOKE", None)
    r = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600 if cuda else 300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    rows = summary_rows(r.stdout)
    assert len(rows) == 1 + len(CUDA_STEPS), r.stdout
    for row, step in zip(rows, [DETECT] + CUDA_STEPS):
        assert len(row) == 4 and row[0].startswith(step), (step, row)
        float(row[2])   # seconds
    detect, *steps = rows
    assert detect[1] == "ran", detect
    ratios = ratio_rows(r.stdout)           # the peer rows are there, run or not
    if not cuda:
        assert detect[3].startswith("0 CUDA device"), detect
        for row in steps:
            assert row[1] == NO_CUDA and row[3] == "-", row
        for row in ratios:
            assert row[1:] == ["-", "-", "-"], row
        assert "[gpu_check]" not in r.stdout   # no step started
        assert not list(tmp_path.iterdir())    # nothing written where it was run
        return
    for row in ratios:                         # each with numbers (the forward rows: ratios of img/s)
        assert number(row[1]) > 0 and number(row[2]) > 0 and row[3].endswith("x") and number(row[3]) > 0, row
    assert detect[3].startswith(f"{torch.cuda.device_count()} CUDA device"), detect
    multi = steps[len(OLD_STEPS) - 1]
    for row in steps:
        assert row is multi or row[1] == "passed", (row, out[-4000:])
    if torch.cuda.device_count() >= 2:
        assert multi[1] == "passed", (multi, out[-4000:])
    else:
        assert multi[1] == "skipped: 1 CUDA device (needs 2)", multi


def test_cpu_smoke_runs_the_new_steps_on_the_cpu(tmp_path):
    """GPU_CHECK_CPU_SMOKE=1: the forward script, the m4 training runs (synthetic and JPEGs through ImageData) and
    the peer loop run on the CPU, tiny, and give their rows, the forward table and the table of ratios, with
    positive numbers; the CUDA-only steps are skipped."""
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_CPU_SMOKE="1")
    r = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    rows = summary_rows(r.stdout)
    assert len(rows) == 1 + len(CUDA_STEPS), r.stdout
    for row, step in zip(rows, [DETECT] + CUDA_STEPS):
        assert row[0].startswith(step), (step, row)
    for row in rows[1:1 + len(OLD_STEPS)]:
        assert row[1] == SMOKE, row
    forward, synthetic, peer, jpeg = rows[1 + len(OLD_STEPS):]
    for row in (forward, synthetic, peer, jpeg):
        assert "--device cpu" in row[0] and row[1] == "passed", (row, out[-3000:])
    assert re.match(r"batch 2 img/s: eager fp32 [0-9.]+, eager bf16 [0-9.]+, plain fp32 [0-9.]+, torchscript fp32 "
                    r"[0-9.]+, onnxruntime fp32 [0-9.]+$", forward[3]), forward
    for row in (synthetic, peer, jpeg):
        assert number(row[3]) > 0 and "img/s" in row[3] and "GPU util n/a" in row[3], row
    assert "JPEGs through ImageData" in jpeg[0]
    # the forward table, indented under its step: every path and precision, both batches, numbers
    table = [line.strip() for line in r.stdout.splitlines() if line.startswith("    |")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [(c[0], c[1]) for c in cells] == [
        (p, q) for p in ("sfport eager net", "hand-written torch net", "TorchScript (sfport export)")
        for q in ("fp32", "tf32", "bf16")] + [("onnxruntime", "fp32"), ("onnxruntime", "tf32")], table
    for c in cells:
        assert number(c[2]) > 0 and number(c[3]) > 0 and number(c[4]) > 0 and number(c[5]) > 0, c
        assert float(c[6]) < (0.05 if c[1] == "bf16" else 1e-4), c      # each path's output against eager fp32
    for row in ratio_rows(r.stdout):
        assert number(row[1]) > 0 and number(row[2]) > 0 and number(row[3]) > 0, row
    assert not list(tmp_path.iterdir())    # nothing written where it was run


def _peer_module():
    spec = importlib.util.spec_from_file_location("gpu_train_peer", ROOT / "bench" / "gpu_train_peer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peer_layers_compute_what_sfports_do():
    """The peer's hand-written MarginInnerProduct (m=4) and InterClass (AMONG) against sfport's converters: the
    same logits and lambda schedule, the same fc6 gradient through the margin outside the batch's classes (the
    peer's gradient is autograd's exact one, the fork's treats the target logit as x.w_y), the same D and the
    same (fork's) gradient of InterClass."""
    from sfport.converters.margin import InterClass, MarginInnerProduct

    peer = _peer_module()
    torch.manual_seed(0)
    classes = 40
    model = peer.SpherefacePlusM4(classes, (28, 24))
    x = torch.randn(6, 512, dtype=torch.float32)
    label = torch.tensor([0, 3, 3, 7, 39, 12])
    ours = MarginInnerProduct(classes, 512, m=4, base=1000, gamma=0.12, power=1, lambda_min=5, iteration=2000)
    inter = InterClass(classes, 512, among=True, iteration=16000, alpha_start_iter=16001, alpha_start_value=10)
    with torch.no_grad():
        ours.weight.copy_(model.fc6)
    for _ in range(2):                                       # two forwards: the counters advance alike
        model.fc6.grad = ours.weight.grad = None
        got = model.margin(x, label)
        want, _lam = ours(x, label)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()
        g = torch.randn_like(got)
        (got * g).sum().backward()
        (want * g).sum().backward()
        others = torch.ones(classes, dtype=torch.bool)
        others[label] = False                                # the fork's dW = g^T x; the peer's is autograd's,
        assert torch.allclose(model.fc6.grad[others], ours.weight.grad[others], rtol=1e-5, atol=1e-5)  # exact
    with torch.no_grad():
        inter.weight.copy_(model.fc6)
    model.fc6.grad = None
    d, grad_only = model.inter_class(label)
    d_ref = inter(x, label)
    assert model.alpha == float(inter.alpha) == 10.0
    assert torch.allclose(d, d_ref, rtol=1e-5), (d, d_ref)
    assert float(grad_only.detach()) == 0.0
    (d + grad_only).backward()
    d_ref.backward()
    assert torch.allclose(model.fc6.grad, inter.weight.grad, rtol=1e-4, atol=1e-8)


def test_parse_log_and_gpu_utilisation_window(tmp_path):
    """img/s from the second to the last display line of a Caffe log; the GPU utilisation: the mean of the
    nvidia-smi samples inside that window (the GPU part that the CPU smoke mode cannot reach)."""
    peer = _peer_module()
    year = dt.datetime.now().year
    log = tmp_path / "train.log"
    log.write_text("\n".join([
        "I0102 10:00:00.000000 1 caffe.cpp:248] Starting Optimization",
        "I0102 10:00:05.000000 1 solver.cpp:218] Iteration 0 (0 iter/s, 5s/10 iters), loss = 30.5",
        "I0102 10:00:06.000000 1 solver.cpp:218] Iteration 10 (10 iter/s, 1s/10 iters), loss = 29.5",
        "I0102 10:00:07.000000 1 solver.cpp:218] Iteration 20 (10 iter/s, 1s/10 iters), loss = 28.5",
        "I0102 10:00:08.000000 1 solver.cpp:218] Iteration 30 (10 iter/s, 1s/10 iters), loss = 27.5",
        "I0102 10:00:09.500000 1 solver.cpp:310] Iteration 40, loss = 27.25",
        "I0102 10:00:09.600000 1 solver.cpp:315] Optimization Done."]) + "\n")
    util = tmp_path / "util.csv"
    util.write_text(f"{year}/01/02 10:00:05.500, 0\n{year}/01/02 10:00:06.500, 90\n"
                    f"{year}/01/02 10:00:07.500, 100\n{year}/01/02 10:00:08.500, 5\n[N/A]\n")
    out = tmp_path / "train.json"
    assert peer.main(["parse-log", str(log), "--batch", "256", "--util", str(util), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["ok"] and r["iters_timed"] == 20 and r["ips"] == pytest.approx(256 * 20 / 2.0)
    assert r["util"] == pytest.approx(95.0) and r["util_samples"] == 2
    assert r["loss"] == "27.25" and r["loss_iter"] == 40
    assert peer.key_text(r) == ("2560.0 img/s (100.0 ms/iter, batch 256), GPU util 95% (2 samples), "
                                "loss 27.25 at iter 40")
    log.write_text(log.read_text().replace("Optimization Done.", "Stopped."))
    assert peer.main(["parse-log", str(log), "--batch", "256", "--json", str(out)]) == 1   # no Optimization Done
    assert json.loads(out.read_text())["util"] is None
