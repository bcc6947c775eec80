"""The test nets (Solver::InitTestNets, Solver::TestAll and Solver::Test in solver.cpp): each shares the train
net's weights (Net::ShareTrainedLayersWith), reads its own data with a cursor that runs on across tests, and logs
its outputs averaged over ``test_iter`` batches (and the mean loss with ``test_compute_loss``).

The SSD fork's solvers choose the test with ``eval_type``: "classification" (the above) or "detection" (the fork's
Solver::TestDetection: the DetectionEvaluate rows of every batch gathered, then per output the mean average
precision over the classes, with ``ap_version``, logged as ``Test net output #i: name = mAP``; see
:mod:`sfport.solver.detection_map`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2
from sfport.solver.config import Options
from sfport.data.feed import Feeder, num_classes
from sfport.report.progress import CaffeLog
from sfport.solver.detection_map import DetectionScores, check_ap_version
from sfport.solver.log import g6, net_outputs, output_line, output_rows
from sfport.solver.signals import STOP

EVAL_TYPES = ("classification", "detection")


@dataclass(frozen=True)
class Evaluation:
    """The SSD fork's SolverParameter fields that choose the test (solver.cpp TestAll / TestDetection):
    ``eval_type``, ``ap_version``, and the weiliu89 ssd branch's ``show_per_class_result``. :meth:`of` reads each
    from a solver whose schema has it, else the fork's default (a BVLC solver: classification)."""
    eval_type: str = "classification"
    ap_version: str = "Integral"
    show_per_class_result: bool = False

    @classmethod
    def of(cls, sp: caffe_pb2.SolverParameter) -> "Evaluation":
        have = sp.DESCRIPTOR.fields_by_name
        return cls(**{f: getattr(sp, f) for f in ("eval_type", "ap_version", "show_per_class_result") if f in have})

    def check(self) -> None:
        """TestAll's "Unknown evaluation type" (and, for a detection test, ComputeAP's "Unknown ap_version")."""
        if self.eval_type not in EVAL_TYPES:
            raise CaffeFileError(None, f"Unknown evaluation type: {self.eval_type} (the solver's eval_type is "
                                       f"classification or detection)")
        if self.eval_type == "detection":
            check_ap_version(self.ap_version)


def build_test_net(net_param, i: int, train_net: Net, opts: Options, base: Path | None, seed: int,
                   device: torch.device, log: CaffeLog, state=caffe_pb2.TEST,
                   net_path: str | None = None) -> tuple[Net, Feeder]:
    """Test net ``i`` in ``state`` (a NetState; TEST) on ``device``, its data cursor at the start, its trained
    layers those of ``train_net``; ``net_path`` is the file it came from (for the errors)."""
    feeder = Feeder(net_param, state, opts, base, seed + 1 + i, 1, 0, 1, log, net_path=net_path)
    net = Net(caffe_files.CaffeModel.from_net(net_param, net_path), phase=state, input_shapes=feeder.inputs,
              inference=False)
    feeder.num_classes = num_classes(net)
    net.module.share_trained_layers_with(train_net.module)
    net.module.to(device)
    feeder.start(0)
    return net, feeder


def run_test_nets(test_nets: list[tuple[Net, Feeder]], sp: caffe_pb2.SolverParameter, it: int,
                  device: torch.device, log: CaffeLog, evaluation: Evaluation | None = None, solver=None) -> None:
    """Solver::TestAll at iteration ``it``: every test net over its ``test_iter`` batches, and the log lines.
    ``evaluation``: the test to run (default: :meth:`Evaluation.of` the solver). ``solver`` (the trainer's
    :class:`~sfport.solver.loop.Solver`): asked before every test batch what a signal requested, as Solver::Test
    does; a stop ends the test ("Test interrupted.") and sets its ``requested_early_exit``."""
    ev = evaluation if evaluation is not None else Evaluation.of(sp)
    ev.check()
    for i, (net, feeder) in enumerate(test_nets):
        if solver is not None and solver.requested_early_exit:   # TestAll: && !requested_early_exit_
            break
        test = detection_test if ev.eval_type == "detection" else classification_test
        if test(net, feeder, i, sp, it, device, log, ev, solver) is None:
            log("Test interrupted.", "solver.cpp:387")


def _interrupted(solver) -> bool:
    """Solver::Test's check before each batch: every pending request handled (snapshots written), then whether
    a stop was asked for."""
    if solver is None:
        return False
    while (action := solver.requested_action()) is not None:
        if action == STOP:
            solver.requested_early_exit = True
        elif solver.rank == 0:
            solver.snapshot()
    return solver.requested_early_exit


def _batches(net: Net, feeder: Feeder, n: int, device: torch.device, solver=None):
    """The test net's ``n`` forwards: (blobs, loss as a float32) of each; fewer when a stop is requested."""
    net.module.eval()
    for _ in range(n):
        if _interrupted(solver):
            return
        batch = {k: v.to(device) for k, v in feeder.next().items()}
        with torch.no_grad(), feeder.blame():
            blobs = net.module.run(batch, keep_all=False)
            loss = net.module.loss(blobs)
        yield blobs, np.float32(float(loss) if loss is not None else 0.0)


def classification_test(net: Net, feeder: Feeder, i: int, sp: caffe_pb2.SolverParameter, it: int,
                        device: torch.device, log: CaffeLog, ev: Evaluation | None = None, solver=None) -> bool | None:
    """Solver::Test (the fork's TestClassification): the outputs summed over the batches and averaged. None when a
    stop interrupted it (nothing logged)."""
    log(f"Iteration {it}, Testing net (#{i})", "solver.cpp:330")
    # solver.cpp Solver::Test: the scores and the loss are summed and divided in Dtype (float32)
    scores: dict[tuple, np.float32] = {}
    total_loss = np.float32(0)
    n = sp.test_iter[i]
    for blobs, loss in _batches(net, feeder, n, device, solver):
        total_loss += loss
        for name, vals, w in net_outputs(net, blobs):
            for j, v in enumerate(vals):
                scores[(name, j, w)] = scores.get((name, j, w), np.float32(0)) + np.float32(v)
    if sp.test_compute_loss:
        log(f"Test loss: {g6(float(total_loss / np.float32(n)))}", "solver.cpp:394")
    if solver is not None and solver.requested_early_exit:
        return None
    for idx, ((name, _, w), total) in enumerate(scores.items()):
        log(output_line("Test", idx, name, float(total / np.float32(n)), w), "solver.cpp:397")
    return True


def detection_test(net: Net, feeder: Feeder, i: int, sp: caffe_pb2.SolverParameter, it: int,
                   device: torch.device, log: CaffeLog, ev: Evaluation, solver=None) -> bool | None:
    """The SSD fork's Solver::TestDetection (brocolli-caffe solver.cpp): every output of the test net holds
    DetectionEvaluate's ``1 x 1 x K x 5`` rows (CHECK_EQ(width, 5)); gathered over the ``test_iter`` batches,
    they give each output's mean AP (``ap_version``), logged as the output's value (the per-class APs first with
    ``show_per_class_result``, as the weiliu89 branch writes them)."""
    log(f"Iteration {it}, Testing net (#{i})", "solver.cpp:421")
    acc = DetectionScores()
    total_loss = np.float32(0)
    n = sp.test_iter[i]
    names: list[str] = []
    for blobs, loss in _batches(net, feeder, n, device, solver):
        total_loss += loss
        outputs = output_rows(net, blobs)
        names = [name for name, _ in outputs]
        for j, (name, rows) in enumerate(outputs):
            if rows is None:
                raise CaffeFileError(None, f"test net #{i}: the output '{name}' is not detection rows (its width "
                                           f"must be 5, as DetectionEvaluate's top): eval_type detection needs "
                                           f"DetectionEvaluate's rows in every output")
            acc.add(j, rows)
    if solver is not None and solver.requested_early_exit:
        return None
    if sp.test_compute_loss:
        log(f"Test loss: {g6(float(total_loss / np.float32(n)))}", "solver.cpp:487")
    for res in acc.results(ev.ap_version):
        for label, ap in res.per_label:
            if ap is None:
                log(f"Missing true_pos for label: {label}", "solver.cpp:512", "W")
            elif ev.show_per_class_result:
                log(f"class{label}: {g6(ap)}", "solver.cpp:528")
        log(output_line("Test", res.index, names[res.index], res.mean_ap, 0.0), "solver.cpp:531")
    return True
