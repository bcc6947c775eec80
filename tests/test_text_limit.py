"""Issue 33 item 18: a text definition past the text size limit (16 MiB by default, about 270,000 layers; text is
parsed in Python) is refused in one line naming the file, its size, the limit and the option that raises it,
before any parsing; under the limit, or with the limit raised, it parses. Run as a user runs the command."""
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sfport import cli as sfport_cli
from sfport.formats import disk

HEAD = 'name: "big"\nlayer { name: "data" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'


def _net(path, layers: int):
    path.write_text(HEAD + "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "x" top: "x" }}\n'
                                   for i in range(layers)))
    return path


def _run(*args, env=None):
    return CliRunner().invoke(sfport_cli.cli, list(args), env=env)


@pytest.fixture(autouse=True)
def _default_limit():
    disk.set_max_text_bytes(None)
    yield
    disk.set_max_text_bytes(None)


def test_a_definition_over_the_limit_is_one_line_naming_it_and_the_option(tmp_path):
    p = _net(tmp_path / "big.prototxt", 2000)          # about 110 KB
    size = p.stat().st_size
    r = _run("--max-text-size", "64K", "inspect", str(p))
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output
    assert str(p) in lines[0] and f"{size:,} bytes" in lines[0] and "65,536-byte limit" in lines[0]
    assert "--max-text-size 1M" in lines[0] and "$SFPORT_MAX_TEXT_BYTES" in lines[0]
    # raised past its size, the same file parses: every layer is in the table
    r = _run("--max-text-size", "1M", "inspect", str(p))
    assert r.exit_code == 0, r.output
    assert "total: 2001 layers" in r.output


def test_the_limit_comes_from_the_environment_and_a_bad_value_is_one_line(tmp_path):
    p = _net(tmp_path / "big.prototxt", 2000)
    r = _run("inspect", str(p), env={"SFPORT_MAX_TEXT_BYTES": "100K"})
    assert r.exit_code == 2 and "102,400-byte limit" in r.output
    r = _run("inspect", str(p), env={"SFPORT_MAX_TEXT_BYTES": "lots"})
    assert r.exit_code == 2 and r.output.strip() == \
        "sfport: error: $SFPORT_MAX_TEXT_BYTES: 'lots' is not a size in bytes (e.g. 123456, 500M, 4G)"
    r = _run("--max-text-size", "0", "inspect", str(p))
    assert r.exit_code == 2 and "--max-text-size" in r.output and "Traceback" not in r.output


def test_the_default_limit_is_16_mib_and_refuses_before_parsing(tmp_path):
    p = tmp_path / "huge.prototxt"
    p.write_text(HEAD + "#" * (16 * 2 ** 20 - len(HEAD)) + "\n")   # 16 MiB + 1 byte of valid text (a comment)
    r = subprocess.run([sys.executable, "-m", "sfport", "inspect", str(p)], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if k != "SFPORT_MAX_TEXT_BYTES"})
    assert r.returncode == 2
    assert "16,777,217 bytes, over the 16,777,216-byte limit" in r.stderr and "--max-text-size 17M" in r.stderr
    q = tmp_path / "ok.prototxt"
    q.write_text(HEAD + "#" * (16 * 2 ** 20 - len(HEAD) - 1) + "\n")    # exactly the limit: read
    r = subprocess.run([sys.executable, "-m", "sfport", "inspect", str(q)], capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items() if k != "SFPORT_MAX_TEXT_BYTES"})
    assert r.returncode == 0, r.stderr
    assert "total: 1 layers" in r.stdout


def test_a_solver_over_the_limit_is_refused_naming_it(tmp_path):
    s = tmp_path / "solver.prototxt"
    s.write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 10\n' + "#" * 5000 + "\n")
    r = _run("--max-text-size", "4K", "train", str(s))
    assert r.exit_code == 2 and str(s) in r.output and "4,096-byte limit" in r.output
    assert "Traceback" not in r.output
