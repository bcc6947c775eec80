"""Face features from a model: a caffemodel (+ deploy prototxt), sfport's converted ``.pt`` or an ONNX export.

Images are read with OpenCV, aligned from landmarks when given (``sfport.align``), preprocessed per protocol
(SphereFace: BGR ``(x - 127.5) / 128`` as evaluation.m; insightface: RGB, the same scale; facenet: RGB,
per-image whitening), and run in batches through a DataLoader with workers; each image also gives the
feature of its mirror image. Results are cached on disk, keyed by the model's bytes, the settings and the
images' paths, sizes and times. :func:`combine` joins an image's feature with its mirror image's as a protocol
does; :func:`embed` and :func:`compare` are ``sfport embed`` and ``sfport compare``.
"""
from __future__ import annotations

import hashlib
import json
import io as _io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfport import align
from sfport.errors import CaffeFileError
from sfport.files import atomic_write
from sfport.net import load_net

COLOR = {"sphereface": "bgr", "insightface": "rgb", "facenet": "rgb"}


class Model:
    """``Model(path, prototxt=None, blob=None)``: ``features(batch NCHW float32) -> (N, D)``; ``input_size`` (h, w)."""

    def __init__(self, path, prototxt=None, blob: str | None = None, device: str = "cpu", *, phase: str = "TEST",
                 stages=(), level: int = 0, input_shapes=None):
        self.path = str(path)
        # the NetState and shapes that select the net of a train/test definition (Net::FilterNet); in the digest
        self.state = {"phase": str(phase).upper(), "stages": list(stages), "level": int(level),
                      "input_shapes": input_shapes if isinstance(input_shapes, (dict, type(None)))
                      else list(input_shapes)}
        self.files = [self.path] + ([str(prototxt)] if prototxt else [])
        for f in self.files:
            if not os.path.isfile(f):
                raise CaffeFileError(f, "no such file")
        self.device = device
        if self.path.endswith(".onnx"):
            import onnxruntime as ort
            try:
                self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - a bad file is bad input
                raise CaffeFileError(self.path, f"onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
            inp = self.session.get_inputs()[0]
            self.input_name = inp.name
            self.input_size = tuple(int(d) for d in inp.shape[2:4])
            names = [o.name for o in self.session.get_outputs()]
            if blob and blob not in names:
                raise CaffeFileError(self.path, f"no output '{blob}' (outputs: {', '.join(names)})")
            self.output = blob or names[0]
            self.net = None
        else:
            self.net = load_net(self.path, prototxt, input_shapes, phase, stages=stages, level=level)
            self.net.module.eval().to(device)
            names = list(self.net.inputs)
            self.input_name = names[0]
            self.input_size = tuple(self.net.inputs[self.input_name][2:4])
            blobs = set(self.net.graph.caffe_name.values())
            if blob and blob not in blobs:
                raise CaffeFileError(self.path, f"no blob '{blob}' in the net")
            self.output = blob or ("fc5" if "fc5" in blobs else self.net.outputs[-1])

    def features(self, x: torch.Tensor) -> np.ndarray:
        if self.net is None:
            return np.asarray(self.session.run([self.output], {self.input_name: x.numpy()})[0]).reshape(len(x), -1)
        with torch.no_grad():
            blobs = self.net.module.run({self.input_name: x.to(self.device)}, keep_all=True)
        return blobs[self.net.graph.final[self.output]].float().cpu().numpy().reshape(len(x), -1)

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        h.update(str(self.output).encode())
        h.update(json.dumps(self.state, sort_keys=True, default=list).encode())
        return h.hexdigest()


def preprocess(img: np.ndarray, protocol: str) -> np.ndarray:
    """HWC BGR uint8 -> CHW float32 as the protocol feeds its net."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    x = img.astype(np.float32)
    if COLOR.get(protocol, "bgr") == "rgb":
        x = x[:, :, ::-1]
    if protocol == "facenet":
        std = max(float(x.std()), 1.0 / np.sqrt(x.size))
        x = (x - x.mean()) / std
    else:
        x = (x - 127.5) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class FaceImages(torch.utils.data.Dataset):
    """Relative image paths under ``root`` -> (image, mirror image) tensors, aligned when landmarks are given."""

    def __init__(self, paths: list[str], root, size: tuple[int, int], protocol: str, landmarks: dict | None = None,
                 template: str | None = None):
        self.paths, self.root, self.size, self.protocol = paths, str(root), tuple(size), protocol
        self.landmarks = landmarks
        self.tmpl = align.template(template or ("sphereface" if tuple(size) == (112, 96) else "arcface112"), size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import cv2

        rel = self.paths[i]
        path = os.path.join(self.root, rel)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            return None, None, f"{path}: {'missing' if not os.path.exists(path) else 'unreadable or corrupt'}"
        if self.landmarks is not None:
            pts = self.landmarks.get(rel)
            if pts is None:
                return None, None, f"{rel}: no landmarks for this image in the landmark list"
            img = align.align(img, pts, self.tmpl)
        elif img.shape[:2] != self.size:
            return None, None, (f"{path}: the image is {img.shape[0]}x{img.shape[1]}, the net takes "
                                f"{self.size[0]}x{self.size[1]}: give --landmarks or align the images first")
        x = preprocess(img, self.protocol)
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(x[:, :, ::-1])), None


def _collate(items):
    for _, _, err in items:
        if err:
            return None, None, err
    return torch.stack([a for a, _, _ in items]), torch.stack([b for _, b, _ in items]), None


@dataclass
class Extracted:
    paths: list[str]
    features: np.ndarray        # (N, D) of the images
    flipped: np.ndarray         # (N, D) of their mirror images


def cache_key(model: Model, paths: list[str], root, protocol: str, landmarks_file, template) -> str:
    h = hashlib.sha256()
    h.update(model.digest().encode())
    h.update(f"{protocol}|{template}|{model.input_size}".encode())
    if landmarks_file:
        h.update(Path(landmarks_file).read_bytes())
    for p in paths:
        try:
            st = os.stat(os.path.join(root, p))
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SFPORT_CACHE", Path.home() / ".cache" / "sfport")) / "features"


def extract(model: Model, paths: list[str], root, protocol: str = "sphereface", landmarks: dict | None = None,
            landmarks_file=None, template: str | None = None, batch_size: int = 64, workers: int = 2,
            cache_dir=None, progress: bool = False) -> Extracted:
    """Features of ``paths`` (relative to ``root``) and of their mirror images, batched, cached."""
    cache = None
    if cache_dir is not False:
        cache = Path(cache_dir or default_cache_dir()) / (cache_key(model, paths, root, protocol, landmarks_file,
                                                                    template) + ".npz")
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                return Extracted(list(paths), z["features"], z["flipped"])
    ds = FaceImages(paths, root, model.input_size, protocol, landmarks, template)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    feats, flips = [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc="features", unit="img", leave=False)
    for x, xf, err in dl:
        if err:
            raise CaffeFileError(None, err)
        both = model.features(torch.cat([x, xf]))
        feats.append(both[:len(x)])
        flips.append(both[len(x):])
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    out = Extracted(list(paths), np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
                    np.concatenate(flips) if flips else np.zeros((0, 0), np.float32))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        buf = _io.BytesIO()
        np.savez(buf, features=out.features, flipped=out.flipped)
        atomic_write(cache, buf.getvalue())
    return out


def with_mirror(f: np.ndarray, f_flip: np.ndarray | None, flip: str) -> np.ndarray:
    """Rows of image features joined with their mirror images': ``none`` (the image's alone), ``sum``
    (insightface) or ``concat`` ([f, f_flip], SphereFace's evaluation.m)."""
    if f_flip is None or flip == "none":
        return f
    if flip == "sum":
        return f + f_flip
    return np.concatenate([f, f_flip], axis=1)


def combine(f: np.ndarray, f_flip: np.ndarray | None, protocol: str) -> np.ndarray:
    """The per-image feature of a protocol from the features of the image and of its mirror image."""
    return with_mirror(f, f_flip, "sum" if protocol == "insightface" else "concat")


def embed(images, model, output, prototxt=None, blob: str | None = None, list_file=None, root=".",
          flip: str = "concat", protocol: str = "sphereface", landmarks=None, batch_size: int = 64,
          workers: int = 2, progress: bool = False, state: dict | None = None) -> np.ndarray:
    """``sfport embed``: the features of ``images`` and of the paths in ``list_file`` (first field of each
    line; relative to ``root``), aligned first from the ``landmarks`` list when given, joined with their mirror
    images' by ``flip`` (:func:`with_mirror`); written as float32 ``output`` (.npy, row i = image i) and the
    image list beside it (.txt). ``state``: :class:`Model`'s phase / stages / level / input_shapes, for a train or
    test definition. Returns the features written."""
    paths = list(images)
    if list_file:
        try:
            paths += [l.split()[0] for l in Path(list_file).read_text().splitlines() if l.strip()]
        except FileNotFoundError:
            raise CaffeFileError(list_file, "no such file") from None
    if not paths:
        raise CaffeFileError(None, "no images given")
    m = Model(model, prototxt, blob, **(state or {}))
    marks = align.read_landmarks(landmarks) if landmarks else None
    ex = extract(m, paths, root, protocol, marks, landmarks, None, batch_size, workers, cache_dir=False,
                 progress=progress)
    f = with_mirror(ex.features, ex.flipped, flip).astype(np.float32)
    buf = _io.BytesIO()
    np.save(buf, f)
    atomic_write(output, buf.getvalue())
    atomic_write(str(Path(output).with_suffix(".txt")), ("\n".join(paths) + "\n").encode())
    return f


def compare(a, b, model, prototxt=None, blob: str | None = None, protocol: str = "sphereface",
            state: dict | None = None) -> float:
    """``sfport compare``: the cosine of two aligned face images' features, each combined with its mirror
    image's as the ``protocol`` does (:func:`combine`)."""
    ex = extract(Model(model, prototxt, blob, **(state or {})), [a, b], ".", protocol, cache_dir=False, workers=0)
    f = combine(ex.features, ex.flipped, protocol)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    return float(f[0] @ f[1])
