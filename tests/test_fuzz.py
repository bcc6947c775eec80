"""Issue 14's fuzz test: a few hundred seeded malformed inputs (tests/fuzzcases.py) over every command. Each gives
exit 0 (harmless, or accepted as Caffe accepts it) or exit 2 with exactly one `sfport: error:` line and no
traceback, leaves nothing in its output folder after a failure, and finishes within a per-case time limit. A
larger run, each case in its own process: bench/fuzz.py."""
import signal
import numpy as np
import pytest

from badinput import run
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
    """What is wrong with the in-process result of ``case`` (None: the promise holds)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"exception {type(result.exception).__name__}: {result.exception}"
    return fuzzcases.broken(case, result.exit_code, result.stderr, result.output)


def test_fuzz_every_command(workspace, tmp_path):
    rng = np.random.default_rng(14)
    problems, kinds, codes, messages = [], {}, {}, set()
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
            codes[result.exit_code] = codes.get(result.exit_code, 0) + 1
            if result.exit_code == 2:
                messages.add(result.stderr.rsplit(": ", 1)[-1][:40])
            if why:
                problems.append(f"{case.name}: {' '.join(map(str, case.args))}\n    {why}")
    finally:
        signal.signal(signal.SIGALRM, old)
    assert sum(kinds.values()) == N_CASES
    print("fuzz cases by command:", dict(sorted(kinds.items())))
    assert set(kinds) >= {"inspect", "convert", "upgrade", "deploy", "eval", "compare", "embed", "verify",
                          "align"} - set(EXCLUDE), kinds
    # not vacuous: harmless mutations run through (exit 0), and the refusals are many different ones
    assert codes.get(0, 0) >= N_CASES // 10 and len(messages) >= 40, (codes, len(messages))
    assert not problems, f"{len(problems)} of {N_CASES} cases broke the promise:\n" + "\n".join(problems[:40])
