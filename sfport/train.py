"""``sfport train``: Caffe's Solver::Solve / Step loop around sfport's train net, ImageData and the SGD update.

The loop is Caffe's (solver.cpp): per update, test when due, ``iter_size`` forward/backward passes summing the
gradients, the smoothed loss, the display lines, the update (rate, clipping, normalisation, regularisation,
momentum), ``iter += 1``, a snapshot when due; at the end a snapshot and one extra display forward. The log lines
are Caffe's texts behind a glog-style prefix, so Caffe's log parsers read them.

Snapshots: ``<prefix>_iter_N.caffemodel`` and ``.solverstate`` in Caffe's binary format, and
``<prefix>_iter_N.pt``, an sfport checkpoint with what Caffe does not keep (the layers' counters, the torch RNG,
the smoothed-loss window); every file is written to a temporary name and renamed. Resuming from the ``.pt``
continues exactly (the data position is a function of the update count); resuming from a ``.solverstate``
does what Caffe does (iteration, lr step and history restored; counters and data start again).

Several processes (``--gpu 0,1`` or torchrun) run DistributedDataParallel, each on ``batch_size`` samples of its
own micro-batches, gradients averaged: N processes equal ``iter_size: N`` on one.
"""
from __future__ import annotations

import contextlib
import io as _io
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sfport import caffe_files, files, solver as sgd
from sfport.data import ImageDataset, MicroBatches, check, loader
from sfport.errors import CaffeFileError
from sfport.graph import DATA_TYPES
from sfport.protos import caffe_pb2

CKPT_FORMAT = "sfport-checkpoint"
PLATEAU = 87.3365  # -log(FLT_MIN): SoftmaxWithLoss of a sample whose label has probability 0


class TrainingStopped(Exception):
    """The run stopped on a NaN/inf loss or the 87.3365 plateau (exit status 3 on the command line)."""


# ------------------------------------------------------------------------------------------------------------
# logging in glog's format
# ------------------------------------------------------------------------------------------------------------

class CaffeLog:
    """Caffe's log lines: ``I1125 21:15:37.311690 12345 solver.cpp:218] message`` on stderr (rank 0 only)."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.pid = os.getpid()
        self.bar = None

    def __call__(self, message: str, where: str = "solver.cpp:0", level: str = "I") -> None:
        if not self.enabled:
            return
        now = time.time()
        t = time.localtime(now)
        prefix = f"{level}{t.tm_mon:02d}{t.tm_mday:02d} {time.strftime('%H:%M:%S', t)}.{int(now % 1 * 1e6):06d} " \
                 f"{self.pid} {where}] "
        line = prefix + message
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def g6(v: float) -> str:
    """C++ ostream's default float format (6 significant digits)."""
    return f"{float(v):.6g}"


# ------------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------------

@dataclass
class Options:
    weights: list[str] = field(default_factory=list)
    snapshot: str | None = None
    data_root: str | None = None
    source: str | None = None         # replaces the TRAIN ImageData layer's list
    seed: int | None = None
    device: str = "cpu"
    amp: bool = False
    workers: int = 2
    skip_bad_images: bool = False
    keep_going: bool = False
    synthetic_data: bool = False
    data_shape: tuple | None = None   # (C, H, W) for --synthetic-data when the prototxt does not fix it
    max_iter: int | None = None       # override (tests, benchmarks)
    progress: bool | None = None      # None: a bar when stderr is a terminal
    channels_last: bool = False
    margin_grad: str | None = None


def _resolve(path: str, base: Path | None) -> Path:
    """Caffe resolves relative paths against the working directory; fall back to the solver's folder."""
    p = Path(path)
    if p.is_absolute() or p.exists() or base is None:
        return p
    return base / p if (base / p).exists() else p


def _nets_of(sp: caffe_pb2.SolverParameter, base: Path | None, solver_path) -> tuple:
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
        path = _resolve(sp.train_net if sp.HasField("train_net") else sp.net, base)
        train = caffe_files.read_prototxt(path).net
    tests = list(sp.test_net_param) + [caffe_files.read_prototxt(_resolve(t, base)).net for t in sp.test_net]
    if not tests and len(sp.test_iter) and (sp.HasField("net") or sp.HasField("net_param")):
        tests = [train] * len(sp.test_iter)
    if tests and len(sp.test_iter) != len(tests):
        raise CaffeFileError(solver_path, f"test_iter must be given once per test net ({len(tests)} nets, "
                                          f"{len(sp.test_iter)} test_iter)")
    return train, tests


def _data_layers(net, phase) -> list:
    from sfport.shapes import layer_included
    return [l for l in net.layer if l.type in DATA_TYPES and layer_included(l, phase)]


# ------------------------------------------------------------------------------------------------------------
# feeding a net
# ------------------------------------------------------------------------------------------------------------

class Feeder:
    """Micro-batches for one net: from its ImageData layer (a DataLoader over the deterministic stream) or
    synthetic (random images, uniform labels) for benchmarks."""

    def __init__(self, net_param, phase, opts: Options, base: Path | None, seed: int, world: int, rank: int,
                 iter_size: int, log: CaffeLog):
        layers = _data_layers(net_param, phase)
        self.inputs: dict[str, tuple] = {}
        self.layer = None
        self.dataset = None
        self.synthetic = opts.synthetic_data
        self.world, self.rank, self.iter_size, self.opts = world, rank, iter_size, opts
        self.seed = seed
        self.bad = 0
        if len(layers) != 1 or len(layers[0].top) < 1:
            raise CaffeFileError(None, f"sfport train needs one data layer in the {'TRAIN' if phase == 0 else 'TEST'}"
                                       f" net, found {len(layers)}")
        layer = layers[0]
        if opts.source and phase == caffe_pb2.TRAIN and layer.type == "ImageData":
            layer = type(layer)()
            layer.CopyFrom(layers[0])
            layer.image_data_param.source = opts.source
        self.layer = layer
        if layer.type == "ImageData":
            self.batch = layer.image_data_param.batch_size
        elif layer.type == "Input" and opts.synthetic_data:
            shape = tuple(layer.input_param.shape[0].dim) if len(layer.input_param.shape) else ()
            self.batch = shape[0] if shape else 1
        else:
            raise CaffeFileError(None, f"data layer '{layer.name}' is {layer.type}: sfport train reads ImageData "
                                       f"lists (or --synthetic-data)")
        self.data_top, self.label_top = layer.top[0], (layer.top[1] if len(layer.top) > 1 else None)
        if self.synthetic:
            p = layer.image_data_param
            tp = layer.transform_param
            h = tp.crop_size or p.new_height
            w = tp.crop_size or p.new_width
            chw = (3 if p.is_color else 1, h, w) if (h and w) else opts.data_shape
            if layer.type == "Input" and len(layer.input_param.shape):
                chw = tuple(layer.input_param.shape[0].dim[1:])
            if not chw:
                raise CaffeFileError(None, f"data layer '{layer.name}': give the image size for synthetic data "
                                           f"(new_height/new_width in the prototxt or --shape C,H,W)")
            self.chw = tuple(chw)
        else:
            self.dataset = ImageDataset.from_layer(layer, train=(phase == caffe_pb2.TRAIN), seed=seed,
                                                   data_root=opts.data_root, base_dir=base,
                                                   skip_bad=opts.skip_bad_images)
            log(f"A total of {len(self.dataset)} images.", "image_data_layer.cpp:63")
            self.chw = self.dataset.shape()
            log(f"output data size: {self.batch},{','.join(str(d) for d in self.chw)}", "image_data_layer.cpp:90")
        self.inputs[self.data_top] = (self.batch,) + tuple(self.chw)
        if self.label_top:
            self.inputs[self.label_top] = (self.batch,)
        self.num_classes: int | None = None   # labels of synthetic data; set once the net is built
        self._it = None

    def start(self, first_update: int, stop_update: int | None = None, pin: bool = False):
        if self.synthetic:
            self._next_synthetic = first_update * self.iter_size
            return
        sampler = MicroBatches(self.batch, self.world, self.rank, self.iter_size, first_update, stop_update)
        self._it = iter(loader(self.dataset, sampler, self.opts.workers, pin))

    def next(self) -> dict[str, torch.Tensor]:
        if self.synthetic:  # made on the training device: no host-to-device copy in benchmarks
            dev = torch.device(self.opts.device)
            g = torch.Generator(device=dev).manual_seed(self.seed * 1000003 + self._next_synthetic * 31 + self.rank)
            self._next_synthetic += 1
            x = torch.randn((self.batch,) + tuple(self.chw), generator=g, device=dev)
            out = {self.data_top: x}
            if self.label_top:
                out[self.label_top] = torch.randint(0, max(self.num_classes or 1, 1), (self.batch,), generator=g,
                                                    device=dev).float()
            return out
        while True:
            x, y, _, bad, _ = check(next(self._it))
            self.bad += bad
            if x is not None:
                break
        out = {self.data_top: x}
        if self.label_top:
            out[self.label_top] = y
        return out


# ------------------------------------------------------------------------------------------------------------
# the solver
# ------------------------------------------------------------------------------------------------------------

class Solver:
    """Caffe's SGDSolver around sfport nets. ``solve()`` runs to max_iter; ``step(n)`` runs n updates."""

    def __init__(self, solver_path, opts: Options | None = None, rank: int = 0, world: int = 1,
                 log: CaffeLog | None = None):
        self.opts = opts = opts or Options()
        self.rank, self.world = rank, world
        self.log = log or CaffeLog(enabled=(rank == 0))
        sfile = caffe_files.read_solver(solver_path)
        self.path = solver_path
        self.param = sp = sfile.param
        if sp.type not in ("", "SGD"):
            raise CaffeFileError(solver_path, f"solver type '{sp.type}' is not supported (sfport trains with SGD)")
        if opts.max_iter is not None:
            sp.max_iter = opts.max_iter
        self.base = Path(solver_path).resolve().parent
        self.device = torch.device(opts.device)
        self.log("Initializing solver from parameters: \n" + caffe_files.net_to_text(sp).rstrip(), "solver.cpp:44")
        seed = opts.seed if opts.seed is not None else (sp.random_seed if sp.random_seed >= 0 else 0)
        self.seed = seed
        train_param, test_params = _nets_of(sp, self.base, solver_path)
        self.log(f"Creating training net from net file: {sp.net or sp.train_net or '(in the solver)'}",
                 "solver.cpp:87")
        self.feeder = Feeder(train_param, caffe_pb2.TRAIN, opts, self.base, seed, world, rank, max(sp.iter_size, 1),
                             self.log)
        from sfport.net import Net
        torch.manual_seed(seed)
        self.net = Net(caffe_files.CaffeModel.from_net(train_param, None), phase="train", input_shapes=self.feeder.inputs,
                       seed=seed)
        self.feeder.num_classes = _num_classes(self.net)
        if opts.margin_grad:
            for m in self.net.module.modules():
                if hasattr(m, "grad_mode"):
                    m.grad_mode = opts.margin_grad
        self.module = self.net.module.to(self.device)
        if opts.channels_last and self.device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)
        self.blobs = self._learnable()
        self.iter = 0
        self.current_step = 0
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        self.last_snapshot: str | None = None
        self.trajectory: list[dict] = []   # per update: iter, lr, loss, smoothed_loss, current_step, clipping
        self.weights_report: list[str] = []
        for w in opts.weights:
            self.load_weights(w)
        if opts.snapshot:
            self.restore(opts.snapshot)
        self.test_nets = [self._test_net(tp, i) for i, tp in enumerate(test_params)]
        self.ddp = None
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp = DDP(self.net.module.blobs_module(), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           broadcast_buffers=False)
        torch.manual_seed(seed + 7 * rank)  # runtime randomness (dropout), per rank
        self.log("Solver scaffolding done.", "solver.cpp:56")

    # -- parameters ------------------------------------------------------------------------------------------
    def _learnable(self) -> list[sgd.Blob]:
        """Caffe's learnable_params: every blob of every layer in order, a shared blob once (its owner's)."""
        out = []
        for gl in self.net.graph.layers:
            module = self.net.module.module_of(gl.name)
            specs = gl.param.param
            for j, name in enumerate(getattr(module, "caffe_blobs", [])):
                if j in gl.shared:
                    continue
                p = getattr(module, name)
                spec = specs[j] if j < len(specs) else None
                lr = spec.lr_mult if spec is not None and spec.HasField("lr_mult") else 1.0
                dm = spec.decay_mult if spec is not None and spec.HasField("decay_mult") else 1.0
                if not p.requires_grad:  # BatchNorm's statistics
                    lr = 0.0
                out.append(sgd.Blob(f"{gl.name}/{j}", p, torch.zeros_like(p), float(lr), float(dm)))
        return out

    def load_weights(self, path: str) -> None:
        """``-weights``: copy by layer name (several files, comma-separated, in order)."""
        for one in [s for s in str(path).split(",") if s]:
            model = caffe_files.read_caffemodel(one)
            report = self.net.load_weights(model)
            self.log(f"Finetuning from {one}", "caffe.cpp:155")
            for line in report.lines():
                self.log(line, "net.cpp:0")
            self.weights_report += report.lines()
        for b in self.blobs:
            b.history = torch.zeros_like(b.param)

    def _test_net(self, net_param, i):
        from sfport.net import Net
        feeder = Feeder(net_param, caffe_pb2.TEST, self.opts, self.base, self.seed + 1 + i, 1, 0, 1, self.log)
        net = Net(caffe_files.CaffeModel.from_net(net_param, None), phase="test", input_shapes=feeder.inputs)
        feeder.num_classes = _num_classes(net)
        # ShareTrainedLayersWith: same-named layers use the train net's blobs
        for gl in net.graph.layers:
            if gl.name not in self.net.module.keys:
                continue
            src = self.net.module.module_of(gl.name)
            dst = net.module.module_of(gl.name)
            for name in getattr(dst, "caffe_blobs", []):
                if hasattr(src, name) and getattr(src, name).shape == getattr(dst, name).shape:
                    setattr(dst, name, getattr(src, name))
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
        with torch.set_grad_enabled(backward), amp:
            if self.ddp is not None:
                ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    blobs = self.ddp(**batch)
                    loss = self.net.module.loss(blobs)
                    if backward:
                        loss.backward()
            else:
                blobs = self.net.module.run(batch, keep_all=False)
                loss = self.net.module.loss(blobs)
                if backward:
                    loss.backward()
        return float(loss.detach()) if loss is not None else 0.0, blobs

    def _update_smoothed(self, loss: float, start_iter: int) -> None:
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
                    if abs(v - PLATEAU) < 1e-3:
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
            for b in self.blobs:
                b.param.grad = None
            if sp.test_interval and self.iter % sp.test_interval == 0 and (self.iter > 0 or sp.test_initialization):
                self.test_all()
            display = sp.display and self.iter % sp.display == 0
            loss = 0.0
            blobs = None
            for i in range(k):
                batch = self.feeder.next()
                l, blobs = self._forward_backward(batch, True, sync=(i == k - 1))
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
                n = 0
                for name, values, w in net_outputs(self.net, blobs):
                    for v in values:
                        extra = f" (* {g6(w)} = {g6(w * v)} loss)" if w else ""
                        self.log(f"    Train net output #{n}: {name} = {g6(v)}{extra}", "solver.cpp:237")
                        n += 1
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
        sp = self.param
        rate, self.current_step, status = sgd.learning_rate(sp, self.iter, self.current_step)
        if status:
            self.log(status, "sgd_solver.cpp:46")
        if display:
            self.log(f"Iteration {self.iter}, lr = {g6(rate)}", "sgd_solver.cpp:105")
        info = sgd.sgd_update(self.blobs, rate, sp.momentum, sp.weight_decay, max(sp.iter_size, 1),
                              sp.regularization_type or "L2", sp.clip_gradients)
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
        for i, (net, feeder) in enumerate(self.test_nets):
            self.log(f"Iteration {self.iter}, Testing net (#{i})", "solver.cpp:330")
            scores: dict[tuple, float] = {}
            names: list[tuple] = []
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
                        key = (name, j, w)
                        if key not in scores:
                            names.append(key)
                            scores[key] = 0.0
                        scores[key] += float(v)
            if self.param.test_compute_loss:
                self.log(f"Test loss: {g6(total_loss / n)}", "solver.cpp:394")
            for idx, key in enumerate(names):
                name, _, w = key
                mean = scores[key] / n
                extra = f" (* {g6(w)} = {g6(w * mean)} loss)" if w else ""
                self.log(f"    Test net output #{idx}: {name} = {g6(mean)}{extra}", "solver.cpp:397")

    # -- snapshots -------------------------------------------------------------------------------------------
    def _prefix(self) -> str:
        sp = self.param
        prefix = sp.snapshot_prefix or str(Path(self.path).with_suffix(""))
        return f"{prefix}_iter_{self.iter}"

    def snapshot(self) -> str:
        """Write ``<prefix>_iter_N.caffemodel``, ``.solverstate`` and the sfport ``.pt`` (each atomically)."""
        sp = self.param
        if sp.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            self.log("HDF5 snapshots are not supported; writing binary proto files", "solver.cpp:0", "W")
        base = self._prefix()
        Path(base).parent.mkdir(parents=True, exist_ok=True)
        model_path = base + ".caffemodel"
        self.log(f"Snapshotting to binary proto file {model_path}", "solver.cpp:447")
        self.net.save_caffemodel(model_path)
        state_path = base + ".solverstate"
        self.log(f"Snapshotting solver state to binary proto file {state_path}", "sgd_solver.cpp:273")
        st = caffe_pb2.SolverState(iter=self.iter, learned_net=model_path, current_step=self.current_step)
        caffe_files.write_solverstate(state_path, st, [b.history.detach().float().cpu().numpy() for b in self.blobs])
        ckpt = {"format": CKPT_FORMAT, "version": 1, "iter": self.iter, "current_step": self.current_step,
                "state_dict": {k: v.detach().cpu() for k, v in self.net.module.state_dict().items()},
                "history": [b.history.detach().cpu() for b in self.blobs],
                "blob_names": [b.name for b in self.blobs],
                "rng": torch.get_rng_state(),
                "cuda_rng": (torch.cuda.get_rng_state() if self.device.type == "cuda"
                             else torch.zeros(0, dtype=torch.uint8)),
                "losses": list(self.losses), "smoothed_loss": self.smoothed_loss,
                "world": self.world, "iter_size": max(sp.iter_size, 1), "seed": self.seed}
        buf = _io.BytesIO()
        torch.save(ckpt, buf)
        files.atomic_write(base + ".pt", buf.getvalue())
        self.last_snapshot = base + ".pt"
        return base

    def restore(self, path: str) -> None:
        """``-snapshot``: an sfport ``.pt`` (exact continuation) or a Caffe ``.solverstate`` (Caffe's resume)."""
        if str(path).endswith(".pt"):
            try:
                ck = torch.load(path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise CaffeFileError(path, "no such file") from None
            except Exception as e:  # noqa: BLE001
                raise CaffeFileError(path, f"not an sfport checkpoint: {str(e).splitlines()[0] if str(e) else e}") \
                    from None
            if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
                raise CaffeFileError(path, "not an sfport training checkpoint (.pt written by sfport train)")
            try:
                self.net.module.load_state_dict(ck["state_dict"])
            except RuntimeError as e:
                raise CaffeFileError(path, f"does not fit this net: {str(e).splitlines()[0]}") from None
            if len(ck["history"]) != len(self.blobs):
                raise CaffeFileError(path, f"{len(ck['history'])} history blobs, the net has {len(self.blobs)}")
            for b, h in zip(self.blobs, ck["history"]):
                b.history = h.to(b.param.device, b.param.dtype).clone()
            self.iter, self.current_step = int(ck["iter"]), int(ck["current_step"])
            torch.set_rng_state(ck["rng"])
            if self.device.type == "cuda" and ck["cuda_rng"].numel():
                torch.cuda.set_rng_state(ck["cuda_rng"])
            self.last_snapshot = str(path)
            self.log(f"Restoring previous solver status from {path}", "sgd_solver.cpp:318")
            return
        st = caffe_files.read_solverstate(path)
        learned = st.state.learned_net
        if learned:
            lp = Path(learned)
            if not lp.exists() and not lp.is_absolute():
                lp = Path(path).parent / Path(learned).name
            self.net.load_weights(caffe_files.read_caffemodel(lp))
        if len(st.history) != len(self.blobs):
            raise CaffeFileError(path, f"{len(st.history)} history blobs, the net has {len(self.blobs)} learnable "
                                       f"blobs")
        for b, h in zip(self.blobs, st.history):
            if h.size != b.param.numel():
                raise CaffeFileError(path, f"history of {b.name}: {list(h.shape)} does not fit {list(b.param.shape)}")
            b.history = torch.from_numpy(np.array(h, dtype=np.float32)).reshape(b.param.shape).to(b.param.device)
        self.iter, self.current_step = int(st.state.iter), int(st.state.current_step)
        self.last_snapshot = str(path)
        self.log(f"Restoring previous solver status from {path} (Caffe resume: layer counters and data position "
                 f"start again; use the .pt to continue exactly)", "sgd_solver.cpp:318")

    def _bar(self, total: int):
        show = self.opts.progress if self.opts.progress is not None else sys.stderr.isatty()
        if not show or self.rank != 0:
            return None
        from tqdm import tqdm
        bar = tqdm(total=total, initial=self.iter, desc="train", unit="iter", leave=False, dynamic_ncols=True)
        self.log.bar = bar
        return bar


def net_outputs(net, blobs) -> list[tuple[str, np.ndarray, float]]:
    """A net's outputs as Caffe lists them (a std::set of names: sorted), values flattened, with loss weights."""
    g = net.graph
    weights = dict(net.module.loss_terms)
    return [(g.caffe_name[u], blobs[u].detach().float().cpu().reshape(-1).numpy(), weights.get(u, 0.0))
            for u in sorted(g.outputs, key=lambda u: g.caffe_name[u]) if u in blobs]


def _num_classes(net) -> int | None:
    """Scores width of the first SoftmaxWithLoss (labels for synthetic data)."""
    for gl in net.graph.layers:
        if gl.type in ("SoftmaxWithLoss", "MarginInnerProduct", "Accuracy"):
            shape = gl.top_shapes[0] if gl.type == "MarginInnerProduct" else gl.bottom_shapes[0]
            if shape and len(shape) >= 2:
                return int(shape[1])
    return None


# ------------------------------------------------------------------------------------------------------------
# entry points (one process, torchrun, or spawned processes for --gpu 0,1)
# ------------------------------------------------------------------------------------------------------------

def _dist_env() -> tuple[int, int, int] | None:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None


def run(solver_path, opts: Options, rank: int = 0, world: int = 1) -> Solver:
    """Train in this process (rank ``rank`` of ``world``; a process group is set up when world > 1)."""
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            backend = "nccl" if opts.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, rank=rank, world_size=world)
    s = Solver(solver_path, opts, rank, world)
    try:
        s.log("Starting Optimization", "caffe.cpp:248")
        s.solve()
        s.log("Optimization Done.", "caffe.cpp:259")
    finally:
        if world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    return s


def _spawned(rank: int, solver_path, opts: Options, gpus: list[int], port: int):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    opts.device = f"cuda:{gpus[rank]}"
    torch.cuda.set_device(gpus[rank])
    run(solver_path, opts, rank, len(gpus))


def launch(solver_path, opts: Options, gpus: list[int] | None) -> None:
    """One process per GPU (``--gpu 0,1``), the torchrun environment, or a single process."""
    env = _dist_env()
    if env is not None:
        rank, world, local = env
        if torch.cuda.is_available() and opts.device.startswith("cuda"):
            dev = (gpus or list(range(torch.cuda.device_count())))[local]
            opts.device = f"cuda:{dev}"
            torch.cuda.set_device(dev)
        run(solver_path, opts, rank, world)
        return
    if gpus and len(gpus) > 1:
        import socket
        import torch.multiprocessing as mp
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_spawned, args=(solver_path, opts, gpus, port), nprocs=len(gpus), join=True)
        return
    run(solver_path, opts)
