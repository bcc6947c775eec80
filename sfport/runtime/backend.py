"""The fastest way sfport has to run an inference net, chosen for the user, with the reason in one line.

:class:`Runner` runs a :class:`sfport.TorchNet`'s inference-optimized form (:mod:`sfport.netdef.optimize`), cut to the
layers its requested outputs are computed from. ``auto`` (the default of ``eval``, ``embed``, ``compare``,
``align --mtcnn`` and :class:`sfport.face.features.Model`) runs that net's ONNX export, the export checked against
the eager net when it is made (:func:`sfport.runtime.export.onnx_export`, as ``sfport convert`` checks it): on
OpenVINO where it is installed (``pip install "sfport[openvino]"``; a fixed-size net, in float32, once more checked
against the eager net), else on onnxruntime; a net that does not export runs eagerly, and the line says why.
A job its caller says is small (``forwards``: fewer than :data:`AUTO_EAGER_BELOW` images, mirror images
counted, as ``compare``'s four) runs eagerly under ``auto``: the export and its checks take longer than the eager
net takes for the whole job. ``openvino``, ``onnxruntime`` and ``torch`` choose; a device other than the CPU runs
eagerly there. Only the outputs are kept: each blob is freed after its last reader. onnxruntime is handed the
export with its PReLUs in kernels it runs faster (:func:`for_onnxruntime`), checked once more against the eager
net. On the CPU a batch runs in parts that keep the net's largest layer's blobs in the CPU's cache
(:func:`images_per_part`), where every layer computes each image on its own.

Measured on a 2-core AMD EPYC (bench/bench_forward.py): OpenVINO's CPU plugin runs SphereFace-20 1.27-1.37x and
MobileFaceNet 2.05-2.33x OpenCV 4's Caffe importer, onnxruntime 1.11-1.13x and 1.57-1.93x. SphereFace's time
goes to its 3x3 convolutions, which OpenCV runs as Winograd transforms and OpenVINO, onnxruntime and PyTorch as
direct convolutions.
"""
from __future__ import annotations

import contextlib
import ctypes

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from sfport.runtime import AUTO_EAGER_BELOW, BACKENDS, export
from sfport.errors import CaffeFileError
from sfport.netdef.graph import images_apart
from sfport.runtime.verify import relative_error



_HEAP_BOUNDED = False


def bound_heap_growth() -> None:
    """Fix glibc's mmap threshold at 1 MiB (mallopt M_MMAP_THRESHOLD), once per process, so that batch-sized
    buffers are mapped and unmapped rather than carved from the heap. glibc otherwise raises the threshold after
    each large free, and the batches received from DataLoader workers then fragmented the heap: ``sfport eval``'s
    main process grew from 0.76 to 1.7 GB over 13,233 images, and stays at 0.77 GB with the fixed threshold.
    A no-op where the C library is not glibc."""
    global _HEAP_BOUNDED
    if _HEAP_BOUNDED:
        return
    _HEAP_BOUNDED = True
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is not None:
        mallopt(-3, 1 << 20)     # M_MMAP_THRESHOLD (malloc.h)


def for_onnxruntime(data: bytes) -> bytes:
    """An ONNX model's bytes with each PRelu node written in kernels onnxruntime runs faster, to Caffe's values
    (prelu_layer.cpp PReLULayer::Forward_cpu: ``max(x, 0) + a[c] * min(x, 0)``). onnxruntime 1.32's PRelu
    kernel is its general broadcasting one, and its NCHWc convolutions have no PRelu, so each one is reordered
    out of and back into their layout: PRelu took 3.6 ms of SphereFace-20's 22.6 ms at batch 1 on 2 cores.

    - After a Convolution, with one slope per channel (a constant): ``r + (a * x + (-a) * r)`` with
      ``r = relu(x)``, the products as BatchNormalization (scale a, mean 0, variance 1, epsilon 0), which
      onnxruntime keeps in its NCHWc layout (19.8 ms; 1089 against 1204 ms at batch 64). For ``x > 0`` the
      bracket is ``a * x - a * x``, 0 (or the rounding residual of ``a * x`` where the kernel fuses it as a
      multiply-add, below 2^-24 |a x|); for ``x <= 0`` it is ``a * x + 0``.
    - Anywhere else: ``r + a * (x - r)``, exact to the bit since ``x - r`` is ``min(x, 0)`` (20.1 ms).

    A model without PRelu comes back unchanged."""
    model = onnx.load_from_string(data)
    graph = model.graph
    if not any(n.op_type == "PRelu" for n in graph.node):
        return data
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    constants = {i.name: i for i in graph.initializer}
    conv_of = {n.output[0]: n for n in graph.node if n.op_type == "Conv"}
    helper, nodes = onnx.helper, []
    for n in graph.node:
        if n.op_type != "PRelu":
            nodes.append(n)
            continue
        (x, a), (y,) = n.input, n.output
        r, term = _fresh(f"{y}_prelu_relu", taken), _fresh(f"{y}_prelu_term", taken)   # y = r + term
        nodes.append(helper.make_node("Relu", [x], [r], name=r))
        slope, conv = constants.get(a), conv_of.get(x)
        per_channel = None
        if slope is not None and conv is not None and conv.input[1] in constants:
            w = constants[conv.input[1]].dims      # Conv weight (M, C/group, k...): its output is (N, M, ...)
            if list(slope.dims) == [w[0]] + [1] * (len(w) - 2):
                per_channel = onnx.numpy_helper.to_array(slope).reshape(-1).astype(np.float32)
        if per_channel is None:         # term = a * (x - r)
            neg = _fresh(f"{y}_prelu_min", taken)
            nodes += [helper.make_node("Sub", [x, r], [neg], name=neg),
                      helper.make_node("Mul", [neg, a], [term], name=term)]
        else:                           # term = a * x + (-a) * r, each product a BatchNormalization
            zeros, ones = np.zeros_like(per_channel), np.ones_like(per_channel)
            products = []
            for part, src, scale in (("ax", x, per_channel), ("ar", r, -per_channel)):
                names = [_fresh(f"{y}_prelu_{part}_{k}", taken) for k in ("scale", "zeros", "ones")]
                graph.initializer.extend(onnx.numpy_helper.from_array(v, nm)
                                         for v, nm in zip((scale, zeros, ones), names))
                out = _fresh(f"{y}_prelu_{part}", taken)
                nodes.append(helper.make_node("BatchNormalization", [src, names[0], names[1], names[1], names[2]],
                                              [out], name=out, epsilon=0.0))
                products.append(out)
            nodes.append(helper.make_node("Add", products, [term], name=term))
        nodes.append(helper.make_node("Add", [r, term], [y], name=f"{n.name or y}_prelu"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {v for node in graph.node for v in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model.SerializeToString()


def _fresh(name: str, taken: set) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def session(model, path):
    """An onnxruntime session of an ONNX file or its bytes; a model it cannot load is one line naming ``path``."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    # onnxruntime's memory pattern (one block planned for all activations) took 1827 MB against 1206 MB without
    # it for MobileFaceNet at 128 images (a batch of 64 with its mirrors) and 1596 against 1297 MB for
    # SphereFace-20, at the same speed for MobileFaceNet and 2-4% slower for SphereFace-20
    options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a bad file is bad input
        raise CaffeFileError(path, f"onnxruntime cannot load it: {str(e).splitlines()[0]}") from None


def run_session(sess, outputs: list[str], input_name: str, x) -> dict[str, np.ndarray]:
    """{output: array} of an onnxruntime session on one input batch (a tensor or an array). The arrays are
    copies: onnxruntime's are views of its output buffers, which a kept feature row would keep alive."""
    x = x.numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x, dtype=np.float32)
    return {o: np.array(v, copy=True) for o, v in zip(outputs, sess.run(outputs, {input_name: x}))}


def openvino_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("openvino") is not None


@contextlib.contextmanager
def _own_signal_stack():
    """Within: whatever OpenVINO does, the calling thread keeps its own alternate signal stack (or none). Its CPU
    plugin (2026.4) leaves one of its own on the thread that compiles a model (11,568 bytes here), onto which the
    kernel later could not deliver a signal: once a SIGCHLD handler was in place (torch's DataLoader installs
    one), the next child process's exit killed the process with SIGSEGV (si_code SI_KERNEL, in poll), in the
    test suite's order: tests/test_annotated_data.py's DataLoader workers, then tests/test_backend.py's OpenVINO
    nets and `sfport embed` subprocess. A no-op where the C library has no sigaltstack."""
    try:
        libc = ctypes.CDLL(None)
        sigaltstack = libc.sigaltstack
    except (OSError, AttributeError):
        yield
        return
    saved = ctypes.create_string_buffer(64)   # a stack_t (24 bytes on x86-64 and aarch64)
    if sigaltstack(None, saved) != 0:
        yield
        return
    try:
        yield
    finally:
        sigaltstack(saved, None)


class OpenVINO:
    """An ONNX export compiled by OpenVINO for the CPU; ``run(outputs, input_name, x)`` as :func:`run_session`.
    In float32 (INFERENCE_PRECISION_HINT f32: its CPU plugin would otherwise run bfloat16 on a CPU that has it),
    for one request at a time (PERFORMANCE_HINT LATENCY), and the parts of a batch at once (``run_parts``). A
    model it cannot compile is one line naming ``path``."""

    def __init__(self, data: bytes, path):
        with _own_signal_stack():
            import openvino as ov
            self._ov, self._core = ov, ov.Core()
            try:
                self._model = self._core.read_model(model=data, weights=b"")
                self.compiled = self._core.compile_model(self._model, "CPU", {**_F32, "PERFORMANCE_HINT": "LATENCY"})
            except Exception as e:  # noqa: BLE001 - whatever OpenVINO cannot take
                raise CaffeFileError(path, f"openvino cannot compile it: {str(e).strip().splitlines()[0]}") from None
            self.request = self.compiled.create_infer_request()
        self._streams = None   # (compiled model, request queue) for several parts at once: run_parts' first call

    def run(self, outputs: list[str], input_name: str, x) -> dict[str, np.ndarray]:
        with _own_signal_stack():
            got = self.request.infer({self.compiled.input(input_name): _float32(x)}, share_outputs=False)
        return {o: np.asarray(got[self.compiled.output(o)]) for o in outputs}

    def run_parts(self, outputs: list[str], input_name: str, parts: list) -> list[dict[str, np.ndarray]]:
        """:meth:`run` of each part, the parts run at once, each on a stream of its own: a second compilation of
        the model, PERFORMANCE_HINT THROUGHPUT (one thread a stream here), made at the first call. SphereFace-20
        at batch 128 in parts of 16 on the 2-core AMD EPYC: 65.7 against 63.8 img/s (medians of 8 alternating
        rounds) for the LATENCY model's two threads on one part after another, the same numbers (MobileFaceNet:
        the same rate). It holds its own copy of the weights and its streams' buffers (158 MB more for
        SphereFace-20; compiled in 0.13 s, the model already read): the Runner compiles it only for a batch of
        several parts, and checks it as it checks the first (:meth:`Runner._parts`)."""
        with _own_signal_stack():
            if self._streams is None:
                compiled = self._core.compile_model(self._model, "CPU", {**_F32, "PERFORMANCE_HINT": "THROUGHPUT"})
                requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
                self._streams = compiled, self._ov.AsyncInferQueue(compiled, requests)
            compiled, queue = self._streams
            got: dict[int, dict] = {}

            def done(request, k):   # on OpenVINO's thread, as each part ends: its outputs copied out
                got[k] = {o: np.array(request.get_tensor(compiled.output(o)).data) for o in outputs}

            queue.set_callback(done)
            port = compiled.input(input_name)
            for k, x in enumerate(parts):
                queue.start_async({port: _float32(x)}, k)
            queue.wait_all()
        return [got[k] for k in range(len(parts))]

    def drop_parts(self) -> None:
        """Let go of run_parts' compilation (a Runner that does not take it)."""
        self._streams = None


_F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _float32(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x, dtype=np.float32)


# the last-level cache where the system does not say (Linux's sysfs does, below): a common L3 size
CACHE_BYTES_UNKNOWN = 8 << 20
CPU_CACHES = "/sys/devices/system/cpu/cpu0/cache"


def last_level_cache() -> int:
    """The bytes of the CPU's last-level cache (the highest ``level`` of CPU_CACHES' index*/ and its ``size``,
    as ``32768K``), else CACHE_BYTES_UNKNOWN."""
    import pathlib
    best = (0, 0)
    for index in pathlib.Path(CPU_CACHES).glob("index*"):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper(), 1)
            best = max(best, (level, int(size.rstrip("KkMmGg")) * scale))
        except (OSError, ValueError):
            continue
    return best[1] or CACHE_BYTES_UNKNOWN


def images_per_part(graph) -> int | None:
    """How many images the Runner runs at once on the CPU, on any backend: as many as keep the bottoms and tops
    of the net's largest layer (float32) within the last-level cache, at least one; None where the net does not
    compute each image on its own (:func:`sfport.netdef.graph.images_apart`) and a batch must run whole. A
    layer's output then stays in the cache for the next one instead of a trip through memory. MobileFaceNet at
    batch 64 (its largest layer 3.2 MB an image: parts of 10 with a 32 MiB L3, 2-core AMD EPYC): the optimized
    eager net 2.0x as fast (253.5 against 125.8 img/s, the same process alternating), OpenVINO 1.18x (305
    against 259), onnxruntime within the noise; SphereFace-20 (parts of 16) within 1-4% on each. The parts are
    as even as their number allows (64 in parts of at most 10: 7 parts of 9 or 10). An image's numbers may
    differ in the last bits between part sizes, as between batch sizes (the kernels block their work by its
    size). The sizes are the graph's: a Runner fed other image sizes (``any_size``) runs its batches whole."""
    if not images_apart(graph):
        return None
    per_image = max((sum(int(np.prod(s[1:])) for s in gl.blob_shapes) for gl in graph.layers), default=0) * 4
    return max(1, last_level_cache() // per_image) if per_image else None


def prepack_convolutions(net) -> int:
    """Have the dense 2-D convolutions of an optimized net of dense convolutions (SphereFace's; not one with
    grouped ones, as MobileFaceNet's depthwise, which run NHWC and are slower so) run on the CPU with their
    weights reordered once into oneDNN's layout (CaffeConv.prepacked): SphereFace-20's eager forward 1.08-1.12x
    at batch 1, 1.05-1.07x at 64. The first layer's too, though it has 3 input channels: its top then comes out
    NHWC as the next layers take it, where an NCHW one was copied twice at batch 1 (into the next convolution and
    beside the NHWC top of the residual sum: 2 x 194 us of SphereFace-20's 64 x 56 x 48) and the sum took 270
    us, not 123; the forward at batch 1 19.17 against 19.47 ms (the best of 8 alternating rounds), the same at
    batch 64, the same numbers. Only the Runner's own net: it is never trained or changed in place. Returns how
    many."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return 0
    if net.module.channels_last_from == 0:   # the optimized net's mark of grouped convolutions (NHWC throughout)
        return 0
    chosen = [m for m in net.module.modules() if hasattr(m, "prepacked") and m.nd == 2 and not m.transpose]
    for m in chosen:
        m.prepacked = True
    return len(chosen)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise CaffeFileError(None, f"backend '{backend}': one of {', '.join(BACKENDS)}")
    return backend


class Runner:
    """``Runner(net, outputs=None, backend="auto", device="cpu", path=None, any_size=False, forwards=None)``;
    ``runner(x)`` -> {output: array} for a batch of the net's first input (any batch; any height and width too
    with ``any_size``, where the net allows); ``backend`` the one that runs, ``line`` what and why. ``forwards``:
    how many images the caller will run, where it knows (a small job runs eagerly under ``auto``)."""

    def __init__(self, net, outputs=None, backend: str = "auto", device: str = "cpu", path=None,
                 any_size: bool = False, forwards: int | None = None):
        check_backend(backend)
        self.net = net.optimized(list(outputs) if outputs is not None else None)
        self.net.module.eval().to(device)
        if device == "cpu":
            prepack_convolutions(self.net)
        self.device = device
        self.part = images_per_part(self.net.graph) if device == "cpu" and not any_size else None
        self.input = next(iter(self.net.inputs))
        self.outputs = list(outputs) if outputs is not None else list(self.net.outputs)
        path = path or net.path
        if backend == "openvino" and not openvino_installed():
            raise CaffeFileError(path, 'backend openvino: OpenVINO is not installed (pip install "sfport[openvino]")')
        self._choice = (backend, device, path, any_size, forwards)
        self._chosen: tuple | None = None   # (backend, session, line) once chosen
        self._parts_at_once: bool | None = None   # OpenVINO.run_parts checked and taken (None: not yet asked)
        if backend != "auto":   # a backend named fails now if it cannot run the net; auto only falls back
            self._choose()

    def _choose(self) -> tuple:
        """The backend, its session (onnxruntime's, the OpenVINO model, or None: eager) and the line saying
        why; under ``auto`` made at the first use (a job whose features are all cached never exports)."""
        if self._chosen is not None:
            return self._chosen
        backend, device, path, any_size, forwards = self._choice
        chosen, session, why = "torch", None, "--backend torch"
        if backend == "auto" and device == "cpu" and forwards is not None and forwards < AUTO_EAGER_BELOW:
            why = (f"auto: {forwards} image(s) to run, fewer than {AUTO_EAGER_BELOW}: done before an export would "
                   f"be ready")
        elif backend != "torch" and device == "cpu":
            try:
                # at the net's own input size unless the caller feeds others (MTCNN's pyramid): the export is
                # then checked there only, not rebuilt and run at a second size
                data, _ = export.onnx_bytes(self.net, dynamic=None if any_size else False)
            except Exception as e:  # noqa: BLE001 - any failure to export or check: the eager net runs
                if backend != "auto":
                    raise CaffeFileError(path, f"does not run on {backend}: {export._one_line(e)}") from None
                why = f"the net does not export to ONNX: {export._one_line(e)}"
            else:
                why = "its ONNX export, checked against the eager net"
                if backend == "openvino" or (backend == "auto" and not any_size and openvino_installed()):
                    session = self._openvino(data, path, required=backend == "openvino")
                if session is not None:
                    chosen = "openvino"
                else:
                    session = self._fastest_session(data, path)
                    chosen = "onnxruntime"
        elif device != "cpu":
            why = f"on {device}"
        self._chosen = (chosen, session, f"backend: {chosen} ({why}); {self.net.optimization.summary()}")
        return self._chosen

    @property
    def backend(self) -> str:
        return self._choose()[0]

    @property
    def session(self):
        """onnxruntime's session, or the OpenVINO model; None where the eager net runs."""
        return self._choose()[1]

    @property
    def line(self) -> str:
        return self._choose()[2]

    def _check_input(self) -> np.ndarray:
        """The seeded batch of one at the net's input size that a backend's result is checked on."""
        return export._inputs(self.net, {self.input: self.net.inputs[self.input]}, 1, 0)[0].numpy()

    def _disagreement(self, run) -> float:
        """The worst relative error (relative above 1) of ``run``'s outputs (input -> {output: array}) against the
        eager net's on the check batch: every backend and compilation is taken only where it is within 1e-5."""
        x = self._check_input()
        got, want = run(x), self._eager(x)
        return max(relative_error(got[o].reshape(want[o].shape), want[o]) for o in self.outputs)

    def _openvino(self, data: bytes, path, required: bool):
        """The OpenVINO model of the export where it compiles and agrees with the eager net (1e-5, relative above
        1) on the check batch; else None (``required``: one line saying why)."""
        try:
            model = OpenVINO(data, path)
        except CaffeFileError:
            if required:
                raise
            return None
        worst = self._disagreement(lambda x: model.run(self.outputs, self.input, x))
        if worst <= 1e-5:
            return model
        if required:
            raise CaffeFileError(path, f"openvino's outputs differ from the eager net's by {worst:.2e} (relative), "
                                       f"over 1e-5: use --backend onnxruntime")
        return None

    def _fastest_session(self, data: bytes, path):
        """The session of ``for_onnxruntime(data)``, checked once against the eager net (1e-5, relative above 1)
        on a seeded batch of one at the net's input size; the export as it is where that fails."""
        fast = for_onnxruntime(data)
        if fast is data:
            return session(data, path)
        sess = session(fast, path)
        if self._disagreement(lambda x: run_session(sess, self.outputs, self.input, x)) <= 1e-5:
            return sess
        return session(data, path)

    def _eager(self, x) -> dict[str, np.ndarray]:
        x = torch.as_tensor(x)
        with torch.inference_mode():   # no autograd bookkeeping at all (a few % at batch 1 over no_grad)
            blobs = self.net.module.run({self.input: x.to(self.device)})
        final = self.net.graph.final
        return {o: blobs[final[o]].float().cpu().numpy() for o in self.outputs}

    def _parts(self, session, pieces: list) -> list[dict[str, np.ndarray]]:
        """The outputs of each of a batch's parts: on OpenVINO all at once (:meth:`OpenVINO.run_parts`) where
        that compilation agrees with the eager net as the first did (1e-5, relative above 1; checked once, else
        let go and never asked again); else one after another."""
        if isinstance(session, OpenVINO) and self._parts_at_once is not False:
            if self._parts_at_once is None:
                self._parts_at_once = self._disagreement(
                    lambda x: session.run_parts(self.outputs, self.input, [x])[0]) <= 1e-5
                if not self._parts_at_once:
                    session.drop_parts()
            if self._parts_at_once:
                return session.run_parts(self.outputs, self.input, pieces)
        return [self(p) for p in pieces]

    def __call__(self, x) -> dict[str, np.ndarray]:
        session = self._choose()[1]
        if self.part is not None and len(x) > self.part:
            size = -(-len(x) // -(-len(x) // self.part))   # as even as ceil(len / part) parts can be
            parts = self._parts(session, [x[i:i + size] for i in range(0, len(x), size)])
            return {o: np.concatenate([p[o] for p in parts]) for o in self.outputs}
        if isinstance(session, OpenVINO):
            return session.run(self.outputs, self.input, x)
        if session is not None:
            return run_session(session, self.outputs, self.input, x)
        return self._eager(x)
