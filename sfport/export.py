"""Exports of a converted net: TorchScript and ONNX, each checked against the eager CaffeNet (by
:func:`sfport.verify.relative_error`, the metric of ``sfport verify``) before it is written (atomically)."""
from __future__ import annotations

import io as _io
import warnings
from pathlib import Path

import numpy as np
import torch

from sfport import files
from sfport.verify import relative_error

ONNX_OPSET = 18


class ExportMismatch(RuntimeError):
    """An export's outputs differ from the eager net's beyond the tolerance."""


def _check(name: str, got, want, tol: float) -> float:
    """The worst relative error of the outputs ``got`` against ``want``; over ``tol`` is an ExportMismatch."""
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise ExportMismatch(f"{name}: output shape {list(g.shape)} != {list(w.shape)}")
        worst = max(worst, relative_error(g, w))
    if worst > tol:
        raise ExportMismatch(f"{name}: outputs differ from the eager net by {worst:.3e} (relative), over {tol:g}")
    return worst


def _eager(module, inputs):
    with torch.no_grad():
        return [t.numpy() for t in module(*inputs)]


def torchscript_bytes(net, tol: float = 1e-5) -> tuple[bytes, float]:
    """Trace the net (positional inputs, tuple of outputs) and check it against eager; returns the file bytes
    and the worst relative error seen."""
    module = net.exportable().eval()
    example = net.example_inputs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic; jit's deprecation notices
        traced = torch.jit.trace(module, example, check_trace=False)
        buf = _io.BytesIO()
        torch.jit.save(traced, buf)
        loaded = torch.jit.load(_io.BytesIO(buf.getvalue()))
        got = [t.numpy() for t in loaded(*example)]
    worst = _check("TorchScript", got, _eager(module, example), tol)
    return buf.getvalue(), worst


def onnx_bytes(net, tol: float = 1e-5) -> tuple[bytes, float]:
    """Export to ONNX (opset 18, dynamic batch) and check it on onnxruntime at batch sizes 1 and 2."""
    import onnx
    import onnxruntime as ort

    module = net.exportable().eval()
    example = net.example_inputs()
    in_names = list(net.inputs)
    out_names = list(net.outputs)
    axes = {n: {0: "batch"} for n in in_names + out_names}
    buf = _io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buf, dynamo=False, opset_version=ONNX_OPSET, input_names=in_names,
                          output_names=out_names, dynamic_axes=axes, do_constant_folding=True)
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 2):
        inputs = net.example_inputs(batch=batch, seed=batch)
        got = sess.run(out_names, {n: x.numpy() for n, x in zip(in_names, inputs)})
        worst = max(worst, _check(f"ONNX (batch {batch})", got, _eager(module, inputs), tol))
    return data, worst


# The formats sfport writes, and the suffix a default output name gets for each.
EXTENSIONS = {"pt": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx", "caffemodel": ".converted.caffemodel"}


def default_output(model, fmt: str) -> str:
    """The output name ``sfport convert`` uses without ``-o``: MODEL's name with the format's suffix."""
    return str(Path(model).with_suffix("")) + EXTENSIONS[fmt]


def write(net, path, fmt: str, tol: float = 1e-5) -> float | None:
    """Write ``net`` as ``fmt`` (pt, torchscript, onnx, caffemodel); returns the checked export error."""
    if fmt == "pt":
        net.save(path)
        return None
    if fmt == "caffemodel":
        net.save_caffemodel(path)
        return None
    data, worst = torchscript_bytes(net, tol) if fmt == "torchscript" else onnx_bytes(net, tol)
    files.atomic_write(path, data)
    return worst
