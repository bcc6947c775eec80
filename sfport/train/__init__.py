"""``sfport train``: Caffe's solver (solver.cpp, sgd_solver.cpp) around sfport's nets, in PyTorch.

The package, by concern: :mod:`~sfport.train.loop` (Solver: the Solve/Step loop), :mod:`~sfport.train.evaluate`
(the test nets), :mod:`~sfport.train.feed` (the data feeder), :mod:`~sfport.train.checkpoint` (snapshots and
resuming), :mod:`~sfport.train.log` (Caffe's log lines), :mod:`~sfport.train.config` (the options, the nets a
solver names), :mod:`~sfport.train.paths` (the one rule the solver's and nets' paths follow),
:mod:`~sfport.train.curves` (training curves from Caffe's log lines: ``train --plot``), :mod:`~sfport.train.launch`
(one process, torchrun, spawned GPUs; :func:`start` for the command line). The SGD rule, the lr schedules and the solver state are :mod:`sfport.sgd`.
"""
import warnings

from sfport.train.checkpoint import CKPT_FORMAT
from sfport.train.config import Options
from sfport.train.feed import Feeder
from sfport.train.launch import dist_env, launch, run, start
from sfport.progress import CaffeLog
from sfport.train.log import g6, net_outputs
from sfport.train.loop import Solver, TrainingStopped

__all__ = ["CKPT_FORMAT", "CaffeLog", "Feeder", "Options", "Solver", "TrainingStopped", "dist_env", "g6", "launch",
           "net_outputs", "run", "start"]

# `python -m sfport.train.curves LOG OUT` runs a module this package has already imported (train --plot uses it);
# runpy's warning about that is noise here (the module keeps no state)
warnings.filterwarnings("ignore", message="'sfport.train.curves' found in sys.modules", category=RuntimeWarning)
