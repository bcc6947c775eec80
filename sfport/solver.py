"""Caffe's SGDSolver, to the letter of SPEC.md section 5.

``learning_rate`` (the seven lr policies, with Caffe's ``iter`` and multistep ``current_step``) and ``sgd_update``
(one update of every learnable blob: clip, normalize, regularize, momentum with the rate inside the history,
apply) are plain functions; :class:`SGDState` is the state Caffe keeps in a ``.solverstate``.

The update differs from ``torch.optim.SGD``: Caffe keeps ``h = momentum*h + rate*lr_mult*g`` and steps ``w -= h``
(the rate sits inside the history), torch keeps ``v = momentum*v + g`` and steps ``w -= lr*v``; they differ as soon
as the rate changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass, field

import numpy as np
import torch

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


def learning_rate(p: caffe_pb2.SolverParameter, it: int, current_step: int = 0) -> tuple[float, int, str | None]:
    """Caffe's SGDSolver::GetLearningRate at update ``it``: (rate as float32 value, new current_step, the
    'MultiStep Status' message when the step advanced)."""
    policy = p.lr_policy
    message = None
    if policy == "fixed":
        rate = p.base_lr
    elif policy == "step":
        if p.stepsize <= 0:
            raise ValueError("lr_policy 'step' needs stepsize > 0")
        current_step = it // p.stepsize
        rate = p.base_lr * math.pow(p.gamma, current_step)
    elif policy == "exp":
        rate = p.base_lr * math.pow(p.gamma, it)
    elif policy == "inv":  # float arithmetic and powf, as Caffe's Dtype = float code
        rate = f32(p.base_lr) * powf(f32(1) + f32(p.gamma) * f32(it), f32(-p.power))
    elif policy == "multistep":
        if current_step < len(p.stepvalue) and it >= p.stepvalue[current_step]:
            current_step += 1
            message = f"MultiStep Status: Iteration {it}, step = {current_step}"
        rate = p.base_lr * math.pow(p.gamma, current_step)
    elif policy == "poly":
        if p.max_iter <= 0:
            raise ValueError("lr_policy 'poly' needs max_iter > 0")
        rate = f32(p.base_lr) * powf(f32(1) - f32(it) / f32(p.max_iter), f32(p.power))
    elif policy == "sigmoid":
        if p.stepsize <= 0:
            raise ValueError("lr_policy 'sigmoid' needs stepsize > 0")
        rate = f32(p.base_lr) * (f32(1) / (f32(1) + expf(-f32(p.gamma) * (f32(it) - f32(p.stepsize)))))
    else:
        raise ValueError(f"unknown lr_policy '{policy}' (Caffe has {', '.join(POLICIES)})")
    with np.errstate(all="ignore"):
        return float(np.float32(rate)), current_step, message


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


@dataclass
class SGDState:
    """What a ``.solverstate`` holds: the update count, multistep's step and one history per learnable blob."""
    iter: int = 0
    current_step: int = 0
    history: list[torch.Tensor] = field(default_factory=list)
