"""Exports of a converted net: TorchScript and ONNX, each run and checked against the eager CaffeNet (by
:func:`sfport.runtime.verify.relative_error`, the metric of ``sfport verify``) before it is written (atomically).

Both are exported at the net's own input size. They are size-polymorphic (ONNX: dynamic batch, height and
width; TorchScript: a trace that follows the input's size) when the net is: the same net, with the same weights,
is built and run eagerly at a second input size, and the export must give that eager net's outputs there. A net
that cannot run at another size (InnerProduct, Reshape or Flatten over the spatial axes, ...) is exported at its
size, and the result says why. An export that runs at a second size where eager runs but gives other outputs is
an :class:`ExportMismatch`: nothing is written, nothing is cropped silently.

A layer whose tops change by steps with its bottoms (``Converter.discrete``: Proposal's sort and NMS) turns the
last-bit differences of onnxruntime's kernels before it into other rows. The ONNX check then compares its bottoms
as onnxruntime computes them (extra outputs of the checked model, not of the file written) with eager's, and the
outputs with eager's run from those bottoms on: every operation is checked, each on the same values."""
from __future__ import annotations

import contextlib
import functools
import io as _io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sfport import converters as conv_registry
from sfport.formats import disk
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2
from sfport.runtime.verify import input_values, relative_error

ONNX_OPSET = 18


class ExportMismatch(RuntimeError):
    """An export's outputs differ from the eager net's beyond the tolerance (or it cannot run where eager runs)."""


@dataclass
class ExportResult:
    """What an export was checked for. ``checked`` holds ``(input shapes, relative error)`` of every run;
    ``dynamic_size`` says whether the export runs at any height and width (then ``static_reason`` is None);
    ``axes`` are the ONNX dynamic axes by input/output name; ``method`` how TorchScript was made."""

    fmt: str
    worst: float
    dynamic_size: bool
    static_reason: str | None
    checked: list[tuple[str, float]] = field(default_factory=list)
    axes: dict[str, dict[int, str]] = field(default_factory=dict)
    method: str = ""
    opset: int | None = None
    notes: list[str] = field(default_factory=list)   # layers exported in another form than eager's (see below)

    def summary(self) -> str:
        """One line: what was made, which sizes it runs at, where it was checked and the worst error."""
        what = f"ONNX opset {self.opset}" if self.fmt == "onnx" else f"TorchScript ({self.method})"
        if self.dynamic_size:
            sizes = "any batch, height and width" if self.fmt == "onnx" else "any input size"
        else:
            sizes = ("dynamic batch; " if self.fmt == "onnx" else "") + f"height and width fixed: {self.static_reason}"
        runs = ", ".join(f"{s} ({e:.1e})" for s, e in self.checked)
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{what}, {sizes}; checked at {runs}; max relative error {self.worst:.2e}{notes}"


def _export_forms(module) -> tuple[list[str], dict[str, str]]:
    """The notes and metadata of modules whose exported form differs from eager (converters.export_form)."""
    notes, meta = [], {}
    for m in module.modules():
        if getattr(m, "export_note", None):
            notes.append(m.export_note)
            meta.update(getattr(m, "export_metadata", {}) or {})
    return notes, meta


# -- sizes -------------------------------------------------------------------------------------------------------

def _spatial_inputs(net) -> list[str]:
    return [n for n, s in net.inputs.items() if len(s) == 4]


def _shape_text(shapes) -> str:
    return ", ".join("x".join(str(d) for d in s) for s in shapes)


def _second_sizes(net) -> list[tuple[int, int]]:
    """The default second size of the first 4-D input: about 1.5 times its own, with another parity, so that
    the outputs of a net of large total stride change size too."""
    h, w = net.inputs[_spatial_inputs(net)[0]][2:]
    return [((3 * h) // 2 + 3, (3 * w) // 2 + 3)]


def _shapes_at(net, size: tuple[int, int]) -> dict[str, tuple]:
    """Every input's shape with the 4-D inputs moved by the step that takes the first one to ``size``."""
    first = net.inputs[_spatial_inputs(net)[0]]
    dh, dw = size[0] - first[2], size[1] - first[3]
    return {n: (tuple(s[:2]) + (s[2] + dh, s[3] + dw)) if len(s) == 4 else tuple(s) for n, s in net.inputs.items()}


def _input_axes(net) -> dict[str, dict[int, str]]:
    """Each input's dynamic axes, {axis: "batch" or "time"}, as the layers reading it say (``Converter.input_axes``:
    a recurrent layer's T x N), directly or through one-bottom layers that keep those leading axes (an Embed
    before an LSTM); else the batch on axis 0."""
    g, found = net.graph, {}
    producer = {t: gl for gl in g.layers for t in gl.tops}
    for gl in g.layers:
        for j, b in enumerate(gl.bottoms):
            axes = conv_registry.get_for(gl.param).input_axes(gl.param, j, tuple(gl.bottom_shapes[j] or ()))
            k = max(axes or [0]) + 1
            while axes and b not in g.inputs and b in producer:
                p = producer[b]
                top = p.top_shapes[p.tops.index(b)] if p.top_shapes else None
                if len(p.bottoms) != 1 or not top or not p.bottom_shapes[0] \
                        or tuple(p.bottom_shapes[0][:k]) != tuple(top[:k]):
                    break
                b = p.bottoms[0]
            if axes and b in g.inputs:
                found.setdefault(g.caffe_name[b], axes)
    return {n: found.get(n, {0: "batch"}) for n in net.inputs}


def _inputs(net, shapes: dict[str, tuple], batch: int, seed: int, time: int | None = None) -> tuple:
    """Uniform(-1, 1) inputs at ``batch`` (on each input's batch axis: :func:`_input_axes`) and ``time`` (None:
    the given length), except those a layer they feed gives a value (Proposal's im_info, a recurrent layer's cont:
    :func:`sfport.runtime.verify.input_values`)."""
    g, axes, sized = torch.Generator().manual_seed(seed), _input_axes(net), {}
    for n, s in shapes.items():
        s = list(s)
        for a, role in axes.get(n, {0: "batch"}).items():
            s[a] = batch if role == "batch" else (time or s[a])
        sized[n] = tuple(s)
    x = [torch.rand(list(s), generator=g) * 2 - 1 for s in sized.values()]
    made = input_values(net, sized)
    return tuple(torch.from_numpy(made[n][0]) if n in made else t for n, t in zip(shapes, x))


def _rebuilt(net, shapes: dict[str, tuple]) -> Net:
    """The same net with the same weights built for other input shapes (the weights through
    ``net.to_caffemodel()``, copied by Caffe's rule, so a blob whose shape depends on the input size fails)."""
    state = getattr(net, "state", None)
    phase = state if state is not None else ("train" if net.phase == caffe_pb2.TRAIN else "test")
    return Net(net.to_caffemodel(), phase=phase, input_shapes=shapes)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


@dataclass
class _Run:
    """One check: the inputs and the eager outputs to compare with (of ``module``; None: the net's own)."""
    label: str
    inputs: tuple
    want: list
    module: object = None
    time: bool = False      # a run at another length of the time axis


def _eager(module, inputs) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in module(*inputs)]


def _plan(net, module, dynamic: bool | None, sizes, outputs=None) -> tuple[list[_Run], list[_Run], str | None]:
    """The runs at the net's own size (batch 1, 2 and its own) and, when the net is size-polymorphic, at the
    second sizes (batch 2) against the eager net built there (its ``outputs``: default the net's); and the reason
    H, W stay fixed (None if not)."""
    own = dict(net.inputs)
    first = next(iter(own), None)
    batch = own[first][next(a for a, r in _input_axes(net)[first].items() if r == "batch")] if own else 1
    runs = []
    for b in [1, 2] + ([batch] if batch not in (1, 2) else []):
        x = _inputs(net, own, b, b)
        runs.append(_Run(_shape_text(t.shape for t in x), x, _eager(module, x)))
    if dynamic is False:
        return runs, [], "fixed by request"
    if not _spatial_inputs(net):
        return runs, [], "the net has no 4-D input"
    extra = []
    for k, size in enumerate(sizes or _second_sizes(net)):
        shapes = _shapes_at(net, size)
        where = _shape_text([(2,) + s[1:] for s in shapes.values()])
        try:
            other = _rebuilt(net, shapes)
            x = _inputs(net, shapes, 2, 3 + k)
            other_module = other.exportable(outputs).eval()
            want = _eager(other_module, x)
        except Exception as e:  # the net cannot run there: size-specific
            reason = f"the net does not run at {where} ({_one_line(e)})"
            if dynamic:
                raise ExportMismatch(f"not size-polymorphic: {reason}") from None
            return runs, [], reason
        extra.append(_Run(where, x, want, other_module))
    return runs, extra, None


def _time_plan(net, dynamic: bool | None, outputs=None) -> tuple[list[_Run], str]:
    """A net with a time axis (a recurrent layer's T: recurrent_layer.cpp LayerSetUp unrolls its net for the
    bottom's T, and Reshape refuses another T later, but no weight depends on T, so the same model set up at another
    T runs there): the runs at two other lengths (batch 2) against the eager net built at each, unless ``dynamic`` is
    False or the net does not run there (then T stays fixed and the trace unrolls the loop: empty runs); and the
    note that says which."""
    axes = _input_axes(net)
    timed = {n: next(a for a, r in ax.items() if r == "time") for n, ax in axes.items() if "time" in ax.values()}
    if not timed:
        return [], ""
    name, axis = next(iter(timed.items()))
    own = net.inputs[name][axis]
    where = ", ".join(f"{n} axis {a}" for n, a in timed.items())
    if dynamic is False:
        return [], f"time axis T ({where}) fixed at {own}, by request: the loop over T is unrolled"
    runs, lengths = [], [own + 3, 1] if own != 1 else [4]
    for k, t in enumerate(lengths):
        shapes = {n: tuple(t if n in timed and a == timed[n] else d for a, d in enumerate(s))
                  for n, s in net.inputs.items()}
        try:
            other = _rebuilt(net, shapes).exportable(outputs).eval()
            x = _inputs(net, shapes, 2, 11 + k, t)
            runs.append(_Run(f"T={t}: {_shape_text(v.shape for v in x)}", x, _eager(other, x), other, True))
        except Exception as e:
            reason = f"the net does not run at T={t} ({_one_line(e)})"
            if dynamic:
                raise ExportMismatch(f"time axis not dynamic: {reason}") from None
            return [], f"time axis T ({where}) fixed at {own}: {reason}; the loop over T is unrolled"
    return runs, (f"time axis T ({where}) dynamic: a loop over T (TorchScript loop, ONNX Loop), checked at "
                  f"T={', '.join(str(t) for t in [own] + lengths)}")


def _unrolled(time_runs: list[_Run], note: str):
    """Where the time axis stays fixed, the trace unrolls the recurrent loops (converters.fixed_time)."""
    return conv_registry.fixed_time() if note and not time_runs else contextlib.nullcontext()


def _check(name: str, run: _Run, got, tol: float) -> float:
    """The worst relative error of the outputs ``got`` against the eager ones; over ``tol`` is an ExportMismatch."""
    worst = 0.0
    for g, w in zip(got, run.want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise ExportMismatch(f"{name} at {run.label}: output shape {list(g.shape)} != eager {list(w.shape)}")
        worst = max(worst, relative_error(g, w))
    if worst > tol:
        raise ExportMismatch(f"{name} at {run.label}: outputs differ from the eager net by {worst:.3e} (relative), "
                             f"over {tol:g}")
    return worst


def _run_all(name: str, fn, runs: list[_Run], tol: float, check=_check) -> list[tuple[str, float]]:
    out = []
    for run in runs:
        try:
            got = fn(run.inputs)
        except ExportMismatch:
            raise
        except Exception as e:
            raise ExportMismatch(f"{name} at {run.label}: does not run ({_one_line(e)})") from None
        out.append((run.label, check(name, run, got, tol)))
    return out


def _with_options(export):
    """``export`` taking the export options too (``pre_nms``: DetectionOutput's top before its NMS, as it was
    before the layer exported whole; ``converters.export_options``), in effect while it builds, runs and checks."""
    @functools.wraps(export)
    def with_options(net, *args, pre_nms: bool = False, **kwargs):
        with conv_registry.export_options(pre_nms=pre_nms):
            return export(net, *args, **kwargs)
    return with_options


# -- TorchScript ------------------------------------------------------------------------------------------------

@_with_options
def torchscript_export(net, tol: float = 1e-5, *, dynamic: bool | None = None,
                       sizes: list[tuple[int, int]] | None = None) -> tuple[bytes, ExportResult]:
    """Script the net if TorchScript can compile it, else trace it at its own input size (positional inputs,
    tuple of outputs); the saved and reloaded module is checked against eager at the net's size (batch 1, 2 and
    its own) and, for a size-polymorphic net, at ``sizes`` (default: one second size). ``dynamic``: None
    decides by running the net eagerly at the second size, False keeps the net's size, True requires
    polymorphism. Returns the file bytes and what was checked."""
    module = net.exportable().eval()
    runs, extra, reason = _plan(net, module, dynamic, sizes)
    time_runs, time_note = _time_plan(net, dynamic)
    runs += time_runs
    with torch.no_grad(), warnings.catch_warnings(), _unrolled(time_runs, time_note):
        warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic; jit's deprecation notices
        try:
            compiled, method = torch.jit.script(module), "scripted"
        except Exception:  # Python control flow over the net's graph: trace it
            example = net.example_inputs()
            compiled = torch.jit.trace(module, example, check_trace=False)
            method = f"traced at {_shape_text(t.shape for t in example)}"
        buf = _io.BytesIO()
        notes, meta = _export_forms(module)
        notes += [time_note] if time_note else []
        torch.jit.save(compiled, buf, _extra_files=meta)   # what finishing an exported-early layer needs
        loaded = torch.jit.load(_io.BytesIO(buf.getvalue()))

        def call(inputs):
            return [t.numpy() for t in loaded(*inputs)]

        checked = _run_all("TorchScript", call, runs, tol)
        if extra:
            checked += _run_all(f"TorchScript ({method})", call, extra, tol)
    return buf.getvalue(), ExportResult("torchscript", max(e for _, e in checked), reason is None, reason, checked,
                                        method=method, notes=notes)


def torchscript_bytes(net, tol: float = 1e-5, **kwargs) -> tuple[bytes, float]:
    """:func:`torchscript_export`'s bytes and worst relative error."""
    data, result = torchscript_export(net, tol, **kwargs)
    return data, result.worst


# -- ONNX -------------------------------------------------------------------------------------------------------

def _onnx_axes(net, runs: list[_Run], extra: list[_Run]) -> dict[str, dict[int, str]]:
    """Dynamic axes: the batch of every input and output; with ``extra`` (a polymorphic net) also axes 2 and 3
    of every 4-D input and each axis of an output whose length changed between the net's size and the second."""
    axes = {n: {0: "batch"} for n in list(net.inputs) + list(net.outputs)}
    if any(ax != {0: "batch"} for ax in _input_axes(net).values()):   # a recurrent net's T x N ...
        timed = [r for r in runs if r.time]
        for n, ax in _input_axes(net).items():
            axes[n] = {a: r for a, r in ax.items() if r == "batch" or timed}
        for k, n in enumerate(net.outputs):   # ... and its outputs' axes: those that changed with N, with T
            axes[n] = {a: "batch" for a, (p, q) in enumerate(zip(runs[0].want[k].shape, runs[1].want[k].shape))
                       if p != q}
            if timed:
                axes[n].update({a: "time" for a, (p, q) in enumerate(zip(runs[1].want[k].shape,
                                                                          timed[0].want[k].shape)) if p != q})
    if not extra:
        return axes
    for n in _spatial_inputs(net):
        axes[n].update({2: f"{n}_height", 3: f"{n}_width"})
    for k, n in enumerate(net.outputs):
        own, other = runs[1].want[k].shape, extra[0].want[k].shape  # both batch 2
        names = {2: "height", 3: "width"} if len(own) == 4 else {}
        for a in range(1, len(own)):
            if a < len(other) and own[a] != other[a]:
                axes[n][a] = f"{n}_{names.get(a, 'axis%d' % a)}"
    return axes


def _probes(net) -> list[str]:
    """The blobs (Caffe names) read by the net's discrete layers (``Converter.discrete``) that are neither inputs
    nor outputs and hold that value to the end (not overwritten in place)."""
    g, out = net.graph, []
    for gl in g.layers:
        if not conv_registry.get_for(gl.param).discrete:
            continue
        for b in gl.bottoms:
            name = g.caffe_name[b]
            if b not in g.inputs and g.final.get(name) == b and name not in out and name not in net.outputs:
                out.append(name)
    return out


def _from_probes(module, probes: list[str], count: int):
    """The check of a run with probes: the probes (the last outputs) against eager's, then the ``count`` outputs
    against eager's run with the probes' blobs as onnxruntime computed them."""
    def check(name: str, run: _Run, got, tol: float) -> float:
        worst = _check(f"{name} (the bottoms of its discrete layers)", _Run(run.label, run.inputs, run.want[count:]),
                       got[count:], tol)
        m = run.module or module
        m.overrides = {p: torch.from_numpy(np.asarray(v)) for p, v in zip(probes, got[count:])}
        try:
            want = _eager(m, run.inputs)[:count]
        finally:
            m.overrides = None
        return max(worst, _check(name, _Run(run.label, run.inputs, want), got[:count], tol))
    return check


@_with_options
def onnx_export(net, tol: float = 1e-5, *, opset: int = ONNX_OPSET, dynamic: bool | None = None,
                sizes: list[tuple[int, int]] | None = None) -> tuple[bytes, ExportResult]:
    """Export to ONNX (``opset``; inputs and outputs named by their Caffe blobs) with a dynamic batch and, for a
    size-polymorphic net, dynamic height and width; checked on onnxruntime at the net's size (batch 1, 2 and
    its own) and at ``sizes`` (see :func:`torchscript_export` for ``dynamic`` and ``sizes``)."""
    import onnx
    import onnxruntime as ort

    in_names, out_names, probes = list(net.inputs), list(net.outputs), _probes(net)
    module = net.exportable(out_names + probes).eval()
    runs, extra, reason = _plan(net, module, dynamic, sizes, out_names + probes)
    time_runs, time_note = _time_plan(net, dynamic, out_names + probes)
    runs += time_runs
    axes = _onnx_axes(net, runs, extra)
    for k, p in enumerate(probes):
        axes[p] = {a: f"{p}_axis{a}" for a in range(runs[0].want[len(out_names) + k].ndim)}
    buf = _io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), _unrolled(time_runs, time_note):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, net.example_inputs(), buf, dynamo=False, opset_version=opset, input_names=in_names,
                          output_names=out_names + probes, dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    _inputs_by_their_names(proto, in_names)
    notes, meta = _export_forms(module)
    notes += [time_note] if time_note else []
    for k, v in meta.items():   # what finishing an exported-early layer needs travels in the file
        proto.metadata_props.add(key=k, value=v)
    checked_data = data = proto.SerializeToString()
    if probes:                  # the file written has the net's outputs only
        for _ in probes:
            proto.graph.output.pop()
        data = proto.SerializeToString()
    onnx.checker.check_model(data)   # the bytes themselves (a ModelProto would be serialized once more)
    sess = ort.InferenceSession(checked_data, providers=["CPUExecutionProvider"])

    def call(inputs):
        return sess.run(out_names + probes, {n: x.numpy() for n, x in zip(in_names, inputs)})

    if probes:
        notes.append(f"checked from {', '.join(probes)} as onnxruntime computes them (they feed a sort or an NMS)")
    checked = _run_all("ONNX", call, runs + extra, tol,
                       _from_probes(module, probes, len(out_names)) if probes else _check)
    return data, ExportResult("onnx", max(e for _, e in checked), reason is None, reason, checked, axes,
                              method="exported", opset=opset, notes=notes)


def _inputs_by_their_names(proto, in_names: list[str]) -> None:
    """An input that is also a net output (a data layer's top nothing reads: Caffe's net outputs are the blobs no
    layer consumes) comes out of torch.onnx renamed (``label.1``) with an Identity to ``label``: the graph gets its
    input back under its Caffe name, the output reading it directly."""
    graph = proto.graph
    for k, name in enumerate(in_names):
        traced = graph.input[k].name
        if traced == name:
            continue
        for node in list(graph.node):
            if node.op_type == "Identity" and list(node.input) == [traced] and list(node.output) == [name]:
                graph.node.remove(node)
        for node in graph.node:
            for j, x in enumerate(node.input):
                if x == traced:
                    node.input[j] = name
        graph.input[k].name = name


def onnx_bytes(net, tol: float = 1e-5, **kwargs) -> tuple[bytes, float]:
    """:func:`onnx_export`'s bytes and worst relative error."""
    data, result = onnx_export(net, tol, **kwargs)
    return data, result.worst


# -- files ------------------------------------------------------------------------------------------------------

# The formats sfport writes, and the suffix a default output name gets for each.
EXTENSIONS = {"pt": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx", "caffemodel": ".converted.caffemodel"}


def default_output(model, fmt: str) -> str:
    """The output name ``sfport convert`` uses without ``-o``: MODEL's name with the format's suffix, in the
    current folder (as the caffe tools write theirs; not beside MODEL, whose folder may be read-only)."""
    return Path(model).with_suffix("").name + EXTENSIONS[fmt]


def save(net, path, fmt: str, tol: float = 1e-5, *, opset: int = ONNX_OPSET, dynamic: bool | None = None,
         sizes: list[tuple[int, int]] | None = None, pre_nms: bool = False) -> ExportResult | None:
    """Write ``net`` as ``fmt`` (pt, torchscript, onnx, caffemodel); TorchScript and ONNX only once checked
    (:func:`torchscript_export`, :func:`onnx_export`; ``pre_nms`` as they take it), returning what was checked
    (None for pt, caffemodel)."""
    if fmt == "pt":
        net.save(path)
        return None
    if fmt == "caffemodel":
        net.save_caffemodel(path)
        return None
    if fmt == "torchscript":
        data, result = torchscript_export(net, tol, dynamic=dynamic, sizes=sizes, pre_nms=pre_nms)
    elif fmt == "onnx":
        data, result = onnx_export(net, tol, opset=opset, dynamic=dynamic, sizes=sizes, pre_nms=pre_nms)
    else:
        raise ValueError(f"unknown export format '{fmt}' (one of {', '.join(EXTENSIONS)})")
    disk.atomic_write(path, data)
    return result


def write(net, path, fmt: str, tol: float = 1e-5, **kwargs) -> float | None:
    """:func:`save`, returning only the checked export error (None for pt, caffemodel)."""
    result = save(net, path, fmt, tol, **kwargs)
    return None if result is None else result.worst
