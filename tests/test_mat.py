"""MAT-files for the face commands: `embed -o x.mat` (read back with scipy.io.loadmat), `eval --features x.mat` in
sfport's layout and in evaluation.m's (github.com/wy1iu/sphereface test/code/evaluation.m: `save result/pairs.mat
pairs`, a struct array with fields fileL, fileR, fold, flag, featureL, featureR, each feature a column; and the
featureLs / featureRs matrices it stacks from it, one column per pair), written here by scipy.io.savemat; bad
MAT-files are one line and exit status 2."""
import json

import numpy as np
import scipy.io
from click.testing import CliRunner

from sfport.face import lfw
from sfport.cli import cli

from test_lfw import reference_evaluation, small_lfw  # noqa: F401 - small_lfw is a fixture

PEOPLE = [f"Person_{chr(65 + i)}{chr(97 + i)}" for i in range(12)]


def write_pairs(path):
    """A pairs.txt of 10 folds of 3 same + 3 different pairs (the real file's format)."""
    lines = ["10\t3"]
    for fold in range(10):
        for k in range(3):
            lines.append(f"{PEOPLE[(fold + k) % 12]}\t{1 + k % 2}\t{3 + k % 2}")
        for k in range(3):
            lines.append(f"{PEOPLE[(fold + k) % 12]}\t{1 + k}\t{PEOPLE[(fold + k + 5) % 12]}\t{2 + k % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


def image_features(dim=16, seed=0):
    """A feature per image of the pairs: its person's centre plus noise (so the folds make mistakes)."""
    rng = np.random.default_rng(seed)
    feats = {}
    for name in PEOPLE:
        centre = rng.standard_normal(dim)
        for j in range(1, 5):
            feats[f"{name}/{name}_{j:04d}.jpg"] = centre + 1.1 * rng.standard_normal(dim)
    return feats


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def folds_of(r, path):
    assert r.exit_code == 0, r.output
    doc = json.loads(path.read_text())
    return [(f["accuracy"], f["threshold"]) for f in doc["folds"]]


def test_eval_reads_evaluation_m_pairs_mat(tmp_path):
    pairs_txt = write_pairs(tmp_path / "pairs.txt")
    pairs = lfw.read_pairs(pairs_txt)
    feats = image_features()
    names = sorted(feats)
    np.save(tmp_path / "f.npy", np.stack([feats[n] for n in names]))
    (tmp_path / "f.txt").write_text("\n".join(names) + "\n")
    # evaluation.m's struct array, as `save result/pairs.mat pairs` leaves it (1 x N struct, features as columns)
    fields = ["fileL", "fileR", "fold", "flag", "featureL", "featureR"]
    s = np.zeros((1, len(pairs)), dtype=[(f, object) for f in fields])
    for i, p in enumerate(pairs):
        s[0, i] = (f"/data/lfw-112X96/{p.left}", f"/data/lfw-112X96/{p.right}", float(np.ceil((i + 1) / 6)),
                   1.0 if p.same else -1.0, feats[p.left][:, None], feats[p.right][:, None])
    scipy.io.savemat(tmp_path / "pairs.mat", {"pairs": s})
    # ... and the matrices evaluation.m stacks from it: featureLs = cell2mat(pairs(:, 5)'), one column per pair
    scipy.io.savemat(tmp_path / "stacked.mat", {"featureLs": np.stack([feats[p.left] for p in pairs], axis=1),
                                                "featureRs": np.stack([feats[p.right] for p in pairs], axis=1)})
    npy = folds_of(run("eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "f.txt", "--pairs", pairs_txt,
                       "--report", tmp_path / "npy.json"), tmp_path / "npy.json")
    for mat in ("pairs.mat", "stacked.mat"):
        got = folds_of(run("eval", "--features", tmp_path / mat, "--pairs", pairs_txt, "--report",
                           tmp_path / "mat.json"), tmp_path / "mat.json")
        assert got == npy
    # and both are evaluation.m's numbers, written out independently
    L = np.stack([feats[p.left] for p in pairs])
    R = np.stack([feats[p.right] for p in pairs])
    accs, thrs = reference_evaluation(L, R, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
    assert [a for a, _ in npy] == accs.tolist() and [t for _, t in npy] == thrs.tolist()
    assert 0.5 < np.mean(accs) < 1.0


def test_embed_mat_equals_npy_and_evaluates_alike(small_lfw, tmp_path):
    names = sorted(str(p.relative_to(small_lfw / "lfw")) for p in (small_lfw / "lfw").rglob("*.jpg"))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    common = ["embed", "-m", small_lfw / "sf4.caffemodel", "--list", tmp_path / "list.txt", "--root",
              small_lfw / "lfw", "--workers", "0"]
    assert run(*common, "-o", tmp_path / "f.npy").exit_code == 0
    r = run(*common, "-o", tmp_path / "f.mat")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'f.mat'}: 48 x 1024"
    assert (tmp_path / "f.txt").read_text() == "\n".join(names) + "\n"   # the .npy's list, untouched
    doc = scipy.io.loadmat(tmp_path / "f.mat")
    npy = np.load(tmp_path / "f.npy")
    assert doc["features"].dtype == np.float32 and np.array_equal(doc["features"], npy)
    assert [str(c[0]) for c in doc["images"][:, 0]] == names
    reports = []
    for features in (["--features", tmp_path / "f.npy", "--list", tmp_path / "f.txt"],
                     ["--features", tmp_path / "f.mat"]):
        r = run("eval", *features, "--pairs", small_lfw / "pairs.txt", "--report", tmp_path / "r.json")
        assert r.exit_code == 0, r.output
        reports.append(json.loads((tmp_path / "r.json").read_text()))
    assert reports[0] == reports[1]


def test_bad_mat_files_are_one_line(tmp_path):
    pairs_txt = write_pairs(tmp_path / "pairs.txt")
    pairs = lfw.read_pairs(pairs_txt)
    feats = image_features()
    names = sorted(feats)
    good = np.stack([feats[n] for n in names])
    cell = np.empty((len(names), 1), object)
    cell[:, 0] = names
    (tmp_path / "text.mat").write_text("features = [1 2 3]\n")
    (tmp_path / "empty.mat").write_bytes(b"")
    (tmp_path / "l.txt").write_text("\n".join(names[:5]) + "\n")
    cases = {
        "novars.mat": ({"other": good}, "no variable 'features'"),
        "noimages.mat": ({"features": good}, "no variable 'images' (the image of each row): give --list"),
        "rows.mat": ({"features": good[:-1], "images": cell}, "variable 'features' has 47 rows"),
        "3d.mat": ({"features": good[None], "images": cell}, "variable 'features' must be a 2-D float"),
        "int.mat": ({"features": good.astype(np.int32), "images": cell}, "not a 48x16 int32 matrix"),
        "nan.mat": ({"features": np.where(np.arange(16) == 3, np.nan, good), "images": cell},
                    "variable 'features' holds a NaN or infinite value at (1, 4)"),
        "imgs.mat": ({"features": good, "images": good}, "variable 'images' must be a cell array of image paths"),
        "cols.mat": ({"featureLs": np.ones((16, 59)), "featureRs": np.ones((16, 59))},
                     "variable 'featureLs' has 59 columns (16x59 float64 matrix) for 60 pairs"),
        "half.mat": ({"featureLs": np.ones((16, 60))}, "no variable 'featureRs'"),
        "struct.mat": ({"pairs": np.ones((1, 60))}, "variable 'pairs' must be evaluation.m's struct array"),
    }
    for name, (variables, _) in cases.items():
        scipy.io.savemat(tmp_path / name, variables)
    s = np.zeros((1, len(pairs)), dtype=[(f, object) for f in ("fileL", "fold", "flag", "featureL", "featureR")])
    for i, p in enumerate(pairs):
        s[0, i] = (p.left, float(p.fold + 1), 1.0 if p.same else -1.0, feats[p.left][:, None],
                   feats[p.right][:, None])
    flipped, swapped = s.copy(), s.copy()
    flipped["flag"][0, 4] = np.array([[1.0]])   # pair 5 is a different pair
    swapped["fileL"][0, :2] = s["fileL"][0, 1::-1]
    scipy.io.savemat(tmp_path / "flag.mat", {"pairs": flipped})
    scipy.io.savemat(tmp_path / "order.mat", {"pairs": swapped})
    scipy.io.savemat(tmp_path / "short.mat", {"pairs": s[:, :59]})
    cases.update({"flag.mat": (None, "pairs(5).flag is 1, but pair 5 of"),
                  "order.mat": (None, f"pairs(1).fileL is '{pairs[1].left}', not pair 1's image {pairs[0].left}"),
                  "short.mat": (None, "variable 'pairs' has 59 elements for the 60 pairs"),
                  "text.mat": (None, "not a MAT-file (features MAT-file)"),
                  "empty.mat": (None, "empty file, not a MAT-file")})
    for name, (_, what) in cases.items():
        r = run("eval", "--features", tmp_path / name, "--pairs", pairs_txt)
        assert r.exit_code == 2, (name, r.output)
        assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"sfport: error: {tmp_path / name}")
        assert what in r.stderr, (name, r.stderr)
    # a list that lacks images of the pairs: named, unless --skip-missing
    scipy.io.savemat(tmp_path / "ok.mat", {"features": good[:5], "images": cell[:5]})
    r = run("eval", "--features", tmp_path / "ok.mat", "--pairs", pairs_txt)
    assert r.exit_code == 2 and "images of the pairs are not listed" in r.stderr
    r = run("eval", "--features", tmp_path / "ok.mat", "--pairs", pairs_txt, "--skip-missing")
    assert r.exit_code == 2 and "--skip-missing: only fold 1 has pairs whose two images are listed (59 of 60 " \
                                "pairs skipped)" in r.stderr   # only Person_Aa 1-3, in fold 1, is listed
