"""The SGD rule, what every rule starts from, and the learning-rate schedules, as Caffe's SGDSolver
(sgd_solver.cpp); the other five rules are :mod:`sfport.solver.rules`, the solver states :mod:`sfport.solver.state`.

``check_solver`` is every rule a solver prototxt must keep (Caffe's CHECKs of solver.cpp, sgd_solver.cpp and the
solvers' constructors, and what Caffe would run silently wrong), checked once when the solver is read.
``learning_rate`` (SGDSolver::GetLearningRate: the seven lr policies, with Caffe's ``iter`` and multistep
``current_step``), ``gradients`` (ClipGradients, Normalize, Regularize) and ``sgd_update`` (momentum with the rate
inside the history, then Net::Update) are pure functions of their arguments.

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

from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2
from sfport.solver.detection_map import AP_VERSIONS

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
# the solver types Caffe registers (REGISTER_SOLVER_CLASS in src/caffe/solvers/*.cpp); their rules are
# sfport.solver.rules, their states sfport.solver.state
TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
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

    kind = p.type or "SGD"
    if kind not in TYPES:   # solver_factory.hpp SolverRegistry::CreateSolver: "Unknown solver type"
        bad("type", f"unknown solver type '{p.type}' (known types: {', '.join(TYPES)})")
    for field in ("base_lr", "momentum", "weight_decay", "gamma", "power", "clip_gradients", "delta", "momentum2",
                  "rms_decay"):
        v = getattr(p, field)
        if not math.isfinite(v):
            bad(field, f"{v} is not a finite number")
    if kind in ("AdaGrad", "RMSProp") and p.momentum != 0:   # sgd_solvers.hpp constructor_sanity_check
        bad("momentum", f"{p.momentum:g}: momentum cannot be used with {kind} (Caffe: CHECK_EQ(0, momentum))")
    if kind == "RMSProp" and not 0 <= p.rms_decay < 1:         # CHECK_GE(rms_decay, 0), CHECK_LT(rms_decay, 1)
        bad("rms_decay", f"{p.rms_decay:g}: rms_decay should lie between 0 and 1")
    if p.eval_type not in ("classification", "detection"):   # the SSD fork's TestAll: "Unknown evaluation type"
        bad("eval_type", f"unknown evaluation type '{p.eval_type}' (classification or detection)")
    if p.eval_type == "detection" and p.ap_version not in AP_VERSIONS:   # bbox_util.cpp ComputeAP: "Unknown ap_version"
        bad("ap_version", f"unknown ap_version '{p.ap_version}' ({', '.join(AP_VERSIONS)})")
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
    """One learnable blob as the solver sees it: the parameter, its histories (Caffe's ``history_[i]`` and, for
    AdaDelta and Adam, ``history_[N + i]``), its multipliers."""
    name: str
    param: torch.Tensor
    history: torch.Tensor
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    history2: torch.Tensor | None = None


@dataclass
class UpdateInfo:
    rate: float
    clip_norm: float | None = None      # the L2 norm when clipping scaled the gradients down
    clip_scale: float | None = None
    iter: int | None = None             # SolverState.step: the update's number (before ``iter += 1``)
    message: str | None = None          # SolverState.step: 'MultiStep Status' when the lr step advanced


@dataclass(frozen=True)
class Hyper:
    """The solver fields an update rule reads, as Caffe's ``Dtype`` (float32) values: ``momentum`` (Adam's
    beta1), ``momentum2`` (Adam's beta2), ``delta`` (AdaGrad, RMSProp, AdaDelta; Adam's eps_hat), ``rms_decay``,
    ``weight_decay``, ``iter_size``, ``regularization`` and ``clip_gradients``."""
    momentum: float = 0.0
    weight_decay: float = 0.0
    iter_size: int = 1
    regularization: str = "L2"
    clip_gradients: float = -1.0
    delta: float = 1e-8
    momentum2: float = 0.999
    rms_decay: float = 0.99

    @classmethod
    def of(cls, p: caffe_pb2.SolverParameter) -> "Hyper":
        return cls(float(f32(p.momentum)), float(f32(p.weight_decay)), max(p.iter_size, 1),
                   p.regularization_type or "L2", float(f32(p.clip_gradients)), float(f32(p.delta)),
                   float(f32(p.momentum2)), float(f32(p.rms_decay)))


def fmul(a: float, b: float) -> float:
    """``Dtype(a) * Dtype(b)`` in float32, as a Python float (a coefficient Caffe computes in float)."""
    return float(f32(a) * f32(b))


def by_coefficient(coefficients: list[float]) -> dict[float, list[int]]:
    """The blobs' indices grouped by a per-blob coefficient (a multiplier): each group is one ``torch._foreach_*``
    call, whose scalar is one for all its tensors. Per element the arithmetic is the per-blob op's, so grouping
    changes no value; it only saves a call per blob (what dominates a small net's update)."""
    groups: dict[float, list[int]] = {}
    for i, c in enumerate(coefficients):
        groups.setdefault(c, []).append(i)
    return groups


@torch.no_grad()
def gradient_l2_norm(blobs: list[Blob]) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for b in blobs:
        if b.param.grad is not None:
            total += (b.param.grad.double() ** 2).sum().cpu()
    return math.sqrt(float(total))


@torch.no_grad()
def gradients(blobs: list[Blob], rate: float, hp: Hyper) -> tuple[UpdateInfo, list[torch.Tensor]]:
    """What every rule starts from (SGDSolver::ApplyUpdate before ComputeUpdateValue, sgd_solver.cpp): the
    accumulated gradients clipped by their global L2 norm (ClipGradients), then per blob ``g /= iter_size``
    (Normalize) and ``g += weight_decay*decay_mult * (w | sign(w))`` (Regularize). Every learnable blob takes
    part, lr_mult 0 too, as in Caffe (a blob without gradient has Caffe's cleared diff, 0). ``.grad`` is
    consumed."""
    info = UpdateInfo(rate)
    if hp.regularization not in ("L1", "L2"):
        raise ValueError(f"unknown regularization_type '{hp.regularization}' (Caffe has L1 and L2)")
    if hp.clip_gradients >= 0:
        norm = gradient_l2_norm(blobs)
        if norm > hp.clip_gradients:
            scale = hp.clip_gradients / norm
            info.clip_norm, info.clip_scale = norm, scale
            for b in blobs:
                if b.param.grad is not None:
                    b.param.grad.mul_(scale)
    grads = [b.param.grad if b.param.grad is not None else torch.zeros_like(b.param) for b in blobs]
    if hp.iter_size > 1:
        grads = list(torch._foreach_mul(grads, float(f32(1) / f32(hp.iter_size))))
    for local_decay, idx in by_coefficient([fmul(hp.weight_decay, b.decay_mult) for b in blobs]).items():
        if local_decay:
            w = [blobs[i].param.detach() for i in idx]
            new = torch._foreach_add([grads[i] for i in idx], w if hp.regularization == "L2"
                                     else torch._foreach_sign(w), alpha=local_decay)
            for i, g in zip(idx, new):
                grads[i] = g
    return info, grads


@torch.no_grad()
def sgd_update(blobs: list[Blob], rate: float, hp: Hyper, it: int = 0) -> UpdateInfo:
    """One Caffe SGD update (SGDSolver::ComputeUpdateValue after :func:`gradients`): ``h = momentum*h +
    rate*lr_mult*g``; ``w -= h`` (Net::Update). Mutates params and histories in place. ``it`` (the update's
    number) is not used by SGD; every rule takes it (Adam's bias correction does)."""
    info, grads = gradients(blobs, rate, hp)
    if not blobs:
        return info
    history = [b.history for b in blobs]
    torch._foreach_mul_(history, hp.momentum)
    for lr_mult, idx in by_coefficient([b.lr_mult for b in blobs]).items():
        torch._foreach_add_([history[i] for i in idx], [grads[i] for i in idx], alpha=fmul(rate, lr_mult))
    torch._foreach_sub_([b.param for b in blobs], history)
    return info
