"""Face alignment as the SphereFace authors did it in Matlab (``preprocess/code/face_align_demo.m`` of
github.com/wy1iu/sphereface): the 5 landmarks mapped onto the template by a similarity, the crop resampled.

``cp2tform_similarity(src, dst)`` is Matlab's ``cp2tform(src, dst, 'similarity')``: the non-reflective similarity
fitted by least squares in Matlab's direction (template -> image, then inverted), the reflective one by the same
fit on x-mirrored template points, and the one whose forward residual has the smaller matrix 2-norm is kept.
``warp`` resamples bilinearly with zero fill, like ``imtransform``. Coordinates are 0-based pixel centres unless
said otherwise; the SphereFace template is published 1-based (Matlab) and converted here.
:func:`align_folder` is ``sfport align``: a folder tree of photos to crops, landmarks from a list or from MTCNN.
"""
from __future__ import annotations

import contextlib
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfport.data.imagedata import read_list_text
from sfport.errors import CaffeFileError
from sfport.formats.disk import atomic_write, check_output, write_files
from sfport.data.images import read_image
from sfport.face.mtcnn import MTCNN, nearest_centre
from sfport.report.progress import Progress

# Matlab 1-based [x, y] for a 96-wide x 112-high crop (face_align_demo.m)
SPHEREFACE_1BASED = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                              [33.5493, 92.3655], [62.7299, 92.2041]])
# insightface's 112x112 template (0-based, as used with cv2/skimage there)
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])


@dataclass
class Template:
    name: str
    points: np.ndarray      # 5 x 2, 0-based
    size: tuple[int, int]   # (height, width)


TEMPLATES = {
    "sphereface": Template("sphereface", SPHEREFACE_1BASED - 1.0, (112, 96)),
    "arcface112": Template("arcface112", ARCFACE_112.copy(), (112, 112)),
}


def template(name: str, size: tuple[int, int] | None = None) -> Template:
    """A named template, optionally for another crop size (points scaled from the template's own size)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template '{name}' (sfport has {', '.join(TEMPLATES)})")
    t = TEMPLATES[name]
    if size is None or tuple(size) == t.size:
        return t
    sy, sx = size[0] / t.size[0], size[1] / t.size[1]
    return Template(t.name, (t.points + 0.5) * [sx, sy] - 0.5, tuple(size))


def _nonreflective(uv: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Matlab findNonreflectiveSimilarity(uv, xy): 3x3 T with [x y 1] = [u v 1] * T, fitted as its inverse."""
    x, y = xy[:, 0], xy[:, 1]
    n = len(x)
    X = np.vstack([np.column_stack([x, y, np.ones(n), np.zeros(n)]),
                   np.column_stack([y, -x, np.zeros(n), np.ones(n)])])
    U = np.concatenate([uv[:, 0], uv[:, 1]])
    r, _, rank, _ = np.linalg.lstsq(X, U, rcond=None)
    if rank < 4:
        raise ValueError("the points do not determine a similarity (at least 2 distinct points needed)")
    sc, ss, tx, ty = r
    if not np.isfinite(r).all() or sc * sc + ss * ss == 0:
        raise ValueError("the landmarks do not determine a similarity (all one point, or not finite)")
    tinv = np.array([[sc, -ss, 0.0], [ss, sc, 0.0], [tx, ty, 1.0]])
    return np.linalg.inv(tinv)


def _apply(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.column_stack([pts, np.ones(len(pts))]) @ T[:, :2]


def _norm2(m: np.ndarray) -> float:
    """Matlab's norm(M) of an n x 2 matrix: its largest singular value (closed form of the 2x2 Gram matrix)."""
    a, b, d = float(m[:, 0] @ m[:, 0]), float(m[:, 0] @ m[:, 1]), float(m[:, 1] @ m[:, 1])
    return float(np.sqrt((a + d) / 2 + np.sqrt(((a - d) / 2) ** 2 + b * b)))


def cp2tform_similarity(src, dst, return_reflective: bool = False):
    """2x3 affine matrix A (dst = A @ [x, y, 1]) of Matlab's ``cp2tform(src, dst, 'similarity')``."""
    uv = np.asarray(src, np.float64).reshape(-1, 2)
    xy = np.asarray(dst, np.float64).reshape(-1, 2)
    t1 = _nonreflective(uv, xy)
    xyr = xy.copy()
    xyr[:, 0] = -xyr[:, 0]
    t2 = _nonreflective(uv, xyr) @ np.diag([-1.0, 1.0, 1.0])
    n1 = _norm2(_apply(t1, uv) - xy)
    n2 = _norm2(_apply(t2, uv) - xy)
    reflective = not (n1 <= n2)
    T = t2 if reflective else t1
    A = T[:, :2].T
    return (A, reflective) if return_reflective else A


def warp(img: np.ndarray, A: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear warp of ``img`` by the 2x3 matrix A (source -> crop, 0-based) to ``size`` (h, w), zero fill."""
    import cv2
    h, w = size
    return cv2.warpAffine(img, A, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def align(img: np.ndarray, landmarks, tmpl: Template) -> np.ndarray:
    """The aligned crop of ``img`` from its 5 landmarks (0-based, x y per row)."""
    A = cp2tform_similarity(np.asarray(landmarks, np.float64).reshape(5, 2), tmpl.points)
    return warp(img, A, tmpl.size)


# the farthest a landmark may lie from the image origin: OpenCV decodes no image wider or taller than 2**20
LANDMARK_RANGE = float(1 << 21)


def read_landmarks(path, one_based: bool = False) -> dict[str, np.ndarray]:
    """A landmark list (``lfw_landmark.txt``: relative path, then x1 y1 .. x5 y5; what ``sfport align`` writes
    adds a box x1 y1 x2 y2 and a score) -> {path: 5x2 0-based array}. Fields are tab-separated (the path may then
    hold spaces, the numbers may be separated by spaces too) or, without a tab, space-separated.
    ``lfw_landmark.txt`` is 0-based: sfport's MTCNN agrees with it within 1.3 px read as 0-based, 2.2 px read as
    1-based; pass ``one_based=True`` for landmarks saved by Matlab. Every line is checked before any image is
    aligned: 10 or 15 numbers, finite, within any image's extent, not all one point (no similarity maps it
    onto the template), each path once; a bad line is one error naming the list and the line."""
    text = read_list_text(path, "landmark list", "a landmark list")
    out, first = {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "\t" in line:
            name, _, rest = line.partition("\t")
            name, numbers = name.strip(), rest.split()
        else:
            name, *numbers = line.split()
        if len(numbers) not in (10, 15):
            raise CaffeFileError(path, f"line {n}: expected a path and 10 numbers (x1 y1 .. x5 y5, optionally then "
                                       f"a box x1 y1 x2 y2 and a score), got {len(numbers)} numbers after the path")
        try:
            values = np.array([float(v) for v in numbers])
        except ValueError:
            bad = next(v for v in numbers if not _is_number(v))
            raise CaffeFileError(path, f"line {n}: '{bad[:40]}' is not a number") from None
        if not np.isfinite(values).all():
            k = int(np.nonzero(~np.isfinite(values))[0][0])
            raise CaffeFileError(path, f"line {n}: {_field(k)} is {numbers[k]}: landmarks must be finite")
        pts = values[:10].reshape(5, 2) - (1.0 if one_based else 0.0)
        if np.abs(pts).max() > LANDMARK_RANGE:
            k = int(np.argmax(np.abs(values[:10])))
            raise CaffeFileError(path, f"line {n}: {_field(k)} is {numbers[k]}, outside any image")
        if np.ptp(pts, axis=0).max() < 1:
            raise CaffeFileError(path, f"line {n}: the 5 landmarks of '{name}' lie within one pixel: they do not "
                                       f"determine the face's position, size and angle")
        if name in first:
            raise CaffeFileError(path, f"line {n}: '{name}' is listed again (first on line {first[name]})")
        first[name] = n
        out[name] = pts
    if not out:
        raise CaffeFileError(path, "the landmark list is empty")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _field(k: int) -> str:
    """The name of value k of a landmark line: x1 y1 .. x5 y5, then the box and the score."""
    return f"{'xy'[k % 2]}{k // 2 + 1}" if k < 10 else ("box x1", "box y1", "box x2", "box y2", "score")[k - 10]


def _landmark_text(rows, one_based: bool = False) -> bytes:
    lines = []
    for name, pts, box in rows:
        p = np.asarray(pts).reshape(-1) + (1.0 if one_based else 0.0)
        line = name + "\t" + "\t".join(f"{v:.2f}" for v in p)
        if box is not None:
            b = np.asarray(box, np.float64)
            line += "\t" + "\t".join(f"{v:.2f}" for v in b[:4] + (1.0 if one_based else 0.0)) + f"\t{b[4]:.4f}"
        lines.append(line)
    return ("\n".join(lines) + "\n").encode() if lines else b""


def image_files(root) -> list[str]:
    """Image files under ``root`` (relative paths, sorted)."""
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"}
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if os.path.splitext(f)[1].lower() in exts:
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


_DETECTORS = {}


def _detector(model_dir, backend: str = "auto") -> MTCNN:
    """One MTCNN per folder, backend and process (the workers of :func:`align_folder` each load their own, one
    thread)."""
    if (model_dir, backend) not in _DETECTORS:
        torch.set_num_threads(1)
        _DETECTORS[model_dir, backend] = MTCNN(model_dir, backend=backend)
    return _DETECTORS[model_dir, backend]


def crop_name(rel: str, ext: str | None = None, face: int | None = None) -> str:
    """The relative path of a photo's crop: the photo's, its extension replaced by ``ext`` when given, and
    ``_faceK`` added for face K (1-based) of :func:`align_folder`'s ``all_faces``."""
    stem, own = os.path.splitext(rel)
    return f"{stem}{'' if face is None else f'_face{face}'}{'.' + ext if ext else own or '.jpg'}"


def _by_centre(faces: list, shape) -> list:
    """The faces ordered by :func:`sfport.face.mtcnn.nearest_centre`: the nearest the image centre first."""
    order, rest = [], list(faces)
    while rest:
        order.append(nearest_centre(rest, shape))
        rest = [f for f in rest if f is not order[-1]]
    return order


def _align_one(args):
    """Worker: detect (or look up) landmarks, align, write. Returns (rel, [(crop path, landmarks, box)], error)."""
    import cv2

    rel, src_root, dst_root, tmpl_name, size, landmarks, mtcnn_dir, backend, all_faces, ext = args
    try:
        img = read_image(os.path.join(src_root, rel))
    except CaffeFileError as e:   # a bad image is listed in no_face.txt with the reason, as one without a face
        return rel, [], e.message
    if landmarks is not None:
        pts = landmarks.get(rel)
        if pts is None or isinstance(pts, str):   # a string: why the photo has none (match_landmarks)
            return rel, [], pts or "no landmarks in the list"
        faces = [(pts, None)]
    else:
        found = _by_centre(_detector(mtcnn_dir, backend).detect(img), img.shape)
        if not found:
            return rel, [], "no face found"
        faces = [(f.landmarks, np.r_[f.box, f.score]) for f in (found if all_faces else found[:1])]
    tmpl, crops, rows = template(tmpl_name, size), [], []
    for k, (pts, box) in enumerate(faces, 1):
        try:
            crops.append((k, pts, box, align(img, pts, tmpl)))
        except ValueError as e:   # landmarks that fit no similarity: that face has no crop
            error = str(e)
    if not crops:
        return rel, [], error
    for k, pts, box, crop in crops:
        name = crop_name(rel, ext, k if all_faces else None)
        out = os.path.join(dst_root, name)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        suffix = os.path.splitext(out)[1]
        jpeg = suffix.lower() in (".jpg", ".jpeg")
        ok, buf = cv2.imencode(suffix, crop, [cv2.IMWRITE_JPEG_QUALITY, 95] if jpeg else [])
        if not ok:
            return rel, [], "cannot encode the crop"
        atomic_write(out, buf.tobytes())
        rows.append((name if all_faces else rel, pts, box))
    return rel, rows, None


@dataclass
class AlignSummary:
    """What :func:`align_folder` did."""
    aligned: int            # images with a crop
    total: int              # images in the input folder
    missing: int            # listed in no_face.txt
    size: tuple[int, int]   # (height, width) of the crops
    template: str
    faces: int = 0          # crops written (more than ``aligned`` with all_faces)
    by_file_name: int = 0   # photos matched to the landmark list by file name (a flat folder)


def _examples(names, k: int = 3) -> str:
    return ", ".join(f"'{n}'" for n in list(names)[:k]) + (f" (of {len(names)})" if len(names) > k else "")


def match_landmarks(files: list[str], marks: dict, landmarks, input_dir) -> tuple[dict, int]:
    """The landmarks of each photo (relative path) -> ({photo: 5x2 points, or the reason it has none}, how many
    were matched by file name). A photo takes the list's entry of its relative path; in a flat folder (no
    subfolders) whose photos match no entry so, the entry whose file name is the photo's when exactly one is (LFW's
    list names Person/Person_0001.jpg). No photo matched is one line naming the list, with examples of the names
    in the list and of the photos found."""
    out = {rel: marks[rel] for rel in files if rel in marks}
    by_name = 0
    if not out and all("/" not in rel.replace(os.sep, "/") for rel in files):
        names: dict[str, list[str]] = {}
        for key in marks:
            names.setdefault(key.replace("\\", "/").rsplit("/", 1)[-1], []).append(key)
        for rel in files:
            found = names.get(rel, [])
            if len(found) == 1:
                out[rel] = marks[found[0]]
                by_name += 1
            elif found:
                out[rel] = f"its file name matches {len(found)} entries of the list ({_examples(found, 2)})"
    if not any(not isinstance(v, str) for v in out.values()):
        base = {key.replace("\\", "/").rsplit("/", 1)[-1]: key for key in marks}
        same = next((rel for rel in files if os.path.basename(rel) in base), None)   # the closest example
        hint = (f"; e.g. the list has '{base[os.path.basename(same)]}' where the folder has '{same}'"
                if same is not None else "")
        raise CaffeFileError(landmarks, f"none of the {len(files)} images under {input_dir} is in the list: it names "
                                        f"{_examples(list(marks))}, the folder has {_examples(files)}{hint} (paths "
                                        f"relative to the input folder; a flat folder matches by file name)")
    return out, by_name


# the largest crop side --size takes (warpAffine allocates the whole crop)
MAX_CROP_SIDE = 4096


def crop_size(text) -> tuple[int, int]:
    """``--size``: 'HxW' or 'H,W' (e.g. 112x96), or an (h, w) pair -> (h, w), each side 1..MAX_CROP_SIDE."""
    if isinstance(text, str):
        parts = [p.strip() for p in re.split(r"[x,X*]", text.strip())]
    else:
        parts = list(text)
    try:
        hw = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        hw = ()
    if len(hw) != 2 or not all(1 <= v <= MAX_CROP_SIDE for v in hw):
        raise CaffeFileError(None, f"--size {text}: expected the crop's height and width as HxW or H,W (e.g. 112x96), "
                                   f"each from 1 to {MAX_CROP_SIDE}")
    return hw


def align_folder(input_dir, output_dir, landmarks=None, mtcnn_dir=None, size=None, template: str = "sphereface",
                 workers: int = 2, landmarks_one_based: bool = False, progress=False, backend: str = "auto",
                 log=None, all_faces: bool = False, ext: str | None = None) -> AlignSummary:
    """``sfport align``: every image under ``input_dir`` aligned to the ``template`` (crop ``size`` (h, w) or
    'HxW' / 'H,W', default the template's) into the same tree under ``output_dir``, landmarks from the
    ``landmarks`` list or detected by the MTCNN models in ``mtcnn_dir`` (the face nearest the centre), in
    ``workers`` processes. Writes ``landmarks.txt`` (path, 5 points, box and score when detected) and
    ``no_face.txt`` (path and reason of every image without a crop: no face, no landmarks in the list, or an
    image that cannot be read). The photos take their landmarks by :func:`match_landmarks` (by file name in a flat
    folder). The inputs and outputs are checked before any work (a bad landmark list is one error naming its
    line, a list that names none of the photos one saying how the names differ); a failure on the way removes
    the crops and folders this run created. ``backend``: the MTCNN nets' (:class:`sfport.runtime.backend.Runner`);
    ``progress`` and ``log``: :class:`sfport.report.progress.Progress`.

    ``ext`` ('jpg', JPEG quality 95, or 'png', lossless): the crops' format, default each photo's own extension.
    ``all_faces`` (MTCNN only): a crop of every face found, ``PHOTO_face1.EXT`` (nearest the centre),
    ``PHOTO_face2.EXT``, ... (:func:`crop_name`); landmarks.txt then names each crop (its points are in the
    photo), where otherwise it names the photo, a landmark list for the originals (:func:`read_landmarks`).
    """
    if not os.path.isdir(input_dir):
        raise CaffeFileError(input_dir, "input folder not found" if not os.path.exists(input_dir)
                             else "the input is not a folder")
    if landmarks is None and mtcnn_dir is None:
        raise CaffeFileError(None, "give --landmarks FILE or --mtcnn DIR (the MTCNN det1-det3 models)")
    if all_faces and landmarks is not None:
        raise CaffeFileError(landmarks, "--all-faces needs --mtcnn: a landmark list holds one face per image")
    if ext not in (None, "jpg", "png"):
        raise CaffeFileError(None, f"--ext {ext}: the crops are written as jpg or png")
    if template not in TEMPLATES:
        raise CaffeFileError(None, f"unknown template '{template}' (sfport has {', '.join(TEMPLATES)})")
    hw = crop_size(size) if size is not None else TEMPLATES[template].size
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise CaffeFileError(output_dir, "the output folder is a file")
    if out.exists() and os.path.samefile(out, input_dir):
        raise CaffeFileError(output_dir, "the output folder is the input folder: the crops would replace the photos")
    lists = {out / "landmarks.txt": "the landmark list output", out / "no_face.txt": "the no-face list output"}
    for p, what in lists.items():
        check_output(p, what)
    marks = read_landmarks(landmarks, one_based=landmarks_one_based) if landmarks else None
    header = []
    if mtcnn_dir:
        header = [_detector(mtcnn_dir, backend).line]  # fail early on a bad folder
    files = image_files(input_dir)
    if not files:
        raise CaffeFileError(input_dir, "no images in the folder")
    if ext:   # two photos that differ only in extension would give the same crop
        seen = {}
        for rel in files:
            other = seen.setdefault(crop_name(rel, ext), rel)
            if other != rel:
                raise CaffeFileError(input_dir, f"{other} and {rel} would both be written as {crop_name(rel, ext)} "
                                                f"(--ext {ext})")
    by_name = 0
    if marks is not None:
        marks, by_name = match_landmarks(files, marks, landmarks, input_dir)
    existed = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    stems = {os.path.splitext(rel)[0] for rel in files}
    singles = {crop_name(rel, ext) for rel in files}

    def made_here(name: str) -> bool:
        """A crop this run may have written (removed again when it fails)."""
        face = re.fullmatch(r"(.*)_face\d+\.[^./]+", name)
        return name not in existed and (face is not None and face[1] in stems if all_faces else name in singles)

    new_dirs = set()
    for d in {out} | {(out / rel).parent for rel in files}:
        while not d.exists() and d not in new_dirs:
            new_dirs.add(d)
            d = d.parent
    jobs = [(rel, input_dir, output_dir, template, hw, marks, mtcnn_dir, backend, all_faces, ext) for rel in files]
    rows, missing = [], []
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        with Progress(len(jobs), "align", "images", progress, log, header=header) as bar:
            for r in pool.map(_align_one, jobs, chunksize=8) if pool else map(_align_one, jobs):
                bar.update(1)
                if r[2]:
                    missing.append(r)
                else:
                    rows.append(r)
        if pool:
            pool.shutdown()
        write_files({out / "landmarks.txt": _landmark_text([row for r in rows for row in r[1]]),
                     out / "no_face.txt": "".join(f"{r[0]}\t{r[2]}\n" for r in missing).encode()})
    except BaseException:   # leave nothing half-done: the crops and folders of this run go
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        for d, _, fs in os.walk(out):
            for f in fs:
                if made_here(os.path.relpath(os.path.join(d, f), out)):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(d, f))
        for d in sorted(new_dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return AlignSummary(len(rows), len(files), len(missing), hw, template, sum(len(r[1]) for r in rows), by_name)
