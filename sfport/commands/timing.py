"""`sfport time`: Caffe's `caffe time`, the layer-by-layer benchmark of a net (sfport.solver.timing)."""
from __future__ import annotations

import click

from sfport.commands.options import parse_shapes, state_kwargs, state_options


@click.command("time")
@click.argument("net_file", metavar="NET")
@click.option("--weights", "-w", help="Weights (caffemodel, .caffemodel.h5, sfport .pt or training snapshot .pt) "
                                      "copied into NET by layer name (default: the "
                                      "weights NET holds, else the fillers'; timing needs no trained weights).")
@click.option("--iterations", "-n", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed iterations (after one untimed warm-up), as `caffe time -iterations`.")
@state_options(default_phase="TRAIN")
@click.option("--backward/--no-backward", default=True, show_default=True,
              help="Time the backward pass too (Caffe always does).")
@click.option("--gpu", type=int, default=None, help="Run on this CUDA device (as `caffe time -gpu`); default CPU.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs and fillers.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document (averages in ms) instead of the lines.")
def command(net_file, weights, iterations, phase, stages, level, shapes, backward, gpu, seed, as_json):
    """Benchmark a net layer by layer, as `caffe time`: per-layer forward and backward milliseconds averaged over
    the iterations, then the averages of the passes and the total, in Caffe's lines.

    NET is a net definition (train_val, train_test or deploy prototxt), a caffemodel (its stored net) or an
    sfport .pt, in the --phase (TRAIN by default, as Caffe's time) and stages. One untimed forward and backward
    come first (Caffe's warm-up). No data is read: every input is a seeded random batch of the data layer's
    shape (--shape where the definition does not fix it), and a data layer's forward is the copy of that batch
    into its tops. Backward starts from each loss top's loss_weight; a net without a loss (a deploy net) is
    backpropagated from ones in its outputs, as if its loss were their sum (Caffe would backpropagate zeros).

    \b
    Examples:
      sfport time lenet_train_test.prototxt --shape 64,1,28,28 --iterations 10
      sfport time det1.prototxt --weights det1.caffemodel --phase TEST --no-backward
      sfport time sphereface_deploy.prototxt --gpu 0 --json
    """
    import torch

    from sfport.solver import timing
    from sfport.errors import CaffeFileError
    from sfport.formats import caffe_files
    from sfport.runtime.net import Net

    device = "cpu"
    if gpu is not None:
        if not torch.cuda.is_available() or not 0 <= gpu < torch.cuda.device_count():
            raise click.BadParameter(f"no CUDA device {gpu} (this machine has {torch.cuda.device_count()})",
                                     param_hint="--gpu")
        device = f"cuda:{gpu}"
    if weights is not None and caffe_files.is_torch_pt(net_file):
        raise click.BadParameter("an sfport .pt holds its own weights; give --weights with a prototxt or "
                                 "caffemodel", param_hint="--weights")
    kw = state_kwargs(phase, stages, level)
    net = Net(net_file, weights=weights, phase=kw["phase"].lower(), input_shapes=parse_shapes(shapes), seed=seed,
              stages=kw["stages"], level=kw["level"], inference=False)
    report = net.report
    if report is not None and report.copied:
        left = f"; layers left to their fillers: {', '.join(report.layers_without_weights)}" \
            if report.layers_without_weights else ""
        weights_note = f"weights: copied into {len(report.copied)} layers from {weights or net_file}{left}"
    elif net.has_weights:
        weights_note = f"weights: {net_file}'s own"
    else:
        weights_note = f"weights: the fillers' (seed {seed}; timing needs no trained weights)"
    head = [f"Use GPU with device ID {gpu}" if gpu is not None else "Use CPU.", weights_note]
    echo = None if as_json else click.echo
    try:
        result = timing.time_net(net, iterations, backward, seed=seed, device=device, notes=head, log=echo)
    except ValueError as e:   # a layer's complaint about its (random) inputs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CaffeFileError(net_file, f"cannot run it on random inputs: {first}") from None
    if as_json:
        click.echo(result.as_json())
    else:
        for line in timing.summary_lines(result):
            click.echo(line)
