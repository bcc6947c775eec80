"""The ``sfport`` command line (installed as ``sfport.cli``; ``sfport --help`` lists the commands).

Bad input (a missing, truncated or wrong file, a syntax error, weights that do not fit the net) is reported as
one line on stderr, ``sfport: error: <file>: <problem>``, with exit status 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import json
import sys

import click

from sfport.errors import CaffeFileError

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    """Turns CaffeFileError into one line on stderr and exit status 2 (unless --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CaffeFileError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"sfport: error: {e}", err=True)
            ctx.exit(EXIT_BAD_INPUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(package_name="sfport")
@click.pass_context
def cli(ctx, debug):
    """sfport: SphereFace / SphereFace+ Caffe models in PyTorch, exactly."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _fmt_shapes(shapes) -> str:
    return " ".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)


def _table(rows) -> str:
    headers = ("#", "name", "type", "bottoms -> tops", "blobs", "params")
    body = []
    for r in rows:
        conn = (",".join(r.bottoms) + " -> " + ",".join(r.tops)).strip()
        shapes = _fmt_shapes(r.blob_shapes) + (" (inferred)" if r.inferred else "")
        name = r.name + (f" [{r.phase}]" if r.phase else "")
        body.append((str(r.index), name, r.type, conn, shapes, f"{r.params:,}" if r.blob_shapes else ""))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for b in body:
        cells = [c.rjust(w) if i in (0, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@cli.command()
@click.argument("model", required=False)
@click.option("--prototxt", "-p", help="Net definition (text) to merge the MODEL's weights into, by layer name.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of the table.")
def inspect(model, prototxt, as_json):
    """Show the layers of a Caffe model: name, type, bottoms -> tops, blob shapes, parameter count.

    MODEL is a .caffemodel (weights and the net Caffe stored with them), a .prototxt (definition only;
    blob shapes are then inferred) or a .solverstate (iteration, lr step, momentum history). With --prototxt, MODEL's weights are matched to the definition's layers
    by name, as Caffe does, and what does not match is reported. Legacy formats (V0, V1 'layers', deploy
    'input:' headers) are upgraded and the upgrades listed. Without MODEL, the built-in SphereFace-20 deploy
    net is shown.

    \b
    Examples:
      sfport inspect det1.caffemodel
      sfport inspect sphereface_model.caffemodel --prototxt sphereface_deploy.prototxt --json
    """
    from sfport import io, model as model_mod, nets

    report = None
    if model is None and prototxt is None:
        source = "built-in:sphereface_deploy(20)"
        shown = io.CaffeModel.from_net(nets.sphereface_deploy(20), source)
    elif prototxt is not None:
        definition = io.read_prototxt(prototxt)
        if model is None:
            shown, source = definition, prototxt
        else:
            weights = io.read_caffemodel(model)
            shown, report = model_mod.merge(definition, weights)
            source = f"{model} + {prototxt}"
    elif model.lower().endswith(".solverstate"):
        _inspect_solverstate(io.read_solverstate(model), as_json)
        return
    else:
        shown, source = io.read_net(model), model
    rows = model_mod.summarize(shown)
    total = sum(r.params for r in rows)
    with_blobs = sum(1 for r in rows if r.blob_shapes)
    if as_json:
        doc = {"source": source, "name": model_mod.as_text(shown.net.name), "layers": [r.as_dict() for r in rows],
               "totals": {"layers": len(rows), "layers_with_blobs": with_blobs, "params": total,
                          "weights_present": shown.has_weights()},
               "upgrades": shown.upgrades, "unknown_fields": model_mod.unknown_field_notes(shown.net)}
        if report is not None:
            doc["merge"] = report.as_dict()
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{source}: net '{model_mod.as_text(shown.net.name)}'")
    click.echo(_table(rows))
    kind = "parameters" if shown.has_weights() else "parameters (inferred from the definition)"
    click.echo(f"total: {len(rows)} layers, {with_blobs} with blobs, {total:,} {kind}")
    for note in shown.upgrades:
        click.echo(f"upgraded: {note}")
    for note in model_mod.unknown_field_notes(shown.net):
        click.echo(f"warning: {note} (a file from another Caffe fork?)")
    if report is not None:
        click.echo(f"weights copied into {len(report.copied)} layers")
        if report.layers_without_weights:
            click.echo("layers without weights (left to their fillers): " + ", ".join(report.layers_without_weights))
        if report.weights_without_layers:
            click.echo("weights without layers (ignored): " + ", ".join(report.weights_without_layers))


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


@cli.command()
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
    from sfport import io

    m = io.read_net(source)
    if m.kind == io.BINARY:
        io.write_caffemodel(output, m)
    else:
        io.write_prototxt(output, m.net)
    for note in m.upgrades or ["nothing to upgrade"]:
        click.echo(f"{source}: {note}")
    click.echo(f"wrote {output}")


def main(argv=None) -> int:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="sfport", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
