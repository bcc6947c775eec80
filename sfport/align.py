"""Face alignment as the SphereFace authors did it in Matlab (preprocess/code/face_align_demo.m, SPEC.md section 9).

``cp2tform_similarity(src, dst)`` is Matlab's ``cp2tform(src, dst, 'similarity')``: the non-reflective similarity
fitted by least squares in Matlab's direction (template -> image, then inverted), the reflective one by the same
fit on x-mirrored template points, and the one whose forward residual has the smaller matrix 2-norm is kept.
``warp`` resamples bilinearly with zero fill, like ``imtransform``. Coordinates are 0-based pixel centres unless
said otherwise; the SphereFace template is published 1-based (Matlab) and converted here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfport.errors import CaffeFileError

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
    from sfport.files import atomic_write
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
