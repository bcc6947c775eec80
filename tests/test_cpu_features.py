"""Exactness must not depend on the CPU (numpy's SIMD kernels - AVX-512, AVX2 - can differ from the baseline by an
ulp): the tests whose references are Caffe's own float arithmetic (golden solver runs, the SphereFace layers,
the LFW protocol) run again here in a fresh process with every numpy dispatch target above the build's baseline
switched off through NPY_DISABLE_CPU_FEATURES. (The whole suite passes that way too: `NPY_DISABLE_CPU_FEATURES=
"X86_V3 X86_V4 AVX512_ICL AVX512_SPR" python -m pytest -q` on an x86-64 machine.)"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAVE_SHARED, NO_SHARED, ROOT

SENSITIVE = ["tests/test_solver.py", "tests/test_margin.py", "tests/test_lfw.py"]


def _dispatched_features() -> list[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return list(__cpu_dispatch__)


@pytest.mark.skipif(not HAVE_SHARED, reason=NO_SHARED)
def test_exact_tests_pass_without_simd_dispatch():
    features = _dispatched_features()
    if not features:
        pytest.skip(f"numpy {np.__version__} dispatches no CPU feature above its baseline here")
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=" ".join(features))
    probe = subprocess.run([sys.executable, "-c", "from numpy._core._multiarray_umath import __cpu_features__ as f;"
                            f"print(sum(bool(f.get(k)) for k in {features!r}))"], env=env, capture_output=True,
                           text=True)
    assert probe.returncode == 0 and probe.stdout.strip() == "0", probe.stderr
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SENSITIVE], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert " passed" in p.stdout.splitlines()[-1]
