"""What every bad-input test asserts: one line `sfport: error: ...` naming the file (and what is wrong) on
stderr, nothing on stdout, exit status 2, no traceback - and nothing left on disk (`files_under`)."""
import os

from click.testing import CliRunner

from sfport.cli import cli


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def assert_bad_input(result, path_fragment, what=""):
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("sfport: error: "), line
    assert str(path_fragment) in line, (path_fragment, line)
    assert what in line, (what, line)
    return line


def files_under(folder) -> set:
    """Every path under ``folder`` (files and folders), relative: compare before and after a failed command."""
    out = set()
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(root, n), folder))
    return out


def full_disk_on(call: int, real):
    """A stand-in for a writer ``real(path, ...)`` whose ``call``-th call fails as a full disk would (ENOSPC,
    naming its path); ``.calls`` lists the paths it was given."""
    def write(path, *rest):
        write.calls.append(path)
        if len(write.calls) == call:
            raise OSError(28, "No space left on device", str(path))
        return real(path, *rest)
    write.calls = []
    return write
