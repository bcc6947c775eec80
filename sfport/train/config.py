"""What a training run is given: the options of ``sfport train`` beyond the solver prototxt, and the nets the
solver names (Solver::InitTrainNet / InitTestNets in solver.cpp)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sfport import caffe_files
from sfport.errors import CaffeFileError
from sfport.netstate import merged
from sfport.protos import caffe_pb2


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


def net_states(sp: caffe_pb2.SolverParameter, train, tests) -> tuple:
    """(train NetState, [test NetState...]) as Solver::InitTrainNet / InitTestNets make them: TRAIN (TEST), merged
    with the net file's own ``state`` and then the solver's ``train_state`` (``test_state[i]``)."""
    train_state = merged(caffe_pb2.TRAIN, train.state if train.HasField("state") else None,
                         sp.train_state if sp.HasField("train_state") else None)
    test_states = [merged(caffe_pb2.TEST, t.state if t.HasField("state") else None,
                          sp.test_state[i] if i < len(sp.test_state) else None) for i, t in enumerate(tests)]
    return train_state, test_states


def nets_of(sp: caffe_pb2.SolverParameter, base: Path | None, solver_path) -> tuple:
    """(train NetParameter, [test NetParameter...]) as Solver::InitTrainNet / InitTestNets pick them: exactly one
    of net, net_param, train_net, train_net_param; test nets from test_net_param, test_net, or the train net once
    per test_iter when the solver gives ``net``/``net_param``."""
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
