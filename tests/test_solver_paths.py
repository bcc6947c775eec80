"""The one rule a solver's and its nets' relative paths follow (sfport.solver.paths): the current directory when
the path exists there (as caffe opens it), else the solver's folder; each resolved path logged once."""
import re
import shutil
from pathlib import Path

from click.testing import CliRunner

from sfport.cli import cli


def _resolved(stderr: str) -> dict:
    found = re.findall(r"\] Resolved (\w+): (\S+) -> (\S+)$", stderr, flags=re.M)
    kinds = [k for k, _, _ in found]
    assert len(kinds) == len(set(kinds)), f"a path logged twice: {kinds}"
    return {k: (given, Path(resolved)) for k, given, resolved in found}


def _train(solver, cwd, monkeypatch, *extra):
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(cli, ["train", str(solver), "--max-iter", "1", "--workers", "0", *extra])
    assert r.exit_code == 0, r.output
    return r.stderr


def test_paths_from_the_solvers_folder_when_the_current_directory_lacks_them(shared, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    shutil.copytree(shared / "golden" / "solver", proj, ignore=shutil.ignore_patterns("runs"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = _train(proj / "solver_inv.prototxt", elsewhere, monkeypatch, "--weights", str(proj / "init.caffemodel"))
    r = _resolved(log)
    assert r["net"] == ("tiny_sphereface.prototxt", proj / "tiny_sphereface.prototxt")
    assert r["source"] == ("list.txt", proj / "list.txt")
    # an output whose folder exists in neither place: under the current directory, as caffe writes it
    assert r["snapshot_prefix"] == ("runs/inv/final", elsewhere / "runs/inv/final")
    assert (elsewhere / "runs/inv/final_iter_1.caffemodel").is_file()
    assert not (proj / "runs").exists()


def test_the_current_directory_wins_where_the_path_exists_there(shared, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    shutil.copytree(shared / "golden" / "solver", proj, ignore=shutil.ignore_patterns("runs"))
    (proj / "runs/inv").mkdir(parents=True)
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(proj / "tiny_sphereface.prototxt", here / "tiny_sphereface.prototxt")
    shutil.copy(proj / "list.txt", here / "list.txt")
    shutil.copytree(proj / "images", here / "images")
    log = _train(proj / "solver_inv.prototxt", here, monkeypatch, "--weights", str(proj / "init.caffemodel"))
    r = _resolved(log)
    assert r["net"][1] == here / "tiny_sphereface.prototxt"
    assert r["source"][1] == here / "list.txt"
    # the prefix's folder runs/inv exists beside the solver only: the snapshots go there
    assert r["snapshot_prefix"][1] == proj / "runs/inv/final"
    assert (proj / "runs/inv/final_iter_1.caffemodel").is_file()


def test_a_net_in_neither_place_names_both(shared, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "s.prototxt").write_text('net: "missing.prototxt"\nbase_lr: 0.1\nmax_iter: 1\nlr_policy: "fixed"\n')
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["train", "proj/s.prototxt"])
    assert r.exit_code == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "net 'missing.prototxt' not found in the current directory" in line and str(proj) in line
    assert "Traceback" not in r.output
