"""`sfport draw`: Caffe's python/draw_net.py, a net's graph through pydot and Graphviz (sfport.netdef.draw)."""
from __future__ import annotations

import click


@click.command("draw")
@click.argument("net_file", metavar="NET")
@click.argument("output", required=False)
@click.option("--output", "-o", "output_opt", help="The drawing: .png, .svg, .pdf, or .dot (the DOT text; needs no "
                                                   "Graphviz). Also the second argument, as draw_net.py takes it.")
@click.option("--rankdir", type=click.Choice(["LR", "TB", "BT", "RL"]), default="LR", show_default=True,
              help="Direction of the graph, as draw_net.py --rankdir.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST", "ALL"], case_sensitive=False), default="ALL",
              show_default=True, help="The layers of this phase (include/exclude rules), as draw_net.py --phase; "
                                      "ALL draws every layer.")
@click.option("--stage", "stages", multiple=True, help="NetState stage (repeatable), with --phase TRAIN or TEST.")
@click.option("--level", type=int, default=0, show_default=True, help="NetState level, with --phase TRAIN or TEST.")
@click.option("--display-lrm", is_flag=True, help="Show the lr_mult of Convolution/Deconvolution/InnerProduct "
                                                  "layers, as draw_net.py --display_lrm.")
@click.option("--splits", is_flag=True, help="Keep the Split layers Caffe inserted into a caffemodel's stored net.")
def command(net_file, output, output_opt, rankdir, phase, stages, level, display_lrm, splits):
    """Draw a net's graph, as Caffe's `python/draw_net.py NET OUT`: each layer a box named by its name, type and
    (Convolution, Pooling) kernel, stride and pad, coloured by type (draw.py's colours; in-place layers light
    green), each blob a grey octagon, the top edges labelled with num_output or the batch size.

    NET is a prototxt (train_val, train_test, solver-free deploy), a legacy V0/V1 file (upgraded first) or a
    caffemodel (its stored net, already filtered by Caffe). Needs the extra `draw` (pydot) and Graphviz's `dot`
    program, except for .dot output.

    \b
    Examples:
      sfport draw lenet_train_test.prototxt lenet.png
      sfport draw MobileNetSSD_train.prototxt -o ssd.svg --rankdir TB --phase TRAIN
      sfport draw det1.caffemodel -o det1.dot
    """
    from sfport.netdef import draw

    if output and output_opt and output != output_opt:
        raise click.UsageError(f"two outputs: '{output}' and -o '{output_opt}'; give one")
    out = output or output_opt
    if not out:
        raise click.UsageError("give the drawing's file: sfport draw NET OUT.png (or -o OUT.svg)")
    if phase.upper() == "ALL" and (stages or level):
        raise click.UsageError("--stage and --level select layers of a phase: give --phase TRAIN or TEST")
    draw.output_format(out)
    draw.pydot()   # before reading: the one-line error when the extra is missing
    net, _, _ = draw.read_drawable(net_file, splits=splits)
    want = None if phase.upper() == "ALL" else phase.upper()
    draw.draw(net, out, rankdir=rankdir, phase=want, stages=stages, level=level, display_lrm=display_lrm,
              source=net_file)
    click.echo(f"Drawing net to {out}", err=False)
