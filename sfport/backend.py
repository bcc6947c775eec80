"""The fastest way sfport has to run an inference net, chosen for the user, with the reason in one line.

:class:`Runner` runs a :class:`sfport.Net`'s inference-optimized form (:mod:`sfport.optimize`), cut to the
layers its requested outputs are computed from. ``auto`` (the default of ``eval``, ``embed``, ``compare``,
``align --mtcnn`` and :class:`sfport.features.Model`) runs that net's ONNX export on onnxruntime, the export
checked against the eager net when it is made (:func:`sfport.export.onnx_export`, as ``sfport convert`` checks
it); a net that does not export runs eagerly, and the line says why. ``onnxruntime`` and ``torch`` choose; a
device other than the CPU runs eagerly there. Only the outputs are kept: each blob is freed after its last reader.
"""
from __future__ import annotations

import numpy as np
import torch

from sfport import export
from sfport.errors import CaffeFileError

BACKENDS = ("auto", "onnxruntime", "torch")


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


def session(model, path):
    """An onnxruntime session of an ONNX file or its bytes; a model it cannot load is one line naming ``path``."""
    import onnxruntime as ort
    try:
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a bad file is bad input
        raise CaffeFileError(path, f"onnxruntime cannot load it: {str(e).splitlines()[0]}") from None


def run_session(sess, outputs: list[str], input_name: str, x) -> dict[str, np.ndarray]:
    """{output: array} of an onnxruntime session on one input batch (a tensor or an array). The arrays are
    copies: onnxruntime's are views of its output buffers, which a kept feature row would keep alive."""
    x = x.numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x, dtype=np.float32)
    return {o: np.array(v, copy=True) for o, v in zip(outputs, sess.run(outputs, {input_name: x}))}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise CaffeFileError(None, f"backend '{backend}': one of {', '.join(BACKENDS)}")
    return backend


class Runner:
    """``Runner(net, outputs=None, backend="auto", device="cpu", path=None, any_size=False)``; ``runner(x)`` ->
    {output: array} for a batch of the net's first input (any batch; any height and width too with
    ``any_size``, where the net allows); ``backend`` the one that runs, ``line`` what and why."""

    def __init__(self, net, outputs=None, backend: str = "auto", device: str = "cpu", path=None,
                 any_size: bool = False):
        check_backend(backend)
        self.net = net.optimized(list(outputs) if outputs is not None else None)
        self.net.module.eval().to(device)
        self.device = device
        self.input = next(iter(self.net.inputs))
        self.outputs = list(outputs) if outputs is not None else list(self.net.outputs)
        self.session = None
        self.backend, why = "torch", "--backend torch"
        if backend != "torch" and device == "cpu":
            try:
                # at the net's own input size unless the caller feeds others (MTCNN's pyramid): the export is
                # then checked there only, not rebuilt and run at a second size
                data, _ = export.onnx_bytes(self.net, dynamic=None if any_size else False)
            except Exception as e:  # noqa: BLE001 - any failure to export or check: the eager net runs
                if backend == "onnxruntime":
                    raise CaffeFileError(path or net.path, f"does not run on onnxruntime: "
                                                           f"{export._one_line(e)}") from None
                why = f"the net does not export to ONNX: {export._one_line(e)}"
            else:
                self.session = session(data, path or net.path)
                self.backend, why = "onnxruntime", "its ONNX export, checked against the eager net"
        elif device != "cpu":
            why = f"on {device}"
        self.line = f"backend: {self.backend} ({why}); {self.net.optimization.summary()}"

    def __call__(self, x) -> dict[str, np.ndarray]:
        if self.session is not None:
            return run_session(self.session, self.outputs, self.input, x)
        x = torch.as_tensor(x)
        with torch.no_grad():
            blobs = self.net.module.run({self.input: x.to(self.device)})
        final = self.net.graph.final
        return {o: blobs[final[o]].float().cpu().numpy() for o in self.outputs}
