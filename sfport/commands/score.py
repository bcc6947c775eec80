"""`sfport test`: score a trained model on its test data, as `caffe test` does (tools/caffe.cpp test())."""
# The torch-based library modules are imported inside the command, for start-up time (see sfport/cli.py).
from __future__ import annotations

import json
import os

import click

from sfport.commands.options import caffe_log, data_options


@click.command("test")
@click.argument("model", metavar="NET|SOLVER")
@click.option("--weights", "-w", help="The trained weights (caffemodel, .caffemodel.h5, sfport .pt or training "
                                      "snapshot .pt), copied by layer name. Needed unless "
                                      "NET is a caffemodel / .pt itself.")
@click.option("--iterations", "-i", type=int,
              help="Batches to run (default 50, as caffe test; for a SOLVER its test_iter).")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
              help="NetState phase of the net's layers (include/exclude rules). Default TEST.")
@click.option("--stage", "stages", multiple=True, help="NetState stage (repeatable), as `caffe test -stage`.")
@click.option("--level", type=int, help="NetState level (default 0).")
@click.option("--test-net", type=click.IntRange(min=0), help="Which test net of a SOLVER (default 0).")
@click.option("--gpu", help="GPU id ('0'); of several ('0,1', 'all') only the first is used, as caffe test. "
                            "Default: the CPU.")
@data_options("the scored net's data layer")
@click.option("--workers", type=click.IntRange(min=0),
              help="DataLoader worker processes (default: the CPU count, at most 16).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document (per batch values, means) instead.")
def command(model, weights, iterations, phase, stages, level, test_net, gpu, data_root, source, workers, as_json):
    """Score a model with its test data: run the TEST net (its own data layer: ImageData, Data on an LMDB /
    LevelDB, HDF5Data) for --iterations batches and print every output averaged, as `caffe test` does.

    NET is a train_test / train_val prototxt, or a caffemodel / .pt (the net it stores). For a SOLVER
    prototxt the test net is the solver's (test_net, test_net_param, or net with test_state) and its paths
    are resolved as `sfport train` resolves them. Printed: `Batch i, <output> = <value>` for every element
    of every output blob, then `Loss: <mean loss>` and `<output> = <mean>` per output, a loss output with
    ` (* <loss_weight> = <weighted> loss)`. The setup log goes to stderr. A net without weights, or weights
    that match none of its layers with parameters, is an error; layers left without weights are a warning.
    --source and --data-root replace the scored net's data layer's source and root_folder (a net whose list
    is where another machine keeps it), as `sfport train` does for its TRAIN net.

    \b
    Examples:
      sfport test lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel --iterations 100
      sfport test lenet_solver.prototxt --weights lenet_iter_10000.caffemodel --gpu 0
      sfport test train_val.prototxt -w model.caffemodel --stage test-on-val --data-root /data --json
      sfport test train_val.prototxt -w model.caffemodel --source val.txt --data-root /data/images/
    """
    from sfport.solver import score as score_mod

    log = caffe_log()

    def show(i, batch):
        for line in score_mod.batch_lines(i, batch):
            click.echo(line)

    scorer = score_mod.Scorer(model, weights, iterations, phase=phase, stages=stages, level=level,
                              test_net=test_net, gpu=gpu, data_root=data_root, source=source,
                              workers=min(16, os.cpu_count() or 2) if workers is None else workers, log=log)
    if scorer.report.layers_without_weights:
        click.echo("warning: layers without weights (left to their fillers): "
                   + ", ".join(scorer.report.layers_without_weights), err=True)
    report = scorer.run(None if as_json else show)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    for line in report.summary_lines():
        click.echo(line)
