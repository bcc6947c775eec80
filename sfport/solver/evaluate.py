"""The test nets (Solver::InitTestNets, Solver::TestAll and Solver::Test in solver.cpp): each shares the train
net's weights (Net::ShareTrainedLayersWith), reads its own data with a cursor that runs on across tests, and logs
its outputs averaged over ``test_iter`` batches (and the mean loss with ``test_compute_loss``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sfport.formats import caffe_files
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2
from sfport.solver.config import Options
from sfport.data.feed import Feeder, num_classes
from sfport.report.progress import CaffeLog
from sfport.solver.log import g6, net_outputs, output_line


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
                  device: torch.device, log: CaffeLog) -> None:
    """Solver::TestAll at iteration ``it``: every test net over its ``test_iter`` batches, and the log lines."""
    for i, (net, feeder) in enumerate(test_nets):
        log(f"Iteration {it}, Testing net (#{i})", "solver.cpp:330")
        # solver.cpp Solver::Test: the scores and the loss are summed and divided in Dtype (float32)
        scores: dict[tuple, np.float32] = {}
        total_loss = np.float32(0)
        n = sp.test_iter[i]
        net.module.eval()
        for _ in range(n):
            batch = {k: v.to(device) for k, v in feeder.next().items()}
            with torch.no_grad(), feeder.blame():
                blobs = net.module.run(batch, keep_all=False)
                loss = net.module.loss(blobs)
            total_loss += np.float32(float(loss) if loss is not None else 0.0)
            for name, vals, w in net_outputs(net, blobs):
                for j, v in enumerate(vals):
                    scores[(name, j, w)] = scores.get((name, j, w), np.float32(0)) + np.float32(v)
        if sp.test_compute_loss:
            log(f"Test loss: {g6(float(total_loss / np.float32(n)))}", "solver.cpp:394")
        for idx, ((name, _, w), total) in enumerate(scores.items()):
            log(output_line("Test", idx, name, float(total / np.float32(n)), w), "solver.cpp:397")
