"""`sfport align --all-faces` (a crop per face MTCNN finds, on a photo made of two LFW photos side by side, checked
against lfw_landmark.txt) and `--ext png` (lossless crops: they decode to exactly the warped array)."""
import shutil

import cv2
import numpy as np
from click.testing import CliRunner

from sfport.face import align as al
from sfport.cli import cli

from conftest import FIXTURES

LANDMARKS = FIXTURES / "lfw" / "lfw_landmark.txt"
HOPKINS = [FIXTURES / "lfw" / f"Anthony_Hopkins_000{n}.jpg" for n in (1, 2)]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_all_faces_writes_a_crop_per_face(tmp_path):
    (tmp_path / "in" / "pair").mkdir(parents=True)
    left, right = (cv2.imread(str(p)) for p in HOPKINS)   # 250 x 250 each, one face each
    cv2.imwrite(str(tmp_path / "in" / "pair" / "two.png"), np.hstack([left, right]))
    r = run("align", tmp_path / "in", tmp_path / "out", "--mtcnn", FIXTURES / "mtcnn", "--all-faces", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("aligned 2 faces in 1 of 1 images")
    crops = sorted(p.name for p in (tmp_path / "out" / "pair").iterdir())
    assert crops == ["two_face1.png", "two_face2.png"]
    assert all(cv2.imread(str(tmp_path / "out" / "pair" / c)).shape == (112, 96, 3) for c in crops)
    rows = al.read_landmarks(tmp_path / "out" / "landmarks.txt")
    assert list(rows) == ["pair/two_face1.png", "pair/two_face2.png"]
    ref = al.read_landmarks(LANDMARKS)
    # face 1 is the one nearest the centre: the right photo's (its box centre is 122 px from it, the left's 126)
    expect = {"pair/two_face1.png": ref["Anthony_Hopkins/Anthony_Hopkins_0002.jpg"] + [250, 0],
              "pair/two_face2.png": ref["Anthony_Hopkins/Anthony_Hopkins_0001.jpg"]}
    for name, pts in rows.items():
        assert np.hypot(*(pts - expect[name]).T).max() <= 2.5, name   # measured: 1.68 and 1.23 px
    # without --all-faces the one crop is face 1's, under the photo's own name
    r = run("align", tmp_path / "in", tmp_path / "one", "--mtcnn", FIXTURES / "mtcnn", "--workers", "0")
    assert r.exit_code == 0 and r.stdout.startswith("aligned 1 of 1 images")
    assert [p.name for p in (tmp_path / "one" / "pair").iterdir()] == ["two.png"]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "one" / "pair" / "two.png")),
                                  cv2.imread(str(tmp_path / "out" / "pair" / "two_face1.png")))
    assert list(al.read_landmarks(tmp_path / "one" / "landmarks.txt")) == ["pair/two.png"]
    # a landmark list has one face per image
    r = run("align", tmp_path / "in", tmp_path / "o2", "--landmarks", LANDMARKS, "--all-faces")
    assert r.exit_code == 2 and "--all-faces needs --mtcnn" in r.stderr and len(r.stderr.splitlines()) == 1


def test_ext_png_is_lossless(tmp_path):
    src = tmp_path / "in" / "Anthony_Hopkins"
    src.mkdir(parents=True)
    for p in HOPKINS:
        shutil.copy(p, src)
    marks = al.read_landmarks(LANDMARKS)
    r = run("align", tmp_path / "in", tmp_path / "png", "--landmarks", LANDMARKS, "--ext", "png", "--workers", "0")
    assert r.exit_code == 0, r.output
    r = run("align", tmp_path / "in", tmp_path / "jpg", "--landmarks", LANDMARKS, "--workers", "0")
    assert r.exit_code == 0, r.output
    tmpl = al.template("sphereface")
    for p in HOPKINS:
        rel = f"Anthony_Hopkins/{p.name}"
        warped = al.warp(cv2.imread(str(p)), al.cp2tform_similarity(marks[rel], tmpl.points), tmpl.size)
        png = tmp_path / "png" / rel.replace(".jpg", ".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(cv2.imread(str(png)), warped)
        jpg = tmp_path / "jpg" / rel   # by default the photo's extension: JPEG, close but not exact
        assert jpg.read_bytes()[:2] == b"\xff\xd8"
        diff = np.abs(cv2.imread(str(jpg)).astype(int) - warped)
        assert 0 < diff.mean() < 3
    # the landmark list still names the photos (a list for the originals)
    assert set(al.read_landmarks(tmp_path / "png" / "landmarks.txt")) == {f"Anthony_Hopkins/{p.name}" for p in HOPKINS}
    # two photos that would give the same crop name
    cv2.imwrite(str(src / "Anthony_Hopkins_0001.png"), cv2.imread(str(HOPKINS[0])))
    r = run("align", tmp_path / "in", tmp_path / "x", "--landmarks", LANDMARKS, "--ext", "png")
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1
    assert "Anthony_Hopkins_0001.jpg and Anthony_Hopkins/Anthony_Hopkins_0001.png would both be written as" in r.stderr
    assert not (tmp_path / "x").exists()
