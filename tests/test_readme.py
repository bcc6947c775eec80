"""The README's sample sessions are real: every `$ sfport ...` command in its code blocks that needs nothing but
the checkout and the shared fixtures is run, and the lines the README shows after it must be what it prints.

How a README block is read (README.md, "Sample sessions"):
- a line ``$ sfport ARGS`` is a command, run in a fresh folder with ``../shared`` standing for the shared data
  and ``tests/`` for the checkout's tests folder (and those folders printed back so); its expected output is the lines up to the next ``$`` line
  or the end of the block; the exit status must be 0 unless the block shows ``(exit N)`` after the command;
- a line ``…`` alone stands for any number of lines; ``…`` inside a line for any text;
- numbers agree when they differ by at most 1e-5 * max(1, |a|, |b|) (an error of 4.8e-07 on one CPU can be
  6.0e-07 on another); everything else is compared exactly (trailing spaces aside).
Commands that need data the checkout does not have (a released model, LFW) are not in ``$`` lines.
"""
import re
import shlex
import shutil

import pytest
from click.testing import CliRunner

from sfport.cli import cli

from conftest import ROOT, SHARED

README = ROOT / "README.md"
GAP = "…"
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def sessions(text: str = None) -> list[tuple[int, str, int, list[str]]]:
    """(line number, command, expected exit status, expected lines) of every ``$ sfport`` line in a fenced
    block."""
    text = README.read_text() if text is None else text
    out, in_block, current = [], False, None
    for no, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if current:
                out.append(current)
            in_block, current = not in_block, None
            continue
        if not in_block:
            continue
        if line.startswith("$ "):
            if current:
                out.append(current)
            cmd, status = line[2:], 0
            m = re.search(r"\s+\(exit (\d+)\)$", cmd)
            if m:
                cmd, status = cmd[:m.start()], int(m.group(1))
            current = (no, cmd, status, []) if cmd.startswith("sfport ") or cmd == "sfport" else None
        elif current is not None:
            current[3].append(line.rstrip())
    return out


def _numbers_agree(a: str, b: str) -> bool:
    if a == b:
        return True
    strip = "(),;:[]x%'"
    ca, cb = a.strip(strip), b.strip(strip)
    if ca != a.strip(strip) or not (_NUMBER.match(ca) and _NUMBER.match(cb)):
        return False
    if a.replace(ca, "") != b.replace(cb, ""):
        return False
    x, y = float(ca), float(cb)
    return abs(x - y) <= 1e-5 * max(1.0, abs(x), abs(y))


def line_matches(expected: str, actual: str) -> bool:
    """One shown line against one printed line (``…`` inside the line: any text; numbers within 1e-5)."""
    actual = actual.rstrip()
    if GAP in expected:
        pattern = ".*".join(re.escape(part) for part in expected.split(GAP))
        return re.fullmatch(pattern, actual) is not None
    if expected == actual:
        return True
    e, a = expected.split(), actual.split()
    # the same layout with numbers within tolerance (a column may widen by a character)
    return len(e) == len(a) and all(_numbers_agree(x, y) for x, y in zip(e, a))


def lines_match(expected: list[str], actual: list[str]) -> str | None:
    """None when the shown lines are the printed ones (``…`` lines: any run of lines), else what differs."""
    def match(i, j):
        if i == len(expected):
            return j == len(actual)
        if expected[i] == GAP:
            return any(match(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and line_matches(expected[i], actual[j]) and match(i + 1, j + 1)
    if match(0, 0):
        return None
    for k, e in enumerate(expected):   # the first shown line that is not printed, for the message
        if e != GAP and not any(line_matches(e, a) for a in actual):
            return f"README line not printed: {e!r}"
    return "README lines not printed in this order"


def _argv(cmd: str) -> list[str]:
    args = shlex.split(cmd)[1:]
    return [a.replace("../shared", str(SHARED)).replace("tests/", str(ROOT / "tests") + "/")
            if a.startswith(("../shared", "tests/")) or "=../shared" in a else a for a in args]


SESSIONS = sessions()


def test_the_readme_has_sample_sessions():
    assert len(SESSIONS) >= 8
    assert SESSIONS[0][1] == "sfport verify"   # the main job on the built-in default comes first


def needs_graphviz(cmd: str, status: int) -> bool:
    """A `sfport draw` session that renders (png, svg, pdf) through Graphviz's `dot`: the README's set-up does
    not install that system program (its section on draw says how)."""
    args = shlex.split(cmd)[1:]
    return (status == 0 and args[:1] == ["draw"]
            and any(a.lower().endswith((".png", ".svg", ".pdf")) for a in args[1:]))


@pytest.mark.parametrize("no,cmd,status,expected", SESSIONS, ids=[f"line{s[0]}" for s in SESSIONS])
def test_readme_session(no, cmd, status, expected, tmp_path, monkeypatch, shared):
    if needs_graphviz(cmd, status) and shutil.which("dot") is None:
        pytest.skip("renders through Graphviz's `dot`, which is not installed (apt install graphviz)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "120")
    r = CliRunner().invoke(cli, _argv(cmd))
    assert r.exit_code == status, f"README line {no}: {cmd}: exit {r.exit_code}\n{r.output}"
    # the arguments' absolute paths printed back as the README writes them
    printed = r.output.replace(str(SHARED), "../shared").replace(str(ROOT / "tests") + "/", "tests/")
    diff = lines_match(expected, printed.splitlines())
    assert diff is None, f"README line {no}: {cmd}: {diff}\n--- printed:\n{r.output}"


def test_the_matcher_can_fail():
    assert lines_match(["a 1.0e-07", GAP, "end"], ["a 1.2e-07", "x", "y", "end"]) is None
    assert lines_match(["passed: 3 blobs; worst '…'"], ["passed: 3 blobs; worst 'fc5'"]) is None
    assert lines_match(["a 1.0"], ["a 1.1"]) is not None            # a real difference in a number
    assert lines_match(["a", "b"], ["b", "a"]) is not None          # order
    assert lines_match(["a"], ["a", "extra"]) is not None            # an unshown line needs a gap
    assert lines_match(["conv1 ok"], ["conv1 FAIL"]) is not None
    text = "```\n$ sfport verify\nx\n$ python foo\ny\n$ sfport inspect a (exit 2)\nz\n```\n"
    assert sessions(text) == [(2, "sfport verify", 0, ["x"]), (6, "sfport inspect a", 2, ["z"])]
