"""Issue 14's fuzz test: a few hundred seeded malformed inputs (tests/fuzzcases.py) over every command. Each gives
exit 0 (harmless, or accepted as Caffe accepts it) or exit 2 with exactly one `sfport: error:` line and no
traceback, leaves nothing in its output folder after a failure, and finishes within a per-case time limit. A
larger run, each case in its own process: bench/fuzz.py."""
import signal
from pathlib import Path

import numpy as np
import pytest

from badinput import files_under, run
from conftest import FIXTURES
import fuzzcases

N_CASES = 400
PER_CASE_S = 30
EXCLUDE = ()   # commands whose cases are left out (fuzzcases.cases' exclude): none


class _Slow(Exception):
    pass


def _alarm(signum, frame):
    raise _Slow(f"a case ran past {PER_CASE_S} s")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return fuzzcases.Workspace(tmp_path_factory.mktemp("fuzz_ws"), FIXTURES)


def check(case, result) -> str | None:
    """What is wrong with the result of ``case`` (None: the promise holds)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"exception {type(result.exception).__name__}: {result.exception}"
    if result.exit_code not in case.allowed:
        return f"exit {result.exit_code}: {result.output[-400:]}"
    if "Traceback" in result.output:
        return "a traceback"
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        if case.args[0] == "train":  # Caffe's log comes first, on stderr; the error is its last line, and the only one
            lines = [l for l in lines if l.startswith("sfport: error: ")] if lines and lines[-1].startswith(
                "sfport: error: ") else lines
        if len(lines) != 1 or not lines[0].startswith("sfport: error: "):
            return f"not one error line: {result.stderr[-400:]!r}"
        if case.out_dir is not None and files_under(case.out_dir):
            return f"left behind: {sorted(files_under(case.out_dir))}"
    return None


def test_fuzz_every_command(workspace, tmp_path):
    rng = np.random.default_rng(14)
    problems, kinds = [], {}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in fuzzcases.cases(workspace, rng, N_CASES, tmp_path, EXCLUDE):
            signal.alarm(PER_CASE_S)
            try:
                result = run(*case.args, env=case.env or None)
            finally:
                signal.alarm(0)
            why = check(case, result)
            kinds[case.args[0]] = kinds.get(case.args[0], 0) + 1
            if why:
                problems.append(f"{case.name}: {' '.join(map(str, case.args))}\n    {why}")
    finally:
        signal.signal(signal.SIGALRM, old)
    assert sum(kinds.values()) == N_CASES
    print("fuzz cases by command:", dict(sorted(kinds.items())))
    assert set(kinds) >= {"inspect", "convert", "upgrade", "deploy", "eval", "compare", "embed", "verify",
                          "align"} - set(EXCLUDE), kinds
    if problems:
        Path("/tmp/sfport_fuzz_problems.txt").write_text("\n".join(problems) + "\n")
    assert not problems, f"{len(problems)} of {N_CASES} cases broke the promise:\n" + "\n".join(problems[:40])
