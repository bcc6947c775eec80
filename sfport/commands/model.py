"""The commands on one model file: ``inspect`` (and its table), ``upgrade``, ``convert``, ``deploy``, ``verify``.

The library modules that need torch are imported inside the commands that use them, for start-up time.
"""
from __future__ import annotations

import json

import click

from sfport.commands import solver
from sfport.commands.options import parse_shapes, state_kwargs, state_options
from sfport.errors import CaffeFileError
from sfport.formats import disk


def _fmt_shapes(shapes) -> str:
    return " ".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)


# The widest a cell of the inspect table gets (a longer one is cut, with how many items it leaves out).
_CELL = {"name": 32, "type": 20, "conn": 50, "tops": 36, "params": 32}


def _clip(items, budget: int, sep: str = ",") -> str:
    """``items`` joined by ``sep``, cut to ``budget`` characters: 'a,b,c,... (+12)'."""
    items = [str(i) for i in items]
    text = sep.join(items)
    if len(text) <= budget:
        return text
    for k in range(len(items) - 1, 0, -1):
        text = sep.join(items[:k]) + f"{sep}... (+{len(items) - k})"
        if len(text) <= budget:
            return text
    return _cut(items[0], budget - len(f"{sep}... (+{len(items) - 1})")) + \
        (f"{sep}... (+{len(items) - 1})" if len(items) > 1 else "")


def _cut(text: str, budget: int) -> str:
    return text if len(text) <= budget else text[:max(budget - 3, 1)] + "..."


def _connections(bottoms, tops, budget: int = _CELL["conn"]) -> str:
    b, t = ",".join(bottoms), ",".join(tops)
    room = budget - len(" -> ")
    if len(b) + len(t) > room:
        half = room // 2
        if len(b) <= half:
            t = _clip(tops, room - len(b))
        elif len(t) <= half:
            b = _clip(bottoms, room - len(t))
        else:
            b, t = _clip(bottoms, half), _clip(tops, room - half)
    return (b + " -> " + t).strip()


def _top_shape(shape) -> str:
    """Caffe's "Top shape: 64 1 28 28 (50176)" (a scalar loss: "(1)"), '?' when unknown."""
    if shape is None:
        return "?"
    count = 1
    for d in shape:
        count *= d
    return " ".join(str(d) for d in shape) + (" " if len(shape) else "") + f"({count})"


def _table(rows) -> str:
    headers = ("#", "name", "type", "bottoms -> tops", "top shapes", "param shapes", "params")
    body = []
    for r in rows:
        tops = _clip([_top_shape(s) for s in (r.top_shapes or [None] * len(r.tops))], _CELL["tops"], ", ") \
            if r.tops else ""
        params = _clip(_fmt_shapes(r.blob_shapes).split(" "), _CELL["params"] - 2, " ") if r.blob_shapes else ""
        params += " *" if r.inferred else ""
        name = _cut(r.name + (f" [{r.phase}]" if r.phase else ""), _CELL["name"])
        body.append((str(r.index), name, _cut(r.type, _CELL["type"]), _connections(r.bottoms, r.tops), tops,
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
                               "history_values": count}, indent=2))
        return
    click.echo(f"{s.path}: solver state at iteration {s.state.iter}, lr step {s.state.current_step}, "
               f"learned net '{s.state.learned_net}'")
    for j, shape in enumerate(shapes):
        click.echo(f"  history {j:3d}  [{','.join(map(str, shape))}]")
    click.echo(f"total: {len(shapes)} history blobs, {count:,} values")


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
@click.pass_context
def inspect(ctx, model, prototxt, phase, stages, level, shapes, splits, as_json, plot):
    """Show the layers of a Caffe model as Caffe would log them: name, type, bottoms -> tops, each top's shape,
    parameter shapes, parameter count.

    MODEL is a .caffemodel (weights and the net Caffe stored with them), a .prototxt (definition only;
    parameter shapes are then inferred, marked *) or a .solverstate (iteration, lr step, momentum history).
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
    """
    from click.core import ParameterSource

    from sfport.formats import caffe_files
    from sfport.netdef import inspection
    from sfport.netdef.netstate import NetState

    if model is not None and prototxt is None and model.lower().endswith(".solverstate"):
        _inspect_solverstate(caffe_files.read_solverstate(model), as_json)
        return
    if model is not None and prototxt is None and caffe_files.is_solver_prototxt(model):
        solver.inspect_solver(model, as_json=as_json, plot=plot)
        return
    if plot:
        raise click.BadParameter("draws a solver's lr schedule: give a solver prototxt", param_hint="--plot")
    asked = any(ctx.get_parameter_source(p) not in (ParameterSource.DEFAULT, None)
                for p in ("phase", "stages", "level"))
    # unasked, a definition is shown in TEST (the default) and a caffemodel's stored net as it was stored
    s = state_kwargs(phase, stages, level)
    state = NetState.of(s["phase"], s["level"], s["stages"]) if asked else None
    shown = inspection.inspect(model, prototxt, state=state, input_shapes=parse_shapes(shapes), splits=splits)
    if as_json:
        click.echo(json.dumps(shown.as_dict(), indent=2))
        return
    totals, report = shown.totals(), shown.report
    click.echo(f"{shown.source}: net '{caffe_files.as_text(shown.model.net.name)}', {shown.describe_state()}")
    click.echo(_table(shown.rows))
    kind = "parameters" if totals["weights_present"] else "parameters (inferred from the definition)"
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
@click.option("--output", "-o", help="Output file (default: MODEL's name with the format's extension; without "
                                     "MODEL, sphereface20 and it).")
@click.option("--format", "fmt", type=click.Choice(["pt", "torchscript", "onnx", "caffemodel"]),
              help="Output format  [default: pt; onnx without MODEL]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Without MODEL: the seed of the built-in net's filler weights.")
@state_options()
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
def convert(model, prototxt, output, fmt, seed, phase, stages, level, shapes, tol, opset, static, optimize,
            pre_nms):
    """Convert a Caffe model to PyTorch (pt), TorchScript, ONNX, or back to a caffemodel.

    The net converted is the inference form of the definition (--prototxt, or the one stored in the
    caffemodel) in the given phase and stages: data layers become inputs (shaped from what they state, or
    --shape), their label tops, the loss and accuracy layers go (see `sfport deploy`). pt is sfport's
    self-contained file (net definition + state_dict, loadable with torch.load(weights_only=True) and
    sfport.TorchNet). TorchScript and ONNX are checked against the eager net (ONNX on onnxruntime) before they are
    written; a mismatch writes nothing and exits 1. An SSD's detection output layer is exported whole (its NMS
    as ONNX NonMaxSuppression: the 1 x 1 x N x 7 rows Caffe gives), or before its NMS with --pre-nms. Without
    MODEL: the built-in SphereFace-20 deploy net with its fillers' weights (seed --seed), as ONNX to
    sphereface20.onnx - a demonstration, not a face model.

    \b
    Examples:
      sfport convert
      sfport convert det1.caffemodel --prototxt det1.prototxt -o det1.pt
      sfport convert sphereface_model.caffemodel -p sphereface_deploy.prototxt --format onnx
      sfport convert mobilefacenet.caffemodel -p mobilefacenet.prototxt --optimize --format onnx
    """
    from sfport.runtime import export
    from sfport.runtime.net import load_net

    builtin = model is None and prototxt is None
    if model is None and not builtin:
        raise click.UsageError("give the MODEL (a caffemodel) whose weights go into --prototxt")
    fmt = fmt or ("onnx" if builtin else "pt")
    output = output or export.default_output("sphereface20" if builtin else model, fmt)
    disk.check_output(output)
    net = load_net(model, prototxt, parse_shapes(shapes), **state_kwargs(phase, stages, level), seed=seed)
    if builtin:
        click.echo(f"{net.path}: the SphereFace-20 deploy net, weights from its fillers (seed {seed})", err=True)
    elif not net.has_weights and net.params:
        raise CaffeFileError(model, "has no weights (a net definition alone: convert would write the fillers' "
                                    "random values); give the caffemodel, with this definition as -p")
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
    checked = "" if result is None else f"; checked against the eager net: {result.summary()}"
    click.echo(f"wrote {output}: {fmt}, inputs {net.inputs}, outputs {net.outputs}{checked}")


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
              help="SOURCE for the first input or NAME=SOURCE (repeatable); a source is an image file, a .npy "
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
    Without MODEL: the built-in SphereFace-20 deploy net, its weights drawn by its fillers from --seed.

    \b
    Examples:
      sfport verify
      sfport verify det1.caffemodel --prototxt det1.prototxt --shape 1,3,217,173
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
        if result.optimized:
            click.echo(result.optimized)
        click.echo(V.format_table(checks))
        if not checks:
            click.echo("no blob in common with the reference")
        elif failed:
            click.echo(f"FAILED: {len(failed)} of {len(checks)} blobs over {tol:g}; first divergence at "
                       f"'{failed[0].name}' (rel err {failed[0].rel_err:.3e})")
        else:
            click.echo(f"passed: {len(checks)} blobs within {tol:g}; worst '{worst.name}' "
                       f"(rel err {worst.rel_err:.3e}, cosine {worst.cosine:.8f})")
    if not result.passed:
        raise SystemExit(1)
