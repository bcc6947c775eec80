"""Blob-by-blob parity of an sfport net against an independent Caffe implementation, and sfport's one error
metric (:func:`relative_error`, also what ``sfport convert`` checks its exports with).

References: OpenCV 4's Caffe importer (its own layer code; fusion and Winograd disabled so that each layer's
output is exposed and computed directly), pycaffe in a subprocess (a failed Caffe CHECK aborts the process), or a
directory of ``<blob or layer name>.npy`` files. :func:`run` is ``sfport verify``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sfport import converters as conv_registry
from sfport.formats import caffe_files
from sfport.formats import disk
from sfport.data import images
from sfport.errors import CaffeFileError
from sfport.netdef import shapes as shape_inference
from sfport.runtime.net import load_net
from sfport.protos import caffe_pb2


@dataclass
class BlobCheck:
    name: str
    shape: list
    max_ref: float
    max_abs_err: float
    rel_err: float          # max_abs_err / max(1, max|ref|)
    cosine: float
    ok: bool
    our_shape: list | None = None   # sfport's shape where its element count differs from the reference's


def make_input(shape, source: str = "random", seed: int = 0) -> np.ndarray:
    """A verification input: uniform(-1, 1) noise (``random``), a ``.npy`` array of exactly ``shape``, or an
    image as (BGR - 127.5) / 128 resized to HxW and repeated over the batch."""
    if source == "random":
        return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)
    if str(source).lower().endswith(".npy"):
        arr = load_array(source)
        if tuple(arr.shape) != tuple(shape):
            raise CaffeFileError(source, f"an array of shape {list(arr.shape)} for an input of shape {list(shape)}")
        return np.ascontiguousarray(arr, dtype=np.float32)
    if len(shape) != 4:
        raise CaffeFileError(source, f"an image input needs a 4-D net input, not {list(shape)}")
    n, c, h, w = shape
    import cv2
    img = images.read_image(source, c == 3)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    img = (img - 127.5) * 0.0078125
    chw = img.transpose(2, 0, 1) if img.ndim == 3 else img[None]
    return np.repeat(chw[None], n, axis=0)


def array_shape(path) -> tuple[int, ...]:
    """The shape a ``.npy`` file declares, read from its header alone (nothing is allocated)."""
    return tuple(_open_array(path).shape)


def load_array(path) -> np.ndarray:
    """A ``.npy`` file as a real numeric array: no pickles, and the header's shape checked against the file's
    size before anything is allocated."""
    return np.array(_open_array(path))


def _open_array(path):
    return disk.load_array(path, "input array")


def input_sources(specs, names) -> dict[str, str]:
    """``--input`` values (``SOURCE`` for the first input, or ``NAME=SOURCE``; a source is ``random``, an
    image file or a ``.npy`` array) as {input: source} for every input in ``names``, ``random`` by default."""
    if specs is None or isinstance(specs, str):
        specs = [specs] if specs else []
    names = list(names)
    out = {n: "random" for n in names}
    bare = []
    for spec in specs:
        name, source = _split_spec(spec)
        if name is None:
            bare.append(source)
            continue
        if name not in out:
            raise CaffeFileError(None, f"--input {spec}: the net has no input '{name}' (inputs: "
                                       f"{', '.join(names) or 'none'})")
        out[name] = source
    if len(bare) > 1:
        raise CaffeFileError(None, "several --input values without a name: give NAME=SOURCE for each input")
    if bare and names:
        out[names[0]] = bare[0]
    return out


def _split_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` -> (NAME, SOURCE); a plain source (also a path with '=' in a folder name) -> (None, it)."""
    name, sep, source = str(spec).partition("=")
    if sep and name and "/" not in name and "\\" not in name and not Path(spec).exists():
        return name, source
    return None, str(spec)


def given_array_shapes(specs, shapes):
    """``shapes`` completed with the shape of each ``.npy`` ``--input`` whose input has no given shape."""
    if specs is None or isinstance(specs, str):
        specs = [specs] if specs else []
    for spec in specs:
        name, source = _split_spec(spec)
        if not source.lower().endswith(".npy"):
            continue
        if name is None and shapes is None:
            shapes = array_shape(source)
        elif name is not None and (shapes is None or isinstance(shapes, dict)) and name not in (shapes or {}):
            shapes = {**(shapes or {}), name: array_shape(source)}
    return shapes


def _opencv_message(e: Exception) -> str:
    """The first line of what OpenCV says (a cv2.error's ``err``, without its '> ' quoting and source path)."""
    text = getattr(e, "err", None) or str(e)
    first = next((ln.strip().lstrip("> ").strip() for ln in str(text).splitlines() if ln.strip().lstrip("> ")),
                 type(e).__name__)
    return first[:200]


def opencv_reference(prototxt: str, caffemodel: str, inputs: dict[str, np.ndarray],
                     definition=None) -> dict[str, np.ndarray]:
    """First output of every layer OpenCV builds, keyed by layer name, each in the layout Caffe gives it (the
    converter's ``opencv_layout`` of the Caffe layer of that name in ``definition``, a NetParameter; default:
    ``prototxt`` as sfport reads it)."""
    import cv2
    if definition is None:
        definition = caffe_files.read_prototxt(prototxt).net
    caffe_layers = {layer.name: layer for layer in definition.layer}
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    for name, x in inputs.items():
        net.setInput(x, name)
    names = list(net.getLayerNames())
    outs = net.forward(names)
    num = next(iter(inputs.values())).shape[0] if inputs else 1
    out = {}
    for n, o in zip(names, outs):
        layer = caffe_layers.get(n)
        converter = conv_registry.find_for(layer) if layer is not None else None
        out[n] = converter.opencv_layout(layer, np.asarray(o), num) if converter is not None else np.asarray(o)
    return out


_CAFFE_SCRIPT = r"""
import sys, os, numpy as np
import caffe
caffe.set_mode_cpu()
prototxt, weights, in_dir, out_dir = sys.argv[1:5]
net = caffe.Net(prototxt, weights, caffe.TEST)
for f in os.listdir(in_dir):
    name = f[:-4]
    x = np.load(os.path.join(in_dir, f))
    net.blobs[name].reshape(*x.shape)
    net.blobs[name].data[...] = x
net.reshape()
net.forward()
for name, blob in net.blobs.items():
    np.save(os.path.join(out_dir, name.replace('/', '__') + '.npy'), blob.data)
"""


def caffe_reference(prototxt: str, caffemodel: str, inputs: dict[str, np.ndarray],
                    python: str | None = None) -> dict[str, np.ndarray]:
    """Every blob of pycaffe's forward (last value of each name), run in a subprocess of ``python`` (default:
    $SFPORT_CAFFE_PYTHON, else this interpreter)."""
    python = python or os.environ.get("SFPORT_CAFFE_PYTHON") or sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        in_dir, out_dir = Path(tmp, "in"), Path(tmp, "out")
        in_dir.mkdir()
        out_dir.mkdir()
        for name, x in inputs.items():
            np.save(in_dir / f"{name}.npy", x)
        p = subprocess.run([python, "-c", _CAFFE_SCRIPT, prototxt, caffemodel, str(in_dir), str(out_dir)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise CaffeFileError("--reference caffe", f"the reference (pycaffe, {python}; set SFPORT_CAFFE_PYTHON to a Python "
                                             f"with caffe) failed (exit {p.returncode}): {tail}")
        return dir_reference(out_dir)


def dir_reference(directory) -> dict[str, np.ndarray]:
    """``<name>.npy`` files of a directory (``__`` in a file name stands for ``/`` in the blob name)."""
    d = Path(directory)
    if not d.is_dir():
        raise CaffeFileError(directory, "reference directory not found")
    return {f.stem.replace("__", "/"): np.asarray(disk.load_array(f, "reference blob"))
            for f in sorted(d.glob("*.npy"))}


def _deviation(ours, ref) -> tuple[float, float, float]:
    """(max|ref|, max|ours - ref|, their ratio as :func:`relative_error`), in float64; zeros for empty arrays."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    max_ref = float(np.abs(b).max()) if b.size else 0.0
    err = float(np.abs(a - b).max()) if b.size else 0.0
    return max_ref, err, err / max(1.0, max_ref)


def relative_error(ours, ref) -> float:
    """sfport's one error metric: max|ours - ref| / max(1, max|ref|), in float64 (0 for empty arrays).

    Absolute below 1, relative above: a blob of large values may differ by float32 rounding of its size."""
    return _deviation(ours, ref)[2]


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], order: list[str],
            tol: float = 1e-5) -> list[BlobCheck]:
    """Compare every name both sides have, in ``order``; a blob passes when its :func:`relative_error` is at
    most ``tol`` and the shapes agree."""
    checks = []
    for name in order:
        if name not in ours or name not in ref:
            continue
        a = np.asarray(ours[name], dtype=np.float64)
        b = np.asarray(ref[name], dtype=np.float64)
        if a.size != b.size:   # nothing to compare value by value: the table and the summary name both shapes
            checks.append(BlobCheck(name, list(b.shape), float(np.abs(b).max()) if b.size else 0.0, float("inf"),
                                    float("inf"), float("nan"), False, list(a.shape)))
            continue
        a = a.reshape(b.shape)
        max_ref, err, rel = _deviation(a, b)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos = float(np.dot(a.ravel(), b.ravel()) / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
        checks.append(BlobCheck(name, list(b.shape), max_ref, err, rel, cos, rel <= tol))
    return checks


def shape_text(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def failure_text(check: BlobCheck) -> str:
    """Why a blob failed, for the summary line: its two shapes, or its error."""
    if check.our_shape is not None:
        return f"shapes differ: sfport {shape_text(check.our_shape)}, reference {shape_text(check.shape)}"
    return f"rel err {check.rel_err:.3e}"


def format_table(checks: list[BlobCheck]) -> str:
    head = ("blob", "shape", "max|ref|", "max abs err", "rel err", "cosine", "")
    rows = [(c.name, "x".join(map(str, c.shape))   # a scalar's cell stays empty here; shape_text names it
             + ("" if c.our_shape is None else f" (sfport {shape_text(c.our_shape)})"),
             f"{c.max_ref:.4g}", f"{c.max_abs_err:.3e}", f"{c.rel_err:.3e}", f"{c.cosine:.8f}",
             "ok" if c.ok else "FAIL") for c in checks]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) if i in (0, 1, 6) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
              .rstrip() for r in rows]
    return "\n".join(lines)


def as_json(checks: list[BlobCheck], extra: dict) -> str:
    return json.dumps({**extra, "blobs": [asdict(c) for c in checks]}, indent=2)


@dataclass
class Verification:
    """What :func:`run` found: one :class:`BlobCheck` per blob both sides expose, in the net's order."""
    model: str
    reference: str
    input_shape: list
    tolerance: float
    checks: list[BlobCheck]
    inputs: dict = None     # {input: {"shape": [...], "source": "random" | image | .npy}}
    optimized: str | None = None   # what the optimized net folded and dropped (verify --optimize)
    notes: list = None      # the header lines: weights from the fillers, an image run at its size or resized
    filler_weights: bool = False   # no trained weights: every layer with parameters runs on its fillers' values

    @property
    def failed(self) -> list[BlobCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def worst(self) -> BlobCheck | None:
        return max(self.checks, key=lambda c: c.rel_err) if self.checks else None

    @property
    def passed(self) -> bool:
        """Every blob within the tolerance, and at least one blob compared."""
        return not self.failed and bool(self.checks)

    def as_json(self) -> str:
        """The ``sfport verify --json`` document."""
        failed, worst = self.failed, self.worst
        return as_json(self.checks, {"model": self.model, "reference": self.reference,
                                     "input_shape": list(self.input_shape), "inputs": self.inputs or {},
                                     "tolerance": self.tolerance, "optimized": self.optimized,
                                     "filler_weights": self.filler_weights, "notes": self.notes or [],
                                     "passed": self.passed, "first_failure": failed[0].name if failed else None,
                                     "worst": worst.name if worst else None})


def _align_ties(net, values: dict, ours: dict, ref: dict, tol: float) -> None:
    """Each layer's tops in ``ref`` (by Caffe blob name) as its converter's ``align_reference_tops`` gives them:
    a choice between values that tie within ``tol`` (a MAX pooling mask) taken as ours. Only a top whose blob
    is not changed later in place is compared this way (its final value is the layer's)."""
    for gl in net.graph.layers:
        names = [net.graph.caffe_name[t] for t in gl.tops]
        if len(names) < 2 or not all(t in values for t in gl.tops) or not all(b in values for b in gl.bottoms):
            continue
        if any(net.graph.final.get(n) not in (None, t) for n, t in zip(names, gl.tops)):
            continue
        mine = [values[t].detach().numpy() for t in gl.tops]
        theirs = [ref.get(n) for n in names]
        aligned = conv_registry.get_for(gl.param).align_reference_tops(
            gl.param, [values[b].detach().numpy() for b in gl.bottoms], mine, theirs, tol)
        for n, a in zip(names, aligned):
            if a is not None:
                ref[n] = a


def reference_definition(net, opencv: bool = False):
    """The inference net sfport runs, as a NetParameter the references read: each layer as its converter's
    ``for_reference`` writes it (fork types under their BVLC names, defaults a reference reads differently written
    out: the same net under the fork's schema); for OpenCV (``opencv``) then as its ``for_opencv`` writes it (a
    built-in Python layer as OpenCV's own type)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net.definition)
    index = {gl.name: gl for gl in net.graph.layers}
    for layer in out.layer:
        converter = conv_registry.find_for(layer)
        if converter is not None:
            converter.for_reference(layer, index.get(layer.name))
            if opencv:
                converter.for_opencv(layer)
    return out


def reference_weights(net) -> caffe_files.CaffeModel:
    """The net's weights as the references read them: each layer's blobs as its converter's ``reference_blobs``
    gives them (the same layer for Caffe; e.g. a BatchNorm's zero scale factor, which OpenCV divides by)."""
    m = net.to_caffemodel()
    for i, layer in enumerate(m.net.layer):
        converter = conv_registry.find_for(layer)
        if converter is None or not len(layer.blobs):
            continue
        arrays = m.blob_arrays(i)
        changed = converter.reference_blobs(layer, arrays)
        if changed is not arrays:
            m.set_blob_arrays(i, changed)
    return m


def input_values(net, shapes: dict) -> dict[str, tuple[np.ndarray, str]]:
    """The inputs of ``net`` (at ``shapes``, {input: shape}) whose made-up value a layer they feed directly gives
    (``Converter.input_value``: a Proposal layer's im_info), as {input: (float32 value, that layer's name)}; the
    image is the first 4-D input."""
    image = next((tuple(v) for v in shapes.values() if len(v) == 4), None)
    out = {}
    for gl in net.graph.layers:
        for j, b in enumerate(gl.bottoms):
            name = net.graph.caffe_name.get(b)
            if b not in net.graph.inputs or name not in shapes or name in out:
                continue
            value = conv_registry.get_for(gl.param).input_value(gl.param, j, tuple(shapes[name]), image)
            if value is not None:
                out[name] = (np.asarray(value, dtype=np.float32).reshape(shapes[name]), gl.name)
    return out


def _some(names, most: int = 4) -> str:
    return ", ".join(names) if len(names) <= most else f"{', '.join(names[:most])} and {len(names) - most} more"


def training_differences(net) -> list[str]:
    """What the layers of a TRAIN-phase ``net`` compute otherwise than the references, which run a net for
    inference (each converter's ``differs_in_training``: BatchNorm's batch statistics, Dropout's random mask),
    one phrase per kind naming its layers; empty for a TEST-phase net or one without such layers."""
    if net.phase != caffe_pb2.TRAIN:
        return []
    found: dict[tuple[str, str], list[str]] = {}
    for gl in net.graph.layers:
        why = conv_registry.get_for(gl.param).differs_in_training(gl.param, net.module.module_of(gl.name))
        if why:
            found.setdefault((gl.type, why), []).append(gl.name)
    return [f"{len(names)} {kind} layer{'s' if len(names) > 1 else ''} ({_some(names)}): {why}"
            for (kind, why), names in found.items()]


def size_dependence(net, name: str, shape) -> str | None:
    """Why ``net`` cannot run with its input ``name`` at ``shape`` as it is (a layer's parameters have the size of
    the input, or a layer refuses that size); None when it can: every layer's parameter shapes (Caffe's shape
    inference, :func:`sfport.netdef.shapes.infer`) are those of its declared input size - the net is fully
    convolutional for that input."""
    given = {n: tuple(s) for n, s in net.inputs.items()}
    try:
        here = shape_inference.infer(net.definition, input_shapes=given, filtered=True)
        there = shape_inference.infer(net.definition, input_shapes={**given, name: tuple(shape)}, filtered=True)
    except CaffeFileError as e:
        return e.message
    for a, b in zip(here, there):
        if a.params != b.params:
            layer = net.definition.layer[a.index]
            return f"layer '{layer.name}' ({layer.type}) has parameters of its input's size"
    return None


def image_sizes(net, specs, shape) -> tuple[dict, list[str]]:
    """The image ``--input`` values of ``net``'s 4-D inputs whose size differs from the input's: ({input: the
    shape at the image's own size} for those the net runs at that size, one note per image saying which size it
    runs at). An image runs at its own size when no ``shape`` gives that input's and the net is fully
    convolutional for it (:func:`size_dependence`); otherwise it is resized to the input's size."""
    sources = input_sources(specs, net.inputs)
    names = list(net.inputs)
    given = shape if isinstance(shape, dict) else ({names[0]: shape} if shape is not None and names else {})
    own, notes = {}, []
    for name, declared in net.inputs.items():
        source = sources[name]
        if source == "random" or str(source).lower().endswith(".npy") or len(declared) != 4:
            continue
        n, c, height, width = declared
        h, w = images.read_image(source, c == 3).shape[:2]
        if (h, w) == (height, width):
            continue
        why = "--shape" if name in given else size_dependence(net, name, (n, c, h, w))
        if why is None:
            own[name] = (n, c, h, w)
            notes.append(f"input '{name}': {source} at its own size {h}x{w}, not resized to the declared "
                         f"{height}x{width}: the net is fully convolutional (--shape {n},{c},{height},{width} "
                         f"resizes it)")
        else:
            notes.append(f"input '{name}': {source} ({h}x{w}) resized to {height}x{width}"
                         + (" (--shape)" if name in given else f", the net's input size: {why}"))
    return own, notes


def run(model, prototxt=None, reference: str = "opencv", input="random", shape=None, tol: float = 1e-5,
        seed: int = 0, *, phase: str = "TEST", stages=(), level: int = 0, optimize: bool = False) -> Verification:
    """``sfport verify``: load MODEL (+ ``prototxt``, any net form: deploy, train_val, train_test) in its inference
    form with ``shape`` (one shape for the first input, or {input: shape}; a ``.npy`` input gives its own), feed
    every input (``input``: one source for the first input or ``NAME=SOURCE`` values, see :func:`input_sources`;
    random inputs each have their own seed) and compare every blob with the
    ``reference``: ``opencv`` (layer outputs, by layer name), ``caffe`` (pycaffe, by blob name) or a directory of
    ``.npy`` files (by blob name, then layer name). The references read the inference net sfport derived (fork
    types renamed) and its weights, written to a temporary folder; a reference that cannot load or run it is one
    line saying so. With ``optimize`` sfport's side is the inference-optimized net (:mod:`sfport.netdef.optimize`),
    compared with the reference running the original net at every blob whose value the optimized net still
    computes. Without ``model`` and ``prototxt``: the built-in SphereFace-20 deploy net, its weights drawn by its
    fillers from ``seed`` (:func:`sfport.runtime.net.load_net`); a net definition without weights runs on its
    fillers' values drawn from ``seed`` too, and the first note says so. An image input runs at its own size
    when the net is fully convolutional (:func:`image_sizes`; a note says which size it ran at). A TRAIN-phase
    net whose layers compute otherwise than the inference the references run (:func:`training_differences`:
    BatchNorm's batch statistics) is an error naming them, before anything runs."""
    shape = given_array_shapes(input, shape)
    net = load_net(model, prototxt, shape, phase, stages=stages, level=level, seed=seed)
    builtin = model is None and prototxt is None
    model = net.path if builtin else model   # the built-in net
    differences = training_differences(net) if reference in ("opencv", "caffe") else []
    if differences:
        raise CaffeFileError(prototxt or model, f"the reference ({reference}) does not apply in phase TRAIN, as it "
                                                f"runs the net for inference: {'; '.join(differences)}; verify "
                                                f"with --phase TEST")
    own, notes = image_sizes(net, input, shape)
    if own:   # fully convolutional: the net again, at the images' own sizes
        net = load_net(model if not builtin else None, prototxt, {**dict(net.inputs), **own}, phase,
                       stages=stages, level=level, seed=seed)
    filler_weights = not net.has_weights and bool(net.params) and not builtin
    sources = input_sources(input, net.inputs)
    made = input_values(net, net.inputs)
    feeds = {}
    for k, (name, in_shape) in enumerate(net.inputs.items()):
        if sources[name] == "random" and name in made:    # im_info and the like: meaningful, not noise
            feeds[name], sources[name] = made[name][0], f"made for layer '{made[name][1]}'"
        else:
            feeds[name] = make_input(in_shape, sources[name], seed + k)
    in_shape = next(iter(net.inputs.values()), ())
    if filler_weights:
        fed = ", ".join(f"{'x'.join(map(str, net.inputs[n]))} {sources[n]}" for n in net.inputs)
        notes.insert(0, f"{model}: no trained weights, every layer runs on its fillers' values (seed {seed}); "
                        f"input {fed}; against {reference}")
    ours_net = net.optimized() if optimize else net
    ours_net.forward(**feeds)
    values = ours_net.original_blobs()   # by the original net's unique blob names
    with tempfile.TemporaryDirectory() as tmp:
        prototxt_used = str(Path(tmp) / "deploy.prototxt")
        weights_used = str(Path(tmp) / "weights.caffemodel")
        definition = reference_definition(net, opencv=reference == "opencv")
        caffe_files.write_prototxt(prototxt_used, definition)
        caffe_files.write_caffemodel(weights_used, reference_weights(net))
        layer_outputs = {gl.name: values[gl.tops[0]].detach().numpy() for gl in net.graph.layers
                         if gl.tops and gl.tops[0] in values}
        if reference == "opencv":
            try:
                ref = opencv_reference(prototxt_used, weights_used, feeds, definition)
            except Exception as e:  # noqa: BLE001 - cv2.error and friends: the reference cannot run this net
                import cv2
                raise CaffeFileError(model, f"the reference (OpenCV {cv2.__version__}) cannot load or run the "
                                            f"net: {_opencv_message(e)}; verify it with --reference caffe (a "
                                            f"Caffe built with its layers) or a directory of .npy blobs") from None
            ours = layer_outputs
            order = [gl.name for gl in net.graph.layers]
            for gl in net.graph.layers:
                if gl.name in ref and gl.name in ours:
                    ref[gl.name] = conv_registry.get_for(gl.param).align_reference_output(
                        gl.param, ours[gl.name], ref[gl.name])
        else:
            ref = caffe_reference(prototxt_used, weights_used, feeds) if reference == "caffe" \
                else dir_reference(reference)
            ours = {n: values[u].detach().numpy() for n, u in net.graph.final.items() if u in values}
            ours.update({n: v for n, v in layer_outputs.items() if n not in ours})
            _align_ties(net, values, ours, ref, tol)
            order = list(dict.fromkeys([net.graph.caffe_name[t] for gl in net.graph.layers for t in gl.tops]
                                       + [gl.name for gl in net.graph.layers]))
    inputs = {n: {"shape": list(net.inputs[n]), "source": sources[n]} for n in net.inputs}
    return Verification(str(model), reference, list(in_shape), tol, compare(ours, ref, order, tol), inputs,
                        ours_net.optimization.summary() if optimize else None, notes, filler_weights)
