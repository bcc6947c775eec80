"""What a training run is given: the options of ``sfport train`` beyond the solver prototxt, and the nets the
solver names (Solver::InitTrainNet / InitTestNets in solver.cpp)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sfport.formats import caffe_files
from sfport.solver import sgd
from sfport.errors import CaffeFileError
from sfport.netdef.netstate import merged
from sfport.protos import caffe_pb2
from sfport.solver.paths import existing


@dataclass
class Options:
    weights: list[str] = field(default_factory=list)
    snapshot: str | None = None
    data_root: str | None = None
    source: str | None = None         # replaces the source of the data layer of the net in source_phase
    source_phase: int = caffe_pb2.TRAIN   # train: the TRAIN net's; test: the scored net's (sfport.data.feed.Feeder)
    seed: int | None = None
    device: str = "cpu"
    amp: bool = False
    workers: int | None = 2     # None: the data layer's default (Feeder)
    skip_bad_images: bool = False
    keep_going: bool = False
    synthetic_data: bool = False
    data_shape: tuple | None = None   # (C, H, W) for --synthetic-data when the prototxt does not fix it
    max_iter: int | None = None       # override (tests, benchmarks)
    progress: bool | None = None      # None: a bar when stderr is a terminal
    channels_last: bool = False
    margin_grad: str | None = None
    gpus: tuple = ()                  # the --gpu ids (for the log's "Using GPUs" line)
    plot: str | None = None           # --plot: the training curves' figure, rewritten at each snapshot and the end
    sigint_effect: str = "stop"       # caffe.cpp -sigint_effect: stop | snapshot | none (sfport.solver.signals)
    sighup_effect: str = "snapshot"   # caffe.cpp -sighup_effect
    sigterm_effect: str | None = None  # None: as SIGINT


def gpu_ids(gpu: str) -> list[int]:
    """caffe.cpp get_gpus: ``--gpu`` as device ids ('0', '0,1') or 'all' (every CUDA device), checked against
    the devices this machine has (one line when it has none, or the ids are not numbers or not there)."""
    import torch   # the rest of this module reads files only

    if not torch.cuda.is_available():
        raise CaffeFileError(None, f"--gpu {gpu}: no CUDA device is available on this machine")
    count = torch.cuda.device_count()
    try:
        ids = list(range(count)) if gpu == "all" else [int(g) for g in gpu.split(",")]
    except ValueError:
        raise CaffeFileError(None, f"--gpu {gpu}: give GPU ids like 0 or 0,1, or 'all'") from None
    if not ids or any(not 0 <= g < count for g in ids):
        raise CaffeFileError(None, f"--gpu {gpu}: this machine has GPUs 0 to {count - 1}")
    return ids


def net_states(sp: caffe_pb2.SolverParameter, train, tests) -> tuple:
    """(train NetState, [test NetState...]) as Solver::InitTrainNet / InitTestNets make them: TRAIN (TEST), merged
    with the net file's own ``state`` and then the solver's ``train_state`` (``test_state[i]``)."""
    train_state = merged(caffe_pb2.TRAIN, train.state if train.HasField("state") else None,
                         sp.train_state if sp.HasField("train_state") else None)
    test_states = [merged(caffe_pb2.TEST, t.state if t.HasField("state") else None,
                          sp.test_state[i] if i < len(sp.test_state) else None) for i, t in enumerate(tests)]
    return train_state, test_states


def read_solver(path, max_iter: int | None = None) -> tuple[caffe_pb2.SolverParameter, list[str]]:
    """The solver prototxt as Caffe's ReadSolverParamsFromTextFileOrDie reads it (upgrade_proto.cpp: the solver
    type upgrade, then UpgradeSnapshotPrefixProperty: no snapshot_prefix is the solver's name without its
    extension, a folder is the folder / the solver's stem), ``max_iter`` (``--max-iter``) put in, then checked
    by :func:`sfport.solver.sgd.check_solver` before any net is built. Returns the parameter and the upgrade notes."""
    solver = caffe_files.read_solver(path)
    sp, notes = solver.param, list(solver.upgrades)
    if not sp.HasField("snapshot_prefix"):
        sp.snapshot_prefix = str(Path(path).with_suffix(""))
        notes.append(f"snapshot_prefix was not specified and is set to {sp.snapshot_prefix}")
    elif Path(sp.snapshot_prefix).is_dir():
        sp.snapshot_prefix = str(Path(sp.snapshot_prefix) / Path(path).stem)
        notes.append(f"snapshot_prefix was a directory and is replaced to {sp.snapshot_prefix}")
    if max_iter is not None:
        sp.max_iter = max_iter
    sgd.check_solver(sp, path)
    return sp, notes


def nets_of(sp: caffe_pb2.SolverParameter, base: Path | None, solver_path) -> tuple:
    """(train NetParameter, [test NetParameter...], [file of each: train, then the tests]) as
    Solver::InitTrainNet / InitTestNets pick them: exactly one of net, net_param, train_net, train_net_param; test
    nets from test_net_param, then test_net, then (a generic ``net`` / ``net_param``) the train net once for each
    test_iter left (the counts are checked by :func:`sfport.solver.sgd.check_solver`). A net given in the solver has the
    solver's file; a net file is found by :func:`sfport.solver.paths.resolve_path` (``base``: the solver's folder)."""
    given = [sp.HasField("net"), sp.HasField("net_param"), sp.HasField("train_net"), sp.HasField("train_net_param")]
    if sum(given) != 1:
        raise CaffeFileError(solver_path, "the solver needs exactly one of net, net_param, train_net, "
                                          "train_net_param")
    if sp.HasField("train_net_param") or sp.HasField("net_param"):
        train = sp.train_net_param if sp.HasField("train_net_param") else sp.net_param
        train_file = str(solver_path)
    else:
        kind = "train_net" if sp.HasField("train_net") else "net"
        train_file = str(existing(getattr(sp, kind), base, kind, solver_path))
        train = caffe_files.read_prototxt(train_file).net
    tests = list(sp.test_net_param)
    files = [str(solver_path)] * len(tests)
    for t in sp.test_net:
        files.append(str(existing(t, base, "test_net", solver_path)))
        tests.append(caffe_files.read_prototxt(files[-1]).net)
    if sp.HasField("net") or sp.HasField("net_param"):
        generic = max(len(sp.test_iter) - len(tests), 0)
        tests += [train] * generic
        files += [train_file] * generic
    return train, tests, [train_file] + files
