"""The solver's state, one class per update rule with one interface (as ``torch.optim``'s optimizers are thin
classes over their functional cores): the update count ``iter``, multistep's ``current_step`` and the learnable
``blobs`` (parameter, histories, multipliers, in Caffe's learnable_params order). :meth:`SolverState.step` is one
update (the rule of :mod:`sfport.solver.sgd` / :mod:`sfport.solver.rules`, then Solver::Step's ``++iter_``);
:meth:`~SolverState.state_dict` / :meth:`~SolverState.load_state_dict` move the state in and out of sfport
checkpoints, :meth:`~SolverState.to_solverstate` / :meth:`~SolverState.load_solverstate` in and out of Caffe's
``.solverstate`` (SGDSolver::SnapshotSolverStateToBinaryProto / RestoreSolverStateFromBinaryProto).

The histories are Caffe's ``history_`` vector: one blob per learnable parameter, and for AdaDelta and Adam a
second set after all the first ones (AdaDeltaPreSolve / AdamPreSolve push ``N`` more), which is the order of the
``history`` blobs in a ``.solverstate``.
"""
from __future__ import annotations

import numpy as np
import torch

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.protos import caffe_pb2
from sfport.solver import rules, sgd

INT32_MAX = 2**31 - 1


class SolverState:
    """The state of one solver type; subclasses set ``type`` (Caffe's solver type name), ``rule`` (the pure
    update) and ``sets`` (history blobs per learnable blob: 1, or 2 for AdaDelta and Adam)."""

    type = "SGD"
    rule = staticmethod(sgd.sgd_update)
    sets = 1

    def __init__(self, params: list[tuple[str, torch.Tensor, float, float]], iter: int = 0, current_step: int = 0):
        """``params``: ``(name, parameter, lr_mult, decay_mult)`` per learnable blob; the histories start at 0."""
        self.blobs = [sgd.Blob(name, p, torch.zeros_like(p), float(lr), float(dm)) for name, p, lr, dm in params]
        self.reset_history()
        self.iter = iter
        self.current_step = current_step

    @property
    def histories(self) -> list[torch.Tensor]:
        """Caffe's ``history_``, in its order (all first histories, then all second ones)."""
        out = [b.history for b in self.blobs]
        return out + [b.history2 for b in self.blobs] if self.sets == 2 else out

    def reset_history(self) -> None:
        for b in self.blobs:
            b.history = torch.zeros_like(b.param)
            b.history2 = torch.zeros_like(b.param) if self.sets == 2 else None

    def zero_grad(self) -> None:
        for b in self.blobs:
            b.param.grad = None

    def step(self, p: caffe_pb2.SolverParameter) -> sgd.UpdateInfo:
        """One update with the solver's lr policy and fields, from the accumulated ``.grad``s; then ``iter += 1``.
        The info carries the rate, the clipping, the update's number and the 'MultiStep Status' message when the
        lr step advanced."""
        rate, self.current_step, message = sgd.learning_rate(p, self.iter, self.current_step)
        info = self.rule(self.blobs, rate, sgd.Hyper.of(p), self.iter)
        info.iter, info.message = self.iter, message
        self.iter += 1
        return info

    # -- sfport checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain ints, strings, lists and CPU tensors (what ``torch.load(weights_only=True)`` reads back)."""
        return {"type": self.type, "iter": self.iter, "current_step": self.current_step,
                "history": [h.detach().cpu() for h in self.histories],
                "blob_names": [b.name for b in self.blobs]}

    def check_state_dict(self, d: dict, path=None) -> tuple[int, int, list[torch.Tensor]]:
        """What :meth:`load_state_dict` would restore, (iter, lr step, histories), changing nothing: a container
        of the wrong structure (a missing key, a count that is not an int32 >= 0, another solver type, number,
        order or shape of histories, blob names of another net) is a :class:`CaffeFileError` naming ``path`` and
        the key."""
        for key, kind in (("iter", int), ("current_step", int), ("history", list)):
            if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
                raise CaffeFileError(path, f"'{key}' is missing or not {'a list' if kind is list else 'an integer'}")
        _check_counts(d["iter"], d["current_step"], path)
        kind = d.get("type", "SGD")
        if kind != self.type:
            raise CaffeFileError(path, f"'type' is {str(kind)[:40]!r}: the state of another solver type (this "
                                       f"solver is {self.type})")
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
        for name, h in zip(self._history_names(), history):
            if h.dtype != torch.float32:
                raise CaffeFileError(path, f"'history' of {name} is {str(h.dtype).replace('torch.', '')}, "
                                           f"not float32")
        return d["iter"], d["current_step"], history

    def load_state_dict(self, d: dict, path=None) -> None:
        """Restore from :meth:`state_dict`, checked first by :meth:`check_state_dict` (nothing changes when it
        fails)."""
        self.apply(*self.check_state_dict(d, path))

    def apply(self, iter: int, current_step: int, history: list[torch.Tensor]) -> None:
        """Set the state to what :meth:`check_state_dict` / :meth:`check_solverstate` returned."""
        n = len(self.blobs)
        for i, b in enumerate(self.blobs):
            b.history = history[i].to(b.param.device, b.param.dtype).clone()
            if self.sets == 2:
                b.history2 = history[n + i].to(b.param.device, b.param.dtype).clone()
        self.iter, self.current_step = iter, current_step

    # -- Caffe's .solverstate -------------------------------------------------------------------------------
    def to_solverstate(self, learned_net: str) -> caffe_files.SolverStateFile:
        """The ``.solverstate`` of this state, its weights in ``learned_net`` (for caffe_files.write_solverstate)."""
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=learned_net, current_step=self.current_step)
        history = [h.detach().float().cpu().numpy() for h in self.histories]
        return caffe_files.SolverStateFile(None, state, history)

    def check_solverstate(self, st: caffe_files.SolverStateFile) -> tuple[int, int, list[torch.Tensor]]:
        """What :meth:`load_solverstate` would restore, changing nothing. Caffe's
        SGDSolver::RestoreSolverStateFromBinaryProto (sgd_solver.cpp): ``CHECK_EQ(state.history_size(),
        history_.size()) << "Incorrect length of history blobs."``, then Blob::FromProto per blob, which takes a
        history of the parameter's element count in whatever shape it was stored (a legacy 4-D one): it is
        reshaped to the parameter here."""
        want = len(self.blobs) * self.sets
        if len(st.history) != want:
            raise CaffeFileError(st.path, f"incorrect length of history blobs: {len(st.history)} history blobs, "
                                          f"where the {self.type} solver of this net has {want}"
                                          + (f" ({self.sets} per learnable blob)" if self.sets > 1 else ""))
        _check_counts(int(st.state.iter), int(st.state.current_step), st.path)
        history = []
        for name, p, h in zip(self._history_names(), self._history_params(), st.history):
            if h.size != p.numel():
                raise CaffeFileError(st.path, f"history of {name}: {list(h.shape)} does not fit {list(p.shape)}")
            history.append(torch.from_numpy(np.array(h, dtype=np.float32)).reshape(p.shape))
        self._check_history(history, st.path, "history")
        return int(st.state.iter), int(st.state.current_step), history

    def load_solverstate(self, st: caffe_files.SolverStateFile) -> None:
        """Iteration, lr step and the histories of a ``.solverstate``, checked first by
        :meth:`check_solverstate`."""
        self.apply(*self.check_solverstate(st))

    def _history_names(self) -> list[str]:
        names = [b.name for b in self.blobs]
        return names + [f"{n} (second history)" for n in names] if self.sets == 2 else names

    def _history_params(self) -> list[torch.Tensor]:
        return [b.param for b in self.blobs] * self.sets

    def _check_history(self, history: list, path, key: str) -> None:
        want = len(self.blobs) * self.sets
        if len(history) != want:
            raise CaffeFileError(path, f"{len(history)} history blobs, where the {self.type} solver of this net "
                                       f"has {want}")
        for name, p, h in zip(self._history_names(), self._history_params(), history):
            if not isinstance(h, torch.Tensor):
                raise CaffeFileError(path, f"{key} of {name} is not a tensor")
            if h.shape != p.shape:
                raise CaffeFileError(path, f"history of {name}: {list(h.shape)} does not fit {list(p.shape)}")


class SGDState(SolverState):
    """SGDSolver: one momentum history per blob."""


class NesterovState(SolverState):
    type, rule = "Nesterov", staticmethod(rules.nesterov_update)


class AdaGradState(SolverState):
    type, rule = "AdaGrad", staticmethod(rules.adagrad_update)


class RMSPropState(SolverState):
    type, rule = "RMSProp", staticmethod(rules.rmsprop_update)


class AdaDeltaState(SolverState):
    type, rule, sets = "AdaDelta", staticmethod(rules.adadelta_update), 2


class AdamState(SolverState):
    type, rule, sets = "Adam", staticmethod(rules.adam_update), 2


STATES = {cls.type: cls for cls in (SGDState, NesterovState, AdaGradState, RMSPropState, AdaDeltaState, AdamState)}
assert tuple(STATES) == sgd.TYPES


def state_for(p: caffe_pb2.SolverParameter, params: list[tuple], iter: int = 0) -> SolverState:
    """The state of the solver's ``type`` (SolverRegistry::CreateSolver) over ``params``."""
    return STATES[p.type or "SGD"](params, iter)


def _check_counts(it: int, current_step: int, path) -> None:
    """Caffe keeps the iteration and the lr step as int32 (SolverState.iter, current_step)."""
    for key, v in (("iter", it), ("current_step", current_step)):
        if not 0 <= v <= INT32_MAX:
            raise CaffeFileError(path, f"'{key}' is {v}: negative or past int32 "
                                       f"({'iteration' if key == 'iter' else 'lr step'})")
