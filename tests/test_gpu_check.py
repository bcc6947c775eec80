"""bench/gpu_check.sh (issue 15, item 6): one script for the GPU checks, with one summary table at the end.

On a machine without CUDA the script skips every step that needs it in a few seconds ("skipped: no CUDA device"),
exits 0 and still prints every row; on a CUDA machine it runs them (a few minutes) and every row says passed
(the 2-GPU row is skipped on a one-GPU machine).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
HEADER = "| step | status | seconds | key number |"
NO_CUDA = "skipped: no CUDA device"
# the first words of each row's step, in order: the device probe, then the steps that need CUDA
DETECT = "detect CUDA devices"
CUDA_STEPS = ["GPU tests: pytest tests/test_train_run.py", "bench_train --device cuda (fp32)",
              "bench_train --device cuda --amp", "sfport train SF-20 --gpu 0 ", "sfport train SF-20 --gpu 0,1 "]


def summary_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines.count(HEADER) == 1, stdout
    rows = []
    for line in lines[lines.index(HEADER) + 2:]:   # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


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
    if not cuda:
        assert detect[3].startswith("0 CUDA device"), detect
        for row in steps:
            assert row[1] == NO_CUDA and row[3] == "-", row
        assert "[gpu_check]" not in r.stdout   # no step started
        assert not list(tmp_path.iterdir())    # nothing written where it was run
        return
    assert detect[3].startswith(f"{torch.cuda.device_count()} CUDA device"), detect
    *single, multi = steps
    for row in single:
        assert row[1] == "passed", (row, out[-4000:])
    if torch.cuda.device_count() >= 2:
        assert multi[1] == "passed", (multi, out[-4000:])
    else:
        assert multi[1] == "skipped: 1 CUDA device (needs 2)", multi
