"""Caffe's Solver::Solve / Step loop (solver.cpp) around sfport's train net, its data feeder and the SGD state.

Per update: test when due, ``iter_size`` forward/backward passes summing the gradients, the smoothed loss, the
display lines, the update (rate, clipping, normalisation, regularisation, momentum: :mod:`sfport.solver.sgd`),
``iter += 1``, a snapshot when due; at the end a snapshot and one extra display forward. Several processes run
DistributedDataParallel, each on ``batch_size`` samples of its own micro-batches, gradients averaged: N processes
equal ``iter_size: N`` on one.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from sfport.formats import caffe_files
from sfport.solver import sgd
from sfport.solver.state import state_for
from sfport import converters as conv_registry
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net, read_weights
from sfport.protos import caffe_pb2
from sfport.solver import checkpoint, curves, signals
from sfport.solver.config import Options, net_states, nets_of, read_solver
from sfport.solver.evaluate import build_test_net, run_test_nets
from sfport.data.feed import Feeder, num_classes
from sfport.report.progress import CaffeLog
from sfport.solver.log import RecordingLog, g6, net_outputs, output_line, progress_bar
from sfport.solver.paths import PathLog


class TrainingStopped(Exception):
    """The run stopped on a NaN/inf loss or the 87.3365 plateau (exit status 3 on the command line)."""


class Solver:
    """Caffe's solver (the six types) around sfport nets. ``solve()`` runs to max_iter; ``step(n)`` runs n
    updates; the iteration, lr step and histories are ``self.state`` (:class:`sfport.solver.state.SolverState`)."""

    def __init__(self, solver_path, opts: Options | None = None, rank: int = 0, world: int = 1,
                 log: CaffeLog | None = None):
        self.opts = opts = opts or Options()
        self.rank, self.world = rank, world
        self._plateaus: list | None = None   # (layer, top, plateau) of the losses _check_loss watches
        self.log = log or (RecordingLog if opts.plot else CaffeLog)(enabled=(rank == 0))
        # setup's log lines are written when it is done: bad input found on the way is its one error line
        with self.log.held():
            self.path = solver_path
            sp, notes = read_solver(solver_path, opts.max_iter)   # checked before any net is built
            self.param = sp
            for note in notes:
                self.log(note, "upgrade_proto.cpp:1113")
            self.base = Path(solver_path).resolve().parent
            self.device = torch.device(opts.device)
            self.log_device()
            self.log("Initializing solver from parameters: \n" + caffe_files.net_to_text(sp).rstrip(), "solver.cpp:44")
            paths = PathLog(self.log, self.base)   # sfport.solver.paths: one rule, each path logged once
            sp.snapshot_prefix = paths("snapshot_prefix", sp.snapshot_prefix, output=True)
            if opts.plot and not sp.display:
                self.log(f"--plot {opts.plot}: display is 0, so the log has no loss lines to draw", "solver.cpp:0",
                         "W")
            if rank == 0:   # solver.cpp Solver::Init: CheckSnapshotWritePermissions, before InitTrainNet
                checkpoint.check_outputs(solver_path, sp, sp.max_iter)
            self.seed = seed = opts.seed if opts.seed is not None else (sp.random_seed if sp.random_seed >= 0 else 0)
            train_param, test_params, net_files = nets_of(sp, self.base, solver_path)
            for kind in ("net", "train_net"):
                if sp.HasField(kind):
                    paths.note(kind, getattr(sp, kind), net_files[0])
            for t, f in zip(sp.test_net, net_files[1 + len(sp.test_net_param):]):
                paths.note("test_net", t, f)
            train_state, test_states = net_states(sp, train_param, test_params)
            self.log(f"Creating training net from net file: {sp.net or sp.train_net or '(in the solver)'}",
                     "solver.cpp:87")
            self.feeder = Feeder(train_param, train_state, opts, self.base, seed, world, rank, sp.iter_size,
                                 self.log, net_path=net_files[0])
            paths.data(self.feeder, opts.data_root)
            torch.manual_seed(seed)
            self.net = Net(caffe_files.CaffeModel.from_net(train_param, net_files[0]), phase=train_state,
                           input_shapes=self.feeder.inputs, seed=seed)
            if not self.net.module.loss_terms:   # Caffe would run it with loss 0: nothing learns
                raise CaffeFileError(net_files[0], "the train net has no loss: no layer has a loss_weight (a loss "
                                                   "layer such as SoftmaxWithLoss, or loss_weight on a top)")
            self.feeder.num_classes = num_classes(self.net)
            if opts.margin_grad:
                for m in self.net.module.modules():
                    if hasattr(m, "grad_mode"):
                        m.grad_mode = opts.margin_grad
            self.module = self.net.module.to(self.device)
            if opts.channels_last and self.device.type == "cuda":
                self.module = self.module.to(memory_format=torch.channels_last)
            self.state = state_for(sp, self.net.module.learnable_params())
            self.signals: signals.SignalHandler | None = None   # set while solve() runs (sfport train)
            self.requested_early_exit = False
            self.losses: list[float] = []
            self.smoothed_loss = 0.0
            self.last_snapshot: str | None = None
            self.trajectory: list[dict] = []   # per update: iter, lr, loss, smoothed_loss, current_step, clipping
            self.weights_report: list[str] = []
            # caffe.cpp train: -weights, else (and never with -snapshot) the solver's own `weights` (Solver::InitTrainNet)
            weights = opts.weights or ([] if opts.snapshot else sp.weights)
            for w in weights:
                self.load_weights(paths("weights", w))
            if opts.snapshot:
                self.restore(paths("snapshot", opts.snapshot))
            self.test_nets = [build_test_net(tp, i, self.net, opts, self.base, seed, self.device, self.log, ts, f)
                              for i, (tp, ts, f) in enumerate(zip(test_params, test_states, net_files[1:]))]
            for _, feeder in self.test_nets:
                paths.data(feeder)
            self.ddp = None
            if world > 1:
                self.ddp = DistributedDataParallel(self.net.module.blobs_module(), broadcast_buffers=False,
                                                   device_ids=[self.device.index] if self.device.type == "cuda" else None)
            torch.manual_seed(seed + 7 * rank)  # runtime randomness (dropout), per rank
            self.log("Solver scaffolding done.", "solver.cpp:56")

    def log_device(self) -> None:
        """caffe.cpp train's device line (``Use CPU.`` / ``Using GPUs 0, 1``), and a warning when the solver asks
        for the GPU (solver_mode GPU, Caffe's default, which caffe obeys when -gpu is not given) and this run is on
        the CPU because no --gpu was given."""
        sp = self.param
        if self.device.type == "cpu":
            self.log("Use CPU.", "caffe.cpp:211")
        else:
            gpus = self.opts.gpus or (self.device.index or 0,)
            self.log(f"Using GPUs {', '.join(str(g) for g in gpus)}", "caffe.cpp:226")
        if sp.solver_mode == caffe_pb2.SolverParameter.GPU and self.device.type == "cpu" and not self.opts.gpus:
            mode = "solver_mode is GPU" + ("" if sp.HasField("solver_mode") else " (Caffe's default)")
            self.log(f"{mode}, where caffe would train on GPU {sp.device_id}, but no --gpu was given: this run "
                     f"trains on the CPU; use --gpu {sp.device_id} to train on the GPU", "caffe.cpp:0", "W")

    def write_curves(self) -> None:
        """``--plot``: the training curves (:mod:`sfport.solver.curves`) of this run's log so far, rewritten whole
        (rank 0; a figure that cannot be written is a warning, the training goes on)."""
        if not self.opts.plot or self.rank != 0 or not isinstance(self.log, RecordingLog):
            return
        try:
            curves.plot_text("\n".join(self.log.lines), self.opts.plot, self.path)
        except (CaffeFileError, OSError) as e:
            self.log(f"--plot {self.opts.plot}: not written: {e}", "solver.cpp:0", "W")

    def load_weights(self, path: str) -> None:
        """``-weights``: copy by layer name (several files, comma-separated, in order)."""
        for one in [s for s in str(path).split(",") if s]:
            report = self.copy_weights(read_weights(one))
            self.log(f"Finetuning from {one}", "caffe.cpp:155")
            for line in report.lines():
                self.log(line, "net.cpp:0")
            self.weights_report += report.lines()
        self.state.reset_history()

    def copy_weights(self, model: caffe_files.CaffeModel):
        """Net::CopyTrainedLayersFrom (net.cpp): by layer name, every blob of the same shape or an error with both
        shapes (:func:`sfport.netdef.weight_match.match_weights`, checked before any blob is copied). Caffe ignores the layers
        it does not find; weights that match no layer with parameters are never run silently: an error."""
        report = self.net.load_weights(model)
        if not report.copied and any(self.net.params.values()):
            theirs = ", ".join(report.weights_without_layers[:5]) or "none"
            ours = ", ".join(list(self.net.params)[:5])
            raise CaffeFileError(model.path, f"no layer of the weights matches a layer with parameters of "
                                             f"{self.net.path or 'the train net'} (weights for: {theirs}; the "
                                             f"net's: {ours})")
        return report

    # -- one update ------------------------------------------------------------------------------------------
    def _forward_backward(self, batch: dict, backward: bool = True, sync: bool = True):
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.opts.channels_last and self.device.type == "cuda":
            batch = {k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v)
                     for k, v in batch.items()}
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.opts.amp)
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
        with torch.set_grad_enabled(backward), amp, no_sync:
            blobs = self.ddp(**batch) if self.ddp is not None else self.net.module.run(batch, keep_all=False)
            loss = self.net.module.loss(blobs)
            if backward:
                loss.backward()
        return float(loss.detach()) if loss is not None else 0.0, blobs

    def _update_smoothed(self, loss: float, start_iter: int) -> None:
        """Solver::UpdateSmoothedLoss over the last ``average_loss`` losses."""
        avg = max(self.param.average_loss, 1)
        if len(self.losses) < avg:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.state.iter - start_iter) % avg
            self.smoothed_loss += (loss - self.losses[idx]) / avg
            self.losses[idx] = loss

    def _check_loss(self, loss: float, blobs) -> None:
        """Stop (TrainingStopped, or a warning with --keep-going) on a non-finite loss or a loss at its plateau
        (its converter's ``loss_plateau``: SoftmaxWithLoss's -log(FLT_MIN), every label with probability 0)."""
        bad = None
        if not math.isfinite(loss):
            bad = f"the loss is {loss}"
        else:
            if self._plateaus is None:   # the layers whose loss has a plateau, asked once
                self._plateaus = [(gl.name, gl.tops[0], plateau) for gl in self.net.graph.layers if gl.tops
                                  for plateau in [conv_registry.get_for(gl.param).loss_plateau(gl.param)]
                                  if plateau is not None]
            for name, top, plateau in self._plateaus:
                if top in blobs:
                    v = float(blobs[top].detach())
                    if abs(v - plateau) < 1e-3:
                        bad = f"{name} = {v:.4f}, the -log(FLT_MIN) plateau: every label has probability 0"
        if bad is None:
            return
        msg = (f"Iteration {self.state.iter}: {bad}; training diverged. Last good snapshot: "
               f"{self.last_snapshot or 'none written yet'}")
        if self.opts.keep_going:
            self.log(msg + " (continuing: --keep-going)", "solver.cpp:0", "W")
            return
        raise TrainingStopped(msg)

    def step(self, iters: int) -> None:
        """Solver::Step: ``iters`` updates, each test when due, iter_size forward/backward passes, the smoothed loss
        and display lines, the update, a snapshot when due."""
        sp = self.param
        start_iter = self.state.iter
        stop_iter = start_iter + iters
        self.losses, self.smoothed_loss = [], 0.0
        k = max(sp.iter_size, 1)
        self.feeder.start(start_iter, None, pin=self.device.type == "cuda")
        last_time, last_iter = time.time(), start_iter
        bar = progress_bar(self.log, stop_iter, start_iter, self.opts.progress if self.rank == 0 else False)
        while self.state.iter < stop_iter:
            self.state.zero_grad()
            it = self.state.iter
            if sp.test_interval and it % sp.test_interval == 0 and (it > 0 or sp.test_initialization):
                self.test_all()
                if self.requested_early_exit:   # a stop asked for while testing
                    break
            display = sp.display and it % sp.display == 0
            loss = 0.0
            blobs = None
            for i in range(k):
                batch = self.feeder.next()
                with self.feeder.blame():
                    l, blobs = self._forward_backward(batch, True, sync=(i == k - 1))
                self._check_loss(l, blobs)
                loss += l
            loss /= k
            self._update_smoothed(loss, start_iter)
            if display:
                now = time.time()
                lapse = now - last_time
                per_s = (it - last_iter) / (lapse if lapse else 1)
                self.log(f"Iteration {it} ({g6(per_s)} iter/s, {g6(lapse)}s/{sp.display} iters), "
                         f"loss = {g6(self.smoothed_loss)}", "solver.cpp:218")
                last_time, last_iter = now, it
                lines = [(name, v, w) for name, values, w in net_outputs(self.net, blobs) for v in values]
                for n, (name, v, w) in enumerate(lines):
                    self.log(output_line("Train", n, name, v, w), "solver.cpp:237")
            info = self.apply_update(display)
            self.trajectory.append({"iter": info.iter, "lr": info.rate, "loss": loss,
                                    "smoothed_loss": self.smoothed_loss, "current_step": self.state.current_step,
                                    "clip_norm": info.clip_norm, "clip_scale": info.clip_scale})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.smoothed_loss:.4g}")
            request = self.requested_action()
            if (sp.snapshot and self.state.iter % sp.snapshot == 0 or request == signals.SNAPSHOT) \
                    and self.rank == 0:
                self.snapshot()
            if request == signals.STOP:
                self.requested_early_exit = True
                break
        if bar is not None:
            bar.close()
            self.log.bar = None

    def requested_action(self) -> str | None:
        """Solver::GetRequestedAction: what a signal asked for since the last call (every rank the same)."""
        action = self.signals.check() if self.signals is not None else None
        return signals.agreed(action, self.world, self.device)

    def apply_update(self, display: bool = False) -> sgd.UpdateInfo:
        """SGDSolver::ApplyUpdate and Solver::Step's ``++iter_`` (:meth:`sfport.solver.state.SolverState.step`), with their
        log lines: the MultiStep status, the rate on display iterations, the clipping."""
        sp = self.param
        info = self.state.step(sp)
        if info.message:
            self.log(info.message, "sgd_solver.cpp:46")
        if display:
            self.log(f"Iteration {info.iter}, lr = {g6(info.rate)}", "sgd_solver.cpp:105")
        if info.clip_scale is not None:
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {g6(info.clip_norm)} > "
                     f"{g6(sp.clip_gradients)}) by scale factor {g6(info.clip_scale)}", "sgd_solver.cpp:92")
        return info

    def solve(self) -> None:
        """Solver::Solve: step to max_iter, the final snapshot, display forward and tests; under the run's
        signal handling (caffe.cpp train: ``-sigint_effect``, ``-sighup_effect``; :mod:`sfport.solver.signals`)."""
        o = self.opts
        with signals.SignalHandler(o.sigint_effect, o.sighup_effect, o.sigterm_effect) as self.signals:
            try:
                self._solve()
            finally:
                self.signals = None

    def _solve(self) -> None:
        sp = self.param
        self.log(f"Solving {self.net.graph.name}", "solver.cpp:272")
        self.log(f"Learning Rate Policy: {sp.lr_policy}", "solver.cpp:273")
        self.requested_early_exit = False
        start_iter = self.state.iter
        self.step(sp.max_iter - self.state.iter)
        if sp.snapshot_after_train and (not sp.snapshot or self.state.iter % sp.snapshot != 0) and self.rank == 0:
            self.snapshot()
        if self.requested_early_exit:
            self.log("Optimization stopped early.", "solver.cpp:311")
            self.write_curves()
            return
        if sp.display and self.state.iter % sp.display == 0:
            self.feeder.start(self.state.iter)
            batch = self.feeder.next()
            with torch.no_grad(), self.feeder.blame():
                loss, _ = self._forward_backward(batch, backward=False)
            self._update_smoothed(loss, start_iter)
            self.log(f"Iteration {self.state.iter}, loss = {g6(self.smoothed_loss)}", "solver.cpp:310")
        if sp.test_interval and self.state.iter % sp.test_interval == 0:
            self.test_all()
        if self.feeder.bad:
            self.log(f"Skipped {self.feeder.bad} unreadable images (--skip-bad-images)", "image_data_layer.cpp:0",
                     "W")
        self.log("Optimization Done.", "solver.cpp:315")
        self.write_curves()

    def test_all(self) -> None:
        """Solver::TestAll (see :func:`sfport.solver.evaluate.run_test_nets`)."""
        run_test_nets(self.test_nets, self.param, self.state.iter, self.device, self.log, solver=self)

    def snapshot(self) -> str:
        """Solver::Snapshot (see :func:`sfport.solver.checkpoint.snapshot`); returns the solver state's path."""
        self.last_snapshot = checkpoint.snapshot(self)
        self.write_curves()
        return self.last_snapshot

    def restore(self, path: str) -> None:
        """Solver::Restore (see :func:`sfport.solver.checkpoint.restore`)."""
        checkpoint.restore(self, path)
        self.last_snapshot = str(path)
