"""The commands on one model file: ``inspect`` (and its table), ``upgrade``, ``convert``, ``deploy``, ``verify``.

The library modules that need torch are imported inside the commands that use them, for start-up time.
"""
from __future__ import annotations

import json
import os

import click

from sfport.commands import solver
from sfport.commands.options import parse_shapes, state_kwargs, state_options
from sfport.errors import CaffeFileError
from sfport.formats import disk


def _fmt_shapes(shapes) -> str:
    return " ".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)


# The widest a cell of the inspect table gets (a longer one is cut, with how many items it leaves out).
_CELL = {"name": 32, "type": 20, "conn": 50, "tops": 36, "params": 32}
# Off a terminal (or --wide) no name is cut; a longer list of bottoms or tops than this still ends with a count
# of the names it leaves out (--json lists them all).
_WHOLE_LIST = 4


def _clip(items, budget: int, sep: str = ",", wide: bool = False) -> str:
    """``items`` joined by ``sep``, cut to ``budget`` characters: 'a,b,c,... (+12)'. ``wide``: no name is cut
    (a long list still ends with the count of the items it leaves out)."""
    items = [str(i) for i in items]
    text = sep.join(items)
    if len(text) <= budget:
        return text
    for k in range(len(items) - 1, 0, -1):
        text = sep.join(items[:k]) + f"{sep}... (+{len(items) - k})"
        if len(text) <= budget:
            return text
    return _cut(items[0], budget - len(f"{sep}... (+{len(items) - 1})"), wide) + \
        (f"{sep}... (+{len(items) - 1})" if len(items) > 1 else "")


def _cut(text: str, budget: int, wide: bool = False) -> str:
    """``text`` cut to ``budget`` characters with '...' (``wide``: never cut)."""
    return text if wide or len(text) <= budget else text[:max(budget - 3, 1)] + "..."


def _connections(bottoms, tops, budget: int = _CELL["conn"], wide: bool = False) -> str:
    b, t = ",".join(bottoms), ",".join(tops)
    room = budget - len(" -> ")
    if wide and max(len(bottoms), len(tops)) <= _WHOLE_LIST:   # every name whole (grep finds each)
        return (b + " -> " + t).strip()
    if len(b) + len(t) > room:
        half = room // 2
        if len(b) <= half:
            t = _clip(tops, room - len(b), wide=wide)
        elif len(t) <= half:
            b = _clip(bottoms, room - len(t), wide=wide)
        else:
            b, t = _clip(bottoms, half, wide=wide), _clip(tops, room - half, wide=wide)
    return (b + " -> " + t).strip()


def _top_shape(shape) -> str:
    """Caffe's "Top shape: 64 1 28 28 (50176)" (a scalar loss: "(1)"), '?' when unknown."""
    if shape is None:
        return "?"
    count = 1
    for d in shape:
        count *= d
    return " ".join(str(d) for d in shape) + (" " if len(shape) else "") + f"({count})"


def _table(rows, wide: bool = False) -> str:
    """The inspect table; ``wide`` (not a terminal, or --wide): layer, type and blob names never cut."""
    headers = ("#", "name", "type", "bottoms -> tops", "top shapes", "param shapes", "params")
    body = []
    for r in rows:
        tops = _clip([_top_shape(s) for s in (r.top_shapes or [None] * len(r.tops))], _CELL["tops"], ", ") \
            if r.tops else ""
        params = _clip(_fmt_shapes(r.blob_shapes).split(" "), _CELL["params"] - 2, " ") if r.blob_shapes else ""
        params += " *" if r.inferred else ""
        name = _cut(r.name + (f" [{r.phase}]" if r.phase else ""), _CELL["name"], wide)
        body.append((str(r.index), name, _cut(r.type, _CELL["type"], wide), _connections(r.bottoms, r.tops,
                                                                                         wide=wide), tops,
                     params, f"{r.params:,}" if r.blob_shapes else ""))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for b in body:
        cells = [c.rjust(w) if i in (0, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _inspect_solverstate(s, as_json: bool) -> None:
    shapes = [list(h.shape) for h in s.history]
    count = sum(int(h.size) for h in s.history)
    if as_json:
        click.echo(json.dumps({"source": s.path, "iter": s.state.iter, "current_step": s.state.current_step,
                               "learned_net": s.state.learned_net, "history_shapes": shapes,
                               "history_values": count, "resume_record": s.resume is not None}, indent=2))
        return
    click.echo(f"{s.path}: solver state at iteration {s.state.iter}, lr step {s.state.current_step}, "
               f"learned net '{s.state.learned_net}'" + (" (with sfport's resume record: `sfport train --snapshot` "
                                                         "continues it exactly)" if s.resume is not None else ""))
    for j, shape in enumerate(shapes):
        click.echo(f"  history {j:3d}  [{','.join(map(str, shape))}]")
    click.echo(f"total: {len(shapes)} history blobs, {count:,} values")


def _on_terminal() -> bool:
    """Is the output a terminal (only there are long names cut to the table's columns)?"""
    import sys

    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def _stored_shapes(rows, state_dict: dict) -> None:
    """A converted .pt's rows get the parameter shapes its state_dict holds ('layers.<key>.<blob>', the key
    CaffeNet gives each layer name), in place of the ones inferred from its definition."""
    import math

    from sfport.runtime.caffenet import _key

    by_key: dict = {}
    for name, shape in state_dict.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "layers":
            by_key.setdefault(parts[1], []).append(shape)
    taken: set = set()
    for r in rows:
        stored = by_key.get(_key(r.name, taken))
        if stored:
            r.blob_shapes, r.inferred, r.params = stored, False, sum(math.prod(s) for s in stored)


def _inspect_other(path, kind, as_json: bool, wide: bool) -> None:
    """An ONNX or TorchScript export, or Caffe's HDF5 weights: what the file is and what it holds."""
    import zipfile

    from sfport.formats import hdf5_weights
    from sfport.netdef import inspection

    if kind == inspection.ONNX:
        doc = inspection.onnx_summary(path)
        if as_json:
            click.echo(json.dumps(doc, indent=2))
            return
        opsets = ", ".join(f"{d} {v}" for d, v in doc["opsets"].items())
        click.echo(f"{path}: ONNX model (as `sfport convert --format onnx` writes), IR version {doc['ir_version']}, "
                   f"opset {opsets}" + (f", producer {doc['producer']}" if doc["producer"] else ""))
        for role in ("inputs", "outputs"):
            for v in doc[role]:
                click.echo(f"  {role[:-1]:6s} {v['name']}  [{','.join(map(str, v['shape']))}]")
        ops = ", ".join(f"{k} {n}" for k, n in sorted(doc["operators"].items()))
        click.echo(f"total: {doc['nodes']} nodes ({ops}), {doc['initializers']} initializers, {doc['values']:,} values")
        for k, v in doc["metadata"].items():
            click.echo(f"metadata: {k} ({len(v)} characters)")
        return
    if kind == inspection.TORCHSCRIPT:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        extra = sorted(n.split("/extra/", 1)[1] for n in names if "/extra/" in n)
        doc = {"source": str(path), "kind": "torchscript", "entries": len(names), "extra_files": extra}
        if as_json:
            click.echo(json.dumps(doc, indent=2))
            return
        click.echo(f"{path}: TorchScript module (torch.jit.save's archive, as `sfport convert --format torchscript` "
                   f"writes), {len(names)} entries" + (f"; extra files: {', '.join(extra)}" if extra else ""))
        click.echo("its layers are compiled code: inspect does not run it; load it with torch.jit.load, or inspect "
                   "the .caffemodel / .pt it was converted from")
        return
    import math

    from sfport.formats.caffe_files import as_text

    weights = hdf5_weights.read_model(path)   # Caffe's HDF5 weights: named layers and their blobs, no definition
    rows = []
    for i, layer in enumerate(weights.net.layer):
        shapes = [list(a.shape) for a in weights.blob_arrays(i)]
        rows.append(inspection.LayerRow(i, as_text(layer.name), "", [], [], shapes,
                                        sum(math.prod(s) for s in shapes)))
    if as_json:
        click.echo(json.dumps({"source": str(path), "kind": "hdf5 weights",
                               "layers": [r.as_dict() for r in rows]}, indent=2))
        return
    click.echo(f"{path}: Caffe HDF5 weights (Net::ToHDF5, snapshot_format HDF5): {len(rows)} layers, no net "
               f"definition (give one with -p to see the net)")
    click.echo(_table(rows, wide))
    click.echo(f"total: {len(rows)} layers, {sum(1 for r in rows if r.blob_shapes)} with blobs, "
               f"{sum(r.params for r in rows):,} parameters")


@click.command()
@click.argument("source")
@click.argument("output")
def upgrade(source, output):
    """Rewrite a legacy Caffe file in the current format (like Caffe's upgrade_net_proto_text/_binary).

    A binary SOURCE gives a binary .caffemodel, a text SOURCE a text .prototxt. The output is written to a
    temporary name and renamed, so it is never left half-written.

    \b
    Example:
      sfport upgrade old_v1.caffemodel new.caffemodel
    """
    from sfport.formats import caffe_files

    m = caffe_files.read_net(source)
    if m.kind == caffe_files.BINARY:
        caffe_files.write_caffemodel(output, m)
    else:
        caffe_files.write_prototxt(output, m.net)
    for note in m.upgrades or ["nothing to upgrade"]:
        click.echo(f"{source}: {note}")
    click.echo(f"wrote {output}")


@click.command()
@click.argument("model", required=False)
@click.option("--prototxt", "-p", help="Net definition (text) to merge the MODEL's weights into, by layer name.")
@state_options()
@click.option("--splits", is_flag=True, help="Show the Split layers Caffe inserted (folded into their producers "
                                             "by default).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of the table.")
@click.option("--plot", help="For a solver prototxt: write its learning-rate schedule as a PNG.")
@click.option("--wide", is_flag=True, help="On a terminal, show layer and blob names whole (by default cut to the "
                                           "table's columns there; never cut into a file or a pipe). Example: "
                                           "sfport inspect net.prototxt --wide")
@click.pass_context
def inspect(ctx, model, prototxt, phase, stages, level, shapes, splits, as_json, plot, wide):
    """Show the layers of a Caffe model as Caffe would log them: name, type, bottoms -> tops, each top's shape,
    parameter shapes, parameter count.

    MODEL is a .caffemodel (weights and the net Caffe stored with them), a .prototxt (definition only;
    parameter shapes are then inferred, marked *), a solver prototxt (settings, nets, lr schedule), a
    .solverstate or .solverstate.h5 (iteration, lr step, momentum history), HDF5 weights (.caffemodel.h5), a
    .pt written by `sfport convert` (its net and state_dict; read with torch.load(weights_only=True)), or an
    ONNX export (inputs, outputs, operators); a TorchScript export is named as such.
    A definition shows the layers of the NetState --phase/--stage/--level (include/exclude rules, as
    Net::FilterNet: data layers, losses and accuracy included); a caffemodel's own net is shown as Caffe
    stored it, already filtered. Top shapes follow from the definition, or from --shape where a data layer
    reads a data set ('?' while unknown). The Split layers Caffe inserted are folded into their producers
    unless --splits. With --prototxt, MODEL's weights are matched to the definition's layers by name, as Caffe
    does, and what does not match is reported. Legacy formats (V0, V1 'layers', deploy 'input:' headers) are
    upgraded and the upgrades listed. Without MODEL, the built-in SphereFace-20 deploy net is shown.

    \b
    Examples:
      sfport inspect det1.caffemodel
      sfport inspect lenet_train_test.prototxt --phase TRAIN --shape 64,1,28,28
      sfport inspect sphereface_model.caffemodel --prototxt sphereface_deploy.prototxt --json
      sfport inspect det1.pt
      sfport inspect mobilefacenet.prototxt --wide
    """
    from click.core import ParameterSource

    from sfport.formats import caffe_files
    from sfport.netdef import inspection
    from sfport.netdef.netstate import NetState

    kind = inspection.file_kind(model) if model is not None and prototxt is None else inspection.CAFFE
    if kind in (inspection.SOLVERSTATE, inspection.HDF5_STATE):
        from sfport.formats import hdf5_weights
        read = caffe_files.read_solverstate if kind == inspection.SOLVERSTATE else hdf5_weights.read_solverstate
        _inspect_solverstate(read(model), as_json)
        return
    if kind in (inspection.ONNX, inspection.TORCHSCRIPT, inspection.HDF5_WEIGHTS):
        _inspect_other(model, kind, as_json, not as_json and (wide or not _on_terminal()))
        return
    if kind == inspection.CAFFE and model is not None and prototxt is None and caffe_files.is_solver_prototxt(model):
        solver.inspect_solver(model, as_json=as_json, plot=plot)
        return
    if plot:
        raise click.BadParameter("draws a solver's lr schedule: give a solver prototxt", param_hint="--plot")
    asked = any(ctx.get_parameter_source(p) not in (ParameterSource.DEFAULT, None)
                for p in ("phase", "stages", "level"))
    # unasked, a definition is shown in TEST (the default) and a caffemodel's stored net as it was stored
    s = state_kwargs(phase, stages, level)
    state = NetState.of(s["phase"], s["level"], s["stages"]) if asked else None
    given = parse_shapes(shapes)
    pt = None
    if kind == inspection.TORCH_ZIP:   # sfport's converted net: its own checked loader (imports torch)
        from sfport.runtime.net import read_pt

        read = read_pt(model)
        pt = {"state_dict": {k: list(v.shape) for k, v in read.state_dict.items()}, "input_shapes": read.input_shapes}
        shown = inspection.inspect(state=state, input_shapes=given if given is not None else read.input_shapes or None,
                                   splits=splits, read=read.definition, source=model)
        _stored_shapes(shown.rows, pt["state_dict"])
    else:
        shown = inspection.inspect(model, prototxt, state=state, input_shapes=given, splits=splits)
    if as_json:
        doc = shown.as_dict()
        if pt is not None:
            doc["kind"] = "sfport converted net (.pt)"
            doc["totals"]["weights_present"] = True
            doc["state_dict"] = pt["state_dict"]
            doc["saved_input_shapes"] = {k: list(v) for k, v in pt["input_shapes"].items()}
        click.echo(json.dumps(doc, indent=2))
        return
    totals, report = shown.totals(), shown.report
    what = "" if pt is None else \
        ("sfport converted net (`sfport convert`'s .pt: definition and state_dict), inputs "
         + (", ".join(f"{k} {','.join(map(str, v))}" for k, v in pt["input_shapes"].items()) or "none saved") + "; ")
    click.echo(f"{shown.source}: {what}net '{caffe_files.as_text(shown.model.net.name)}', {shown.describe_state()}")
    click.echo(_table(shown.rows, wide or not _on_terminal()))
    kind = "parameters" if totals["weights_present"] else "parameters (inferred from the definition)"
    if pt is not None:
        kind = f"parameters (its state_dict: {len(pt['state_dict'])} tensors)"
    folded = (f"; {totals['splits_folded']} Split layers Caffe inserted folded into their producers (--splits "
              f"shows them)") if totals["splits_folded"] else ""
    click.echo(f"total: {totals['layers']} layers, {totals['layers_with_blobs']} with blobs, "
               f"{totals['params']:,} {kind}{folded}")
    if any(r.inferred for r in shown.rows):
        click.echo("* parameter shapes inferred from the definition (the layer has no weights)")
    for note in shown.shape_notes() + shown.notes:
        click.echo(note)
    for note in shown.model.upgrades:
        click.echo(f"upgraded: {note}")
    for note in shown.unknown_fields():
        click.echo(f"warning: {note} (a file from another Caffe fork?)")
    if report is not None:
        click.echo(f"weights copied into {len(report.copied)} layers")
        if report.layers_without_weights:
            click.echo("layers without weights (left to their fillers): " + ", ".join(report.layers_without_weights))
        if report.weights_without_layers:
            click.echo("weights without layers (ignored): " + ", ".join(report.weights_without_layers))


@click.command()
@click.argument("model", required=False)
@click.option("--prototxt", "-p", help="Net definition (deploy, train_val or train_test); default: the net stored "
                                       "in the caffemodel.")
@click.option("--output", "-o", help="Output file (default: in the current folder, MODEL's name with the format's "
                                     "extension; without MODEL, sphereface20 and it).")
@click.option("--format", "fmt", type=click.Choice(["pt", "torchscript", "onnx", "caffemodel"]),
              help="Output format  [default: pt; onnx without MODEL]")
@click.option("--random-weights", is_flag=True,
              help="MODEL is a net definition without weights: fill its weights as Caffe's fillers do (seed "
                   "--seed), e.g. sfport convert net.prototxt --random-weights --seed 1. Not a trained model.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The seed of the fillers' weights: the built-in net's (without MODEL) or --random-weights'.")
@state_options(default_phase=None)
@click.option("--tol", type=float, default=1e-5, show_default=True,
              help="Largest error, relative to max|output|, an export may show against the eager net.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset.")
@click.option("--static", is_flag=True, help="Export at the net's own input size only (no dynamic height/width; "
                                             "a recurrent net's time axis T fixed, its loop unrolled).")
@click.option("--optimize", is_flag=True, help="Convert the inference-optimized net: BatchNorm / Scale / Bias "
                                               "folded into the layer before, Dropout, Split and Silence dropped.")
@click.option("--pre-nms", is_flag=True,
              help="TorchScript / ONNX of an SSD: its detection output layer's top before its NMS (N x priors x (4 + classes): "
                   "decoded boxes, then scores; finish with sfport.converters.ssd.detections) instead of its "
                   "1 x 1 x N x 7 detection rows.")
def convert(model, prototxt, output, fmt, random_weights, seed, phase, stages, level, shapes, tol, opset, static,
            optimize, pre_nms):
    """Convert a Caffe model to PyTorch (pt), TorchScript, ONNX, or back to a caffemodel.

    The net converted is the inference form of the definition (--prototxt, or the one stored in the
    caffemodel) in the given phase and stages: data layers become inputs (shaped from what they state, or
    --shape), their label tops, the loss and accuracy layers go (see `sfport deploy`). MODEL is a caffemodel,
    Caffe's HDF5 weights (.h5, with --prototxt), an sfport .pt (in the phase and stages it was saved in, unless
    given) or a training snapshot .pt (with --prototxt). pt is sfport's self-contained file (net definition +
    state_dict + the phase and stages, loadable with torch.load(weights_only=True) and sfport.TorchNet); it is
    written to the current folder unless -o says where. TorchScript and ONNX are checked against the eager net (ONNX on onnxruntime) before they are
    written; a mismatch writes nothing and exits 1. An SSD's detection output layer is exported whole (its NMS
    as ONNX NonMaxSuppression: the 1 x 1 x N x 7 rows Caffe gives), or before its NMS with --pre-nms. Without
    MODEL: the built-in SphereFace-20 deploy net with its fillers' weights (seed --seed), as ONNX to
    sphereface20.onnx - a demonstration, not a face model. A net definition alone is refused unless
    --random-weights asks for its fillers' weights.

    \b
    Examples:
      sfport convert
      sfport convert det1.caffemodel --prototxt det1.prototxt -o det1.pt
      sfport convert sphereface_model.caffemodel -p sphereface_deploy.prototxt --format onnx
      sfport convert mobilefacenet.caffemodel -p mobilefacenet.prototxt --optimize --format onnx
      sfport convert lenet.prototxt --random-weights --seed 1 --format onnx
    """
    from sfport.runtime import export
    from sfport.runtime.net import load_net

    builtin = model is None and prototxt is None
    if model is None and not builtin:
        raise click.UsageError("give the MODEL (a caffemodel) whose weights go into --prototxt")
    if random_weights and (builtin or prototxt is not None):
        raise click.UsageError("--random-weights fills a net definition given as MODEL (without --prototxt)")
    fmt = fmt or ("onnx" if builtin else "pt")
    here = output is None   # the current folder, as the caffe tools write theirs, never MODEL's (maybe read-only)
    output = output or export.default_output("sphereface20" if builtin else model, fmt)
    if model is not None and os.path.exists(model) and os.path.exists(output) and os.path.samefile(model, output):
        raise CaffeFileError(output, "is MODEL itself: give another output with -o")
    disk.check_output(output)
    net = load_net(model, prototxt, parse_shapes(shapes), **state_kwargs(phase, stages, level), seed=seed)
    if builtin:
        click.echo(f"{net.path}: the SphereFace-20 deploy net, weights from its fillers (seed {seed})", err=True)
    elif random_weights and net.has_weights:
        raise CaffeFileError(model, "has weights: --random-weights is for a net definition without them")
    elif random_weights:
        click.echo(f"{model}: random weights, from its fillers (seed {seed}): not a trained model", err=True)
    elif not net.has_weights and net.params:
        raise CaffeFileError(model, "has no weights (a net definition alone: convert would write the fillers' "
                                    "random values); give the caffemodel, with this definition as -p, or "
                                    "--random-weights for the fillers' values")
    if optimize:
        net = net.optimized()
        click.echo(net.optimization.summary(), err=True)
    try:
        result = export.save(net, output, fmt, tol, opset=opset, dynamic=False if static else None, pre_nms=pre_nms)
    except export.ExportMismatch as e:
        click.echo(f"sfport: error: {output}: not written: {e}", err=True)
        raise SystemExit(1)
    if net.report and net.report.layers_without_weights and not net.report.no_weights:
        click.echo("warning: layers without weights: " + ", ".join(net.report.layers_without_weights), err=True)
    if net.report and net.report.weights_without_layers:
        click.echo("weights of layers not in the converted net (ignored): "
                   + ", ".join(net.report.weights_without_layers), err=True)
    checked = "" if result is None else f"; checked against the eager net: {result.summary()}"
    filled = f"; weights: random, from the fillers (seed {seed})" if random_weights else ""
    click.echo(f"wrote {output}: {fmt}, inputs {net.inputs}, outputs {net.outputs}{checked}{filled}")
    if here:
        click.echo(f"(no -o: in the current folder, {os.path.abspath(output)})", err=True)


@click.command()
@click.argument("net_file", metavar="NET")
@click.option("--output", "-o", required=True, help="The deploy prototxt to write.")
@state_options()
def deploy(net_file, output, phase, stages, level, shapes):
    """Write the deploy (inference) form of a net definition: the deploy.prototxt users write by hand.

    NET is a train_val / train_test prototxt (or a caffemodel, whose stored net is used). The layers of the
    phase and stages are kept (Caffe's include/exclude rules); each data layer becomes an Input layer for its
    first top, shaped from what it states (batch_size, crop_size, new_height/new_width, DummyData and Input
    shapes) or from --shape; its other tops are labels. Loss layers, Accuracy, Silence and every layer that
    needs a label or only feeds them are dropped; what remains unconsumed are the net's outputs.

    \b
    Examples:
      sfport deploy lenet_train_test.prototxt --shape 1,1,28,28 -o lenet_deploy.prototxt
      sfport deploy train_val.prototxt --phase TEST --stage test-on-test -o deploy.prototxt
    """
    from sfport.formats import caffe_files
    from sfport.netdef import datalayers, deploy as deploy_mod

    net = deploy_mod.deploy_net(net_file, input_shapes=parse_shapes(shapes), **state_kwargs(phase, stages, level))
    caffe_files.write_prototxt(output, net)
    inputs = ", ".join(f"{top} [{','.join(map(str, shape))}]" for top, shape in datalayers.input_shapes(net).items())
    click.echo(f"wrote {output}: {len(net.layer)} layers; inputs {inputs}; outputs "
               f"{', '.join(deploy_mod.net_outputs(net))}")


@click.command()
@click.argument("model", required=False)
@click.option("--prototxt", "-p", help="Net definition (deploy, train_val or train_test); default: the net stored "
                                       "in the caffemodel.")
@click.option("--reference", default="opencv", show_default=True,
              help="opencv (OpenCV 4's Caffe importer), caffe (pycaffe in a subprocess; $SFPORT_CAFFE_PYTHON), "
                   "or a directory of <blob>.npy files.")
@click.option("--input", "input_", multiple=True,
              help="SOURCE for the first input or NAME=SOURCE (repeatable); a source is an image file (at its "
                   "own size for a fully convolutional net, else resized to the input), a .npy "
                   "array of the input's shape (it gives the shape) or 'random' (the default).")
@state_options()
@click.option("--tol", type=float, default=1e-5, show_default=True,
              help="A blob fails when max|ours - ref| > tol * max(1, max|ref|).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of the table.")
@click.option("--optimize", is_flag=True, help="Check the inference-optimized net (as `convert --optimize` "
                                               "writes it) at every blob it still computes.")
def verify(model, prototxt, reference, input_, phase, stages, level, shapes, tol, seed, as_json, optimize):
    """Check sfport against an independent Caffe implementation, blob by blob.

    Runs both on the same input and prints every blob both expose: shape, max|ref|, max abs error, error
    relative to max(1, max|ref|), cosine. Names the first blob that diverges and exits 1 when any fails.
    Without MODEL: the built-in SphereFace-20 deploy net, its weights drawn by its fillers from --seed; a
    prototxt without weights runs on its fillers' values too (seed --seed), and the first line says so. An
    image --input runs at its own size when the net is fully convolutional (no layer's parameters depend on the
    input size: MTCNN's det1), else it is resized to the input size; a line says which (--shape resizes it to
    that shape). In --phase TRAIN, layers that compute otherwise than the reference's inference (BatchNorm
    without use_global_stats: the batch's statistics) are named, and nothing is compared: use --phase TEST.

    \b
    Examples:
      sfport verify
      sfport verify det1.caffemodel --prototxt det1.prototxt --shape 1,3,217,173
      sfport verify det1.caffemodel --prototxt det1.prototxt --input photo.jpg
      sfport verify mobilefacenet.caffemodel -p mobilefacenet.prototxt --input face.jpg --json
      sfport verify rfcn.caffemodel -p test.prototxt --input data=im.npy --input im_info=info.npy
      sfport verify mobilefacenet.caffemodel -p mobilefacenet.prototxt --optimize
    """
    from sfport.runtime import verify as V

    result = V.run(model, prototxt, reference, list(input_), parse_shapes(shapes), tol, seed,
                   **state_kwargs(phase, stages, level), optimize=optimize)
    checks, failed, worst = result.checks, result.failed, result.worst
    if as_json:
        click.echo(result.as_json())
    else:
        if model is None and prototxt is None:
            click.echo(f"{result.model}: the SphereFace-20 deploy net, weights from its fillers (seed {seed}), "
                       f"input {'x'.join(map(str, result.input_shape))} random (seed {seed}); against "
                       f"{result.reference}")
        for note in result.notes or []:   # fillers' weights, an image at its own size or resized
            click.echo(note)
        if result.optimized:
            click.echo(result.optimized)
        click.echo(V.format_table(checks))
        if not checks:
            click.echo("no blob in common with the reference")
        elif failed:
            click.echo(f"FAILED: {len(failed)} of {len(checks)} blobs over {tol:g}; first divergence at "
                       f"'{failed[0].name}' ({V.failure_text(failed[0])})")
        else:
            click.echo(f"passed: {len(checks)} blobs within {tol:g}; worst '{worst.name}' "
                       f"(rel err {worst.rel_err:.3e}, cosine {worst.cosine:.8f})")
    if not result.passed:
        raise SystemExit(1)
