"""The ROC figure of `eval --plot` (matplotlib): log FAR axis, one curve per run, the operating points where the
report's metrics put them (and the protocol's point checked against evaluation.m's rule written out here), labels
clear of the tick labels; `--compare` draws earlier reports again, and refuses reports without ROC data."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sfport.face import lfw
from sfport.report import plots
from sfport.cli import cli

from test_mat import image_features, write_pairs


def pair_features(tmp_path, seed=0):
    pairs = lfw.read_pairs(write_pairs(tmp_path / "pairs.txt"))
    feats = image_features(seed=seed)
    return (pairs, np.stack([feats[p.left] for p in pairs]), np.stack([feats[p.right] for p in pairs]),
            np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))


def protocol_point(L, R, same, folds):
    """TAR and FAR of the pairs as evaluation.m's rule calls them: fold k's mean-subtracted cosine > its threshold
    (the mean of the best thresholds of -1:1e-4:1 on the other folds)."""
    grid = np.arange(-10000, 10001) / 10000
    accepted = np.zeros(len(same), bool)
    for k in range(10):
        val, test = folds != k, folds == k
        mu = np.concatenate([L[val], R[val]]).mean(0)
        l, r = L - mu, R - mu
        s = (l * r).sum(1) / np.linalg.norm(l, axis=1) / np.linalg.norm(r, axis=1)
        acc = np.array([((s[val][same[val]] > t).sum() + (s[val][~same[val]] < t).sum()) / val.sum() for t in grid])
        accepted[test] = s[test] > grid[acc == acc.max()].mean()
    return accepted[same].mean(), accepted[~same].mean()


def by_gid(fig):
    return {line.get_gid(): line for line in fig.axes[0].lines if line.get_gid()}


def test_roc_figure(tmp_path):
    _, L, R, same, folds = pair_features(tmp_path)
    reports = {"a": lfw.evaluate(L, R, same, folds), "b": lfw.evaluate(L[:, :8], R[:, :8], same, folds)}
    fig = lfw.roc_figure(reports)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    lines = by_gid(fig)
    assert sorted(g for g in lines if g.count(":") == 1) == ["roc:0", "roc:1"]   # one curve per run
    for k, rep in enumerate(reports.values()):
        m = rep.metrics
        for key, want in (("far_1e-3", (1e-3, m["tar_at_far_1e-3"])), ("far_1e-2", (1e-2, m["tar_at_far_1e-2"])),
                          ("threshold", (m["far_at_threshold"], m["tar_at_threshold"]))):
            line = lines[f"roc:{k}:{key}"]
            assert (line.get_xdata()[0], line.get_ydata()[0]) == want
        far, tar, _ = lfw.roc_curve(rep.scores, rep.same)
        lo = ax.get_xlim()[0]
        np.testing.assert_array_equal(lines[f"roc:{k}"].get_xdata(), np.maximum(far, lo))
        np.testing.assert_array_equal(lines[f"roc:{k}"].get_ydata(), tar)
    tar, far = protocol_point(L, R, same, folds)
    assert (reports["a"].metrics["tar_at_threshold"], reports["a"].metrics["far_at_threshold"]) == (tar, far)
    assert 0 < far < 1 and 0 < tar < 1
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == f"a: accuracy {100 * reports['a'].accuracy:.2f}%, AUC {reports['a'].metrics['auc']:.4f}"
    assert len(legend) == 2 + 3   # the runs, then the three kinds of operating point
    fig.canvas.draw()   # the axis labels clear of the tick labels
    renderer = fig.canvas.get_renderer()
    for axis, ticks in ((ax.xaxis, ax.get_xticklabels()), (ax.yaxis, ax.get_yticklabels())):
        label = axis.label.get_window_extent(renderer)
        assert all(not label.overlaps(t.get_window_extent(renderer)) for t in ticks if t.get_text())
    svg = plots.figure_bytes(fig, "svg")
    assert svg.startswith(b"<?xml") and b'id="roc:1:threshold"' in svg


def test_report_round_trip_redraws_the_same_figure(tmp_path):
    _, L, R, same, folds = pair_features(tmp_path)
    rep = lfw.evaluate(L, R, same, folds, "insightface")
    (tmp_path / "r.json").write_text(json.dumps(rep.as_dict()))
    again = lfw.read_report(tmp_path / "r.json")
    a, b = by_gid(lfw.roc_figure({"x": rep})), by_gid(lfw.roc_figure({"x": again}))
    assert a.keys() == b.keys()
    for g in a:
        np.testing.assert_array_equal(a[g].get_xydata(), b[g].get_xydata())
    assert again.accuracy == rep.accuracy and again.metrics == rep.metrics


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_eval_plot_and_compare(tmp_path):
    pairs, *_ = pair_features(tmp_path)
    feats = image_features()
    names = sorted(feats)
    np.save(tmp_path / "f.npy", np.stack([feats[n] for n in names]))
    (tmp_path / "f.txt").write_text("\n".join(names) + "\n")
    common = ["eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "f.txt", "--pairs", tmp_path / "pairs.txt"]
    r = run(*common, "--report", tmp_path / "first.json", "--plot", tmp_path / "roc.png")
    assert r.exit_code == 0, r.output
    assert cv2.imread(str(tmp_path / "roc.png")).ndim == 3
    doc = json.loads((tmp_path / "first.json").read_text())
    assert len(doc["scores"]) == len(doc["same"]) == len(pairs) and doc["skipped_pairs"] == 0
    assert doc["same"] == [p.same for p in pairs]
    r = run(*common, "--protocol", "facenet", "--plot", tmp_path / "both.svg", "--compare", tmp_path / "first.json",
            "--compare", tmp_path / "first.json")
    assert r.exit_code == 0, r.output
    svg = (tmp_path / "both.svg").read_bytes()
    assert all(f'id="roc:{k}"'.encode() in svg for k in range(3)) and b'id="roc:3"' not in svg
    assert b"first (sphereface)" in svg and b"this run (facenet)" in svg
    r = run(*common, "--plot", tmp_path / "roc.pdf")
    assert r.exit_code == 0 and (tmp_path / "roc.pdf").read_bytes().startswith(b"%PDF")
    # an old report (no scores), a broken one, no --plot, a plot format matplotlib is not asked for
    old = {k: v for k, v in doc.items() if k not in ("scores", "same")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "short.json").write_text(json.dumps({**doc, "same": doc["same"][1:]}))
    (tmp_path / "text.json").write_text("not json")
    for args, where, what in [
            (["--plot", tmp_path / "p.png", "--compare", tmp_path / "old.json"], "old.json", "has no ROC data"),
            (["--plot", tmp_path / "p.png", "--compare", tmp_path / "short.json"], "short.json",
             f"'same' must be a list of {len(pairs)} true/false flags"),
            (["--plot", tmp_path / "p.png", "--compare", tmp_path / "text.json"], "text.json", "not a JSON report"),
            (["--compare", tmp_path / "first.json"], None, "--compare draws earlier reports in the ROC figure"),
            (["--plot", tmp_path / "p.jpg"], "p.jpg", "a plot is written as .png, .svg, .pdf")]:
        r = run(*common, *args)
        assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and what in r.stderr, r.output
        assert where is None or f"{tmp_path / where}:" in r.stderr
        assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("key", ["folds", "auc", "far_at_threshold", "protocol"])
def test_compare_report_structure_is_checked(tmp_path, key):
    _, L, R, same, folds = pair_features(tmp_path)
    doc = lfw.evaluate(L, R, same, folds).as_dict()
    del doc[key]
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(Exception, match="not an sfport eval --report"):
        lfw.read_report(tmp_path / "r.json")
