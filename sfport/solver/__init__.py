"""Caffe's solver (solver.cpp, sgd_solver.cpp) around sfport's nets, and the verbs of Caffe's ``caffe.cpp``.

The package, by concern: :mod:`~sfport.solver.sgd` (the solver's checks, the lr schedules, the SGD rule),
:mod:`~sfport.solver.rules` (the other five rules), :mod:`~sfport.solver.state` (the solver state of each rule),
:mod:`~sfport.solver.signals` (Caffe's signal handling), :mod:`~sfport.solver.loop` (Solver: the Solve/Step loop), :mod:`~sfport.solver.evaluate` (the test nets;
the SSD fork's detection test with :mod:`~sfport.solver.detection_map`, its average precision),
:mod:`~sfport.solver.checkpoint` (snapshots and resuming), :mod:`~sfport.solver.log` (Caffe's log lines),
:mod:`~sfport.solver.config` (the options, the nets a solver names), :mod:`~sfport.solver.paths` (the one rule the
solver's and nets' paths follow), :mod:`~sfport.solver.curves` (training curves from Caffe's log lines:
``train --plot``, ``python -m sfport.solver.curves LOG OUT``), :mod:`~sfport.solver.launch` (one process,
torchrun, spawned GPUs; :func:`start` for the command line), :mod:`~sfport.solver.solverinfo` (``sfport inspect
SOLVER``), :mod:`~sfport.solver.score` (``caffe test``) and :mod:`~sfport.solver.timing` (``caffe time``). The data
feeder they share is :mod:`sfport.data.feed`.

The names below are imported on first use, so that ``python -m sfport.solver.curves`` runs a module that the
package has not already imported.
"""
import importlib

_EXPORTS = {"RECORD_FORMAT": "sfport.solver.checkpoint", "Options": "sfport.solver.config",
            "Feeder": "sfport.data.feed", "dist_env": "sfport.solver.launch", "launch": "sfport.solver.launch",
            "run": "sfport.solver.launch", "start": "sfport.solver.launch", "CaffeLog": "sfport.report.progress",
            "g6": "sfport.solver.log", "net_outputs": "sfport.solver.log", "Solver": "sfport.solver.loop",
            "TrainingStopped": "sfport.solver.loop"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sfport.solver' has no attribute {name!r}")
