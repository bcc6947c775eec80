"""A synthetic face-like dataset written as JPEG files in the layout Caffe's ImageData reads.

Each identity is a set of random facial parameters (skin tone, face shape, eye spacing/size/colour, brows, nose,
mouth, hair); each image of it adds pose jitter, lighting, background and noise. 112x96 (H x W) BGR.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

H, W = 112, 96


def identity(rng: np.random.Generator) -> dict:
    return {
        "skin": rng.uniform([60, 90, 120], [170, 200, 240]),
        "face_w": rng.uniform(28, 40), "face_h": rng.uniform(40, 52),
        "eye_dx": rng.uniform(10, 18), "eye_y": rng.uniform(-14, -4), "eye_r": rng.uniform(2.5, 6),
        "eye_col": rng.uniform(0, 160, 3), "brow_tilt": rng.uniform(-0.5, 0.5), "brow_th": int(rng.integers(1, 4)),
        "nose_len": rng.uniform(6, 16), "mouth_w": rng.uniform(8, 22), "mouth_y": rng.uniform(12, 24),
        "mouth_curve": rng.uniform(-6, 6), "hair": rng.uniform(0, 255, 3), "hair_h": rng.uniform(4, 22),
        "lip": rng.uniform([20, 20, 90], [90, 90, 220]),
    }


def render(p: dict, rng: np.random.Generator) -> np.ndarray:
    bg = rng.uniform(0, 255, 3)
    img = np.empty((H, W, 3), np.float32)
    img[:] = bg
    cx, cy = W / 2 + rng.normal(0, 2), H / 2 + 4 + rng.normal(0, 2)
    s = rng.uniform(0.93, 1.07)
    angle = rng.normal(0, 4)
    c = lambda x, y: (int(round(cx + s * x)), int(round(cy + s * y)))  # noqa: E731
    cv2.ellipse(img, c(0, -p["face_h"] * 0.55), (int(s * p["face_w"] * 1.05), int(s * p["hair_h"] + 12)), 0, 180, 360,
                p["hair"].tolist(), -1, cv2.LINE_AA)
    cv2.ellipse(img, c(0, 0), (int(s * p["face_w"]), int(s * p["face_h"])), angle, 0, 360, p["skin"].tolist(), -1,
                cv2.LINE_AA)
    for side in (-1, 1):
        ex, ey = side * p["eye_dx"], p["eye_y"]
        cv2.circle(img, c(ex, ey), max(1, int(s * p["eye_r"])), (235, 235, 235), -1, cv2.LINE_AA)
        cv2.circle(img, c(ex, ey), max(1, int(s * p["eye_r"] * 0.55)), p["eye_col"].tolist(), -1, cv2.LINE_AA)
        b0 = c(ex - 6, ey - p["eye_r"] - 4 + side * p["brow_tilt"] * 6)
        b1 = c(ex + 6, ey - p["eye_r"] - 4 - side * p["brow_tilt"] * 6)
        cv2.line(img, b0, b1, (p["hair"] * 0.5).tolist(), p["brow_th"], cv2.LINE_AA)
    cv2.line(img, c(0, p["eye_y"] + 4), c(2, p["eye_y"] + 4 + p["nose_len"]), (p["skin"] * 0.7).tolist(), 2,
             cv2.LINE_AA)
    pts = np.array([c(t * p["mouth_w"] / 2, p["mouth_y"] + p["mouth_curve"] * (1 - t * t)) for t in
                    np.linspace(-1, 1, 9)], np.int32)
    cv2.polylines(img, [pts], False, p["lip"].tolist(), 3, cv2.LINE_AA)
    img = img * rng.uniform(0.75, 1.2) + rng.uniform(-20, 20)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(root: Path, identities: int, per_identity: int, seed: int = 0, first_label: int = 0,
                  list_name: str = "list.txt", prefix: str = "id") -> Path:
    """Write ``root/<prefix>_NNN/MMM.jpg`` and ``root/<list_name>`` ('relative/path label' lines)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(identities):
        p = identity(rng)
        d = root / f"{prefix}_{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            name = f"{prefix}_{i:03d}/{j:03d}.jpg"
            cv2.imwrite(str(root / name), render(p, rng), [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines.append(f"{name} {first_label + i}")
    path = root / list_name
    path.write_text("\n".join(lines) + "\n")
    return path
