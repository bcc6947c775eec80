"""The solver commands: train (and, for a solver prototxt, what inspect shows)."""
# The torch-based library modules are imported inside the commands, for start-up time (see sfport/cli.py).
from __future__ import annotations

import sys

import click

from sfport.errors import CaffeFileError
from sfport.commands.options import data_options


@click.command()
@click.argument("solver")
@click.option("--weights", help="Weights to start from (caffemodel, .caffemodel.h5, sfport .pt or training "
                                 "snapshot .pt), comma-separated; copied by layer name.")
@click.option("--snapshot", help="Resume from a .solverstate (or .solverstate.h5): sfport's continue exactly, "
                                 "Caffe's as Caffe resumes. Not with --weights.")
@click.option("--gpu", help="GPU ids ('0', '0,1') or 'all'; several GPUs run DistributedDataParallel. "
                            "Default: the CPU (or what torchrun sets up).")
@data_options("the TRAIN data layer")
@click.option("--amp", is_flag=True, help="bf16 autocast on the GPU (fp32 is the default, for parity with Caffe).")
@click.option("--seed", type=int, help="Seed for fillers, shuffling and augmentation (default: random_seed).")
@click.option("--workers", type=int, help="DataLoader worker processes (default: the CPU count, at most 16; none for HDF5Data, whose rows are "
                   "in memory already).")
@click.option("--skip-bad-images", is_flag=True, help="Skip and count unreadable images instead of stopping.")
@click.option("--keep-going", is_flag=True, help="Do not stop on a NaN loss or the 87.3365 plateau.")
@click.option("--synthetic-data", is_flag=True, help="Random images and labels (benchmarks; no list needed).")
@click.option("--shape", help="C,H,W of the synthetic images when the prototxt does not fix them.")
@click.option("--max-iter", type=int, help="Override the solver's max_iter.")
@click.option("--margin-grad", type=click.Choice(["caffe", "true"]), help="MarginInnerProduct backward.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--plot", help="Draw the training curves (loss, smoothed loss, test outputs, lr) from the log to this "
                             ".png/.svg/.pdf, rewritten at each snapshot and at the end.")
@click.option("--sigint-effect", type=click.Choice(["stop", "snapshot", "none"]), default="stop", show_default=True,
              help="What Ctrl-C (SIGINT) does: stop after this iteration with a snapshot, snapshot and go on, or "
                   "nothing (caffe -sigint_effect).")
@click.option("--sighup-effect", type=click.Choice(["stop", "snapshot", "none"]), default="snapshot",
              show_default=True, help="What SIGHUP does (caffe -sighup_effect).")
@click.option("--sigterm-effect", type=click.Choice(["stop", "snapshot", "none"]),
              help="What SIGTERM (a scheduler's preemption) does; default: as SIGINT.")
def train(solver, weights, snapshot, gpu, data_root, source, amp, seed, workers, skip_bad_images, keep_going,
          synthetic_data, shape, max_iter, margin_grad, progress, plot, sigint_effect, sighup_effect, sigterm_effect):
    """Train or finetune with Caffe's solver: `caffe train -solver S -weights W -gpu 0,1`, in PyTorch.

    Logs Caffe's lines (so Caffe's log tools parse them), writes Caffe's snapshots (`<prefix>_iter_N.caffemodel`
    + `.solverstate`, or the `.h5` pair with snapshot_format: HDF5), whose .solverstate resumes exactly. Ctrl-C
    stops after the iteration with a snapshot (exit status 0); SIGHUP writes one and goes on; SIGTERM acts as
    Ctrl-C. Solver types: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam. The log starts with the device
    ('Use CPU.' / 'Using GPUs 0, 1'); a solver with solver_mode GPU (Caffe's default) run without --gpu
    trains on the CPU, with a warning saying so.

    Paths: a relative path in the solver and its nets (net, train_net, test_net, weights, snapshot_prefix, the
    data layers' source, root_folder and mean_file) and --weights / --snapshot is taken from the current
    directory if it exists there (as caffe opens it, run from the repository root), else from the solver's
    folder (snapshot_prefix: by its folder). Each resolved path is logged once ('Resolved net: X -> /abs/X').

    --plot draws the curves of this run's log; for a saved Caffe log: python -m sfport.solver.curves LOG OUT.
    --synthetic-data needs --shape C,H,W when the net does not fix its input (3,112,96 for SphereFace).

    \b
    Examples:
      sfport train prototxt/sfplus_m4_solver.prototxt --weights sphereface_model.caffemodel --gpu 0
      sfport train prototxt/sphereface20_solver.prototxt --snapshot result/sphereface20_iter_16000.solverstate --gpu 0
      sfport train prototxt/sphereface20_solver.prototxt --gpu 0,1,2,3 --plot curves.png
      sfport train prototxt/sphereface20_solver.prototxt --synthetic-data --shape 3,112,96 --max-iter 100
      python -m sfport.solver.curves caffe.log curves.png
    """
    from sfport import solver as tr

    data_shape = None
    if shape:   # the synthetic images' C,H,W: three positive sizes
        dims = shape.replace("x", ",").split(",")
        if len(dims) != 3 or not all(d.strip().isdigit() and int(d) > 0 for d in dims):
            raise CaffeFileError(None, f"--shape {shape}: give the synthetic images' C,H,W (three positive sizes)")
        data_shape = tuple(int(d) for d in dims)
    try:
        tr.start(solver, gpu=gpu, weights=[w for w in (weights or "").split(",") if w], snapshot=snapshot,
                 data_root=data_root, source=source, seed=seed, amp=amp, workers=workers,
                 skip_bad_images=skip_bad_images, keep_going=keep_going, synthetic_data=synthetic_data,
                 data_shape=data_shape, max_iter=max_iter, progress=progress,
                 margin_grad=margin_grad, plot=plot, sigint_effect=sigint_effect, sighup_effect=sighup_effect,
                 sigterm_effect=sigterm_effect)
    except tr.TrainingStopped as e:
        click.echo(f"sfport: stopped: {e}", err=True)
        sys.exit(3)


def inspect_solver(path: str, as_json: bool = False, plot: str | None = None) -> None:
    """`sfport inspect SOLVER`: the solver's settings, the nets it trains, its lr schedule, the effective batch
    (sfport.solver.solverinfo); ``plot``: the lr schedule drawn to that .png/.svg/.pdf."""
    import json

    from sfport.report import plots
    from sfport.solver import solverinfo

    if plot:
        plots.plot_format(plot)
    info = solverinfo.solver_info(path)
    click.echo(json.dumps(info, indent=2) if as_json else solverinfo.format_info(info))
    if plot:
        from sfport.solver.config import read_solver
        plots.save(solverinfo.lr_figure(read_solver(path)[0], title=f"{path}: lr_policy "
                                        f"{info['lr_schedule']['policy']}"), plot)
        click.echo(f"wrote {plot}", err=as_json)
