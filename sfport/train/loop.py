"""Caffe's Solver::Solve / Step loop (solver.cpp) around sfport's train net, its data feeder and the SGD state.

Per update: test when due, ``iter_size`` forward/backward passes summing the gradients, the smoothed loss, the
display lines, the update (rate, clipping, normalisation, regularisation, momentum: :mod:`sfport.sgd`),
``iter += 1``, a snapshot when due; at the end a snapshot and one extra display forward. Several processes run
DistributedDataParallel, each on ``batch_size`` samples of its own micro-batches, gradients averaged: N processes
equal ``iter_size: N`` on one.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sfport import caffe_files, sgd
from sfport.converters.loss import LOSS_CAP
from sfport.errors import CaffeFileError
from sfport.net import Net
from sfport.protos import caffe_pb2
from sfport.train import checkpoint
from sfport.train.feed import Feeder, num_classes
from sfport.train.log import CaffeLog, g6, net_outputs, output_line
from sfport.train.options import Options, TrainingStopped


def _resolve(path: str, base: Path | None) -> Path:
    """Caffe resolves relative paths against the working directory; fall back to the solver's folder."""
    p = Path(path)
    if p.is_absolute() or p.exists() or base is None:
        return p
    return base / p if (base / p).exists() else p


def nets_of(sp: caffe_pb2.SolverParameter, base: Path | None, solver_path) -> tuple:
    """(train NetParameter, [test NetParameter...]) as Solver::InitTrainNet / InitTestNets pick them."""
    given = [sp.HasField("net"), sp.HasField("net_param"), sp.HasField("train_net"), sp.HasField("train_net_param")]
    if sum(given) != 1:
        raise CaffeFileError(solver_path, "the solver needs exactly one of net, net_param, train_net, "
                                          "train_net_param")
    if sp.HasField("train_net_param"):
        train = sp.train_net_param
    elif sp.HasField("net_param"):
        train = sp.net_param
    else:
        train = caffe_files.read_prototxt(_resolve(sp.train_net if sp.HasField("train_net") else sp.net, base)).net
    tests = list(sp.test_net_param) + [caffe_files.read_prototxt(_resolve(t, base)).net for t in sp.test_net]
    if not tests and len(sp.test_iter) and (sp.HasField("net") or sp.HasField("net_param")):
        tests = [train] * len(sp.test_iter)
    if tests and len(sp.test_iter) != len(tests):
        raise CaffeFileError(solver_path, f"test_iter must be given once per test net ({len(tests)} nets, "
                                          f"{len(sp.test_iter)} test_iter)")
    return train, tests


class Solver:
    """Caffe's SGDSolver around sfport nets. ``solve()`` runs to max_iter; ``step(n)`` runs n updates; the
    iteration, lr step and histories are ``self.state`` (:class:`sfport.sgd.SGDState`)."""

    def __init__(self, solver_path, opts: Options | None = None, rank: int = 0, world: int = 1,
                 log: CaffeLog | None = None):
        self.opts = opts = opts or Options()
        self.rank, self.world = rank, world
        self.log = log or CaffeLog(enabled=(rank == 0))
        self.path = solver_path
        self.param = sp = caffe_files.read_solver(solver_path).param
        if sp.type not in ("", "SGD"):
            raise CaffeFileError(solver_path, f"solver type '{sp.type}' is not supported (sfport trains with SGD)")
        if opts.max_iter is not None:
            sp.max_iter = opts.max_iter
        self.base = Path(solver_path).resolve().parent
        self.device = torch.device(opts.device)
        self.log("Initializing solver from parameters: \n" + caffe_files.net_to_text(sp).rstrip(), "solver.cpp:44")
        self.seed = seed = opts.seed if opts.seed is not None else (sp.random_seed if sp.random_seed >= 0 else 0)
        train_param, test_params = nets_of(sp, self.base, solver_path)
        self.log(f"Creating training net from net file: {sp.net or sp.train_net or '(in the solver)'}",
                 "solver.cpp:87")
        self.feeder = Feeder(train_param, caffe_pb2.TRAIN, opts, self.base, seed, world, rank, max(sp.iter_size, 1),
                             self.log)
        torch.manual_seed(seed)
        self.net = Net(caffe_files.CaffeModel.from_net(train_param, None), phase="train",
                       input_shapes=self.feeder.inputs, seed=seed)
        self.feeder.num_classes = num_classes(self.net)
        if opts.margin_grad:
            for m in self.net.module.modules():
                if hasattr(m, "grad_mode"):
                    m.grad_mode = opts.margin_grad
        self.module = self.net.module.to(self.device)
        if opts.channels_last and self.device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)
        self.state = sgd.SGDState.for_params(self.net.module.learnable_params())
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        self.last_snapshot: str | None = None
        self.trajectory: list[dict] = []   # per update: iter, lr, loss, smoothed_loss, current_step, clipping
        self.weights_report: list[str] = []
        for w in opts.weights:
            self.load_weights(w)
        if opts.snapshot:
            checkpoint.restore(self, opts.snapshot)
        self.test_nets = [self._test_net(tp, i) for i, tp in enumerate(test_params)]
        self.ddp = None
        if world > 1:
            self.ddp = DistributedDataParallel(self.net.module.blobs_module(), broadcast_buffers=False,
                                               device_ids=[self.device.index] if self.device.type == "cuda" else None)
        torch.manual_seed(seed + 7 * rank)  # runtime randomness (dropout), per rank
        self.log("Solver scaffolding done.", "solver.cpp:56")

    # the state's counters and blobs, as Caffe's Solver names them
    iter = property(lambda self: self.state.iter, lambda self, v: setattr(self.state, "iter", v))
    current_step = property(lambda self: self.state.current_step,
                            lambda self, v: setattr(self.state, "current_step", v))
    blobs = property(lambda self: self.state.blobs)

    def load_weights(self, path: str) -> None:
        """``-weights``: copy by layer name (several files, comma-separated, in order)."""
        for one in [s for s in str(path).split(",") if s]:
            report = self.net.load_weights(caffe_files.read_caffemodel(one))
            self.log(f"Finetuning from {one}", "caffe.cpp:155")
            for line in report.lines():
                self.log(line, "net.cpp:0")
            self.weights_report += report.lines()
        self.state.reset_history()

    def _test_net(self, net_param, i):
        feeder = Feeder(net_param, caffe_pb2.TEST, self.opts, self.base, self.seed + 1 + i, 1, 0, 1, self.log)
        net = Net(caffe_files.CaffeModel.from_net(net_param, None), phase="test", input_shapes=feeder.inputs)
        feeder.num_classes = num_classes(net)
        net.module.share_trained_layers_with(self.net.module)
        net.module.to(self.device)
        feeder.start(0)
        return net, feeder

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
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss += (loss - self.losses[idx]) / avg
            self.losses[idx] = loss

    def _check_loss(self, loss: float, blobs) -> None:
        bad = None
        if not math.isfinite(loss):
            bad = f"the loss is {loss}"
        else:
            for gl in self.net.graph.layers:
                if gl.type == "SoftmaxWithLoss" and gl.tops[0] in blobs:
                    v = float(blobs[gl.tops[0]].detach())
                    if abs(v - LOSS_CAP) < 1e-3:
                        bad = f"{gl.name} = {v:.4f}, the -log(FLT_MIN) plateau: every label has probability 0"
        if bad is None:
            return
        msg = (f"Iteration {self.iter}: {bad}; training diverged. Last good snapshot: "
               f"{self.last_snapshot or 'none written yet'}")
        if self.opts.keep_going:
            self.log(msg + " (continuing: --keep-going)", "solver.cpp:0", "W")
            return
        raise TrainingStopped(msg)

    def step(self, iters: int) -> None:
        sp = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self.losses, self.smoothed_loss = [], 0.0
        k = max(sp.iter_size, 1)
        self.feeder.start(self.iter, None, pin=self.device.type == "cuda")
        last_time, last_iter = time.time(), self.iter
        bar = self._bar(stop_iter)
        while self.iter < stop_iter:
            self.state.zero_grad()
            if sp.test_interval and self.iter % sp.test_interval == 0 and (self.iter > 0 or sp.test_initialization):
                self.test_all()
            display = sp.display and self.iter % sp.display == 0
            loss = 0.0
            blobs = None
            for i in range(k):
                l, blobs = self._forward_backward(self.feeder.next(), True, sync=(i == k - 1))
                self._check_loss(l, blobs)
                loss += l
            loss /= k
            self._update_smoothed(loss, start_iter)
            if display:
                now = time.time()
                lapse = now - last_time
                per_s = (self.iter - last_iter) / (lapse if lapse else 1)
                self.log(f"Iteration {self.iter} ({g6(per_s)} iter/s, {g6(lapse)}s/{sp.display} iters), "
                         f"loss = {g6(self.smoothed_loss)}", "solver.cpp:218")
                last_time, last_iter = now, self.iter
                lines = [(name, v, w) for name, values, w in net_outputs(self.net, blobs) for v in values]
                for n, (name, v, w) in enumerate(lines):
                    self.log(output_line("Train", n, name, v, w), "solver.cpp:237")
            info = self.apply_update(display)
            self.trajectory.append({"iter": self.iter, "lr": info.rate, "loss": loss,
                                    "smoothed_loss": self.smoothed_loss, "current_step": self.current_step,
                                    "clip_norm": info.clip_norm, "clip_scale": info.clip_scale})
            self.iter += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.smoothed_loss:.4g}")
            if sp.snapshot and self.iter % sp.snapshot == 0 and self.rank == 0:
                self.snapshot()
        if bar is not None:
            bar.close()
            self.log.bar = None

    def apply_update(self, display: bool = False) -> sgd.UpdateInfo:
        """SGDSolver::ApplyUpdate: the rate (and its log lines), clipping, the update."""
        sp = self.param
        rate, status = self.state.rate(sp)
        if status:
            self.log(status, "sgd_solver.cpp:46")
        if display:
            self.log(f"Iteration {self.iter}, lr = {g6(rate)}", "sgd_solver.cpp:105")
        info = self.state.update(sp, rate)
        if info.clip_scale is not None:
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {g6(info.clip_norm)} > "
                     f"{g6(sp.clip_gradients)}) by scale factor {g6(info.clip_scale)}", "sgd_solver.cpp:92")
        return info

    def solve(self) -> None:
        sp = self.param
        self.log(f"Solving {self.net.graph.name}", "solver.cpp:272")
        self.log(f"Learning Rate Policy: {sp.lr_policy}", "solver.cpp:273")
        start_iter = self.iter
        self.step(sp.max_iter - self.iter)
        if sp.snapshot_after_train and (not sp.snapshot or self.iter % sp.snapshot != 0) and self.rank == 0:
            self.snapshot()
        if sp.display and self.iter % sp.display == 0:
            self.feeder.start(self.iter)
            with torch.no_grad():
                loss, _ = self._forward_backward(self.feeder.next(), backward=False)
            self._update_smoothed(loss, start_iter)
            self.log(f"Iteration {self.iter}, loss = {g6(self.smoothed_loss)}", "solver.cpp:310")
        if sp.test_interval and self.iter % sp.test_interval == 0:
            self.test_all()
        if self.feeder.bad:
            self.log(f"Skipped {self.feeder.bad} unreadable images (--skip-bad-images)", "image_data_layer.cpp:0",
                     "W")
        self.log("Optimization Done.", "solver.cpp:315")

    def test_all(self) -> None:
        """Solver::Test of every test net: outputs averaged over test_iter batches."""
        for i, (net, feeder) in enumerate(self.test_nets):
            self.log(f"Iteration {self.iter}, Testing net (#{i})", "solver.cpp:330")
            scores: dict[tuple, float] = {}
            total_loss = 0.0
            n = self.param.test_iter[i]
            net.module.eval()
            for _ in range(n):
                batch = {k: v.to(self.device) for k, v in feeder.next().items()}
                with torch.no_grad():
                    blobs = net.module.run(batch, keep_all=False)
                loss = net.module.loss(blobs)
                total_loss += float(loss) if loss is not None else 0.0
                for name, vals, w in net_outputs(net, blobs):
                    for j, v in enumerate(vals):
                        scores[(name, j, w)] = scores.get((name, j, w), 0.0) + float(v)
            if self.param.test_compute_loss:
                self.log(f"Test loss: {g6(total_loss / n)}", "solver.cpp:394")
            for idx, ((name, _, w), total) in enumerate(scores.items()):
                self.log(output_line("Test", idx, name, total / n, w), "solver.cpp:397")

    def snapshot(self) -> str:
        """Solver::Snapshot (see :func:`sfport.train.checkpoint.snapshot`)."""
        base = checkpoint.snapshot(self)
        self.last_snapshot = base + ".pt"
        return base

    def _bar(self, total: int):
        show = self.opts.progress if self.opts.progress is not None else sys.stderr.isatty()
        if not show or self.rank != 0:
            return None
        bar = tqdm(total=total, initial=self.iter, desc="train", unit="iter", leave=False, dynamic_ncols=True)
        self.log.bar = bar
        return bar
