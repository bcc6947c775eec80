"""The SGD rule and its learning-rate schedules, as Caffe's SGDSolver (sgd_solver.cpp).

``learning_rate`` (SGDSolver::GetLearningRate: the seven lr policies, with Caffe's ``iter`` and multistep
``current_step``) and ``sgd_update`` (SGDSolver::ApplyUpdate: clip, normalize, regularize, momentum with the rate
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

from sfport import caffe_files
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

    def load_state_dict(self, d: dict, path=None) -> None:
        """Restore from :meth:`state_dict`; a container of the wrong structure (a missing key, a non-integer
        count, a wrong number of histories or shapes) is a :class:`CaffeFileError` naming ``path``."""
        for key, kind in (("iter", int), ("current_step", int), ("history", list)):
            if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
                raise CaffeFileError(path, f"'{key}' is missing or not {'a list' if kind is list else 'an integer'}")
        if d["iter"] < 0 or d["current_step"] < 0:
            raise CaffeFileError(path, f"negative iteration {d['iter']} or lr step {d['current_step']}")
        self._set_history(d["history"], path)
        self.iter, self.current_step = d["iter"], d["current_step"]

    # -- Caffe's .solverstate -------------------------------------------------------------------------------
    def to_solverstate(self, learned_net: str) -> caffe_files.SolverStateFile:
        """The ``.solverstate`` of this state, its weights in ``learned_net`` (for caffe_files.write_solverstate)."""
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=learned_net, current_step=self.current_step)
        history = [b.history.detach().float().cpu().numpy() for b in self.blobs]
        return caffe_files.SolverStateFile(None, state, history)

    def load_solverstate(self, st: caffe_files.SolverStateFile) -> None:
        """Iteration, lr step and the histories of a ``.solverstate``: Caffe's Blob::FromProto takes a history of
        the parameter's element count in whatever shape it was stored (a legacy 4-D one), so it is reshaped to the
        parameter here; :meth:`_set_history` checks the count of blobs."""
        history = []
        for b, h in zip(self.blobs, st.history):
            if h.size != b.param.numel():
                raise CaffeFileError(st.path, f"history of {b.name}: {list(h.shape)} does not fit "
                                              f"{list(b.param.shape)}")
            history.append(torch.from_numpy(np.array(h, dtype=np.float32)).reshape(b.param.shape))
        self._set_history(history, st.path)
        self.iter, self.current_step = int(st.state.iter), int(st.state.current_step)

    def _set_history(self, history: list, path) -> None:
        if len(history) != len(self.blobs):
            raise CaffeFileError(path, f"{len(history)} history blobs, the net has {len(self.blobs)} learnable blobs")
        for b, h in zip(self.blobs, history):
            if not isinstance(h, torch.Tensor):
                raise CaffeFileError(path, f"history of {b.name} is not a tensor")
            if h.shape != b.param.shape:
                raise CaffeFileError(path, f"history of {b.name}: {list(h.shape)} does not fit {list(b.param.shape)}")
        for b, h in zip(self.blobs, history):
            b.history = h.to(b.param.device, b.param.dtype).clone()
