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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sfport.errors import CaffeFileError
from sfport.files import atomic_write
from sfport.mtcnn import MTCNN, nearest_centre

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


def read_landmarks(path, one_based: bool = False) -> dict[str, np.ndarray]:
    """A landmark list (``lfw_landmark.txt``: relative path, then x1 y1 .. x5 y5; tabs or spaces) ->
    {path: 5x2 0-based array}. ``lfw_landmark.txt`` is 0-based: sfport's MTCNN agrees with it within 1.3 px
    read as 0-based, 2.2 px read as 1-based; pass ``one_based=True`` for landmarks saved by Matlab."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise CaffeFileError(path, "landmark list not found") from None
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = [f for f in line.rstrip("\r\n").split("\t")] if "\t" in line else line.split()
        parts = [f.strip() for f in parts if f.strip()]
        if not parts:
            continue
        if len(parts) < 11:
            raise CaffeFileError(path, f"line {n}: expected a path and 10 numbers, got {len(parts)} fields")
        try:  # path, x1 y1 .. x5 y5, then optional extra columns (box, score)
            vals = np.array([float(v) for v in parts[1:11]]).reshape(5, 2)
        except ValueError:
            raise CaffeFileError(path, f"line {n}: the landmarks are not numbers") from None
        name = parts[0]
        out[name] = vals - (1.0 if one_based else 0.0)
    return out


def write_landmarks(path, rows: list[tuple[str, np.ndarray, np.ndarray | None]], one_based: bool = False) -> None:
    """Write 'path x1 y1 .. x5 y5 [box x1 y1 x2 y2 score]' rows (atomically)."""
    lines = []
    for name, pts, box in rows:
        p = np.asarray(pts).reshape(-1) + (1.0 if one_based else 0.0)
        line = name + "\t" + "\t".join(f"{v:.2f}" for v in p)
        if box is not None:
            b = np.asarray(box, np.float64)
            line += "\t" + "\t".join(f"{v:.2f}" for v in b[:4] + (1.0 if one_based else 0.0)) + f"\t{b[4]:.4f}"
        lines.append(line)
    atomic_write(path, ("\n".join(lines) + "\n").encode())


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


def _detector(model_dir) -> MTCNN:
    """One MTCNN per folder and process (the workers of :func:`align_folder` each load their own, one thread)."""
    if model_dir not in _DETECTORS:
        torch.set_num_threads(1)
        _DETECTORS[model_dir] = MTCNN(model_dir)
    return _DETECTORS[model_dir]


def _align_one(args):
    """Worker: detect (or look up) landmarks, align, write. Returns (rel, landmarks, box, error)."""
    import cv2

    rel, src_root, dst_root, tmpl_name, size, landmarks, mtcnn_dir = args
    img = cv2.imread(os.path.join(src_root, rel), cv2.IMREAD_COLOR)
    if img is None:
        return rel, None, None, "unreadable or corrupt image"
    box = None
    if landmarks is not None:
        pts = landmarks.get(rel)
        if pts is None:
            return rel, None, None, "no landmarks in the list"
    else:
        face = nearest_centre(_detector(mtcnn_dir).detect(img), img.shape)
        if face is None:
            return rel, None, None, "no face found"
        pts = face.landmarks
        box = np.r_[face.box, face.score]
    crop = align(img, pts, template(tmpl_name, size))
    out = os.path.join(dst_root, rel)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    ok, buf = cv2.imencode(os.path.splitext(out)[1] or ".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        return rel, None, None, "cannot encode the crop"
    atomic_write(out, buf.tobytes())
    return rel, pts, box, None


@dataclass
class AlignSummary:
    """What :func:`align_folder` did."""
    aligned: int            # crops written
    total: int              # images in the input folder
    missing: int            # listed in no_face.txt
    size: tuple[int, int]   # (height, width) of the crops
    template: str


def align_folder(input_dir, output_dir, landmarks=None, mtcnn_dir=None, size=None, template: str = "sphereface",
                 workers: int = 2, landmarks_one_based: bool = False, progress: bool = False) -> AlignSummary:
    """``sfport align``: every image under ``input_dir`` aligned to the ``template`` (crop ``size`` (h, w) or
    'HxW', default the template's) into the same tree under ``output_dir``, landmarks from the ``landmarks``
    list or detected by the MTCNN models in ``mtcnn_dir`` (the face nearest the centre), in ``workers``
    processes. Writes ``landmarks.txt`` (path, 5 points, box and score when detected) and ``no_face.txt``
    (path and reason of every image without a crop)."""
    if not os.path.isdir(input_dir):
        raise CaffeFileError(input_dir, "input folder not found")
    if landmarks is None and mtcnn_dir is None:
        raise CaffeFileError(None, "give --landmarks FILE or --mtcnn DIR (the MTCNN det1-det3 models)")
    marks = read_landmarks(landmarks, one_based=landmarks_one_based) if landmarks else None
    if mtcnn_dir:
        _detector(mtcnn_dir)  # fail early on a bad folder
    if isinstance(size, str):
        size = tuple(int(v) for v in size.lower().split("x"))
    hw = tuple(size) if size else TEMPLATES[template].size
    files = image_files(input_dir)
    if not files:
        raise CaffeFileError(input_dir, "no images in the folder")
    jobs = [(rel, input_dir, output_dir, template, hw, marks, mtcnn_dir) for rel in files]
    rows, missing = [], []
    with tqdm(total=len(jobs), desc="align", unit="img", disable=not progress) as bar, \
            (ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext()) as pool:
        for r in pool.map(_align_one, jobs, chunksize=8) if pool else map(_align_one, jobs):
            bar.update(1)
            (missing if r[3] else rows).append(r)
    os.makedirs(output_dir, exist_ok=True)
    write_landmarks(os.path.join(output_dir, "landmarks.txt"), [(r[0], r[1], r[2]) for r in rows])
    atomic_write(os.path.join(output_dir, "no_face.txt"), "".join(f"{r[0]}\t{r[3]}\n" for r in missing).encode())
    return AlignSummary(len(rows), len(files), len(missing), hw, template)
