"""Face features from a model: a caffemodel (+ deploy prototxt), sfport's converted ``.pt`` or an ONNX export.

The model must hold trained weights for every layer its feature blob depends on (a bare definition is refused,
not run on its fillers). Images are read by :func:`sfport.data.images.read_image` (OpenCV's decoders, their headers
checked first), aligned from landmarks when given (``sfport.face.align``), preprocessed per protocol
(SphereFace: BGR ``(x - 127.5) / 128`` as evaluation.m; insightface: RGB, the same scale; facenet: RGB,
per-image whitening), and run in batches through a DataLoader with workers; each image also gives the
feature of its mirror image. Results are cached on disk, keyed by the model's bytes, the settings and the
images' paths, sizes and times. :func:`combine` joins an image's feature with its mirror image's as a protocol
does; :func:`embed` and :func:`compare` are ``sfport embed`` and ``sfport compare``. Features are written as
``.npy`` + an image list, or as a MAT-file (:func:`mat_bytes`; read back by :func:`read_mat` and its checks).
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

from sfport.face import align
from sfport.errors import CaffeFileError
from sfport.data.imagedata import read_list_text, settle_temp_folders
from sfport.formats.disk import (Staged, atomic_write, check_output, check_readable_file, mat_file_bytes,
                                 write_files)
from sfport.data.images import read_image
from sfport.runtime.backend import Runner, bound_heap_growth, check_backend, run_session, session
from sfport.runtime.net import load_net
from sfport.report.progress import Progress

COLOR = {"sphereface": "bgr", "insightface": "rgb", "facenet": "rgb"}


class Model:
    """``Model(path, prototxt=None, blob=None, backend="auto")``: ``features(batch NCHW float32) -> (N, D)``;
    ``input_size`` (h, w); ``backend`` the one that runs and ``backend_line`` why, in one line.

    A caffemodel or converted ``.pt`` runs through :class:`sfport.runtime.backend.Runner` (its inference-optimized net cut
    to the layers the feature blob is computed from, on its checked ONNX export unless ``backend`` is ``torch``,
    it does not export, or ``forwards``, the images the caller will run, mirror images counted, are too few to
    pay for the export); an ``.onnx`` file runs on onnxruntime."""

    def __init__(self, path, prototxt=None, blob: str | None = None, device: str = "cpu", *, phase: str = "TEST",
                 stages=(), level: int = 0, input_shapes=None, backend: str = "auto", forwards: int | None = None):
        self.path = str(path)
        check_backend(backend)
        # the NetState and shapes that select the net of a train/test definition (Net::FilterNet); in the digest
        self.state = {"phase": str(phase).upper(), "stages": list(stages), "level": int(level),
                      "input_shapes": input_shapes if isinstance(input_shapes, (dict, type(None)))
                      else list(input_shapes)}
        self.files = [self.path] + ([str(prototxt)] if prototxt else [])
        for f in self.files:
            if not os.path.isfile(f):
                raise CaffeFileError(f, "no such file")
        self.device = device
        self.session = None
        self.runner = None
        if self.path.endswith(".onnx"):
            if backend in ("torch", "openvino"):
                raise CaffeFileError(self.path, f"an ONNX file runs on onnxruntime (--backend {backend} needs a "
                                                f"caffemodel or a converted .pt)")
            self.session = session(self.path, self.path)
            inp = self.session.get_inputs()[0]
            self.input_name = inp.name
            self.input_size = _image_input(self.path, inp.name, inp.shape)
            names = [o.name for o in self.session.get_outputs()]
            if blob and blob not in names:
                raise CaffeFileError(self.path, f"no output '{blob}' (outputs: {', '.join(names)})")
            self.output = blob or names[0]
            self.net = None
            return
        net = load_net(self.path, prototxt, input_shapes, phase, stages=stages, level=level)
        names = list(net.inputs)
        self.input_name = names[0]
        self.input_size = _image_input(prototxt or self.path, self.input_name, net.inputs[self.input_name])
        blobs = set(net.graph.caffe_name.values())
        if blob and blob not in blobs:
            raise CaffeFileError(self.path, f"no blob '{blob}' in the net")
        self.output = blob or ("fc5" if "fc5" in blobs else net.outputs[-1])
        _require_weights(net, self.path, prototxt, self.output)
        self.runner = Runner(net, [self.output], backend, device, self.path, forwards=forwards)
        self.net = self.runner.net

    @property
    def backend(self) -> str:
        """What runs the net (chosen at the first use under auto: features all cached, nothing is exported)."""
        return self.runner.backend if self.runner is not None else "onnxruntime"

    @property
    def backend_line(self) -> str:
        return self.runner.line if self.runner is not None else f"backend: onnxruntime ({Path(self.path).name})"

    def features(self, x: torch.Tensor) -> np.ndarray:
        """The output blob of a batch, one row per image."""
        if self.net is None:
            return run_session(self.session, [self.output], self.input_name, x)[self.output].reshape(len(x), -1)
        return self.runner(x)[self.output].reshape(len(x), -1)

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        h.update(str(self.output).encode())
        h.update(json.dumps(self.state, sort_keys=True, default=list).encode())
        return h.hexdigest()


def _image_input(path, name: str, shape) -> tuple[int, int]:
    """(h, w) of a net input that takes a batch of 3-channel images (N, 3, H, W); else one line naming the net."""
    dims = list(shape)
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise CaffeFileError(path, f"input '{name}' has shape {dims}: face features need a fixed N x 3 x H x W image "
                                   f"input")
    if dims[1] != 3:
        raise CaffeFileError(path, f"input '{name}' takes {dims[1]} channels: face features need a 3-channel "
                                   f"(BGR/RGB) input")
    return int(dims[2]), int(dims[3])


def _require_weights(net, path: str, prototxt, output: str) -> None:
    """Features need trained weights: a net definition alone (fillers' random weights) or a caffemodel that
    leaves a layer the feature blob depends on without weights (Net::CopyTrainedLayersFrom would leave it to
    its filler, as sfport's Net does) is one line naming the model."""
    if not any(net.params.values()):
        return
    if not net.has_weights:
        raise CaffeFileError(path, "has no weights (a net definition alone): eval, embed and compare need a trained "
                                   "model, a .caffemodel (with --prototxt for its definition) or a converted .pt")
    report = net.report
    needed, layers = {net.graph.final[output]}, set()
    for gl in reversed(net.graph.layers):   # the layers the feature blob is computed from
        if any(t in needed for t in gl.tops):
            layers.add(gl.name)
            needed.update(gl.bottoms)
    untrained = set(report.layers_without_weights)
    missing = [n for n in report.layers_without_weights if n in layers and not (
        report.filled.get(n) and all(h.startswith("shared with ") and h[len("shared with "):] not in untrained
                                     for h in report.filled[n]))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CaffeFileError(path, f"has no weights for layer '{missing[0]}'{more} of {prototxt or 'its net'}, "
                                   f"which blob '{output}' depends on: its filler would give random features")


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
    """Relative image paths under ``root`` -> (image, mirror image) tensors, aligned when landmarks are given.
    ``origins``: per path, the (list file, line) that named it, or None; a bad image is then an error naming the
    list and the line."""

    def __init__(self, paths: list[str], root, size: tuple[int, int], protocol: str, landmarks: dict | None = None,
                 template: str | None = None, landmarks_file=None, net_path=None, origins=None):
        self.paths, self.root, self.size, self.protocol = paths, str(root), tuple(size), protocol
        self.origins = origins
        self.landmarks, self.landmarks_file = landmarks, landmarks_file
        self.tmpl = None
        if landmarks is not None:
            if template is None:   # the template of the net's input size; another size needs --template
                template = next((t.name for t in align.TEMPLATES.values() if t.size == self.size), None)
                if template is None:
                    sizes = ", ".join(f"{t.name} {t.size[0]}x{t.size[1]}" for t in align.TEMPLATES.values())
                    raise CaffeFileError(net_path, f"the net takes {size[0]}x{size[1]} faces, no template's size "
                                               f"({sizes}): give --template to align to it scaled")
            self.tmpl = align.template(template, size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        rel = self.paths[i]
        path = os.path.join(self.root, rel)
        origin = self.origins[i] if self.origins is not None else None
        at = f"{origin[0]}: line {origin[1]}: " if origin else ""   # the list and line that named the image
        try:
            img = read_image(path, list_file=origin[0], line=origin[1]) if origin else read_image(path)
        except CaffeFileError as e:
            return None, None, str(e)
        if self.landmarks is not None:
            pts = self.landmarks.get(rel)
            if pts is None:
                return None, None, f"{at}{self.landmarks_file or 'the landmark list'}: no landmarks for '{rel}'"
            img = align.align(img, pts, self.tmpl)
        elif img.shape[:2] != self.size:
            return None, None, (f"{at}{path}: the image is {img.shape[0]}x{img.shape[1]}, the net takes "
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
            cache_dir=None, progress=False, sink=None, log=None, origins=None) -> Extracted | None:
    """Features of ``paths`` (relative to ``root``) and of their mirror images, batched, cached. Images are
    read, aligned and preprocessed in DataLoader workers while the net runs on the batch before. ``sink``: a
    callable ``(start row, features, mirror features)`` given each batch as it is produced (then nothing is
    kept or cached and None is returned). ``progress``: see :class:`sfport.report.progress.Progress`; ``log`` a
    CaffeLog-like callable for its lines. ``origins``: :class:`FaceImages`' (the list and line of each path)."""
    cache = None
    if cache_dir is not False and sink is None:
        cache = Path(cache_dir or default_cache_dir()) / (cache_key(model, paths, root, protocol, landmarks_file,
                                                                    template) + ".npz")
        cached = _read_cache(cache, len(paths))
        if cached is not None:
            return Extracted(list(paths), *cached)
    bound_heap_growth()
    ds = FaceImages(paths, root, model.input_size, protocol, landmarks, template, landmarks_file, model.path,
                    origins)
    if workers:
        settle_temp_folders()
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    feats, flips = [], []
    done = 0
    with Progress(len(paths), "features", "images", progress, log, header=[model.backend_line]) as bar:
        for x, xf, err in dl:
            if err:
                raise CaffeFileError(None, err)
            both = model.features(torch.cat([x, xf]))
            if not np.isfinite(both).all():   # the images are finite: the weights are not
                k = done + int(np.nonzero(~np.isfinite(both).all(axis=1))[0][0]) % len(x)
                raise CaffeFileError(model.path, f"gives NaN or infinite features (for {paths[k]}): NaN or "
                                                 f"infinite weights?")
            if sink is not None:
                sink(done, both[:len(x)], both[len(x):])
            else:
                feats.append(both[:len(x)])
                flips.append(both[len(x):])
            done += len(x)
            bar.update(len(x))
    if sink is not None:
        return None
    out = Extracted(list(paths), np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
                    np.concatenate(flips) if flips else np.zeros((0, 0), np.float32))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        buf = _io.BytesIO()
        np.savez(buf, features=out.features, flipped=out.flipped)
        atomic_write(cache, buf.getvalue())
    return out


def _read_cache(path: Path, n: int):
    """(features, flipped) from a cache file, or None when there is none or it is unreadable (a cache cut short
    by a full disk is rebuilt, not an error)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            f, ff = np.asarray(z["features"]), np.asarray(z["flipped"])
    except Exception:  # noqa: BLE001 - whatever is wrong with a cache file, it is recomputed
        return None
    if f.ndim != 2 or f.shape != ff.shape or len(f) != n or not np.isfinite(f).all() or not np.isfinite(ff).all():
        return None
    return f, ff


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


# the variables of a features MAT-file (embed -o x.mat): row i of `features` is the image named by `images`{i}
MAT_FEATURES, MAT_IMAGES = "features", "images"


def mat_bytes(features: np.ndarray, images: list[str]) -> bytes:
    """A MAT-file (v5, scipy.io.savemat) of ``features`` (N x D, as given: row i = image i, as the ``.npy``) and
    ``images`` (an N x 1 cell array of the image paths), as bytes."""
    names = np.empty((len(images), 1), dtype=object)
    names[:, 0] = list(images)
    return mat_file_bytes({MAT_FEATURES: np.asarray(features), MAT_IMAGES: names})


def read_mat(path, what: str = "features MAT-file") -> dict:
    """The variables of a MAT-file (v4 to v7) read by ``scipy.io.loadmat``, which builds arrays, cells, structs
    and strings only: nothing in the file runs. A missing, empty or unreadable file, a v7.3 (HDF5) file or
    anything else than a MAT-file is one line naming it."""
    import scipy.io

    if check_readable_file(path, what) == 0:
        raise CaffeFileError(path, f"empty file, not a MAT-file ({what})")
    try:
        doc = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except NotImplementedError:   # scipy: "Please use HDF reader for matlab v7.3 files"
        raise CaffeFileError(path, "a MATLAB v7.3 (HDF5) MAT-file: save it with save(..., '-v7'); scipy.io.loadmat "
                                   "reads v4 to v7") from None
    except Exception as e:  # noqa: BLE001 - scipy's reader fails in many ways on a file that is not a MAT-file
        text = str(e).strip().splitlines()
        raise CaffeFileError(path, f"not a MAT-file ({what}): {text[0][:200] if text else type(e).__name__}") \
            from None
    return {k: v for k, v in doc.items() if not k.startswith("__")}


def mat_kind(v) -> str:
    """What a loaded MAT variable is, in Matlab's words (for errors)."""
    if not isinstance(v, np.ndarray):
        return "a sparse matrix" if hasattr(v, "tocsr") else f"a {type(v).__name__}"
    dims = "x".join(map(str, v.shape))
    if v.dtype.names:
        return f"a {dims} struct"
    if v.dtype.kind == "O":
        return f"a {dims} cell"
    if v.dtype.kind == "U":
        return f"a {dims} char array"
    return f"a {dims} {v.dtype} matrix"


def mat_matrix(path, name: str, v, rows: int | None = None, rows_are: str = "rows") -> np.ndarray:
    """MAT variable ``name`` checked to be a finite 2-D float (single or double) matrix with columns, and with
    ``rows`` of its ``rows_are`` ('rows' or 'columns') when given; one line naming the file and variable."""
    if not (isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim == 2 and v.size):
        raise CaffeFileError(path, f"variable '{name}' must be a 2-D float (single or double) matrix, not "
                                   f"{mat_kind(v)}")
    n = v.shape[0] if rows_are == "rows" else v.shape[1]
    if rows is not None and n != rows:
        raise CaffeFileError(path, f"variable '{name}' has {n} {rows_are} ({mat_kind(v)[2:]}) for {rows} "
                                   f"{'images' if rows_are == 'rows' else 'pairs'}")
    if not np.isfinite(v).all():
        bad = np.argwhere(~np.isfinite(v))[0] + 1
        raise CaffeFileError(path, f"variable '{name}' holds a NaN or infinite value at ({bad[0]}, {bad[1]})")
    return v


def mat_vector(path, name: str, v) -> np.ndarray:
    """MAT value ``name`` checked to be a non-empty float vector (a column, as Matlab stores a feature, or a row)."""
    if not (isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim <= 2 and v.size and min(v.shape) == 1):
        raise CaffeFileError(path, f"'{name}' must be a float feature vector (a column), not {mat_kind(v)}")
    return v.reshape(-1)


def mat_string(path, name: str, v) -> str:
    """MAT value ``name`` checked to be one string (a char row)."""
    if not (isinstance(v, np.ndarray) and v.dtype.kind == "U" and v.size <= 1):
        raise CaffeFileError(path, f"'{name}' must be a string, not {mat_kind(v)}")
    return str(v.reshape(-1)[0]) if v.size else ""


def mat_strings(path, name: str, v) -> list[str]:
    """MAT variable ``name`` as a list of strings: a cell array of char rows (what :func:`mat_bytes` writes) or a
    char matrix (one string per row, Matlab's blank padding removed)."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "U" and v.ndim <= 2:
        return [str(x).rstrip(" ") for x in v.reshape(-1)]
    if isinstance(v, np.ndarray) and v.dtype.kind == "O" and v.dtype.names is None:
        return [mat_string(path, f"{name}{{{k + 1}}}", x) for k, x in enumerate(v.reshape(-1, order="F"))]
    raise CaffeFileError(path, f"variable '{name}' must be a cell array of image paths (or a char matrix), not "
                               f"{mat_kind(v)}")


def root_relative(path, root) -> str:
    """An image argument of ``embed`` as its name relative to ``root`` (what the image list beside the features
    holds, and eval --list matches against pairs.txt): ``path`` itself when it names a file under ``root``, else,
    for a file inside ``root`` given from the working folder (or absolutely), its path from ``root``."""
    if not os.path.isabs(path) and os.path.exists(os.path.join(root, path)):
        return path
    if os.path.exists(path):
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel.replace(os.sep, "/")
    return path


def embed(images, model, output, prototxt=None, blob: str | None = None, list_file=None, root=".",
          flip: str = "concat", protocol: str = "sphereface", landmarks=None, batch_size: int = 64,
          workers: int = 2, progress=False, state: dict | None = None, template: str | None = None,
          landmarks_one_based: bool = False, backend: str = "auto", log=None) -> np.ndarray:
    """``sfport embed``: the features of ``images`` (named relative to ``root``: :func:`root_relative`) and of the
    paths in ``list_file`` (first field of each line; relative to ``root``; a bad image names the list's line),
    aligned first from the ``landmarks`` list when given (to ``template``, default the one of the net's input
    size), joined with their mirror images' by ``flip`` (:func:`with_mirror`);
    written as float32 ``output``: a ``.npy`` (row i = image i; written as the batches are produced, to a
    temporary file) and the image list beside it (.txt), both checked before any work and renamed together (a
    failure leaves neither); or a ``.mat`` (:func:`mat_bytes`: ``features`` and ``images`` in one file, written
    at the end). ``state``: :class:`Model`'s phase / stages / level / input_shapes, for a train or test
    definition; ``backend``: :class:`Model`'s; ``log``: a CaffeLog-like callable for the backend line and the
    progress lines. Returns the features written (memory-mapped from a ``.npy``)."""
    out = Path(output)
    as_mat = out.suffix.lower() == ".mat"
    names = None if as_mat else out.with_suffix(".txt")
    if names == out:
        raise CaffeFileError(output, "the features (.npy) and their image list (.txt beside them) would be the same "
                                     "file: give a .npy (or .mat) output")
    check_output(out, "the features output")
    if names is not None:
        check_output(names, "the image list output")
    if not os.path.isdir(root):
        raise CaffeFileError(root, "the image folder (--root) is not a folder" if os.path.exists(root)
                             else "the image folder (--root) not found")
    paths = [root_relative(p, root) for p in images]
    origins = [None] * len(paths)
    if list_file:
        text = read_list_text(list_file, "image list", "an image list")
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                paths.append(line.split()[0])
                origins.append((os.fspath(list_file), n))
    if not paths:
        raise CaffeFileError(list_file, "the image list is empty" if list_file else "no images given")
    m = Model(model, prototxt, blob, **(state or {}), backend=backend, forwards=2 * len(paths))
    marks = align.read_landmarks(landmarks, one_based=landmarks_one_based) if landmarks else None
    staged = None if as_mat else Staged(out, "the features output")
    rows = {}

    def sink(start, f, f_flip):
        joined = with_mirror(f, f_flip, flip).astype(np.float32)
        if "mm" not in rows:
            shape = (len(paths), joined.shape[1])
            rows["mm"] = np.empty(shape, np.float32) if as_mat else \
                np.lib.format.open_memmap(staged.tmp, mode="w+", dtype=np.float32, shape=shape)
        rows["mm"][start:start + len(joined)] = joined

    try:
        extract(m, paths, root, protocol, marks, landmarks, template, batch_size, workers, cache_dir=False,
                progress=progress, sink=sink, log=log, origins=origins)
        if as_mat:
            write_files({out: mat_bytes(rows["mm"], paths)})
            return rows["mm"]
        rows["mm"].flush()
        del rows["mm"]
        write_files({out: staged, names: ("\n".join(paths) + "\n").encode()})
    except BaseException:
        if staged is not None:
            staged.discard()
        raise
    return np.load(out, mmap_mode="r")


def compare(a, b, model, prototxt=None, blob: str | None = None, protocol: str = "sphereface",
            state: dict | None = None, backend: str = "auto", log=None) -> float:
    """``sfport compare``: the cosine of two aligned face images' features, each combined with its mirror
    image's as the ``protocol`` does (:func:`combine`)."""
    m = Model(model, prototxt, blob, **(state or {}), backend=backend, forwards=4)   # each image and its mirror
    ex = extract(m, [a, b], ".", protocol, cache_dir=False, workers=0)
    if log is not None:
        log(m.backend_line, "features.py:0")
    f = combine(ex.features, ex.flipped, protocol)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    for path, n in zip((a, b), norms[:, 0]):
        if n == 0:
            raise CaffeFileError(model, f"gives all-zero features for {path}: no cosine")
    return float((f / norms)[0] @ (f / norms)[1])
