"""The peer of ``sfport train prototxt/sfplus_m4_solver.prototxt``: the same training step in a plain, hand-written
PyTorch loop, and the helpers bench/gpu_check.sh uses around both (issue 32, item 4).

    python bench/gpu_train_peer.py run [--device cuda] [--batch 256] [--iters 80] [--warmup 10] [--check] [--json F]
    python bench/gpu_train_peer.py jpegs DIR [--images 512]         # face-like 112x96 JPEGs + DIR/list.txt
    python bench/gpu_train_peer.py smoke-solver DIR --batch 2 ...   # a small copy of the m4 solver and net (CPU smoke)
    python bench/gpu_train_peer.py parse-log LOG --batch 256 --json F   # img/s of an `sfport train` log
    python bench/gpu_train_peer.py util F UTIL                      # mean GPU utilisation in F's timed window
    python bench/gpu_train_peer.py key F                            # one line for gpu_check's summary table
    python bench/gpu_train_peer.py ratios --forward F --train-synthetic S --train-jpeg J --peer P

``run`` is the peer. SphereFace+ m4's train net (``prototxt/sfplus_m4_train.prototxt``) written in plain torch,
nothing of sfport imported for it:

* SphereFace-20: ``nn.Conv2d`` 3x3 and ``nn.PReLU`` (one slope per channel, 0.25), the residual sums, ``nn.Linear``
  fc5 (512); Caffe's fillers (xavier: uniform +-sqrt(3/fan_in); gaussian std 0.01; zero biases).
* fc6, MarginInnerProduct m=4 (QUADRUPLE; base 1000, gamma 0.12, power 1, lambda_min 5, from iteration 2000): the
  rows of W renormalized in place before each forward, the target logit replaced by
  ``(lambda x.w_y + |x| psi(theta)) / (1 + lambda)`` with ``psi = (-1)^k cos(4 theta) - 2k``. Its backward is
  autograd's (the exact gradient), where sfport's default is the fork's (``dW = g^T x``, a normalized input
  gradient): they differ in the target logits' terms, not in cost (the same two matrix products).
* InterClass AMONG (alpha 10 from its first forward: iteration 16000, alpha_start_iter 16001), sharing fc6's W: the
  distance D computed as the fork (float64 sums) for the loss value; its gradient, the fork's (D's own gradient
  ignored, ``-4 alpha / (M D^2 + 1e-5) (w_y - w_bar)`` added to the batch's rows), written as a surrogate term
  whose autograd gradient that is.
* SoftmaxWithLoss as ``F.cross_entropy``; the loss read back every iteration after the backward (``.item()``: one
  host sync per iteration), where sfport's solver reads it for its display and divergence checks.
* ``torch.optim.SGD`` with the solver's base_lr, momentum and weight_decay (read from the solver file), in Caffe's
  param groups: weights and PReLU slopes (lr_mult 1, decay_mult 1), the stage convs' and fc5's biases (lr_mult 2,
  decay 0), the residual convs' biases frozen (lr_mult 0: ``requires_grad=False``, as sfport does). Caffe's SGD
  (``h = m h + lr (g + wd w); w -= h``) is torch's at a constant lr.
* As ``sfport train --gpu``: cudnn.benchmark, channels_last on CUDA, fp32 with PyTorch's defaults (cuDNN
  convolutions may use TF32, matmuls do not); synthetic batches made on the device each iteration
  (``torch.randn``; uniform labels), batch 256.

``--check`` first compares it with the net sfport builds from the prototxt: the parameters (shapes, lr_mult,
decay_mult, in Caffe's order) and, with sfport's weights copied in, the loss of one batch; so the peer cannot drift
from the layers sfport trains.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLVER = ROOT / "prototxt" / "sfplus_m4_solver.prototxt"
NET = ROOT / "prototxt" / "sfplus_m4_train.prototxt"
UNITS, CHANNELS = (1, 2, 4, 1), (64, 128, 256, 512)


# ---- the hand-written net ------------------------------------------------------------------------------------

def _define_nets() -> dict:
    """The net's classes, defined on first use (module ``__getattr__``), so that the helpers run without torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def _xavier(p) -> None:    # Caffe's XavierFiller (variance_norm FAN_IN): uniform +-sqrt(3 / fan_in)
        a = math.sqrt(3.0 / p[0].numel())
        nn.init.uniform_(p, -a, a)

    def _conv(cin: int, cout: int, stride: int, first: bool) -> nn.Conv2d:
        c = nn.Conv2d(cin, cout, 3, stride, 1)
        with torch.no_grad():
            _xavier(c.weight) if first else nn.init.normal_(c.weight, 0.0, 0.01)
            c.bias.zero_()
        c.bias.requires_grad_(first)        # the residual convs' biases: lr_mult 0
        return c

    class SphereFace20(nn.Module):
        """SphereFace-20 up to fc5, plainly. ``caffe_params()``: (Caffe layer, blob index, parameter, lr_mult,
        decay_mult) in Caffe's order."""

        def __init__(self, size=(112, 96), feature_dim: int = 512):
            super().__init__()
            self.stages = nn.ModuleList()
            cin, h, w = 3, *size
            for units, cout in zip(UNITS, CHANNELS):
                stage = nn.Module()
                stage.conv, stage.act = _conv(cin, cout, 2, True), nn.PReLU(cout, 0.25)
                stage.blocks = nn.ModuleList()
                for _ in range(units):
                    b = nn.Module()
                    b.conv1, b.act1 = _conv(cout, cout, 1, False), nn.PReLU(cout, 0.25)
                    b.conv2, b.act2 = _conv(cout, cout, 1, False), nn.PReLU(cout, 0.25)
                    stage.blocks.append(b)
                self.stages.append(stage)
                cin, h, w = cout, (h + 1) // 2, (w + 1) // 2
            self.fc5 = nn.Linear(cin * h * w, feature_dim)
            with torch.no_grad():
                _xavier(self.fc5.weight)
                self.fc5.bias.zero_()

        def forward(self, x):
            for stage in self.stages:
                x = stage.act(stage.conv(x))
                for b in stage.blocks:
                    x = x + b.act2(b.conv2(b.act1(b.conv1(x))))
            return self.fc5(torch.flatten(x, 1))

        def caffe_params(self):
            for s, stage in enumerate(self.stages, start=1):
                convs = [(stage.conv, stage.act)] + [pair for b in stage.blocks
                                                       for pair in ((b.conv1, b.act1), (b.conv2, b.act2))]
                for j, (conv, act) in enumerate(convs, start=1):
                    bias = (2.0, 0.0) if j == 1 else (0.0, 0.0)
                    yield f"conv{s}_{j}", 0, conv.weight, 1.0, 1.0
                    yield f"conv{s}_{j}", 1, conv.bias, *bias
                    yield f"relu{s}_{j}", 0, act.weight, 1.0, 1.0
            yield "fc5", 0, self.fc5.weight, 1.0, 1.0
            yield "fc5", 1, self.fc5.bias, 2.0, 0.0

    class SpherefacePlusM4(nn.Module):
        """The m4 train net: SphereFace-20, fc6 (MarginInnerProduct m=4) and InterClass on fc6's W, softmax loss.
        ``forward(x, label) -> (loss for backward, loss value as Caffe reports it)``."""

        def __init__(self, num_classes: int = 10572, size=(112, 96)):
            super().__init__()
            self.trunk = SphereFace20(size)
            self.fc6 = nn.Parameter(torch.empty(num_classes, 512))
            _xavier(self.fc6.data)
            self.margin_iter, self.inter_iter, self.alpha = 2000, 16000, 0.0   # the prototxt's counters

        def caffe_params(self):
            yield from self.trunk.caffe_params()
            yield "fc6", 0, self.fc6, 1.0, 1.0

        def margin(self, x, label):
            """MarginInnerProduct, QUADRUPLE."""
            self.margin_iter += 1
            lam = max(1000.0 * (1.0 + 0.12 * self.margin_iter) ** -1.0, 5.0)
            with torch.no_grad():                       # the fork renormalizes W in place, every forward
                self.fc6.div_(self.fc6.norm(dim=1, keepdim=True))
            logits = x @ self.fc6.t()
            idx = label.view(-1, 1)
            xnorm = x.norm(dim=1)
            wx_y = logits.gather(1, idx).squeeze(1)
            cos = wx_y / xnorm
            with torch.no_grad():
                k = torch.floor(4 * torch.acos(cos.clamp(-1, 1)) / math.pi)
            c2 = cos * cos
            psi = (1 - 2 * torch.remainder(k, 2)) * (8 * c2 * c2 - 8 * c2 + 1) - 2 * k
            target = (lam * wx_y + xnorm * psi) / (1 + lam)
            return logits.scatter(1, idx, target.unsqueeze(1))

        def inter_class(self, label):
            """InterClass AMONG: (D, a zero-valued term whose gradient is the fork's)."""
            self.inter_iter += 1
            if self.inter_iter == 16001:
                self.alpha = 10.0
            w = self.fc6
            with torch.no_grad():
                w64 = w.double()
                wy64 = w64[label]
                n, m = w.shape[0], label.numel()
                total = m * (w64 * w64).sum() + n * (wy64 * wy64).sum() - 2 * (w64.sum(0) @ wy64.sum(0))
                d = (total / n).float()
                wbar = w.mean(0)
                wbar = wbar / torch.sqrt((wbar * wbar).sum() + 1e-5)
                coeff = -4 * self.alpha / (m * d * d + 1e-5)
            s = 0.5 * coeff * ((w[label] - wbar) ** 2).sum()
            return d, s - s.detach()

        def forward(self, x, label):
            f = self.trunk(x)
            with torch.autocast(x.device.type, enabled=False):   # the SphereFace layers in fp32, as sfport's
                f = f.float()
                logits = self.margin(f, label)
                d, grad_only = self.inter_class(label)
                ce = F.cross_entropy(logits, label)
            return ce + d + grad_only, (ce + d).detach()

    return {"SphereFace20": SphereFace20, "SpherefacePlusM4": SpherefacePlusM4}


_NETS: dict = {}


def nets() -> dict:
    """{"SphereFace20": ..., "SpherefacePlusM4": ...}, torch imported on the first call."""
    if not _NETS:
        _NETS.update(_define_nets())
    return _NETS


def __getattr__(name: str):     # ``from gpu_train_peer import SphereFace20`` (bench/gpu_forward.py)
    if name in ("SphereFace20", "SpherefacePlusM4"):
        return nets()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def solver_hyper(path: Path = SOLVER) -> dict:
    text = path.read_text()

    def one(key):
        m = re.search(rf"^\s*{key}\s*:\s*([-+0-9.eE]+)", text, re.M)
        if m is None:
            raise SystemExit(f"{path}: no {key}")
        return float(m[1])
    return {"base_lr": one("base_lr"), "momentum": one("momentum"), "weight_decay": one("weight_decay")}


def sgd(model, hyper: dict):
    """torch.optim.SGD over the model's parameters, in Caffe's (lr_mult, decay_mult) groups."""
    import torch

    groups: dict[tuple, list] = {}
    for _, _, p, lr, decay in model.caffe_params():
        if p.requires_grad:
            groups.setdefault((lr, decay), []).append(p)
    return torch.optim.SGD([{"params": ps, "lr": hyper["base_lr"] * lr, "weight_decay": hyper["weight_decay"] * d}
                            for (lr, d), ps in groups.items()], lr=hyper["base_lr"], momentum=hyper["momentum"])


def check_against_sfport(model, classes: int, size) -> str:
    """The peer against the net sfport builds from the prototxt: the parameters (shapes, lr_mult, decay_mult, in
    Caffe's order), then one forward at batch 2 with sfport's weights copied into a twin of the peer: the same
    loss (softmax + InterClass's D)."""
    import torch

    from sfport.formats import caffe_files
    from sfport.runtime.net import Net

    definition = caffe_files.read_prototxt(NET)
    for layer in definition.net.layer:
        if layer.type == "MarginInnerProduct":
            layer.margin_inner_product_param.num_output = classes
        elif layer.type == "InterClass":
            layer.inter_class_param.num_output = classes
    net = Net(definition, phase="train", input_shapes={"data": (2, 3, *size), "label": (2,)}, seed=0)
    blobs = [p for _, p, _, _ in net.module.learnable_params()]
    theirs = [(tuple(p.shape), lr, dm) for _, p, lr, dm in net.module.learnable_params()]
    ours = [(tuple(p.shape), lr if p.requires_grad else 0.0, dm) for _, _, p, lr, dm in model.caffe_params()]
    if theirs != ours:
        bad = next(i for i, (a, b) in enumerate(zip(theirs + [None] * len(ours), ours + [None] * len(theirs)))
                   if a != b)
        raise SystemExit(f"the peer's parameters differ from sfport's m4 train net at #{bad}: "
                         f"sfport {theirs[bad:bad + 1]}, peer {ours[bad:bad + 1]}")
    twin = nets()["SpherefacePlusM4"](classes, size)
    with torch.no_grad():
        for (_, _, p, _, _), q in zip(twin.caffe_params(), blobs):
            p.copy_(q)
        x = torch.randn((2, 3, *size), generator=torch.Generator().manual_seed(0))
        label = torch.tensor([1, classes - 1])
        out = net.forward(data=x, label=label.float())
        want = float(out["softmax_loss"]) + float(out["maximize_inter_class_dist"])
        got = float(twin(x, label)[1])
    if not abs(got - want) <= 1e-4 * abs(want):
        raise SystemExit(f"the peer's loss differs from sfport's on the same weights and batch: {got} vs {want}")
    return f"checked: {len(ours)} parameter blobs and the loss ({got:.6g}) as sfport's train net"


def cmd_run(a) -> int:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    device = torch.device(a.device)
    size = tuple(int(v) for v in a.size.lower().split("x"))
    torch.manual_seed(0)
    model = nets()["SpherefacePlusM4"](a.classes, size)
    note = check_against_sfport(model, a.classes, size) if a.check else "not checked against sfport"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = sgd(model, solver_hyper(Path(a.solver)))
    g = torch.Generator(device=device).manual_seed(0)

    def step() -> float:
        x = torch.randn((a.batch, 3, *size), generator=g, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        label = torch.randint(0, a.classes, (a.batch,), generator=g, device=device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp):
            loss, value = model(x, label)
        loss.backward()
        read = value.item()        # after backward, before the update: where sfport's solver reads it
        opt.step()
        return read

    first = [step() for _ in range(a.warmup)]
    sync()
    start, t0 = dt.datetime.now(), time.perf_counter()
    losses = [step() for _ in range(a.iters)]
    sync()
    seconds, end = time.perf_counter() - t0, dt.datetime.now()
    out = {"kind": "peer", "device": str(device), "batch": a.batch, "iters": a.iters, "amp": a.amp,
           "ips": a.batch * a.iters / seconds, "ms_per_iter": 1e3 * seconds / a.iters,
           "loss_first": (first + losses)[0], "loss_last": losses[-1], "ok": all(map(math.isfinite, losses)),
           "window": [start.isoformat(), end.isoformat()], "check": note,
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    print(f"peer (plain torch loop, torch.optim.SGD): {out['ips']:.1f} img/s, {out['ms_per_iter']:.1f} ms/iter at "
          f"batch {a.batch} on {out['gpu']} ({'bf16 autocast' if a.amp else 'fp32'}); loss {out['loss_first']:.4g} "
          f"-> {out['loss_last']:.4g}; {note}")
    if a.json:
        Path(a.json).write_text(json.dumps(out))
    return 0 if out["ok"] else 1


# ---- helpers for gpu_check.sh ----------------------------------------------------------------------------------

def cmd_jpegs(a) -> int:
    """Face-like 112x96 JPEGs (tests/synthfaces.py) in DIR, listed in DIR/list.txt (labels 0..identities-1)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import synthfaces

    per = 16 if a.images >= 32 else 2
    synthfaces.write_dataset(Path(a.dir), max(1, a.images // per), per, seed=0)
    print(f"{max(1, a.images // per) * per} JPEGs in {a.dir}, list {Path(a.dir) / 'list.txt'}")
    return 0


def cmd_smoke_solver(a) -> int:
    """DIR/solver.prototxt + DIR/net.prototxt: the m4 solver and net at a small batch, class count and image size
    (the CPU smoke mode), with no snapshot at the end."""
    from sfport.formats import caffe_files

    d = Path(a.dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    definition = caffe_files.read_prototxt(NET)
    h, w = (int(v) for v in a.size.lower().split("x"))
    for layer in definition.net.layer:
        if layer.type == "ImageData":
            layer.image_data_param.batch_size = a.batch
            layer.image_data_param.new_height, layer.image_data_param.new_width = h, w
        elif layer.type == "MarginInnerProduct":
            layer.margin_inner_product_param.num_output = a.classes
        elif layer.type == "InterClass":
            layer.inter_class_param.num_output = a.classes
    caffe_files.write_prototxt(d / "net.prototxt", definition.net)
    solver = caffe_files.read_solver(SOLVER)
    solver.param.net = str(d / "net.prototxt")
    solver.param.display = a.display
    solver.param.snapshot_after_train = False
    caffe_files.write_solver(d / "solver.prototxt", solver)
    print(d / "solver.prototxt")
    return 0


_GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) +\d+ \S+\] (.*)$")


def _glog_time(m) -> dt.datetime:
    now = dt.datetime.now()
    t = dt.datetime(now.year, int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6][:6].ljust(6, "0")))
    return t.replace(year=now.year - 1) if t > now + dt.timedelta(days=1) else t   # a run across New Year


def cmd_parse_log(a) -> int:
    """img/s of an `sfport train` log between its second and its last display line (both written after that
    iteration's forward/backward: whole iterations, past iteration 0's cudnn autotuning and the first batches,
    before the final snapshot), and its last loss."""
    shown, loss, done, stopped = [], None, False, False
    for line in Path(a.log).read_text(errors="replace").splitlines():
        m = _GLOG.match(line)
        if not m:
            continue
        msg = m[7]
        d = re.match(r"Iteration (\d+) \(", msg)
        if d:
            shown.append((int(d[1]), _glog_time(m)))
        lm = re.match(r"Iteration (\d+)(?: \(.*\))?, loss = (\S+)", msg)
        if lm:
            loss = (int(lm[1]), lm[2])
        done = done or msg == "Optimization Done."
        stopped = stopped or "Optimization stopped early" in msg
    out = {"kind": "sfport train", "batch": a.batch, "ips": None, "window": None, "done": done,
           "loss": loss[1] if loss else None, "loss_iter": loss[0] if loss else None}
    if len(shown) >= 3:
        (i0, t0), (i1, t1) = shown[1], shown[-1]
        secs = (t1 - t0).total_seconds()
        if i1 > i0 and secs > 0:
            out.update(ips=a.batch * (i1 - i0) / secs, iters_timed=i1 - i0, ms_per_iter=1e3 * secs / (i1 - i0),
                       window=[t0.isoformat(), t1.isoformat()])
    finite = loss is not None and math.isfinite(float(loss[1]))
    out["ok"] = bool(done and finite and out["ips"])
    add_util(out, a.util)
    if a.json:
        Path(a.json).write_text(json.dumps(out))
    print(key_text(out))
    return 0 if out["ok"] else 1


def add_util(out: dict, util: str | None) -> None:
    """``out["util"]``: the mean of the nvidia-smi samples (``timestamp, utilization.gpu`` lines in the file
    ``util``) inside ``out["window"]`` (None without samples there)."""
    samples = []
    try:
        lines = Path(util).read_text(errors="replace").splitlines() if util else []
    except OSError:
        lines = []
    for line in lines:
        m = re.match(r"\s*(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$", line)
        if m:
            fmt = "%Y/%m/%d %H:%M:%S.%f" if "." in m[1] else "%Y/%m/%d %H:%M:%S"
            samples.append((dt.datetime.strptime(m[1], fmt), float(m[2])))
    out["util"], out["util_samples"] = None, 0
    if out.get("window") and samples:
        t0, t1 = (dt.datetime.fromisoformat(t) for t in out["window"])
        inside = [u for t, u in samples if t0 <= t <= t1]
        if inside:
            out["util"], out["util_samples"] = sum(inside) / len(inside), len(inside)


def cmd_util(a) -> int:
    """Add the GPU utilisation in its timed window to a step's JSON; print its key number."""
    path = Path(a.json)
    out = json.loads(path.read_text())
    add_util(out, a.util)
    path.write_text(json.dumps(out))
    print(key_text(out))
    return 0


def _util_text(r: dict) -> str:
    if r.get("util") is None:
        return "GPU util n/a"
    return f"GPU util {r['util']:.0f}% ({r['util_samples']} samples)"


def key_text(r: dict) -> str:
    """The summary table's key number of one step's JSON."""
    kind = r.get("kind")
    if kind == "forward":
        ips = {(x["path"], x["precision"], x["batch"]): x["ips"] for x in r["rows"] if x.get("ips")}
        b = max(x["batch"] for x in r["rows"])
        parts = [f"{p} {prec} {ips[(p, prec, b)]:.0f}" for p, prec in
                 (("eager", "fp32"), ("eager", "bf16"), ("plain", "fp32"), ("torchscript", "fp32"),
                  ("onnxruntime", "fp32")) if (p, prec, b) in ips]
        failed = sum(1 for x in r["rows"] if x["status"].startswith("failed"))
        return f"batch {b} img/s: " + ", ".join(parts) + (f"; {failed} cell(s) failed" if failed else "")
    if r.get("ips") is None:
        return f"no speed; loss {r.get('loss')}" if kind == "sfport train" else "no speed"
    text = f"{r['ips']:.1f} img/s ({r['ms_per_iter']:.1f} ms/iter, batch {r['batch']}), {_util_text(r)}"
    if kind == "sfport train":
        text += f", loss {r['loss']} at iter {r['loss_iter']}"
    else:
        text += f", loss {r['loss_first']:.4g} -> {r['loss_last']:.4g}"
    return text


def cmd_key(a) -> int:
    try:
        print(key_text(json.loads(Path(a.json).read_text())))
    except (OSError, ValueError, KeyError) as e:
        print(f"- ({type(e).__name__})")
    return 0


def _load(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def cmd_ratios(a) -> int:
    """The final table: sfport against its plain-PyTorch peer, forward and training, one row each."""
    fwd, synth, jpeg, peer = (_load(p) for p in (a.forward, a.train_synthetic, a.train_jpeg, a.peer))
    rows = []
    for prec in ("fp32", "tf32", "bf16"):
        for b in a.batches:
            label = f"SF-20 forward, batch {b}, {prec}: sfport eager net vs hand-written torch net"
            cells = {}
            for x in (fwd or {}).get("rows", []):
                if x["batch"] == b and x["precision"] == prec and x["path"] in ("eager", "plain") and x.get("ips"):
                    cells[x["path"]] = x["ips"]
            s, p = cells.get("eager"), cells.get("plain")
            rows.append((label, f"{s:.1f} img/s" if s else "-", f"{p:.1f} img/s" if p else "-",
                         f"{s / p:.2f}x" if s and p else "-"))
    p = peer.get("ips") if peer else None
    pt = f"{p:.1f} img/s, {_util_text(peer)}" if p else "-"
    for label, r in ((f"SF+ m4 train, batch {a.train_batch}, fp32, synthetic data: sfport train vs "
                      "torch.optim.SGD loop", synth),
                     (f"SF+ m4 train, batch {a.train_batch}, fp32, JPEGs through ImageData: sfport train vs "
                      "the loop on synthetic data", jpeg)):
        s = r.get("ips") if r else None
        rows.append((label, f"{s:.1f} img/s, {_util_text(r)}" if s else "-", pt, f"{s / p:.2f}x" if s and p else "-"))
    print("| comparison | sfport | peer (plain PyTorch) | sfport / peer |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the peer loop")
    r.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--iters", type=int, default=80, help="timed iterations")
    r.add_argument("--warmup", type=int, default=10)
    r.add_argument("--classes", type=int, default=10572)
    r.add_argument("--size", default="112x96", help="HxW")
    r.add_argument("--amp", action="store_true", help="bf16 autocast (the SphereFace layers in fp32)")
    r.add_argument("--solver", default=str(SOLVER), help="base_lr, momentum, weight_decay from this file")
    r.add_argument("--check", action="store_true", help="compare with sfport's train net first (parameters, loss)")
    r.add_argument("--json")
    j = sub.add_parser("jpegs")
    j.add_argument("dir")
    j.add_argument("--images", type=int, default=512)
    s = sub.add_parser("smoke-solver")
    s.add_argument("dir")
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--classes", type=int, default=64)
    s.add_argument("--size", default="28x24")
    s.add_argument("--display", type=int, default=2)
    p = sub.add_parser("parse-log")
    p.add_argument("log")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--util", help="nvidia-smi samples taken during the run")
    p.add_argument("--json")
    u = sub.add_parser("util")
    u.add_argument("json")
    u.add_argument("util")
    k = sub.add_parser("key")
    k.add_argument("json")
    t = sub.add_parser("ratios")
    for name in ("forward", "train-synthetic", "train-jpeg", "peer"):
        t.add_argument(f"--{name}")
    t.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")], default=[1, 64, 256])
    t.add_argument("--train-batch", type=int, default=256)
    a = ap.parse_args(argv)
    return {"run": cmd_run, "jpegs": cmd_jpegs, "smoke-solver": cmd_smoke_solver, "parse-log": cmd_parse_log,
            "util": cmd_util, "key": cmd_key, "ratios": cmd_ratios}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
