"""Layer-by-layer benchmark of a net, as Caffe's ``caffe time`` (tools/caffe.cpp, ``time()``).

:func:`time_net` runs one untimed forward and backward (Caffe's "Performing Forward" / "Performing Backward"
warm-up), then ``iterations`` timed ones: every layer in net order forward, then in reverse order backward,
each layer timed on its own, the passes and the whole loop too. :func:`report_lines` prints the result in
Caffe's layout.

How the parts Caffe has and PyTorch has not are done:

* Per-layer backward. Each layer's forward takes its bottoms detached (a leaf per bottom that needs a
  gradient), so each layer's autograd graph is its own; the backward pass then runs layer by layer in reverse,
  ``torch.autograd.backward(tops, top diffs)``, summing the bottoms' gradients into their producers' top diffs
  (what Caffe's Split layers do). A bottom takes a gradient as in Caffe's Net::Init (bottom_need_backward): when
  some layer above it has a parameter that learns; net inputs take none.
* Top diffs to start from. A loss top starts at its loss_weight, as in Caffe. A net without a loss (a deploy
  net) is backpropagated from ones in every output, i.e. as if its loss were the sum of its outputs: Caffe
  backpropagates zeros there and skips the bottom diffs of layers below no loss, but a benchmark of a
  deploy net asks what backward through it costs, and autograd's cost does not depend on the values.
* Data layers. The net's inputs are seeded random tensors made before timing (no file is read): 4-axis inputs
  (images) uniform in [-1, 1), the others (labels, targets) integers in [0, classes) of the first loss or
  accuracy layer (:func:`sfport.data.feed.num_classes`). A data layer that reads a data set (or DummyData)
  copies a prepared batch into its tops in its forward, as Caffe's prefetching data layers copy theirs; an
  Input layer's forward does nothing (Caffe's InputLayer::Forward_cpu is empty). Data layers have no backward.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from sfport import converters
from sfport.data.feed import num_classes
from sfport.netdef import datalayers
from sfport.solver.log import g6   # C++'s ostream << double: %.6g


@dataclass
class LayerTiming:
    """One layer's time in each timed iteration (ms)."""
    name: str
    type: str
    forward_ms: list[float] = field(default_factory=list)
    backward_ms: list[float] = field(default_factory=list)


@dataclass
class TimingReport:
    """What :func:`time_net` measured; the ``*_ms`` lists hold one value per timed iteration."""
    iterations: int
    backward: bool
    layers: list[LayerTiming]
    forward_ms: list[float]
    backward_ms: list[float]
    iteration_ms: list[float]
    total_ms: float                       # the whole timed loop (Caffe's total_timer)
    initial_loss: float
    device: str
    notes: list[str] = field(default_factory=list)   # how the inputs and weights were made

    def as_dict(self) -> dict:
        """Averages per iteration, by name, for ``--json``."""
        n = self.iterations
        avg = lambda xs: sum(xs) / n    # noqa: E731
        return {"iterations": n, "device": self.device, "initial_loss": self.initial_loss,
                "layers": [{"name": l.name, "type": l.type, "forward_ms": avg(l.forward_ms),
                            "backward_ms": avg(l.backward_ms) if self.backward else None} for l in self.layers],
                "forward_ms": avg(self.forward_ms), "backward_ms": avg(self.backward_ms) if self.backward else None,
                "forward_backward_ms": self.total_ms / n, "total_ms": self.total_ms, "notes": list(self.notes)}

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def head_lines(iterations: int) -> list[str]:
    """caffe.cpp time(): the lines before the timed loop."""
    return ["*** Benchmark begins ***", f"Testing for {iterations} iterations."]


def iteration_line(k: int, ms: float, backward: bool = True) -> str:
    """caffe.cpp time(): "Iteration: k forward-backward time: X ms." (``forward time`` without a backward)."""
    return f"Iteration: {k} {'forward-backward' if backward else 'forward'} time: {g6(ms)} ms."


def summary_lines(report: TimingReport) -> list[str]:
    """caffe.cpp time(): the per-layer averages (``std::setw(10)`` names, a tab), the passes, the total."""
    n = report.iterations
    lines = ["Average time per layer: "]
    for l in report.layers:
        lines.append(f"{l.name:>10}\tforward: {g6(sum(l.forward_ms) / n)} ms.")
        if report.backward:
            lines.append(f"{l.name:>10}\tbackward: {g6(sum(l.backward_ms) / n)} ms.")
    lines.append(f"Average Forward pass: {g6(sum(report.forward_ms) / n)} ms.")
    if report.backward:
        lines.append(f"Average Backward pass: {g6(sum(report.backward_ms) / n)} ms.")
        lines.append(f"Average Forward-Backward: {g6(report.total_ms / n)} ms.")
    lines += [f"Total Time: {g6(report.total_ms)} ms.", "*** Benchmark ends ***"]
    return lines


def report_lines(report: TimingReport) -> list[str]:
    """All of ``caffe time``'s lines for ``report`` (without glog's prefixes), warm-up included."""
    warm = ["Performing Forward", f"Initial loss: {g6(report.initial_loss)}"]
    warm += ["Performing Backward"] if report.backward else []
    return (list(report.notes) + warm + head_lines(report.iterations)
            + [iteration_line(k + 1, ms, report.backward) for k, ms in enumerate(report.iteration_ms)]
            + summary_lines(report))


@dataclass
class _Step:
    """One layer of the net in order: a data layer (its tops are net inputs) or a layer of the graph."""
    name: str
    type: str
    tops: list[str]                       # unique blob names
    layer: object = None                  # the GraphLayer (None: a data layer)
    module: object = None
    copies: bool = False                  # a data layer that copies a prepared batch into its tops


class _Timer:
    """perf_counter in ms, after the device's queued work is done (CUDA kernels run asynchronously)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() * 1000.0


def _steps(net) -> list[_Step]:
    """The net's layers in Caffe's order, data layers included (their tops are the graph's inputs)."""
    by_index = {gl.index: gl for gl in net.graph.layers}
    inputs = iter(net.graph.inputs)       # unique names of the data layers' tops, in order
    out = []
    for i, layer in enumerate(net.definition.layer):
        gl = by_index.get(i)
        if gl is not None:
            out.append(_Step(gl.name, gl.type, list(gl.tops), gl, net.module.module_of(gl.name)))
        else:  # a data layer (build_graph made its tops the inputs; it has no other kind of layer without one)
            out.append(_Step(layer.name, layer.type, [next(inputs) for _ in layer.top], copies=not datalayers.is_input(layer)))
    return out


def random_inputs(net, seed: int = 0, device: torch.device | str = "cpu") -> tuple[dict, list[str]]:
    """Seeded random tensors for the net's inputs (by unique name) and a note on each: 4-axis inputs uniform in
    [-1, 1), the others integers in [0, classes) (labels)."""
    g = torch.Generator().manual_seed(seed)
    classes = max(num_classes(net) or 1, 1)
    labels = {b for gl in net.graph.layers for j in converters.label_bottoms(gl.type) if j < len(gl.bottoms)
              for b in [gl.bottoms[j]]}
    out, notes = {}, []
    for u, shape in net.graph.inputs.items():
        shape = tuple(shape)
        if len(shape) == 4 and u not in labels:
            out[u] = torch.rand(shape, generator=g) * 2 - 1
            what = "uniform in [-1, 1)"
        else:
            out[u] = torch.randint(0, classes, shape, generator=g).float()
            what = f"integers in [0, {classes})"
        out[u] = out[u].to(device)
        notes.append(f"{net.graph.caffe_name[u]} [{','.join(map(str, shape))}] {what}")
    return out, notes


class _Run:
    """One forward and one backward of the net, layer by layer, with each layer's time."""

    def __init__(self, net, inputs: dict, timer: _Timer, backward: bool):
        self.net, self.timer, self.backward = net, timer, backward
        self.steps = _steps(net)
        self.inputs = inputs
        self.buffers = {u: torch.empty_like(t) for u, t in inputs.items()}
        self.blobs: dict = {}
        self.leaves: dict = {}     # layer name -> the bottoms it was given (leaves that may take a gradient)
        self.outs: dict = {}       # layer name -> its tops
        self.seeds: dict | None = None

    def forward(self) -> tuple[list[float], float]:
        """Every layer in order; returns its times and the whole pass's (ms)."""
        times, blobs = [], {}
        with torch.set_grad_enabled(self.backward):
            start = self.timer.now()
            for s in self.steps:
                if s.layer is None:
                    t0 = self.timer.now()
                    for u in s.tops:
                        blobs[u] = self.buffers[u].copy_(self.inputs[u]) if s.copies else self.inputs[u]
                    times.append(self.timer.now() - t0)
                    continue
                bottoms = []
                for b in s.layer.bottoms:
                    x = blobs[b].detach()
                    if self.backward and blobs[b].requires_grad:
                        x.requires_grad_()
                    bottoms.append(x)
                t0 = self.timer.now()
                out = s.module(*bottoms)
                times.append(self.timer.now() - t0)
                out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
                blobs.update(zip(s.tops, out))
                self.leaves[s.name], self.outs[s.name] = bottoms, out
            total = self.timer.now() - start
        self.blobs = blobs
        return times, total

    def loss(self) -> float:
        loss = self.net.module.loss(self.blobs)
        return 0.0 if loss is None else float(loss.detach())

    def _seeds(self) -> dict:
        """The top diffs backward starts from: loss_weight in each loss top, else ones in every output."""
        terms = self.net.module.loss_terms or [(u, 1.0) for u in self.net.graph.outputs]
        return {u: torch.full_like(self.blobs[u], w) for u, w in terms
                if u in self.blobs and self.blobs[u].requires_grad}

    def backward_pass(self) -> tuple[list[float], float]:
        """Every layer in reverse order (Caffe's Net::Backward); returns the times in net order and the pass's."""
        if self.seeds is None:
            self.seeds = self._seeds()
        diffs = dict(self.seeds)
        times = [0.0] * len(self.steps)
        start = self.timer.now()
        for i in range(len(self.steps) - 1, -1, -1):
            s = self.steps[i]
            t0 = self.timer.now()
            if s.layer is not None:
                pairs = [(t, diffs.pop(u)) for u, t in zip(s.tops, self.outs[s.name]) if u in diffs and t.requires_grad]
                if pairs:
                    torch.autograd.backward([t for t, _ in pairs], [d for _, d in pairs])
                    for b, x in zip(s.layer.bottoms, self.leaves[s.name]):
                        if x.grad is not None:
                            diffs[b] = diffs[b] + x.grad if b in diffs else x.grad
            times[i] = self.timer.now() - t0
        return times, self.timer.now() - start


def time_net(net, iterations: int = 50, backward: bool = True, *, seed: int = 0, device=None, notes=(),
             log=None) -> TimingReport:
    """Benchmark ``net`` (a :class:`sfport.runtime.net.Net`) as ``caffe time``: an untimed warm-up forward (and
    backward), then ``iterations`` timed ones. ``device``: where to run (the net is moved there); ``log``: called
    with each of Caffe's lines up to the last iteration's as it happens (the rest: :func:`summary_lines`);
    ``notes``: lines put before the input notes in the report."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    device = torch.device(device or "cpu")
    net.module.to(device)
    inputs, input_notes = random_inputs(net, seed, device)
    notes = list(notes) + ["inputs (seeded random, no file read): " + "; ".join(input_notes)]
    say = log or (lambda line: None)
    for line in notes:
        say(line)
    run = _Run(net, inputs, _Timer(device), backward)
    say("Performing Forward")
    run.forward()
    initial_loss = run.loss()
    say(f"Initial loss: {g6(initial_loss)}")
    if backward:
        say("Performing Backward")
        run.backward_pass()
    for line in head_lines(iterations):
        say(line)
    steps = run.steps
    layers = [LayerTiming(s.name, s.type) for s in steps]
    fwd, bwd, its = [], [], []
    start = run.timer.now()
    for k in range(iterations):
        t0 = run.timer.now()
        times, total = run.forward()
        fwd.append(total)
        for l, t in zip(layers, times):
            l.forward_ms.append(t)
        if backward:
            times, total = run.backward_pass()
            bwd.append(total)
            for l, t in zip(layers, times):
                l.backward_ms.append(t)
        its.append(run.timer.now() - t0)
        say(iteration_line(k + 1, its[-1], backward))
    total_ms = run.timer.now() - start
    return TimingReport(iterations, backward, layers, fwd, bwd, its, total_ms, initial_loss, str(device), notes)
