"""Bad data input to the face commands (issue 14): images, lists, pairs, landmarks, features arrays, outputs, crop
sizes and untrained models. Each case is one line `sfport: error: FILE: ...` with exit status 2 and nothing left on
disk, or, where a command skips bad images, the image listed with its reason; none may hang, allocate what a
header claims, or print the decoders' own warnings."""
import io
import json
import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from badinput import assert_bad_input, files_under, full_disk_on, run
from sfport.face import align, lfw
from sfport.data import imagedata, images
from sfport.formats import disk
from sfport.errors import CaffeFileError

LANDMARKS = [30.3, 51.7, 65.5, 51.5, 48.0, 71.7, 33.5, 92.4, 62.7, 92.2]   # the SphereFace template: a 96x112 face


def png_header(w, h) -> bytes:
    """A valid little PNG whose IHDR claims w x h pixels (zlib data for a few rows only)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def face(seed=0, size=(112, 96)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)


def jpeg(img) -> bytes:
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """sf4 with random weights (a trained model as far as the commands can tell) and its bare definition."""
    from sfport.formats import caffe_files
    from sfport.netdef import weight_match, builtin
    d = tmp_path_factory.mktemp("model")
    net = builtin.sphereface_deploy(4)
    caffe_files.write_caffemodel(d / "sf4.caffemodel",
                                 weight_match.with_random_weights(caffe_files.CaffeModel.from_net(net, None), seed=1))
    caffe_files.write_prototxt(d / "sf4.prototxt", net)
    return d


@pytest.fixture
def photos(tmp_path):
    """A folder of good and bad images and a landmark list naming every one of them."""
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "a" / "good.jpg").write_bytes(jpeg(face()))
    (src / "a" / "huge.png").write_bytes(png_header(100000, 100000))
    (src / "a" / "trunc.jpg").write_bytes(jpeg(face(1))[:3000])
    (src / "a" / "text.jpg").write_bytes(b"hello world")
    marks = tmp_path / "marks.txt"
    marks.write_text("".join(f"a/{n}\t" + "\t".join(map(str, LANDMARKS)) + "\n"
                             for n in ("good.jpg", "huge.png", "trunc.jpg", "text.jpg")))
    return src, marks


def landmark_line(name, values):
    return f"{name}\t" + "\t".join(str(v) for v in values) + "\n"


# ---------------------------------------------------------------------------------------------------------
# 1. the image reader
# ---------------------------------------------------------------------------------------------------------

def test_an_oversized_header_is_refused_before_anything_is_decoded(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    p.write_bytes(png_header(100000, 100000))
    with pytest.raises(cv2.error, match="CV_IO_MAX_IMAGE_PIXELS"):   # what OpenCV alone does with it
        cv2.imread(str(p))
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded an image whose header is too large"))
    with pytest.raises(CaffeFileError) as e:
        images.read_image(p)
    assert str(e.value) == (f"{p}: too large: its PNG header claims 100000 x 100000 pixels, over the limit of "
                            f"{images.MAX_PIXELS} (SFPORT_MAX_IMAGE_PIXELS)")


@pytest.mark.parametrize("ext,fmt", [(".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"), (".webp", "WebP"),
                                     (".tiff", "TIFF"), (".jp2", "JPEG 2000"), (".ppm", "PNM"), (".pgm", "PNM"),
                                     (".ras", "Sun raster"), (".gif", "GIF"), (".hdr", "HDR"), (".avif", "AVIF"),
                                     (".pam", "PAM")])
def test_every_format_reads_as_imread_and_its_header_size_is_checked(tmp_path, monkeypatch, ext, fmt):
    img = face(3, (50, 70))
    p = tmp_path / f"x{ext}"
    if ext == ".pgm":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert cv2.imwrite(str(p), img.astype(np.float32) / 255 if ext == ".hdr" else img)
    for color, flag in ((True, cv2.IMREAD_COLOR), (False, cv2.IMREAD_GRAYSCALE), (None, cv2.IMREAD_UNCHANGED)):
        np.testing.assert_array_equal(images.read_image(p, color), cv2.imread(str(p), flag))
    monkeypatch.setenv("SFPORT_MAX_IMAGE_PIXELS", str(70 * 50 - 1))
    with pytest.raises(CaffeFileError, match=rf"x{ext}: too large: its {fmt} header claims 70 x 50 pixels"):
        images.read_image(p)


def test_exif_orientation_is_applied_as_imread_does(tmp_path):
    tiff = b"MM\0*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    app1 = b"Exif\0\0" + tiff
    data = jpeg(face(2, (40, 60)))
    p = tmp_path / "rotated.jpg"
    p.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    got = images.read_image(p)
    assert got.shape == (60, 40, 3)
    np.testing.assert_array_equal(got, cv2.imread(str(p)))


def test_a_truncated_jpeg_is_a_bad_image_and_the_decoders_stay_quiet(tmp_path, capfd):
    data = jpeg(face(1))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[:len(data) * 2 // 3])
    assert cv2.imread(str(p)) is not None        # OpenCV decodes it (grey bottom), only a warning on stderr
    capfd.readouterr()
    with pytest.raises(CaffeFileError, match=r"cut.jpg: truncated: the JPEG data ends before its end-of-image "
                                             r"marker \(FFD9\)"):
        images.read_image(p)
    bad_png = cv2.imencode(".png", face())[1].tobytes()
    (tmp_path / "cut.png").write_bytes(bad_png[:len(bad_png) // 2])
    with pytest.raises(CaffeFileError, match=r"cut.png: unreadable or corrupt \(OpenCV cannot decode this PNG"):
        images.read_image(tmp_path / "cut.png")
    out, err = capfd.readouterr()
    assert out == "" and err == ""               # no "libpng error", no "Premature end of JPEG file"


def test_data_after_the_end_of_image_marker_is_ignored_as_libjpeg_does(tmp_path):
    data = jpeg(face(4))
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    for tail in (b"\0" * 512, b"....ftypmp42" + bytes(range(256)) * 8):   # padding; a Motion Photo's video
        (tmp_path / "t.jpg").write_bytes(data + tail)
        np.testing.assert_array_equal(images.read_image(tmp_path / "t.jpg"), ref)


def test_a_corrupt_marker_inside_the_image_data_is_a_bad_image(tmp_path):
    data = bytearray(jpeg(face(5)))
    sos = data.index(b"\xff\xda")
    at = data.index(b"\xff\x00", sos + 200)
    data[at + 1] = 0xF2                          # JPG2 inside the scan: libjpeg stops there, the rest is grey
    (tmp_path / "c.jpg").write_bytes(bytes(data))
    assert cv2.imread(str(tmp_path / "c.jpg")) is not None
    with pytest.raises(CaffeFileError, match=r"c.jpg: unreadable or corrupt \(a JPEG marker 0xFFF2 inside its image "
                                             r"data"):
        images.read_image(tmp_path / "c.jpg")


def test_not_an_image_missing_folder_device_fifo_and_empty(tmp_path):
    (tmp_path / "t.jpg").write_text("hello")
    (tmp_path / "e.jpg").write_bytes(b"")
    (tmp_path / "d.jpg").mkdir()
    os.mkfifo(tmp_path / "f.jpg")                # nobody writes: opening it would block
    (tmp_path / "file").write_text("")
    cases = {"t.jpg": "unreadable or corrupt: not in any image format sfport reads", "e.jpg": "empty (0 bytes)",
             "d.jpg": "a folder, not an image", "f.jpg": "not a regular file", "nope.jpg": "missing",
             "file/x.jpg": "missing (a folder on its path is a file)"}
    for name, what in cases.items():
        with pytest.raises(CaffeFileError) as e:
            images.read_image(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: {what}"), str(e.value)
    with pytest.raises(CaffeFileError, match=r"^/dev/zero: not a regular file"):
        images.read_image("/dev/zero")
    with pytest.raises(CaffeFileError, match=r"^l.txt: line 7: image '.*nope.jpg' is missing$"):
        images.read_image(tmp_path / "nope.jpg", list_file="l.txt", line=7)
    assert images.read_image_or_none(tmp_path / "t.jpg") is None
    with pytest.raises(CaffeFileError, match=r"^db: record 'k': the encoded image cannot be decoded \(too large"):
        images.decode_image(png_header(100000, 100000), "db", where="record 'k'")


def test_the_pixel_limit_variable_must_be_a_number(tmp_path, monkeypatch):
    (tmp_path / "x.jpg").write_bytes(jpeg(face()))
    monkeypatch.setenv("SFPORT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(CaffeFileError, match="SFPORT_MAX_IMAGE_PIXELS='lots': not a positive number"):
        images.read_image(tmp_path / "x.jpg")


def test_align_lists_bad_images_in_no_face_txt(tmp_path, photos):
    src, marks = photos
    r = run("align", src, tmp_path / "out", "--landmarks", marks, "--workers", "0")
    assert r.exit_code == 0, r.output
    assert "aligned 1 of 4 images" in r.output
    assert cv2.imread(str(tmp_path / "out" / "a" / "good.jpg")).shape == (112, 96, 3)
    reasons = dict(line.split("\t") for line in (tmp_path / "out" / "no_face.txt").read_text().splitlines())
    assert reasons["a/huge.png"].startswith("too large: its PNG header claims 100000 x 100000 pixels")
    assert reasons["a/trunc.jpg"].startswith("truncated: the JPEG data ends before its end-of-image marker")
    assert reasons["a/text.jpg"].startswith("unreadable or corrupt: not in any image format")
    assert set(align.read_landmarks(tmp_path / "out" / "landmarks.txt")) == {"a/good.jpg"}


def test_image_data_skips_or_names_an_oversized_image(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_header(100000, 100000))
    (tmp_path / "ok.jpg").write_bytes(jpeg(face()))
    (tmp_path / "l.txt").write_text("ok.jpg 0\nhuge.png 1\n")
    ds = imagedata.ImageDataset(imagedata.read_list(tmp_path / "l.txt"), tmp_path, imagedata.Transform(),
                           list_path=str(tmp_path / "l.txt"))
    with pytest.raises(CaffeFileError, match=r"l.txt: line 2: image '.*huge.png' is too large: its PNG header"):
        imagedata.check(imagedata.collate([ds[0], ds[1]]))
    ds.skip_bad = True
    batch = imagedata.check(imagedata.collate([ds[0], ds[1]]))
    assert batch[0].shape[0] == 1 and batch[3] == 1


# ---------------------------------------------------------------------------------------------------------
# 2. lists
# ---------------------------------------------------------------------------------------------------------

def test_a_list_must_be_a_utf8_regular_file(tmp_path):
    (tmp_path / "latin1.txt").write_bytes(b"ok.jpg\nJos\xe9.jpg\n")
    (tmp_path / "nul.txt").write_bytes(b"a.jpg\nb\0.jpg\n")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfa.jpg 1\n")
    os.mkfifo(tmp_path / "fifo.txt")
    expect = {"latin1.txt": "line 2, column 4: byte 0xe9 is not UTF-8 text: not an image list",
              "nul.txt": "line 2, column 2: a NUL byte (a binary file?): not an image list",
              "fifo.txt": "is not a regular file (a device, FIFO or socket), not an image list",
              "none.txt": "image list not found"}
    for name, what in expect.items():
        with pytest.raises(CaffeFileError) as e:
            imagedata.read_list(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name}: {what}"
    with pytest.raises(CaffeFileError, match=r"is a directory, not an image list$"):
        imagedata.read_list(tmp_path)
    assert imagedata.read_list(tmp_path / "bom.txt")[0].path == "a.jpg"


def test_every_list_option_refuses_a_folder_and_bad_bytes(tmp_path, model):
    np.save(tmp_path / "f.npy", np.ones((2, 4), np.float32))
    (tmp_path / "l.txt").write_text("A/A_0001.jpg\nA/A_0002.jpg\n")
    (tmp_path / "bad.txt").write_bytes(b"A/A_0001.jpg\nA/\xff.jpg\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(jpeg(face()))
    d = tmp_path / "in"
    cases = [
        (("eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "l.txt", "--pairs", d), d,
         "is a directory, not a pairs file"),
        (("eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "l.txt", "--pairs", tmp_path / "none.txt"),
         "none.txt", "pairs file not found"),
        (("eval", "--features", tmp_path / "f.npy", "--list", d, "--pairs", _pairs(tmp_path)), d,
         "is a directory, not an image list"),
        (("eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "bad.txt", "--pairs", _pairs(tmp_path)),
         "bad.txt", "line 2, column 3: byte 0xff is not UTF-8 text"),
        (("align", d, tmp_path / "out", "--landmarks", d), d, "is a directory, not a landmark list"),
        (("embed", "-m", model / "sf4.caffemodel", "--list", d, "-o", tmp_path / "e.npy"), d,
         "is a directory, not an image list"),
    ]
    for args, where, what in cases:
        before = files_under(tmp_path)
        assert_bad_input(run(*args), where, what)
        assert files_under(tmp_path) == before


def _pairs(folder, text="2\t1\nA\t1\t2\nA\t1\tB\t1\nA\t2\t1\nA\t2\tB\t1\n"):
    (folder / "pairs.txt").write_text(text)
    return folder / "pairs.txt"


# ---------------------------------------------------------------------------------------------------------
# 3. pairs
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,what", [
    ("10\t0\nA\t1\t2\n", "line 1: the header '10 0' must give at least 2 folds"),   # ZeroDivisionError before
    ("1\t1\nA\t1\t2\nA\t1\tB\t1\n", "line 1: the header '1 1' must give at least 2 folds"),   # 0.00% nan before
    ("2\t1\nA\t1\t2\nA\t1\t3\nA\t1\tB\t1\nA\t2\tB\t1\n",
     "fold 1 (from line 2) has 2 same and 0 different pairs; the header states 2 folds of 1 of each"),
    ("2\t1\nA\t1\t2\nA\t1\tB\t1\nA\t2\t1\nA\t2\tB\t1\nA\t3\t1\nA\t3\tB\t1\n",
     "the header states 2 folds of 1 same + 1 different pairs (4), but the file has 6 pairs"),
    ("A\t1\t2\nA\t1\tB\t1\n", "2 pairs make 1 fold of 600: the protocol needs at least 2 folds"),
    ("2\t1\nA\t0\t2\n", "line 2: expected 'name i j' or 'name1 i name2 j' (image numbers from 1), got 'A 0 2'"),
])
def test_pairs_files_must_hold_what_the_protocol_needs(tmp_path, text, what):
    np.save(tmp_path / "f.npy", np.ones((2, 4), np.float32))
    (tmp_path / "l.txt").write_text("A/A_0001.jpg\nB/B_0001.jpg\n")
    p = _pairs(tmp_path, text)
    assert_bad_input(run("eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "l.txt", "--pairs", p),
                     p, what)


def test_a_headerless_pairs_file_is_folds_of_300_and_300(tmp_path):
    body = "".join(f"A\t{k}\t{k + 1}\n" for k in range(1, 301)) + "".join(f"A\t{k}\tB\t1\n" for k in range(1, 301))
    pairs = lfw.read_pairs(_pairs(tmp_path, body * 2))
    assert len(pairs) == 1200 and pairs[600].fold == 1 and pairs[600].same
    with pytest.raises(CaffeFileError, match=r"fold 2 \(from line 601\) has 300 same and 299 different pairs; "
                                             r"without a header, folds are of 300 of each"):
        lfw.read_pairs(_pairs(tmp_path, (body * 2)[:-len("A\t300\tB\t1\n")]))


# ---------------------------------------------------------------------------------------------------------
# 4. landmarks
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values,what", [
    ([0] * 10, "line 2: the 5 landmarks of 'a/good.jpg' lie within one pixel"),     # LinAlgError before
    ([float("nan")] + LANDMARKS[1:], "line 2: x1 is nan: landmarks must be finite"),   # a flat crop, exit 0 before
    (LANDMARKS[:3] + [float("inf")] + LANDMARKS[4:], "line 2: y2 is inf: landmarks must be finite"),
    (LANDMARKS[:9] + [1e300], "line 2: y5 is 1e+300, outside any image"),
    (LANDMARKS[:7], "line 2: expected a path and 10 numbers (x1 y1 .. x5 y5, optionally then a box x1 y1 x2 y2 "
                    "and a score), got 7 numbers after the path"),
    (LANDMARKS + [1, 2], "got 12 numbers after the path"),
    (LANDMARKS[:4] + ["x"] + LANDMARKS[5:], "line 2: 'x' is not a number"),
])
def test_bad_landmarks_stop_align_before_any_work(tmp_path, photos, values, what):
    src, _ = photos
    marks = tmp_path / "bad.txt"
    marks.write_text(landmark_line("a/other.jpg", LANDMARKS) + landmark_line("a/good.jpg", values))
    before = files_under(tmp_path)
    assert_bad_input(run("align", src, tmp_path / "out", "--landmarks", marks, "--workers", "0"), marks, what)
    assert files_under(tmp_path) == before


def test_landmark_lists_duplicates_spaces_extras_and_empty(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text(landmark_line("my dir/a.jpg", LANDMARKS) + "b.jpg " + " ".join(map(str, LANDMARKS)) + "\n"
                 + "c.jpg\t" + " ".join(map(str, LANDMARKS + [1, 2, 90, 110, 0.99])) + "\n")
    marks = align.read_landmarks(p, one_based=True)
    assert set(marks) == {"my dir/a.jpg", "b.jpg", "c.jpg"}
    np.testing.assert_allclose(marks["c.jpg"], np.reshape(LANDMARKS, (5, 2)) - 1)
    p.write_text(landmark_line("a.jpg", LANDMARKS) + landmark_line("a.jpg", LANDMARKS))
    with pytest.raises(CaffeFileError, match=r"m.txt: line 2: 'a.jpg' is listed again \(first on line 1\)"):
        align.read_landmarks(p)
    p.write_text("\n\n")
    with pytest.raises(CaffeFileError, match=r"m.txt: the landmark list is empty"):
        align.read_landmarks(p)


# ---------------------------------------------------------------------------------------------------------
# 5. features arrays
# ---------------------------------------------------------------------------------------------------------

def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_eval_features_arrays(tmp_path):
    (tmp_path / "l.txt").write_text("A/A_0001.jpg\nA/A_0002.jpg\nB/B_0001.jpg\n")
    pairs = _pairs(tmp_path)
    good = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    nan = good.copy()
    nan[1, 2] = np.nan
    good_bytes = io.BytesIO()
    np.save(good_bytes, good)
    arrays = {
        "empty.npy": (b"", "empty file, not a .npy features array"),       # 'Aborted!', exit 1 before
        "z.npz": (None, "is a .npz archive (zip), not a .npy features array"),
        "c.npy": (np.ones((3, 4), np.complex64), "not an array of real numbers: it holds complex64 values"),
        "s.npy": (np.array([["a"] * 4] * 3), "not an array of real numbers: it holds <U1 values"),
        "o.npy": (_npy_header((3, 4), "|O") + b"\0" * 12, "not an array of real numbers: it holds object values"),
        "cut.npy": (good_bytes.getvalue()[:-5], "its header says shape [3, 4] of float32 (48 bytes of data), but "
                                                "the file holds 43 bytes"),
        "huge.npy": (_npy_header((10 ** 12, 4)) + b"\0" * 64,
                     "its header says shape [1000000000000, 4] of float32 (16,000,000,000,000 bytes of data), but "
                     "the file holds 64 bytes"),
        "extra.npy": (good_bytes.getvalue() + good_bytes.getvalue(), "bytes of data), but the file holds"),
        "text.npy": (b"1 2 3\n", "not a .npy file (no NumPy header)"),
        "1d.npy": (np.ones(3, np.float32), "a 1-D array of shape [3]; features array must be 2-D"),
        "rows.npy": (np.ones((5, 4), np.float32), f"5 rows for 3 images in {tmp_path / 'l.txt'}"),
        "nan.npy": (nan, "holds a NaN or infinite value at [1, 2]"),
        "nocols.npy": (np.ones((3, 0), np.float32), "the features have no columns"),
    }
    for name, (content, what) in arrays.items():
        p = tmp_path / name
        if content is None:
            np.savez(p, a=good)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            np.save(p, content)
        before = files_under(tmp_path)
        assert_bad_input(run("eval", "--features", p, "--list", tmp_path / "l.txt", "--pairs", pairs, "--report",
                             tmp_path / "r.json"), p, what)
        assert files_under(tmp_path) == before
    np.save(tmp_path / "ok.npy", good)
    r = run("eval", "--features", tmp_path / "ok.npy", "--list", tmp_path / "l.txt", "--pairs", pairs)
    assert r.exit_code == 0 and "AVE" in r.output, r.output


def test_load_array_keeps_what_numpy_reads(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    np.save(tmp_path / "f.npy", a)
    got = disk.load_array(tmp_path / "f.npy", "reference blob")
    np.testing.assert_array_equal(got, a)
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    np.testing.assert_array_equal(disk.load_array(tmp_path / "v2.npy"), a)
    (tmp_path / "d").mkdir()
    with pytest.raises(CaffeFileError, match=r"d: is a directory"):
        disk.load_array(tmp_path / "d")


def test_eval_list_duplicates_must_agree(tmp_path):
    (tmp_path / "l.txt").write_text("A/A_0001.jpg\nA/A_0002.jpg\nB/B_0001.jpg\nA/A_0001.jpg\n")
    f = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", f)
    assert_bad_input(run("eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "l.txt", "--pairs",
                         _pairs(tmp_path)), "l.txt", "'A/A_0001.jpg' is listed twice (image 1 and 4) with different "
                                                     "features")
    f[3] = f[0]
    np.save(tmp_path / "f.npy", f)
    assert run("eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "l.txt", "--pairs",
               _pairs(tmp_path)).exit_code == 0


# ---------------------------------------------------------------------------------------------------------
# 6. outputs: checked before work, written all or none
# ---------------------------------------------------------------------------------------------------------

def test_eval_outputs_are_checked_before_work(tmp_path):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    (tmp_path / "l.txt").write_text("A/A_0001.jpg\nA/A_0002.jpg\nB/B_0001.jpg\n")
    (tmp_path / "afile").write_text("")
    (tmp_path / "folder").mkdir()
    common = ["eval", "--features", tmp_path / "f.npy", "--list", tmp_path / "l.txt", "--pairs", _pairs(tmp_path)]
    for extra, where, what in [
            (["--report", tmp_path / "afile" / "r.json", "--plot", tmp_path / "roc.png"], "afile/r.json",
             "cannot write the report"),
            (["--report", tmp_path / "r.json", "--plot", tmp_path / "folder"], "folder",
             "the ROC plot is a folder, not a file"),
            (["--report", tmp_path / "x", "--plot", tmp_path / "x"], "x", "--report and --plot name the same file")]:
        before = files_under(tmp_path)
        r = run(*common, *extra)
        assert_bad_input(r, where, what)
        assert files_under(tmp_path) == before
    r = run(*common, "--report", tmp_path / "r.json", "--plot", tmp_path / "roc.png")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["protocol"] == "sphereface"
    assert cv2.imread(str(tmp_path / "roc.png")).ndim == 3   # matplotlib's figure: tests/test_roc_plot.py


def test_write_files_leaves_all_or_none(tmp_path, monkeypatch):
    (tmp_path / "old.txt").write_text("old")
    real = os.replace
    monkeypatch.setattr(os, "replace", full_disk_on(2, real))
    with pytest.raises(OSError):
        disk.write_files({tmp_path / "a.npy": b"1", tmp_path / "a.txt": b"2"})
    assert files_under(tmp_path) == {"old.txt"}
    monkeypatch.setattr(os, "replace", real)
    disk.write_files({tmp_path / "a.npy": b"1", tmp_path / "a.txt": b"2"})
    assert (tmp_path / "a.npy").read_bytes() == b"1" and (tmp_path / "a.txt").read_bytes() == b"2"


def test_embed_outputs(tmp_path, model):
    (tmp_path / "x.jpg").write_bytes(jpeg(face()))
    (tmp_path / "huge.png").write_bytes(png_header(100000, 100000))
    (tmp_path / "out.txt").mkdir()
    m = model / "sf4.caffemodel"
    for args, where, what in [
            (["-o", tmp_path / "out.npy"], "out.txt", "the image list output is a folder, not a file"),
            (["-o", tmp_path / "f.txt"], "f.txt", "the features (.npy) and their image list (.txt beside them) would "
                                                  "be the same file"),
            (["-o", tmp_path / "x.jpg" / "f.npy"], "x.jpg/f.npy", "cannot write the features output"),
            (["-o", tmp_path / "g.npy", tmp_path / "huge.png"], "huge.png", "too large: its PNG header claims"),
            (["-o", tmp_path / "g.npy", "--root", tmp_path / "none"], "none", "the image folder (--root) not found")]:
        before = files_under(tmp_path)
        assert_bad_input(run("embed", tmp_path / "x.jpg", "-m", m, "--workers", "0", *args), where, what)
        assert files_under(tmp_path) == before
    r = run("embed", tmp_path / "x.jpg", "-m", m, "--workers", "0", "-o", tmp_path / "g.npy")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "g.npy").shape == (1, 1024)
    assert (tmp_path / "g.txt").read_text() == f"{tmp_path / 'x.jpg'}\n"


def test_align_output_folder(tmp_path, photos, monkeypatch):
    src, marks = photos
    (tmp_path / "afile").write_text("")
    for out, what in [(tmp_path / "afile", "the output folder is a file"),
                      (tmp_path / "afile" / "o", "cannot write the landmark list output"),
                      (src, "the output folder is the input folder")]:
        before = files_under(tmp_path)
        assert_bad_input(run("align", src, out, "--landmarks", marks, "--workers", "0"), out, what)
        assert files_under(tmp_path) == before
    # a failure half-way (here the disk, on the second crop) leaves no crops and no output folders behind
    full_disk = full_disk_on(2, disk.atomic_write)
    (src / "b").mkdir()
    (src / "b" / "good2.jpg").write_bytes(jpeg(face(7)))
    with open(marks, "a") as f:
        f.write(landmark_line("b/good2.jpg", LANDMARKS))
    monkeypatch.setattr(align, "atomic_write", full_disk)
    before = files_under(tmp_path)
    assert_bad_input(run("align", src, tmp_path / "new" / "out", "--landmarks", marks, "--workers", "0"),
                     "good2.jpg", "no space left on device")
    assert len(full_disk.calls) == 2 and files_under(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------
# 7. crop sizes and templates
# ---------------------------------------------------------------------------------------------------------

def test_align_size_forms(tmp_path, photos):
    src, marks = photos
    for size, shape in (("112,96", (112, 96, 3)), ("64x64", (64, 64, 3)), ("120 X 100", (120, 100, 3))):
        out = tmp_path / f"out{shape[0]}"
        r = run("align", src, out, "--landmarks", marks, "--workers", "0", "--size", size)
        assert r.exit_code == 0, r.output
        assert cv2.imread(str(out / "a" / "good.jpg")).shape == shape
    for size in ("112", "112x96x3", "0x96", "big", "100000x100000"):
        before = files_under(tmp_path)
        assert_bad_input(run("align", src, tmp_path / "o", "--landmarks", marks, "--size", size), "--size",
                         "expected the crop's height and width as HxW or H,W")
        assert files_under(tmp_path) == before


def test_landmarks_for_a_net_of_no_template_size_need_template(tmp_path):
    from sfport.formats import caffe_files
    from sfport.netdef import weight_match, builtin
    net = builtin.sphereface_deploy(4, 64, 64)
    caffe_files.write_caffemodel(tmp_path / "m.caffemodel",
                                 weight_match.with_random_weights(caffe_files.CaffeModel.from_net(net, None), seed=1))
    (tmp_path / "x.jpg").write_bytes(jpeg(face(0, (120, 100))))
    (tmp_path / "m.txt").write_text(landmark_line("x.jpg", LANDMARKS))
    args = ["embed", "x.jpg", "--root", tmp_path, "-m", tmp_path / "m.caffemodel", "--landmarks", tmp_path / "m.txt",
            "--workers", "0", "-o", tmp_path / "f.npy"]
    assert_bad_input(run(*args), "m.caffemodel", "the net takes 64x64 faces, no template's size (sphereface "
                                                 "112x96, arcface112 112x112): give --template")
    assert not (tmp_path / "f.npy").exists()
    r = run(*args, "--template", "arcface112")
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------------------
# 8. untrained models
# ---------------------------------------------------------------------------------------------------------

def test_feature_commands_need_trained_weights(tmp_path, model):
    from sfport.formats import caffe_files
    from sfport.netdef import builtin
    for n in (1, 2):
        (tmp_path / f"{n}.jpg").write_bytes(jpeg(face(n)))
    for name, n in (("A", 1), ("A", 2), ("B", 1)):   # the pairs' images (eval checks them before the model)
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / f"{name}_{n:04d}.jpg").write_bytes(jpeg(face(n)))
    renamed = builtin.sphereface_deploy(4)
    next(l for l in renamed.layer if l.name == "conv1_1").name = "conv1_1_new"
    caffe_files.write_prototxt(tmp_path / "renamed.prototxt", renamed)
    bare = model / "sf4.prototxt"
    cases = [
        (["compare", tmp_path / "1.jpg", tmp_path / "2.jpg", "-m", bare], bare, "has no weights (a net definition "
                                                                                "alone)"),
        (["embed", tmp_path / "1.jpg", "-m", bare, "-o", tmp_path / "f.npy"], bare, "has no weights"),
        (["eval", "-m", bare, "--lfw-dir", tmp_path, "--pairs", _pairs(tmp_path)], bare, "has no weights"),
        (["compare", tmp_path / "1.jpg", tmp_path / "2.jpg", "-m", model / "sf4.caffemodel", "-p",
          tmp_path / "renamed.prototxt"], "sf4.caffemodel",
         f"has no weights for layer 'conv1_1_new' of {tmp_path / 'renamed.prototxt'}, which blob 'fc5' depends on"),
    ]
    for args, where, what in cases:
        before = files_under(tmp_path)
        assert_bad_input(run(*args), where, what)
        assert files_under(tmp_path) == before
    r = run("compare", tmp_path / "1.jpg", tmp_path / "2.jpg", "-m", model / "sf4.caffemodel")
    assert r.exit_code == 0 and r.stdout.startswith("cosine "), r.output


def test_nan_weights_give_an_error_not_nan_features(tmp_path, model):
    from sfport.formats import caffe_files
    m = caffe_files.read_caffemodel(model / "sf4.caffemodel")
    i = next(k for k, l in enumerate(m.net.layer) if l.name == "fc5")
    arrays = m.blob_arrays(i)
    arrays[0] = np.full_like(arrays[0], np.nan)
    m.set_blob_arrays(i, arrays)
    caffe_files.write_caffemodel(tmp_path / "nan.caffemodel", m)
    (tmp_path / "1.jpg").write_bytes(jpeg(face(1)))
    assert_bad_input(run("embed", tmp_path / "1.jpg", "-m", tmp_path / "nan.caffemodel", "--workers", "0", "-o",
                         tmp_path / "f.npy"), "nan.caffemodel", "gives NaN or infinite features (for ")
    assert not (tmp_path / "f.npy").exists()


def test_a_broken_feature_cache_is_rebuilt(tmp_path, model, monkeypatch):
    from sfport.face import features
    monkeypatch.setenv("SFPORT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "x.jpg").write_bytes(jpeg(face()))
    m = features.Model(model / "sf4.caffemodel")
    first = features.extract(m, ["x.jpg"], tmp_path, workers=0)
    (cache,) = (tmp_path / "cache" / "features").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])                    # a disk that filled up while it was written
    again = features.extract(m, ["x.jpg"], tmp_path, workers=0)
    np.testing.assert_array_equal(again.features, first.features)
    assert np.load(cache)["features"].shape == first.features.shape
