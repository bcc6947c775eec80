"""The larger fuzz run of issue 14: the seeded malformed inputs of tests/fuzzcases.py, each `sfport` command in its
own process (so a crash - a signal - or a hang past --timeout is seen, not only exceptions), with a table of
cases per command and kind and every broken promise listed.

    python bench/fuzz.py --cases 2000 --seed 1 [--timeout 60] [--jobs 2]
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

import fuzzcases  # noqa: E402


def run_case(case, timeout: float):
    t0 = time.perf_counter()
    env = dict(os.environ, **case.env)
    try:
        p = subprocess.run([sys.executable, "-m", "sfport", *map(str, case.args)], capture_output=True, text=True,
                           timeout=timeout, env=env, errors="replace")
    except subprocess.TimeoutExpired:
        return case, f"hang: ran past {timeout:g} s", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    if p.returncode < 0:
        return case, f"killed by signal {-p.returncode}", dt
    return case, fuzzcases.broken(case, p.returncode, p.stderr, p.stderr + p.stdout), dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--shared", default=os.environ.get("SFPORT_SHARED", str(ROOT.parent / "shared")))
    a = ap.parse_args()
    fixtures = Path(a.shared) / "fixtures"
    with tempfile.TemporaryDirectory(prefix="sfport_fuzz_") as tmp:
        tmp = Path(tmp)
        ws = fuzzcases.Workspace(tmp / "ws", fixtures)
        all_cases = list(fuzzcases.cases(ws, np.random.default_rng(a.seed), a.cases, tmp / "cases"))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda c: run_case(c, a.timeout), all_cases))
        wall = time.perf_counter() - t0
    table = collections.defaultdict(lambda: [0, 0, 0.0])
    for case, why, dt in results:
        row = table[case.args[0]]
        row[0] += 1
        row[1] += why is not None
        row[2] = max(row[2], dt)
    print(f"{'command':<12} {'cases':>6} {'broken':>7} {'slowest s':>10}")
    for cmd, (n, bad, slow) in sorted(table.items()):
        print(f"{cmd:<12} {n:>6} {bad:>7} {slow:>10.2f}")
    broken = [(c, w) for c, w, _ in results if w]
    print(f"{len(all_cases)} cases, {len(broken)} broken, {wall:.0f} s wall with {a.jobs} jobs")
    for case, why in broken:
        print(f"- {case.name}: sfport {' '.join(map(str, case.args))}\n    {why}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
