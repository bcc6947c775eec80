"""``sfport train``: Caffe's solver (solver.cpp, sgd_solver.cpp) around sfport's nets, in PyTorch.

The package, by concern: :mod:`~sfport.train.loop` (the Solve/Step loop, tests), :mod:`~sfport.train.feed`
(the data feeder), :mod:`~sfport.train.checkpoint` (snapshots and resuming), :mod:`~sfport.train.log` (Caffe's
log lines), :mod:`~sfport.train.launch` (one process, torchrun, spawned GPUs; :func:`start` for the command
line), :mod:`~sfport.train.options`. The SGD rule and the lr schedules are :mod:`sfport.sgd`.
"""
from sfport.train.checkpoint import CKPT_FORMAT
from sfport.train.feed import Feeder
from sfport.train.launch import dist_env, launch, run, start
from sfport.train.log import CaffeLog, g6, net_outputs
from sfport.train.loop import Solver
from sfport.train.options import Options, TrainingStopped

__all__ = ["CKPT_FORMAT", "CaffeLog", "Feeder", "Options", "Solver", "TrainingStopped", "dist_env", "g6", "launch",
           "net_outputs", "run", "start"]
