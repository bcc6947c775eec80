"""The SGD rule and its learning-rate schedules, as Caffe's SGDSolver (sgd_solver.cpp).

``check_solver`` is every rule a solver prototxt must keep (Caffe's CHECKs of solver.cpp and sgd_solver.cpp, and
what Caffe would run silently wrong), checked once when the solver is read. ``learning_rate``
(SGDSolver::GetLearningRate: the seven lr policies, with Caffe's ``iter`` and multistep ``current_step``) and ``sgd_update`` (SGDSolver::ApplyUpdate: clip, normalize, regularize, momentum with the rate
inside the history, apply) are pure functions; :class:`SGDState` is the state they act on, what Caffe keeps in a
``.solverstate`` (iteration, lr step, one history per learnable blob), with ``step`` (one update),
``state_dict`` / ``load_state_dict`` (sfport checkpoints) and ``to_solverstate`` / ``load_solverstate``.

The update differs from ``torch.optim.SGD``: Caffe keeps ``h = momentum*h + rate*lr_mult*g`` and steps ``w -= h``
(the rate sits inside the history), torch keeps ``v = momentum*v + g`` and steps ``w -= lr*v``; they differ as soon
as the rate changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass

import numpy as np
import torch

from sfport.formats import caffe_files
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

f32 = np.float32


def _libm_float(name: str):
    """The C library's float function ``name`` (powf, expf): Caffe's ``pow``/``exp`` on ``Dtype = float`` call
    these, and numpy's own float32 kernels (SIMD on some CPUs) can differ from them by an ulp."""
    path = ctypes.util.find_library("m") or ctypes.util.find_library("c") or "msvcrt"
    try:
        fn = getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * (2 if name == "powf" else 1)
    return fn


_POWF, _EXPF = _libm_float("powf"), _libm_float("expf")


def powf(x, y) -> np.float32:
    """C's powf(float, float): the C library's where it can be found, else the float64 power rounded once."""
    if _POWF is not None:
        return f32(_POWF(float(f32(x)), float(f32(y))))
    return f32(float(f32(x)) ** float(f32(y)))


def expf(x) -> np.float32:
    """C's expf(float), as :func:`powf`."""
    if _EXPF is not None:
        return f32(_EXPF(float(f32(x))))
    return f32(math.exp(float(f32(x))))

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
INT32_MAX = 2**31 - 1


def check_solver(p: caffe_pb2.SolverParameter, path) -> None:
    """Every rule of a solver prototxt sfport trains with, checked when the solver is read (before any net is
    built): a :class:`CaffeFileError` naming ``path`` and the field. Caffe's own checks, in the order Caffe meets
    them: Solver::Init (solver.cpp) ``CHECK_GE(average_loss, 1)``; Solver::InitTestNets "test_iter must be
    specified for each test network" (``CHECK_GE`` with a generic ``net``, else ``CHECK_EQ``), the test_state
    count and ``CHECK_GT(test_interval, 0)`` when there are test nets; SGDSolver::GetLearningRate (sgd_solver.cpp)
    LOG(FATAL) "Unknown learning rate policy", ``CHECK_GT(stepsize, 0)`` and ``CHECK_GE(gamma, 0)`` (step, exp, inv,
    multistep); SGDSolver::Regularize LOG(FATAL) "Unknown regularization type". And what Caffe runs silently
    wrong (a 0/0 or a NaN rate, iter_size 0 dividing the gradients by zero, stepvalues out of order, negative
    counts): non-finite rates and factors, iter_size < 1, stepvalues not increasing, test_iter < 1, negative
    display / snapshot / test_interval / max_iter."""
    def bad(field: str, what: str):
        raise CaffeFileError(path, f"{field}: {what}")

    if p.type not in ("", "SGD"):
        bad("type", f"solver type '{p.type}' is not supported (sfport trains with SGD)")
    for field in ("base_lr", "momentum", "weight_decay", "gamma", "power", "clip_gradients"):
        v = getattr(p, field)
        if not math.isfinite(v):
            bad(field, f"{v} is not a finite number")
    if p.average_loss < 1:   # solver.cpp Solver::Init: CHECK_GE(param_.average_loss(), 1)
        bad("average_loss", f"{p.average_loss} must be at least 1 (Caffe: CHECK_GE(average_loss, 1))")
    if p.iter_size < 1:      # Solver::Step sums iter_size passes and SGDSolver::Normalize divides by it
        bad("iter_size", f"{p.iter_size} must be at least 1")
    for field in ("max_iter", "display", "snapshot", "test_interval"):
        if getattr(p, field) < 0:
            bad(field, f"{getattr(p, field)} must not be negative")
    policy = p.lr_policy
    if policy not in POLICIES:   # sgd_solver.cpp GetLearningRate: LOG(FATAL) << "Unknown learning rate policy"
        bad("lr_policy", (f"unknown learning rate policy '{policy}'" if policy else "not set")
            + f" (Caffe has {', '.join(POLICIES)})")
    if policy == "step" and (not p.HasField("stepsize") or p.stepsize <= 0):   # CHECK_GT(stepsize, 0)
        bad("stepsize", "lr_policy 'step' needs stepsize > 0" + (f", not {p.stepsize}" if p.HasField("stepsize")
                                                                   else ""))
    if policy in ("step", "exp", "inv", "multistep") and p.gamma < 0:          # CHECK_GE(gamma, 0)
        bad("gamma", f"{p.gamma} must not be negative for lr_policy '{policy}'")
    if policy == "multistep":
        values = list(p.stepvalue)
        for i, (a, b) in enumerate(zip([-1] + values, values)):
            if b <= a:   # GetLearningRate advances one step per update: out of order, the later steps come late
                bad("stepvalue", f"stepvalue {i + 1} ({b}) must be greater than the one before ({a})" if i else
                    f"stepvalue 1 ({b}) must not be negative")
    if p.regularization_type not in ("L1", "L2"):   # SGDSolver::Regularize: LOG(FATAL) "Unknown regularization type"
        bad("regularization_type", f"unknown regularization type '{p.regularization_type}' (Caffe has L1 and L2)")
    # solver.cpp Solver::InitTestNets
    explicit = len(p.test_net_param) + len(p.test_net)
    generic = p.HasField("net") or p.HasField("net_param")
    if (len(p.test_iter) < explicit) if generic else (len(p.test_iter) != explicit):
        bad("test_iter", f"test_iter must be specified for each test network ({len(p.test_iter)} test_iter for "
                         f"{explicit} test_net / test_net_param" + (" and the net" if generic else "") + ")")
    for i, n in enumerate(p.test_iter):
        if n < 1:
            bad("test_iter", f"test_iter {i + 1} is {n}: a test runs at least one batch")
    if len(p.test_state) and len(p.test_state) != len(p.test_iter):
        bad("test_state", f"test_state must be unspecified or specified once per test net ({len(p.test_state)} "
                          f"test_state, {len(p.test_iter)} test nets)")
    if len(p.test_iter) and p.test_interval <= 0:   # CHECK_GT(param_.test_interval(), 0)
        bad("test_interval", f"test nets need test_interval > 0, not {p.test_interval}")


def learning_rate(p: caffe_pb2.SolverParameter, it: int, current_step: int = 0) -> tuple[float, int, str | None]:
    """Caffe's SGDSolver::GetLearningRate at update ``it``: (rate as float32 value, new current_step, the
    'MultiStep Status' message when the step advanced). ``p`` is a solver :func:`check_solver` accepted."""
    policy = p.lr_policy
    message = None
    if policy == "fixed":
        rate = p.base_lr
    elif policy == "step":
        current_step = it // p.stepsize
        rate = p.base_lr * _pow(p.gamma, current_step)
    elif policy == "exp":
        rate = p.base_lr * _pow(p.gamma, it)
    elif policy == "inv":  # float arithmetic and powf, as Caffe's Dtype = float code
        rate = f32(p.base_lr) * powf(f32(1) + f32(p.gamma) * f32(it), f32(-p.power))
    elif policy == "multistep":
        if current_step < len(p.stepvalue) and it >= p.stepvalue[current_step]:
            current_step += 1
            message = f"MultiStep Status: Iteration {it}, step = {current_step}"
        rate = p.base_lr * _pow(p.gamma, current_step)
    elif policy == "poly":   # max_iter 0 runs no update: the rate is never asked for
        rate = f32(p.base_lr) * powf(f32(1) - f32(it) / f32(p.max_iter), f32(p.power))
    elif policy == "sigmoid":   # stepsize is the midpoint: any value, as Caffe
        rate = f32(p.base_lr) * (f32(1) / (f32(1) + expf(-f32(p.gamma) * (f32(it) - f32(p.stepsize)))))
    else:
        raise ValueError(f"unknown lr_policy '{policy}' (Caffe has {', '.join(POLICIES)})")
    with np.errstate(all="ignore"):
        return float(np.float32(rate)), current_step, message


def _pow(x: float, y: float) -> float:
    """C's pow: past the double range it is inf, where math.pow raises OverflowError."""
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf


@dataclass
class Blob:
    """One learnable blob as the solver sees it: the parameter, its momentum history, its multipliers."""
    name: str
    param: torch.Tensor
    history: torch.Tensor
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass
class UpdateInfo:
    rate: float
    clip_norm: float | None = None      # the L2 norm when clipping scaled the gradients down
    clip_scale: float | None = None
    iter: int | None = None             # SGDState.step: the update's number (before ``iter += 1``)
    message: str | None = None          # SGDState.step: 'MultiStep Status' when the lr step advanced


@torch.no_grad()
def gradient_l2_norm(blobs: list[Blob]) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for b in blobs:
        if b.param.grad is not None:
            total += (b.param.grad.double() ** 2).sum().cpu()
    return math.sqrt(float(total))


@torch.no_grad()
def sgd_update(blobs: list[Blob], rate: float, momentum: float, weight_decay: float, iter_size: int = 1,
               regularization: str = "L2", clip_gradients: float = -1.0) -> UpdateInfo:
    """One Caffe SGD update (SGDSolver::ApplyUpdate after the rate): clip the accumulated gradients by their global
    L2 norm, then per blob ``g /= iter_size``; ``g += weight_decay*decay_mult * (w | sign(w))``;
    ``h = momentum*h + rate*lr_mult*g``; ``w -= h``. Blobs with lr_mult 0 are left alone (no gradient, no
    update; their history stays 0). Mutates params and histories in place; ``.grad`` is consumed."""
    info = UpdateInfo(rate)
    if clip_gradients >= 0:
        norm = gradient_l2_norm(blobs)
        if norm > clip_gradients:
            scale = clip_gradients / norm
            info.clip_norm, info.clip_scale = norm, scale
            for b in blobs:
                if b.param.grad is not None:
                    b.param.grad.mul_(scale)
    if regularization not in ("L1", "L2"):
        raise ValueError(f"unknown regularization_type '{regularization}' (Caffe has L1 and L2)")
    for b in blobs:
        if b.lr_mult == 0:
            continue
        g = b.param.grad
        if g is None:
            g = torch.zeros_like(b.param)
        if iter_size > 1:
            g = g.mul(1.0 / iter_size)
        local_decay = weight_decay * b.decay_mult
        if local_decay:
            w = b.param.detach()
            g = g.add(w if regularization == "L2" else torch.sign(w), alpha=local_decay)
        b.history.mul_(momentum).add_(g, alpha=rate * b.lr_mult)
        b.param.sub_(b.history)
    return info


class SGDState:
    """The solver's state around the pure rule above (as ``torch.optim.SGD`` is a thin class over its functional
    core): the update count ``iter``, multistep's ``current_step`` and the learnable ``blobs`` (parameter,
    momentum history, multipliers, in Caffe's learnable_params order). :meth:`step` is one update
    (SGDSolver::ApplyUpdate, then Solver::Step's ``++iter_``); :meth:`state_dict` / :meth:`load_state_dict`
    move the state in and out of sfport checkpoints, :meth:`to_solverstate` / :meth:`load_solverstate` in and out
    of Caffe's ``.solverstate`` (SGDSolver::SnapshotSolverStateToBinaryProto / RestoreSolverStateFromBinaryProto).
    """

    def __init__(self, params: list[tuple[str, torch.Tensor, float, float]], iter: int = 0, current_step: int = 0):
        """``params``: ``(name, parameter, lr_mult, decay_mult)`` per learnable blob; the histories start at 0."""
        self.blobs = [Blob(name, p, torch.zeros_like(p), float(lr), float(dm)) for name, p, lr, dm in params]
        self.iter = iter
        self.current_step = current_step

    def reset_history(self) -> None:
        for b in self.blobs:
            b.history = torch.zeros_like(b.param)

    def zero_grad(self) -> None:
        for b in self.blobs:
            b.param.grad = None

    def step(self, p: caffe_pb2.SolverParameter) -> UpdateInfo:
        """One update with the solver's lr policy, momentum, decay, iter_size, regularization and clipping, from the
        accumulated ``.grad``s; then ``iter += 1``. The info carries the rate, the clipping, the update's number
        and the 'MultiStep Status' message when the lr step advanced."""
        rate, self.current_step, message = learning_rate(p, self.iter, self.current_step)
        info = sgd_update(self.blobs, rate, p.momentum, p.weight_decay, max(p.iter_size, 1),
                          p.regularization_type or "L2", p.clip_gradients)
        info.iter, info.message = self.iter, message
        self.iter += 1
        return info

    # -- sfport checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain ints, lists and CPU tensors (what ``torch.load(weights_only=True)`` reads back)."""
        return {"iter": self.iter, "current_step": self.current_step,
                "history": [b.history.detach().cpu() for b in self.blobs],
                "blob_names": [b.name for b in self.blobs]}

    def check_state_dict(self, d: dict, path=None) -> tuple[int, int, list[torch.Tensor]]:
        """What :meth:`load_state_dict` would restore, (iter, lr step, histories), changing nothing: a container
        of the wrong structure (a missing key, a count that is not an int32 >= 0, another number, order or shape
        of histories, blob names of another net) is a :class:`CaffeFileError` naming ``path`` and the key."""
        for key, kind in (("iter", int), ("current_step", int), ("history", list)):
            if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
                raise CaffeFileError(path, f"'{key}' is missing or not {'a list' if kind is list else 'an integer'}")
        _check_counts(d["iter"], d["current_step"], path)
        names = d.get("blob_names")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CaffeFileError(path, "'blob_names' is not a list of names")
            ours = [b.name for b in self.blobs]
            if names != ours:
                diff = next((f"blob {i} is '{a}', the net's is '{b}'" for i, (a, b) in enumerate(zip(names, ours))
                             if a != b), f"{len(names)} blobs, the net has {len(ours)}")
                raise CaffeFileError(path, f"'blob_names' are those of another net: {diff}")
        history = d["history"]
        self._check_history(history, path, "'history'")
        for b, h in zip(self.blobs, history):
            if h.dtype != torch.float32:
                raise CaffeFileError(path, f"'history' of {b.name} is {str(h.dtype).replace('torch.', '')}, "
                                           f"not float32")
        return d["iter"], d["current_step"], history

    def load_state_dict(self, d: dict, path=None) -> None:
        """Restore from :meth:`state_dict`, checked first by :meth:`check_state_dict` (nothing changes when it
        fails)."""
        self.apply(*self.check_state_dict(d, path))

    def apply(self, iter: int, current_step: int, history: list[torch.Tensor]) -> None:
        """Set the state to what :meth:`check_state_dict` / :meth:`check_solverstate` returned."""
        for b, h in zip(self.blobs, history):
            b.history = h.to(b.param.device, b.param.dtype).clone()
        self.iter, self.current_step = iter, current_step

    # -- Caffe's .solverstate -------------------------------------------------------------------------------
    def to_solverstate(self, learned_net: str) -> caffe_files.SolverStateFile:
        """The ``.solverstate`` of this state, its weights in ``learned_net`` (for caffe_files.write_solverstate)."""
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=learned_net, current_step=self.current_step)
        history = [b.history.detach().float().cpu().numpy() for b in self.blobs]
        return caffe_files.SolverStateFile(None, state, history)

    def check_solverstate(self, st: caffe_files.SolverStateFile) -> tuple[int, int, list[torch.Tensor]]:
        """What :meth:`load_solverstate` would restore, changing nothing. Caffe's
        SGDSolver::RestoreSolverStateFromBinaryProto (sgd_solver.cpp): ``CHECK_EQ(state.history_size(),
        history_.size()) << "Incorrect length of history blobs."``, then Blob::FromProto per blob, which takes a
        history of the parameter's element count in whatever shape it was stored (a legacy 4-D one): it is
        reshaped to the parameter here."""
        if len(st.history) != len(self.blobs):
            raise CaffeFileError(st.path, f"incorrect length of history blobs: {len(st.history)} history blobs, the "
                                          f"net has {len(self.blobs)} learnable blobs")
        _check_counts(int(st.state.iter), int(st.state.current_step), st.path)
        history = []
        for b, h in zip(self.blobs, st.history):
            if h.size != b.param.numel():
                raise CaffeFileError(st.path, f"history of {b.name}: {list(h.shape)} does not fit "
                                              f"{list(b.param.shape)}")
            history.append(torch.from_numpy(np.array(h, dtype=np.float32)).reshape(b.param.shape))
        self._check_history(history, st.path, "history")
        return int(st.state.iter), int(st.state.current_step), history

    def load_solverstate(self, st: caffe_files.SolverStateFile) -> None:
        """Iteration, lr step and the histories of a ``.solverstate``, checked first by
        :meth:`check_solverstate`."""
        self.apply(*self.check_solverstate(st))

    def _check_history(self, history: list, path, key: str) -> None:
        if len(history) != len(self.blobs):
            raise CaffeFileError(path, f"{len(history)} history blobs, the net has {len(self.blobs)} learnable blobs")
        for b, h in zip(self.blobs, history):
            if not isinstance(h, torch.Tensor):
                raise CaffeFileError(path, f"{key} of {b.name} is not a tensor")
            if h.shape != b.param.shape:
                raise CaffeFileError(path, f"history of {b.name}: {list(h.shape)} does not fit {list(b.param.shape)}")


def _check_counts(it: int, current_step: int, path) -> None:
    """Caffe keeps the iteration and the lr step as int32 (SolverState.iter, current_step)."""
    for key, v in (("iter", it), ("current_step", current_step)):
        if not 0 <= v <= INT32_MAX:
            raise CaffeFileError(path, f"'{key}' is {v}: negative or past int32 "
                                       f"({'iteration' if key == 'iter' else 'lr step'})")
