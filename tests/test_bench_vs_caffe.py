"""bench/bench_vs_caffe.py (issue 32, item 5): sfport against real Caffe, forward and training, one table.

Where the oracle pycaffe is built (../shared/tools/build-caffe-oracle.sh; found as the bench finds it:
$SFPORT_CAFFE_PYTHON, ./.caffe-venv or /tmp/oracle/venv), its --quick smoke run prints every row with positive
numbers; without one the script says in one line what it needs and exits 0.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_vs_caffe.py"
SHARED = Path(os.environ.get("SFPORT_SHARED", ROOT.parent / "shared"))
HEADER = "| row | Caffe | sfport | sfport / Caffe |"
# each row's label, batch sizes left open (--quick runs smaller batches)
ROWS = [
    r"forward SphereFace-20, batch 1, img/s: sfport default \((?:openvino|onnxruntime)\)",
    r"forward SphereFace-20, batch 1, img/s: sfport eager",
    r"forward SphereFace-20, batch \d+, img/s: sfport default \((?:openvino|onnxruntime)\)",
    r"forward SphereFace-20, batch \d+, img/s: sfport eager",
    r"train tiny_sphereface \(HDF5Data, batch 8\), iter/s: sfport train --workers 0",
    r"train tiny_sphereface \(HDF5Data, batch 8\), iter/s: sfport train, default workers \(\d+\)",
    r"train tiny_sphereface \(HDF5Data, batch 8\), iter/s: not sfport, the floor of eager PyTorch: a plain "
    r"hand-written PyTorch loop of the same layers",
    r"train SphereFace-20 \+ InnerProduct 10,572 \+ SoftmaxWithLoss \(batch \d+\), img/s",
]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_vs_caffe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_the_oracle_one_line_and_exit_0(tmp_path):
    missing = tmp_path / "no-such-venv/bin/python"
    r = subprocess.run([sys.executable, str(SCRIPT), "--caffe-python", str(missing)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    line = lines[0]
    assert "needs the oracle pycaffe" in line and str(missing) in line
    assert "build-caffe-oracle.sh" in line and "SFPORT_CAFFE_PYTHON" in line and "--caffe-python" in line
    assert "|" not in r.stdout


def test_quick_run_prints_every_row_with_positive_numbers():
    caffe_python, why = _bench().find_caffe_python()
    if caffe_python is None:
        pytest.skip(f"pycaffe oracle not available ({why}): run ../shared/tools/build-caffe-oracle.sh and set "
                    "SFPORT_CAFFE_PYTHON to its python")
    if not (SHARED / "golden/solver/tiny_sphereface.prototxt").is_file():
        pytest.skip(f"shared golden data not found at {SHARED}: set SFPORT_SHARED")
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--caffe-python", caffe_python],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    lines = r.stdout.splitlines()
    assert lines.count(HEADER) == 1, r.stdout
    assert any(line.startswith("Machine: ") and " cores" in line and "threads" in line for line in lines), r.stdout
    assert any(re.match(r"Date: \d{4}-\d\d-\d\d \d\d:\d\d; load average", line) for line in lines), r.stdout
    table = []
    for line in lines[lines.index(HEADER) + 2:]:   # past the header and its |---| line
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert [len(row) for row in table] == [4] * len(ROWS), r.stdout
    for pattern, (label, caffe, sfport, ratio) in zip(ROWS, table):
        assert re.fullmatch(pattern, label), (pattern, label)
        assert float(caffe) > 0 and float(sfport) > 0, label
        assert ratio.endswith("x") and float(ratio[:-1]) > 0, label
