"""SphereFace-20 forward throughput on one device, every path in one run: sfport's eager net, the same net hand-written
in plain torch, sfport's TorchScript export and its ONNX export on onnxruntime (issue 32, item 4).

    python bench/gpu_forward.py [--device cuda] [--batches 1,64,256] [--repeat 5] [--json out.json]

The model is SphereFace-20 deploy (sfport's built-in net, ``sfport.netdef.builtin.sphereface_deploy``, 112x96) with
random weights (``weight_match.with_random_weights``, seed 0), in NCHW, on one device. Rows:

* ``eager``: ``sfport.runtime.net.Net``'s module (``Net.exportable()``, as bench_forward.py's eager path), on the
  device, under ``torch.inference_mode``.
* ``plain``: the same layers written in plain torch (bench/gpu_train_peer.py's ``SphereFace20``), the same weights
  copied in: sfport's peer.
* ``torchscript``: ``sfport.runtime.export.torchscript_bytes`` (what ``sfport convert --format torchscript`` writes)
  loaded onto the device. A traced convolution keeps the cuDNN flags of the moment it was traced (``aten::
  _convolution``'s benchmark and allow_tf32 arguments), so the net is traced once with TF32 off for the fp32 row and
  once with it on for the TF32 and bf16 rows, both with cudnn.benchmark on.
* ``onnxruntime``: ``sfport.runtime.export.onnx_bytes`` on onnxruntime's CUDAExecutionProvider (``use_tf32`` 0 for
  fp32, 1 for TF32; no bf16 row: onnxruntime has no autocast), input and output bound to torch's device tensors
  (I/O binding: no host copies). "skipped: no CUDA provider" when onnxruntime has none. Run after every torch row,
  so that its threads share the machine with no torch measurement. ``--device cpu`` runs the CPU provider instead.

Precisions: ``fp32`` (torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 off), ``tf32`` (both on), ``bf16``
(torch.autocast bfloat16, TF32 on for what stays fp32). cudnn.benchmark is on (as ``sfport train --gpu``).

Each cell: a warm-up (cudnn autotuning, TorchScript's profiling runs), then the best of ``--repeat`` timed runs,
each of as many forwards as fill ``--min-time`` seconds, between ``torch.cuda.synchronize`` calls. Every output is
compared with the eager fp32 output at the same batch (max |a - b| / max |b|). Prints a markdown table of img/s and
the ratios to the eager fp32 row; ``--json`` writes the numbers. A failing cell says why in its row (the others
still run); the exit status is 1 if any cell failed.
"""
from __future__ import annotations

import argparse
import contextlib
import io as _io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "tf32", "bf16")
PATHS = {"eager": "sfport eager net", "plain": "hand-written torch net", "torchscript": "TorchScript (sfport export)",
         "onnxruntime": "onnxruntime"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_precision(prec: str, device: torch.device):
    """The TF32 flags for ``prec``; returns the autocast context for it."""
    tf32 = prec != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if prec == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def best_ips(fn, batch: int, device: torch.device, warmup: int, repeat: int, min_time: float) -> float:
    for _ in range(warmup):
        fn()
    inner = 1
    if min_time > 0:              # as many forwards per timed run as fill min_time (at most 200)
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        inner = max(1, min(200, math.ceil(min_time / max(time.perf_counter() - t, 1e-6))))
    best = math.inf
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return batch / best


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().float().cpu(), ref.detach().float().cpu()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"failed: {type(e).__name__}: {text[:150]}"


def build(size):
    from sfport.formats import caffe_files
    from sfport.netdef import builtin, weight_match
    from sfport.runtime.net import Net

    definition = caffe_files.CaffeModel.from_net(builtin.sphereface_deploy(20, *size))
    return Net(definition, weight_match.with_random_weights(definition, seed=0))


def plain_copy(net, size):
    """bench/gpu_train_peer.py's hand-written SphereFace-20 with sfport's net's weights."""
    sys.path.insert(0, str(HERE))
    from gpu_train_peer import SphereFace20

    plain = SphereFace20(size)
    with torch.no_grad():
        for layer, j, p, _, _ in plain.caffe_params():
            src = net.params[layer][j]
            p.copy_(src.reshape(p.shape))
            p.requires_grad_(False)
    return plain.eval()


def torchscript(net, allow_tf32: bool, device: torch.device):
    from sfport.runtime import export

    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=allow_tf32):
        data, _ = export.torchscript_bytes(net)
    return torch.jit.load(_io.BytesIO(data), map_location=device).eval()


class ProviderDidNotLoad(RuntimeError):
    """onnxruntime lists the CUDA provider, but a session could not use it (its CUDA or cuDNN libraries)."""


def ort_session(onnx: bytes, device: torch.device, tf32: bool):
    """(session, note) on the CUDA provider (``use_tf32``), or the CPU provider for ``--device cpu``; raises
    :class:`ProviderDidNotLoad` when the CUDA provider does not load (onnxruntime would fall back to the CPU)."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]), "CPUExecutionProvider"
    opts = {"device_id": str(device.index or 0), "cudnn_conv_algo_search": "EXHAUSTIVE"}
    note = f"CUDAExecutionProvider, use_tf32={int(tf32)}"
    try:
        sess = ort.InferenceSession(onnx, providers=[("CUDAExecutionProvider", dict(opts, use_tf32=str(int(tf32))))])
    except Exception:    # an onnxruntime without the use_tf32 option: its default
        sess = ort.InferenceSession(onnx, providers=[("CUDAExecutionProvider", opts)])
        note = "CUDAExecutionProvider (no use_tf32 option: its default)"
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        raise ProviderDidNotLoad(f"the session runs on {sess.get_providers()} (see onnxruntime's messages above)")
    return sess, note


def ort_runner(sess, x: torch.Tensor, out_name: str, out_shape, device: torch.device):
    """A call running ``sess`` on ``x`` into a torch tensor, with I/O binding (no host copies on CUDA)."""
    binding = sess.io_binding()
    out = torch.empty(out_shape, dtype=torch.float32, device=device)
    kind, index = ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)
    binding.bind_input(name=sess.get_inputs()[0].name, device_type=kind, device_id=index, element_type=np.float32,
                       shape=tuple(x.shape), buffer_ptr=x.data_ptr())
    binding.bind_output(name=out_name, device_type=kind, device_id=index, element_type=np.float32,
                        shape=tuple(out.shape), buffer_ptr=out.data_ptr())

    def run():
        sess.run_with_iobinding(binding)
        return out
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--size", default="112x96", help="HxW of the input")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds of forwards per timed run")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device")
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    size = tuple(int(v) for v in a.size.lower().split("x"))
    batches = [int(b) for b in a.batches.split(",")]
    precs = [p for p in a.precisions.split(",") if p]
    paths = [p for p in a.paths.split(",") if p]
    unknown = set(precs) - set(PRECISIONS) | set(paths) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown precision or path: {', '.join(sorted(unknown))}")

    t_setup = time.perf_counter()
    net = build(size)
    out_name = net.outputs[0]
    modules: dict[tuple, object] = {}
    notes: dict[str, str] = {}
    setup_failed: dict[tuple, str] = {}
    with torch.inference_mode():
        width = net.exportable()(*net.example_inputs(1))[0].shape[1]   # the output's width (512 for fc5)
    if "plain" in paths:
        modules[("plain", None)] = plain_copy(net, size).to(device)
    if "torchscript" in paths:
        for tf32 in sorted({p != "fp32" for p in precs} if device.type == "cuda" else {True}):
            try:
                modules[("torchscript", tf32)] = torchscript(net, tf32, device)
            except Exception as e:   # noqa: BLE001 - the row says why
                setup_failed[("torchscript", tf32)] = _one_line(e)
    onnx = None
    if "onnxruntime" in paths:
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        notes["onnxruntime"] = f"onnxruntime {ort.__version__}" if ort else "onnxruntime not installed"
        if ort is None:
            setup_failed[("onnxruntime", None)] = "skipped: onnxruntime not installed"
        elif device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            setup_failed[("onnxruntime", None)] = "skipped: no CUDA provider"
        else:
            try:
                from sfport.runtime import export
                onnx, _ = export.onnx_bytes(net)
            except Exception as e:   # noqa: BLE001
                setup_failed[("onnxruntime", None)] = _one_line(e)
    if "eager" in paths:            # last: the exports above run the net on the CPU
        modules[("eager", None)] = net.exportable().eval().to(device)
    setup_s = time.perf_counter() - t_setup

    rows: list[dict] = []
    refs: dict[int, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    inputs = {b: (torch.rand((b, 3, *size), generator=gen) * 2 - 1).to(device) for b in batches}

    def cell(path, prec, b, make):
        row = {"path": path, "precision": prec, "batch": b, "ips": None, "rel_err": None, "status": "ran"}
        rows.append(row)
        try:
            fn = make()
            ctx = set_precision(prec, device)
            with ctx, torch.inference_mode():
                out = fn()
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if path == "eager" and prec == "fp32":
                    refs[b] = out.float().clone()
                if b in refs:
                    row["rel_err"] = rel_err(out, refs[b])
                row["ips"] = best_ips(fn, b, device, a.warmup, a.repeat, a.min_time)
        except Exception as e:   # noqa: BLE001 - the row says why
            row["status"] = _one_line(e)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def torch_call(key, b):
        def make():
            if key in setup_failed:
                raise RuntimeError(setup_failed[key].removeprefix("failed: "))
            module, x = modules[key], inputs[b]
            return lambda: module(x)
        return make

    for b in batches:
        for path in (p for p in ("eager", "plain", "torchscript") if p in paths):
            for prec in precs:
                key = (path, None) if path != "torchscript" else (path, prec != "fp32" or device.type != "cuda")
                cell(path, prec, b, torch_call(key, b))
    if "onnxruntime" in paths:                     # last: its threads stay out of the torch rows
        for prec in (p for p in precs if p != "bf16"):
            if ("onnxruntime", None) in setup_failed:
                for b in batches:
                    rows.append({"path": "onnxruntime", "precision": prec, "batch": b, "ips": None, "rel_err": None,
                                 "status": setup_failed[("onnxruntime", None)]})
                continue
            try:
                sess, note = ort_session(onnx, device, prec == "tf32")
                notes[f"onnxruntime {prec}"] = note
            except Exception as e:   # noqa: BLE001 - the rows say why; a provider that does not load: a skip
                why = (f"skipped: CUDA provider listed but not loaded: {e}" if isinstance(e, ProviderDidNotLoad)
                       else _one_line(e))
                for b in batches:
                    rows.append({"path": "onnxruntime", "precision": prec, "batch": b, "ips": None, "rel_err": None,
                                 "status": why})
                continue
            for b in batches:
                cell("onnxruntime", prec, b, lambda b=b: ort_runner(sess, inputs[b], out_name, (b, width), device))
            del sess

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"SphereFace-20 deploy {size[0]}x{size[1]} forward on {gpu} ({device}); torch {torch.__version__}; "
          f"{notes.get('onnxruntime', 'no onnxruntime')}; best of {a.repeat} after {a.warmup} warm-up runs; "
          f"setup (build, exports) {setup_s:.1f}s")
    for k, v in notes.items():
        if k.startswith("onnxruntime "):
            print(f"  {k}: {v}")
    print()
    print(table(rows, batches))
    if a.json:
        Path(a.json).write_text(json.dumps({"kind": "forward", "device": str(device), "gpu": gpu, "size": list(size),
                                            "torch": torch.__version__, "notes": notes, "rows": rows}))
    failed = [r for r in rows if r["status"].startswith("failed")]
    return 1 if failed else 0


def table(rows: list[dict], batches: list[int]) -> str:
    by = {(r["path"], r["precision"], r["batch"]): r for r in rows}
    keys = list(dict.fromkeys((r["path"], r["precision"]) for r in rows))
    head = ("| path | precision | " + " | ".join(f"batch {b} (img/s)" for b in batches) + " | "
            + " | ".join(f"batch {b} / eager fp32" for b in batches) + " | max rel. err vs eager fp32 |")
    lines = [head, "|---|---|" + "---:|" * (2 * len(batches) + 1)]
    for path, prec in keys:
        cells, ratios, errs, why = [], [], [], []
        for b in batches:
            r = by.get((path, prec, b))
            base = by.get(("eager", "fp32", b))
            if r is None or r["ips"] is None:
                cells.append("-")
                ratios.append("-")
                if r is not None and r["status"] != "ran":
                    why.append(r["status"])
                continue
            cells.append(f"{r['ips']:.1f}")
            ratios.append(f"{r['ips'] / base['ips']:.2f}x" if base and base["ips"] else "-")
            if r["rel_err"] is not None:
                errs.append(r["rel_err"])
        err = f"{max(errs):.1e}" if errs else "-"
        if why:
            err += " (" + "; ".join(dict.fromkeys(why)) + ")"
        lines.append(f"| {PATHS[path]} | {prec} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {err} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
