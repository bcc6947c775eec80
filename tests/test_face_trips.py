"""The face commands' trip-ups of issue 33, run as the user runs them: `align` of a flat folder against LFW's
landmark list (matched by file name, or one line saying how the names differ), `eval` of a partial LFW (each
fold's count of pairs up front, the folds with pairs evaluated with --skip-missing, evaluation.m exact when all
is there), `embed` of image paths (named relative to --root; eval --list says how names differ) and embed's bad
list lines (the list and the line)."""
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sfport.cli import cli
from sfport.face import align as al
from sfport.face import lfw

from conftest import FIXTURES

LFW = FIXTURES / "lfw"
LANDMARKS = LFW / "lfw_landmark.txt"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, *parts):
    """Exit status 2, one line on stderr starting 'sfport: error: ', holding every part, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stderr.startswith("sfport: error: ") and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.output
    for p in parts:
        assert p in r.stderr, (p, r.stderr)


# ---------------------------------------------------------------------------------------------------------
# item 4: align --landmarks on a flat folder
# ---------------------------------------------------------------------------------------------------------

def test_align_flat_lfw_folder_matches_the_list_by_file_name(tmp_path):
    """The issue's own run: the fixture photos sit flat, lfw_landmark.txt names Person/Person_0001.jpg."""
    out = tmp_path / "out"
    r = run("align", LFW, out, "--landmarks", LANDMARKS, "--workers", "0")
    assert r.exit_code == 0, r.output
    assert r.stdout == (f"aligned 2 of 2 images to {out} (112x96, sphereface); 0 listed in no_face.txt "
                        f"(2 matched to the landmark list by file name)\n")
    assert (out / "no_face.txt").read_text() == ""
    ref = al.read_landmarks(LANDMARKS)
    rows = al.read_landmarks(out / "landmarks.txt")
    assert sorted(rows) == ["Anthony_Hopkins_0001.jpg", "Anthony_Hopkins_0002.jpg"]
    for name, pts in rows.items():
        np.testing.assert_allclose(pts, ref[f"Anthony_Hopkins/{name}"], atol=0.005)
        crop = cv2.imread(str(out / name))
        assert crop.shape == (112, 96, 3)
        # the crop is the one of the photo aligned with its own landmarks
        want = al.align(cv2.imread(str(LFW / name)), ref[f"Anthony_Hopkins/{name}"], al.template("sphereface"))
        assert np.abs(crop.astype(int) - want.astype(int)).mean() < 3   # JPEG quality 95


def test_align_names_that_match_nothing_is_one_line(tmp_path):
    """A folder one level too deep: no photo is in the list, and the error shows both kinds of name."""
    (tmp_path / "in" / "x").mkdir(parents=True)
    for n in ("0001", "0002"):
        shutil.copy(LFW / f"Anthony_Hopkins_{n}.jpg", tmp_path / "in" / "x")
    r = run("align", tmp_path / "in", tmp_path / "out", "--landmarks", LANDMARKS, "--workers", "0")
    one_line_error(r, f"{LANDMARKS}: none of the 2 images under {tmp_path / 'in'} is in the list",
                   "it names 'Aaron_Eckhart/Aaron_Eckhart_0001.jpg'", "(of 13233)",
                   "the folder has 'x/Anthony_Hopkins_0001.jpg', 'x/Anthony_Hopkins_0002.jpg'",
                   "e.g. the list has 'Anthony_Hopkins/Anthony_Hopkins_0001.jpg' where the folder has "
                   "'x/Anthony_Hopkins_0001.jpg'")
    assert not (tmp_path / "out").exists()


def test_align_by_file_name_leaves_an_ambiguous_name_out(tmp_path):
    """Two entries of the list with the photo's file name: that photo is in no_face.txt, saying so."""
    (tmp_path / "in").mkdir()
    for n in ("0001", "0002"):
        shutil.copy(LFW / f"Anthony_Hopkins_{n}.jpg", tmp_path / "in")
    lines = [l for l in LANDMARKS.read_text().splitlines() if l.startswith("Anthony_Hopkins/")]
    one = next(l for l in lines if "_0001" in l)
    (tmp_path / "marks.txt").write_text("\n".join(lines + ["Other/" + one.split("/", 1)[1]]) + "\n")
    r = run("align", tmp_path / "in", tmp_path / "out", "--landmarks", tmp_path / "marks.txt", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith("; 1 listed in no_face.txt (1 matched to the landmark list by file name)\n")
    assert (tmp_path / "out" / "no_face.txt").read_text() == (
        "Anthony_Hopkins_0001.jpg\tits file name matches 2 entries of the list "
        "('Anthony_Hopkins/Anthony_Hopkins_0001.jpg', 'Other/Anthony_Hopkins_0001.jpg')\n")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["Anthony_Hopkins_0002.jpg"]


# ---------------------------------------------------------------------------------------------------------
# a small LFW: 10 folds of 1 same + 1 different pair, aligned 112x96 synthetic faces, a 4-layer SphereFace
# ---------------------------------------------------------------------------------------------------------

PEOPLE = [f"P{k:02d}" for k in range(11)]


@pytest.fixture(scope="module")
def tiny_lfw(tmp_path_factory):
    import synthfaces
    from sfport.formats import caffe_files
    from sfport.netdef import builtin, weight_match
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(3)
    for name in PEOPLE:
        p = synthfaces.identity(rng)
        (root / "lfw" / name).mkdir(parents=True)
        for j in (1, 2, 3):
            cv2.imwrite(str(root / "lfw" / name / f"{name}_{j:04d}.jpg"), synthfaces.render(p, rng))
    lines = ["10\t1"]
    for k in range(10):   # fold k+1: Pk 1-2 (same), Pk 3 - P(k+1) 2 (different)
        lines += [f"{PEOPLE[k]}\t1\t2", f"{PEOPLE[k]}\t3\t{PEOPLE[k + 1]}\t2"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    net = builtin.sphereface_deploy(4)
    m = weight_match.with_random_weights(caffe_files.CaffeModel.from_net(net, None), seed=2)
    caffe_files.write_caffemodel(root / "sf4.caffemodel", m)
    names = sorted(str(p.relative_to(root / "lfw")) for p in (root / "lfw").rglob("*.jpg"))
    (root / "all.txt").write_text("\n".join(names) + "\n")
    r = run("embed", "-m", root / "sf4.caffemodel", "--list", root / "all.txt", "--root", root / "lfw",
            "-o", root / "all.npy", "--workers", "0")
    assert r.exit_code == 0, r.output
    return root


def features_of(root) -> dict:
    return dict(zip((root / "all.txt").read_text().split(), np.load(root / "all.npy").astype(np.float64)))


def evaluation_m(L, R, same, folds):
    """evaluation.m over the folds present (written out, as tests/test_lfw.py's reference): per fold, the other
    folds' mean subtracted, cosine, the mean of every best threshold of -1:1e-4:1, strict comparisons."""
    grid = np.arange(-10000, 10001) / 10000.0
    out = []
    for k in np.unique(folds):
        val, test = folds != k, folds == k
        mu = np.concatenate([L[val], R[val]]).mean(axis=0)
        l, r = L - mu, R - mu
        s = (l / np.linalg.norm(l, axis=1)[:, None] * (r / np.linalg.norm(r, axis=1)[:, None])).sum(1)
        acc = np.array([(np.sum(s[val][same[val]] > t) + np.sum(s[val][~same[val]] < t)) / val.sum() for t in grid])
        t = grid[acc == acc.max()].mean()
        st, ft = s[test], same[test]
        out.append((int(k) + 1, (np.sum(st[ft] > t) + np.sum(st[~ft] < t)) / test.sum(), t, int(test.sum())))
    return out


def check_folds(doc, pairs, f):
    ref = evaluation_m(np.stack([f[p.left] for p in pairs]), np.stack([f[p.right] for p in pairs]),
                       np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
    assert [x["fold"] for x in doc["folds"]] == [k for k, *_ in ref]
    assert [x["pairs"] for x in doc["folds"]] == [n for *_, n in ref]
    assert [x["accuracy"] for x in doc["folds"]] == pytest.approx([a for _, a, _, _ in ref], abs=1e-12)
    assert [x["threshold"] for x in doc["folds"]] == pytest.approx([t for _, _, t, _ in ref], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# item 5: eval on a partial LFW
# ---------------------------------------------------------------------------------------------------------

def test_eval_complete_lfw_is_evaluation_m_and_says_nothing_more(tiny_lfw, tmp_path):
    r = run("eval", "-m", tiny_lfw / "sf4.caffemodel", "--lfw-dir", tiny_lfw / "lfw", "--pairs",
            tiny_lfw / "pairs.txt", "--no-cache", "--workers", "0", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("fold  ACC      threshold\n") and "pairs with both images" not in r.stdout
    assert "no pair left" not in r.stdout and "skipped" not in r.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["folds_without_pairs"] == [] and doc["skipped_pairs"] == 0 and doc["pairs"] == 20
    check_folds(doc, lfw.read_pairs(tiny_lfw / "pairs.txt"), features_of(tiny_lfw))


def partial(tiny_lfw, tmp_path, gone):
    lfw_dir = tmp_path / "lfw"
    shutil.copytree(tiny_lfw / "lfw", lfw_dir)
    for rel in gone:
        (lfw_dir / rel).unlink()
    return lfw_dir


# fold 1 loses both its pairs (P00 1-2 and P00 3 - P01 2), fold 2 its different one (P01 3 - P02 2)
GONE = ["P00/P00_0001.jpg", "P00/P00_0003.jpg", "P01/P01_0003.jpg"]
COUNTS = ("pairs with both images, by fold: 1: 0/2, 2: 1/2, 3: 2/2, 4: 2/2, 5: 2/2, 6: 2/2, 7: 2/2, 8: 2/2, "
          "9: 2/2, 10: 2/2 (17 of 20)")


def test_eval_partial_lfw_says_each_folds_pairs_up_front(tiny_lfw, tmp_path):
    lfw_dir = partial(tiny_lfw, tmp_path, GONE)
    args = ["eval", "-m", tiny_lfw / "sf4.caffemodel", "--lfw-dir", lfw_dir, "--pairs", tiny_lfw / "pairs.txt",
            "--no-cache", "--workers", "0"]
    r = run(*args)
    one_line_error(r, f"{lfw_dir / 'P00/P00_0001.jpg'}: missing (3 of the 31 images of the pairs are missing; "
                      f"{COUNTS}): --skip-missing evaluates those")
    r = run(*args, "--skip-missing", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == COUNTS
    assert [l.split()[0] for l in lines[3:12]] == [str(k) for k in range(2, 11)]   # the table: folds 2..10
    assert "skipped 3 of 20 pairs (an image missing); each fold's accuracy is over the pairs it has left" in lines
    assert "evaluated 9 folds (2, 3, 4, 5, 6, 7, 8, 9, 10: 17 pairs); no pair left in fold 1" in lines
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["folds_without_pairs"] == [1] and doc["skipped_pairs"] == 3 and doc["pairs"] == 17
    kept = [p for p in lfw.read_pairs(tiny_lfw / "pairs.txt") if p.left not in GONE and p.right not in GONE]
    check_folds(doc, kept, features_of(tiny_lfw))   # evaluation.m on the folds that have pairs
    again = lfw.read_report(tmp_path / "r.json")   # the report reads back with its fold numbers
    assert [f.fold for f in again.folds] == list(range(2, 11)) and again.folds_without_pairs == [1]
    # the same from the features of the photos that are there, and a list without the others
    (tmp_path / "part.txt").write_text("".join(n + "\n" for n in (tiny_lfw / "all.txt").read_text().split()
                                               if n not in GONE))
    f = features_of(tiny_lfw)
    np.save(tmp_path / "part.npy", np.stack([f[n] for n in (tmp_path / "part.txt").read_text().split()]))
    r = run("eval", "--features", tmp_path / "part.npy", "--list", tmp_path / "part.txt", "--pairs",
            tiny_lfw / "pairs.txt", "--skip-missing", "--report", tmp_path / "r2.json")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == COUNTS
    doc2 = json.loads((tmp_path / "r2.json").read_text())
    assert doc2["folds"] == pytest.approx(doc["folds"]) and doc2["folds_without_pairs"] == [1]


def test_eval_skip_missing_needs_two_folds_with_pairs(tiny_lfw, tmp_path):
    keep = {f"{PEOPLE[2]}/{PEOPLE[2]}_000{j}.jpg" for j in (1, 2, 3)} | {"P03/P03_0002.jpg"}   # fold 3 only
    lfw_dir = partial(tiny_lfw, tmp_path, [str(p.relative_to(tiny_lfw / "lfw"))
                                           for p in (tiny_lfw / "lfw").rglob("*.jpg")
                                           if str(p.relative_to(tiny_lfw / "lfw")) not in keep])
    r = run("eval", "-m", tiny_lfw / "sf4.caffemodel", "--lfw-dir", lfw_dir, "--pairs", tiny_lfw / "pairs.txt",
            "--no-cache", "--workers", "0", "--skip-missing")
    assert r.stdout.startswith("pairs with both images, by fold: 1: 0/2, 2: 0/2, 3: 2/2, 4: 0/2")
    one_line_error(r, f"{lfw_dir}: --skip-missing: only fold 3 has pairs whose two images are there (18 of 20 "
                      f"pairs skipped): the protocol chooses each fold's threshold on the other folds, so it needs two")


# ---------------------------------------------------------------------------------------------------------
# items 12 and 13: embed's names and its bad list lines
# ---------------------------------------------------------------------------------------------------------

def test_embed_names_image_arguments_relative_to_root(tiny_lfw, tmp_path, monkeypatch):
    shutil.copytree(tiny_lfw / "lfw", tmp_path / "lfw")
    monkeypatch.chdir(tmp_path)
    names = (tiny_lfw / "all.txt").read_text().split()
    r = run("embed", *[f"lfw/{n}" for n in names], "--root", "lfw", "-m", tiny_lfw / "sf4.caffemodel",
            "-o", "f.npy", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert r.stdout == "wrote f.npy: 33 x 1024\n"
    assert (tmp_path / "f.txt").read_text().split() == names   # relative to the LFW root, as pairs.txt names them
    np.testing.assert_array_equal(np.load("f.npy"), np.load(tiny_lfw / "all.npy"))
    r = run("eval", "--features", "f.npy", "--list", "f.txt", "--pairs", tiny_lfw / "pairs.txt")
    assert r.exit_code == 0, r.output
    assert "AVE" in r.stdout


def test_eval_list_says_how_its_names_differ(tiny_lfw, tmp_path, monkeypatch):
    """embed of paths without --root names them from the working folder; eval --list shows an example of each."""
    shutil.copytree(tiny_lfw / "lfw", tmp_path / "lfw")
    monkeypatch.chdir(tmp_path)
    some = ["P00/P00_0001.jpg", "P00/P00_0002.jpg"]
    r = run("embed", *[f"lfw/{n}" for n in some], "-m", tiny_lfw / "sf4.caffemodel", "-o", "f.npy",
            "--workers", "0")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "f.txt").read_text() == "lfw/P00/P00_0001.jpg\nlfw/P00/P00_0002.jpg\n"
    r = run("eval", "--features", "f.npy", "--list", "f.txt", "--pairs", tiny_lfw / "pairs.txt")
    one_line_error(r, "f.txt: 31 images of the pairs are not listed, e.g. P00/P00_0001.jpg; the list names it "
                      "'lfw/P00/P00_0001.jpg': its names carry the prefix 'lfw/', where they must be relative to "
                      "the LFW root (embed --root ROOT writes them so); pairs with both images, by fold: 1: 0/2")


def test_embed_bad_image_names_the_list_and_line(tiny_lfw, tmp_path):
    (tmp_path / "list.txt").write_text("P00/P00_0001.jpg\n\nP00/P00_0009.jpg\n")
    r = run("embed", "--list", tmp_path / "list.txt", "--root", tiny_lfw / "lfw", "-m", tiny_lfw / "sf4.caffemodel",
            "-o", tmp_path / "f.npy", "--workers", "0")
    one_line_error(r, f"{tmp_path / 'list.txt'}: line 3: image '{tiny_lfw / 'lfw' / 'P00/P00_0009.jpg'}' is missing")
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.txt").exists()
    shutil.copytree(tiny_lfw / "lfw", tmp_path / "lfw")
    cv2.imwrite(str(tmp_path / "lfw" / "small.jpg"), np.full((50, 40, 3), 90, np.uint8))
    (tmp_path / "list.txt").write_text("P00/P00_0001.jpg 0\nsmall.jpg 0\n")
    r = run("embed", "--list", tmp_path / "list.txt", "--root", tmp_path / "lfw", "-m", tiny_lfw / "sf4.caffemodel",
            "-o", tmp_path / "f.npy", "--workers", "0")
    one_line_error(r, f"{tmp_path / 'list.txt'}: line 2: {tmp_path / 'lfw' / 'small.jpg'}: the image is 50x40, the "
                      f"net takes 112x96")


def test_help_says_it():
    r = run("embed", "--help")
    assert r.exit_code == 0
    assert "IMAGES inside it are listed relative to it" in " ".join(r.stdout.split())
    assert "sfport embed lfw-112X96/A/A_0001.jpg lfw-112X96/B/B_0001.jpg --root lfw-112X96" in r.stdout
    r = run("eval", "--help")
    assert r.exit_code == 0 and "folds left without pairs are left out" in " ".join(r.stdout.split())
    r = run("align", "--help")
    assert r.exit_code == 0 and "match a landmark list's entries by file name" in " ".join(r.stdout.split())


def test_eval_images_without_landmarks_are_counted_as_missing(tiny_lfw):
    """With --landmarks, an image the list lacks counts as missing: the error names the list and the image."""
    args = ["eval", "-m", tiny_lfw / "sf4.caffemodel", "--lfw-dir", tiny_lfw / "lfw", "--pairs",
            tiny_lfw / "pairs.txt", "--landmarks", LANDMARKS, "--no-cache", "--workers", "0"]
    r = run(*args)
    one_line_error(r, f"{LANDMARKS}: no landmarks for 'P00/P00_0001.jpg' (31 of the 31 images of the pairs are "
                      f"missing or have no landmarks; pairs with both images, by fold: 1: 0/2, 2: 0/2")
    r = run(*args, "--skip-missing")
    assert r.stdout.startswith("pairs with both images, by fold: 1: 0/2, ")
    one_line_error(r, f"{tiny_lfw / 'lfw'}: --skip-missing: no fold has pairs whose two images are there with "
                      f"landmarks (20 of 20 pairs skipped)")
