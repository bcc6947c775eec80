"""Scoring a trained model on its test data, as Caffe's ``caffe test`` does (tools/caffe.cpp ``test()``).

The TEST net of a train_test prototxt (or a solver's test net, or the net a caffemodel stored) is built with its
own data layer (ImageData, Data on an LMDB / LevelDB, HDF5Data: the feeder of ``sfport train``,
:class:`sfport.data.feed.Feeder`), the weights copied in by layer name, and run forward ``iterations`` times;
the data layer's stream wraps around the data set as Caffe's data layers do. Every element of every output blob
is averaged over the iterations and the net's loss (``loss_weight * sum(top)`` over the loss tops, what
``Net::Forward`` returns) too, in float32 as caffe.cpp sums them. :meth:`ScoreReport.lines` are caffe.cpp's
messages::

    Batch 0, accuracy = 0.99
    Batch 0, loss = 0.0301
    ...
    Loss: 0.0287
    accuracy = 0.9912
    loss = 0.0287 (* 1 = 0.0287 loss)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from sfport.formats import caffe_files
from sfport.netdef import netstate
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net
from sfport.runtime.net import read_weights as net_weights
from sfport.netdef.netstate import NetState
from sfport.report.progress import CaffeLog
from sfport.solver.config import Options, gpu_ids, net_states, nets_of, read_solver
from sfport.data.feed import Feeder, num_classes
from sfport.netdef import datalayers
from sfport.solver.log import g6, net_outputs

DEFAULT_ITERATIONS = 50    # caffe.cpp: DEFINE_int32(iterations, 50, ...)


@dataclass
class Output:
    """One output blob of the net: its loss weight (0: not a loss) and each element's mean over the batches."""
    name: str
    loss_weight: float
    mean: list[float]

    @property
    def weighted(self) -> list[float]:
        """``loss_weight * mean`` per element, in float32 as caffe.cpp computes it."""
        return [float(np.float32(self.loss_weight) * np.float32(m)) for m in self.mean]


@dataclass
class Batch:
    """One forward: the net's loss and every output blob's values (flattened), outputs in Caffe's order."""
    loss: float
    outputs: list[tuple[str, list[float]]]


@dataclass
class ScoreReport:
    net_path: str
    weights_path: str
    state: str                       # the NetState, described ("TEST", "TEST, stage a")
    iterations: int
    batches: list[Batch] = field(default_factory=list)
    loss: float = 0.0                # the mean of the batches' losses
    outputs: list[Output] = field(default_factory=list)
    layers_without_weights: list[str] = field(default_factory=list)   # left to their fillers (shared ones not)
    test_net: int | None = None      # a solver's test net index

    def lines(self) -> Iterator[str]:
        """caffe.cpp test()'s messages: every batch's, then the summary."""
        for i, b in enumerate(self.batches):
            yield from batch_lines(i, b)
        yield from self.summary_lines()

    def summary_lines(self) -> Iterator[str]:
        """``Loss: L`` and, per output element, ``name = mean`` (`` (* w = w*mean loss)`` for a loss output)."""
        yield f"Loss: {g6(self.loss)}"
        for o in self.outputs:
            for m, wm in zip(o.mean, o.weighted):
                yield f"{o.name} = {g6(m)}" + (f" (* {g6(o.loss_weight)} = {g6(wm)} loss)" if o.loss_weight else "")

    def as_dict(self) -> dict:
        return {"net": self.net_path, "weights": self.weights_path, "state": self.state,
                "test_net": self.test_net, "iterations": self.iterations, "loss": self.loss,
                "outputs": [{"name": o.name, "loss_weight": o.loss_weight, "mean": o.mean,
                             "weighted_loss": o.weighted if o.loss_weight else None} for o in self.outputs],
                "batches": [{"loss": b.loss, "outputs": dict(b.outputs)} for b in self.batches],
                "layers_without_weights": self.layers_without_weights}


def batch_lines(i: int, batch: Batch) -> Iterator[str]:
    """``Batch i, name = value`` for every element of every output (caffe.cpp test())."""
    for name, values in batch.outputs:
        for v in values:
            yield f"Batch {i}, {name} = {g6(v)}"


def devices(gpu: str | None, log: CaffeLog) -> torch.device:
    """caffe.cpp get_gpus + test(): ``gpu`` is ids ('0', '0,1') or 'all'; only the first is used (the others
    logged as not used); None: the CPU."""
    if not gpu:
        log("Use CPU.", "caffe.cpp:0")
        return torch.device("cpu")
    ids = gpu_ids(gpu)
    for g in reversed(ids[1:]):
        log(f"Not using GPU #{g} for single-GPU function", "caffe.cpp:0")
    log(f"Use GPU with device ID {ids[0]}", "caffe.cpp:0")
    return torch.device(f"cuda:{ids[0]}")


def read_weights(path):
    """Any weights file sfport writes (:func:`sfport.runtime.net.read_weights`: a caffemodel, Caffe's HDF5
    weights, a converted ``.pt``, a training snapshot ``.pt``)."""
    return net_weights(path)


class _Source(NamedTuple):
    net: object                 # the NetParameter
    state: NetState
    base: Path                  # relative data paths are looked up here after the working directory
    path: str                   # the file the errors about the net name
    weights: object             # the CaffeModel the model holds (a caffemodel / .pt), else None
    test_iter: int | None       # a solver's test_iter for the net
    seed: int                   # of its data stream (an ImageData shuffle)
    test_net: int | None        # a solver's test net index


def _definition(model: str, phase, stages, level, test_net: int | None) -> _Source:
    """The net to score of ``model``: a solver prototxt (its test net ``test_net`` as Solver::InitTestNets builds
    it, paths resolved next to the solver as ``sfport train`` does), a net prototxt (in the NetState, merged
    with the file's own state as Net::Net does), or a caffemodel / ``.pt`` (the net it stored, already
    filtered: every layer of it)."""
    text = not caffe_files.is_torch_pt(model) and caffe_files.sniff(caffe_files.read_bytes(model)) == caffe_files.TEXT
    if text and caffe_files.is_solver_prototxt(model):
        if phase is not None or stages or level is not None:
            raise CaffeFileError(model, "is a solver: its test net's state is the solver's test_state (leave out "
                                        "--phase, --stage and --level, or give the net prototxt)")
        sp, _ = read_solver(model)
        base = Path(model).resolve().parent
        train, tests, files = nets_of(sp, base, model)
        _, states = net_states(sp, train, tests)
        k = test_net or 0
        if not tests:
            raise CaffeFileError(model, "the solver has no test net (test_net, test_net_param, or net with "
                                        "test_iter)")
        if not 0 <= k < len(tests):
            raise CaffeFileError(model, f"--test-net {k}: the solver has test nets 0 to {len(tests) - 1}")
        seed = sp.random_seed if sp.random_seed >= 0 else 0
        return _Source(tests[k], states[k], base, files[1 + k], None, sp.test_iter[k], seed + 1 + k, k)
    if test_net is not None:
        raise CaffeFileError(model, "--test-net chooses a solver's test net: this is not a solver prototxt")
    state = NetState.of(phase or "TEST", level or 0, stages)
    base = Path(model).resolve().parent
    if text:
        net = caffe_files.read_prototxt(model).net
        return _Source(net, state.for_net(net), base, str(model), None, None, 1, None)
    weights = read_weights(model)
    if not isinstance(weights, caffe_files.CaffeModel) or not len(weights.net.layer) or \
            str(model).endswith(".h5"):
        raise CaffeFileError(model, "holds weights without a net definition: give the train_test / train_val "
                                    "prototxt as NET and this file with --weights")
    return _Source(netstate.without_rules(weights.net), state, base, str(model), weights, None, 1, None)


class Scorer:
    """``caffe test -model MODEL -weights WEIGHTS -iterations N``, set up: ``model`` a train_test / train_val
    prototxt, a solver prototxt (its test net ``test_net``, default 0; ``iterations`` default its ``test_iter``)
    or a caffemodel / ``.pt`` (its stored net; then ``weights`` defaults to it); ``weights`` a caffemodel or
    ``.pt`` copied by layer name (Net::CopyTrainedLayersFrom); ``iterations`` default 50; ``data_root`` and
    ``source`` replace the data layer's root_folder and source (``sfport train``'s --data-root and --source, there
    on the scored net's data layer). A model without weights, weights that match no layer with parameters, a net
    without a data layer to read are errors (:class:`~sfport.errors.CaffeFileError`). :meth:`run` scores it."""

    def __init__(self, model, weights=None, iterations: int | None = None, *, phase=None, stages=(), level=None,
                 test_net: int | None = None, gpu: str | None = None, data_root=None, source=None,
                 workers: int = 0,
                 log: CaffeLog | None = None):
        log = log or CaffeLog()
        if iterations is not None and iterations <= 0:
            raise CaffeFileError(None, f"--iterations {iterations}: give a positive number of batches")
        with log.held():
            self.device = device = devices(gpu, log)
            src = _definition(model, phase, stages, level, test_net)
            net_param, state, path = src.net, src.state, src.path
            if weights is None and src.weights is None:
                raise CaffeFileError(path, "has no weights: give the trained caffemodel with --weights (sfport "
                                           "test never scores a net of filler values)")
            weight_model = read_weights(weights) if weights is not None else src.weights
            self.iterations = iterations or src.test_iter or DEFAULT_ITERATIONS
            layers = datalayers.data_layers(net_param, state)
            if len(layers) != 1 or datalayers.spec_of(layers[0]).reader is None:   # what Feeder reads
                found = ", ".join(f"'{l.name}' ({l.type})" for l in layers) or "none"
                raise CaffeFileError(path, f"sfport test reads the batches from the {state.describe()} net's data "
                                           f"layer (ImageData, Data or HDF5Data; one), found {found}: give the "
                                           f"train_test / train_val prototxt with the data layer")
            opts = Options(data_root=data_root, source=source, source_phase=state.phase, device=str(device),
                           workers=workers)
            self.feeder = feeder = Feeder(net_param, state, opts, src.base, src.seed, 1, 0, 1, log, net_path=path)
            self.net = net = Net(caffe_files.CaffeModel.from_net(net_param, path), weights=weight_model,
                                 phase=state, level=state.level, stages=state.stages, input_shapes=feeder.inputs,
                                 inference=False)
            feeder.num_classes = num_classes(net)
            report = net.report   # weights that match no layer with parameters: Net's error, naming the file
            log(f"Copied weights of {len(report.copied)} layers from {weight_model.path}", "net.cpp:0")
            net.module.to(device)
            feeder.start(0)
            log(f"Running for {self.iterations} iterations.", "caffe.cpp:0")
        shared = {n for n, how in report.filled.items() if how and all(h.startswith("shared with ") for h in how)}
        self.report = ScoreReport(path, str(weight_model.path), state.describe(), self.iterations,
                                  test_net=src.test_net,
                                  layers_without_weights=[n for n in report.layers_without_weights
                                                          if n not in shared])

    def run(self, on_batch: Callable[[int, Batch], None] | None = None) -> ScoreReport:
        """The ``iterations`` forwards (``on_batch(i, batch)`` after each) and their means (caffe.cpp test())."""
        out, net, feeder = self.report, self.net, self.feeder
        sums: dict[tuple[str, int], np.float32] = {}
        weights_of: dict[str, float] = {}
        loss_sum = np.float32(0)
        for i in range(self.iterations):
            batch = {name: v.to(self.device) for name, v in feeder.next().items()}
            with torch.no_grad(), feeder.blame():
                blobs = net.module.run(batch, keep_all=False)
                loss = net.module.loss(blobs)
            b = Batch(float(loss) if loss is not None else 0.0, [])
            for name, vals, w in net_outputs(net, blobs):
                b.outputs.append((name, [float(v) for v in vals]))
                weights_of[name] = w
                for j, v in enumerate(vals):   # caffe.cpp: test_score[idx] += score, in float
                    sums[(name, j)] = sums.get((name, j), np.float32(0)) + np.float32(v)
            loss_sum += np.float32(b.loss)
            out.batches.append(b)
            if on_batch is not None:
                on_batch(i, b)
        n = np.float32(self.iterations)
        out.loss = float(loss_sum / n)
        out.outputs = [Output(name, float(w), [float(s / n) for (o, _), s in sums.items() if o == name])
                       for name, w in weights_of.items()]
        return out


def score(model, weights=None, iterations: int | None = None, on_batch=None, **kwargs) -> ScoreReport:
    """:class:`Scorer` (the same arguments) set up and run: the model's :class:`ScoreReport`."""
    return Scorer(model, weights, iterations, **kwargs).run(on_batch)
