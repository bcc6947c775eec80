"""Caffe's other five update rules, each a pure function of the blobs, the rate, the solver's fields and the update's
number, as :func:`sfport.solver.sgd.sgd_update` is: Nesterov (nesterov_solver.cpp), AdaGrad (adagrad_solver.cpp),
RMSProp (rmsprop_solver.cpp), AdaDelta (adadelta_solver.cpp) and Adam (adam_solver.cpp).

Each starts from :func:`sfport.solver.sgd.gradients` (clip, normalize, regularize: SGDSolver::ApplyUpdate), then
does its ComputeUpdateValue in the order of the CPU code, in float32, the coefficients computed as Caffe's
``Dtype`` expressions (``Dtype(1) - momentum`` and the like), and ends with Net::Update (``w -= diff``). Caffe's
``caffe_powx(x, 0.5)`` (powf) is ``sqrt`` here: both are within an ulp, sqrt is the same on every CPU.
Blobs with lr_mult 0 take part as in Caffe: their histories move, their weights do not (the rate is 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from sfport.solver.sgd import Blob, Hyper, UpdateInfo, fmul, gradients

f32 = np.float32


def _one_minus(x: float) -> float:
    return float(f32(1) - f32(x))


@torch.no_grad()
def nesterov_update(blobs: list[Blob], rate: float, hp: Hyper, it: int = 0) -> UpdateInfo:
    """NesterovSolver::ComputeUpdateValue: ``u = h``; ``h = momentum*h + local_rate*g``; ``diff = (1+momentum)*h
    - momentum*u`` (step back, then over-step); ``w -= diff``."""
    info, grads = gradients(blobs, rate, hp)
    m = hp.momentum
    for b, g in zip(blobs, grads):
        before = b.history.clone()
        b.history.mul_(m).add_(g, alpha=fmul(rate, b.lr_mult))
        diff = before.mul_(-m).add_(b.history, alpha=float(f32(1) + f32(m)))
        b.param.sub_(diff)
    return info


@torch.no_grad()
def adagrad_update(blobs: list[Blob], rate: float, hp: Hyper, it: int = 0) -> UpdateInfo:
    """AdaGradSolver::ComputeUpdateValue: ``h += g^2``; ``diff = local_rate * g / (sqrt(h) + delta)``."""
    info, grads = gradients(blobs, rate, hp)
    for b, g in zip(blobs, grads):
        b.history.add_(g * g)
        diff = g / b.history.sqrt().add_(hp.delta)
        b.param.sub_(diff.mul_(fmul(rate, b.lr_mult)))
    return info


@torch.no_grad()
def rmsprop_update(blobs: list[Blob], rate: float, hp: Hyper, it: int = 0) -> UpdateInfo:
    """RMSPropSolver::ComputeUpdateValue: ``h = rms_decay*h + (1-rms_decay)*g^2``; ``diff = local_rate * g /
    (sqrt(h) + delta)``."""
    info, grads = gradients(blobs, rate, hp)
    d = hp.rms_decay
    for b, g in zip(blobs, grads):
        b.history.mul_(d).add_(g * g, alpha=_one_minus(d))
        diff = g / b.history.sqrt().add_(hp.delta)
        b.param.sub_(diff.mul_(fmul(rate, b.lr_mult)))
    return info


@torch.no_grad()
def adadelta_update(blobs: list[Blob], rate: float, hp: Hyper, it: int = 0) -> UpdateInfo:
    """AdaDeltaSolver::ComputeUpdateValue, with the gradient history ``h`` (``history_[i]``) and the update
    history ``h2`` (``history_[N + i]``): ``h = momentum*h + (1-momentum)*g^2``; ``u = g * sqrt((h2 + delta) /
    (h + delta))``; ``h2 = momentum*h2 + (1-momentum)*u^2``; ``diff = local_rate * u``."""
    info, grads = gradients(blobs, rate, hp)
    m, one_m, delta = hp.momentum, _one_minus(hp.momentum), hp.delta
    for b, g in zip(blobs, grads):
        b.history.mul_(m).add_(g * g, alpha=one_m)
        u = g * (b.history2 + delta).div_(b.history + delta).sqrt_()
        b.history2.mul_(m).add_(u * u, alpha=one_m)
        b.param.sub_(u.mul_(fmul(rate, b.lr_mult)))
    return info


def adam_correction(beta1: float, beta2: float, t: int) -> float:
    """AdamSolver's ``correction = sqrt(1 - beta2^t) / (1 - beta1^t)`` at step ``t = iter + 1``: ``pow(Dtype,
    int)`` is computed in double (C++11's promotion), the result stored as ``Dtype``."""
    b1, b2 = float(f32(beta1)), float(f32(beta2))
    return float(f32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)))


@torch.no_grad()
def adam_update(blobs: list[Blob], rate: float, hp: Hyper, it: int = 0) -> UpdateInfo:
    """AdamSolver::ComputeUpdateValue at update ``it`` (``t = it + 1``), with ``m`` (``history_[i]``) and ``v``
    (``history_[N + i]``): ``m = beta1*m + (1-beta1)*g``; ``v = beta2*v + (1-beta2)*g^2``; ``diff =
    local_rate*correction * m / (sqrt(v) + eps_hat)``; beta1 is ``momentum``, beta2 ``momentum2``, eps_hat
    ``delta``."""
    info, grads = gradients(blobs, rate, hp)
    b1, b2 = hp.momentum, hp.momentum2
    correction = adam_correction(b1, b2, it + 1)
    for b, g in zip(blobs, grads):
        b.history.mul_(b1).add_(g, alpha=_one_minus(b1))
        b.history2.mul_(b2).add_(g * g, alpha=_one_minus(b2))
        diff = b.history / b.history2.sqrt().add_(hp.delta)
        b.param.sub_(diff.mul_(fmul(fmul(rate, b.lr_mult), correction)))
    return info
