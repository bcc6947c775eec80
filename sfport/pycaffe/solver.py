"""pycaffe's solvers (_caffe.cpp's Solver classes over solver.cpp and sgd_solver.cpp): ``SGDSolver(path)``,
``get_solver(path)``, ``solver.net``, ``test_nets``, ``iter``, ``step(n)``, ``solve(resume=None)``,
``snapshot()``, ``restore(path)``, ``apply_update()``, ``add_callback(on_start, on_gradients_ready)``,
``share_weights(net)``, ``param``, ``lr``.

The nets are :class:`sfport.pycaffe.net.Net` (the test nets share the train net's weights, Solver::InitTestNets);
the update is the solver class's rule (:mod:`sfport.solver.state`: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)
with :func:`sfport.solver.sgd.learning_rate`, the one implementation of Caffe's rules that ``sfport train`` runs
too, on the very memory the blobs show.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.protos import caffe_pb2
from sfport.pycaffe.common import set_random_seed
from sfport.pycaffe.net import Net
from sfport.report.progress import CaffeLog
from sfport.solver import sgd
from sfport.solver.state import STATES
from sfport.solver import checkpoint
from sfport.solver.config import net_states, nets_of, read_solver
from sfport.solver.log import g6, output_line

_SGD = "SGD"


class SGDSolver:
    """``caffe.SGDSolver(solver_prototxt)``: Caffe's SGD solver (sgd_solver.cpp) on pycaffe nets; the other five
    classes differ only in their rule (as in _caffe.cpp, the class decides the rule, not the file's ``type``)."""

    type = _SGD

    def __init__(self, path):
        path = os.fspath(path)
        sp, notes = read_solver(path)   # Caffe's checks, before any net is built (a non-SGD type is refused)
        self._param = sp
        self._path = path
        self.log = CaffeLog()
        for note in notes:
            self.log(note, "upgrade_proto.cpp:1113")
        if sp.random_seed >= 0:   # Solver::Init: Caffe::set_random_seed(param_.random_seed())
            set_random_seed(sp.random_seed)
        train, tests, files = nets_of(sp, Path.cwd(), path)   # Caffe reads net paths from the working directory
        train_state, test_states = net_states(sp, train, tests)
        self.log(f"Creating training net from net file: {sp.net or sp.train_net or '(in the solver)'}",
                 "solver.cpp:87")
        self.net = Net(caffe_files.CaffeModel.from_net(train, files[0]), train_state)
        for w in sp.weights:   # Solver::InitTrainNet: the solver's own weights
            self.net.copy_from(w)
        self.test_nets = []
        for tp, ts, f in zip(tests, test_states, files[1:]):
            test_net = Net(caffe_files.CaffeModel.from_net(tp, f), ts)
            test_net.share_with(self.net)   # Solver::InitTestNets: ShareTrainedLayersWith(net_)
            self.test_nets.append(test_net)
        self._callbacks: list[tuple] = []
        self._losses: list[float] = []
        self.smoothed_loss = 0.0
        self._state = STATES[self.type](self._learnable())
        self.log("Solver scaffolding done.", "solver.cpp:56")

    def _learnable(self) -> list[tuple]:
        """Net::learnable_params_: every parameter blob of the train net once (a shared blob at its owner), with
        its ParamSpec's lr_mult and decay_mult (default 1)."""
        out, seen = [], set()
        for name, kind in zip(self.net._layer_names, self.net._kinds):
            specs = kind.layer_param.param
            for j, blob in enumerate(kind.blobs):
                if id(blob._param) in seen:
                    continue
                seen.add(id(blob._param))
                spec = specs[j] if j < len(specs) else caffe_pb2.ParamSpec()
                out.append((f"{name}/{j}", blob._param, spec.lr_mult, spec.decay_mult))
        return out

    @property
    def iter(self) -> int:
        """Solver::iter(): the number of updates done (the solver state's own count)."""
        return self._state.iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._state.iter = int(value)

    @property
    def current_step(self) -> int:
        return self._state.current_step

    @current_step.setter
    def current_step(self, value: int) -> None:
        self._state.current_step = int(value)

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        return self._param

    @property
    def lr(self) -> float:
        """SGDSolver::GetLearningRate at the current iteration."""
        return sgd.learning_rate(self._param, self.iter, self.current_step)[0]

    def add_callback(self, on_start, on_gradients_ready) -> None:
        self._callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net: Net) -> None:
        """_caffe.cpp share_weights: ``net`` takes this solver's train net's weights."""
        net.share_with(self.net)

    # -- solver.cpp ------------------------------------------------------------------------------------------
    def _update_smoothed(self, loss: float, start_iter: int) -> None:
        """Solver::UpdateSmoothedLoss over ``average_loss`` iterations."""
        n = self._param.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            self.smoothed_loss = (self.smoothed_loss * (len(self._losses) - 1) + loss) / len(self._losses)
        else:
            idx = (self.iter - start_iter) % n
            self.smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    def step(self, iters: int) -> None:
        """Solver::Step: ``iters`` iterations, each: the diffs cleared, a test when due, the callbacks'
        on_start, iter_size forward/backward passes, the smoothed loss and display lines, on_gradients_ready,
        the update, ``iter += 1``, a snapshot when due."""
        sp = self._param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self._losses, self.smoothed_loss = [], 0.0
        last_time, last_iter = time.time(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if sp.test_interval and self.iter % sp.test_interval == 0 and (self.iter > 0 or sp.test_initialization):
                self.test_all()
            for on_start, _ in self._callbacks:
                on_start()
            display = sp.display and self.iter % sp.display == 0
            loss = 0.0
            for _ in range(max(sp.iter_size, 1)):
                loss += self.net.forward_backward()
            loss /= max(sp.iter_size, 1)
            self._update_smoothed(loss, start_iter)
            if display:
                now = time.time()
                lapse = now - last_time
                per_s = (self.iter - last_iter) / (lapse if lapse else 1)
                self.log(f"Iteration {self.iter} ({g6(per_s)} iter/s, {g6(lapse)}s/{sp.display} iters), "
                         f"loss = {g6(self.smoothed_loss)}", "solver.cpp:218")
                last_time, last_iter = now, self.iter
                self._output_lines("Train", self.net, [self.net.blobs[o].data.reshape(-1)
                                                       for o in self.net.outputs])
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            self.apply_update()
            self.iter += 1
            if sp.snapshot and self.iter % sp.snapshot == 0:
                self.snapshot()

    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate: the rate of this iteration (its log line on display iterations), clipping, then
        per learnable blob normalisation, regularisation, momentum and the step (the iteration does not advance:
        Step does that)."""
        sp = self._param
        rate, self.current_step, message = sgd.learning_rate(sp, self.iter, self.current_step)
        if message:
            self.log(message, "sgd_solver.cpp:46")
        if sp.display and self.iter % sp.display == 0:
            self.log(f"Iteration {self.iter}, lr = {g6(rate)}", "sgd_solver.cpp:105")
        info = self._state.rule(self._state.blobs, rate, sgd.Hyper.of(sp), self.iter)
        if info.clip_scale is not None:
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {g6(info.clip_norm)} > "
                     f"{g6(sp.clip_gradients)}) by scale factor {g6(info.clip_scale)}", "sgd_solver.cpp:92")

    def solve(self, resume_file=None) -> None:
        """Solver::Solve: restore ``resume_file`` if given, step to max_iter, the snapshot after training, one
        display forward and the tests when due."""
        sp = self._param
        self.log(f"Solving {self.net.name}", "solver.cpp:272")
        self.log(f"Learning Rate Policy: {sp.lr_policy}", "solver.cpp:273")
        if resume_file:
            self.log(f"Restoring previous solver status from {resume_file}", "solver.cpp:276")
            self.restore(resume_file)
        start_iter = self.iter
        self.step(sp.max_iter - self.iter)
        if sp.snapshot_after_train and (not sp.snapshot or self.iter % sp.snapshot != 0):
            self.snapshot()
        if sp.display and self.iter % sp.display == 0:
            loss = self.net._forward(0, len(self.net.layers) - 1)
            self._update_smoothed(loss, start_iter)
            self.log(f"Iteration {self.iter}, loss = {g6(self.smoothed_loss)}", "solver.cpp:310")
        if sp.test_interval and self.iter % sp.test_interval == 0:
            self.test_all()
        self.log("Optimization Done.", "solver.cpp:315")

    def test_all(self) -> None:
        """Solver::TestAll / Test: each test net forward test_iter times; the mean of every output value, and the
        mean loss with test_compute_loss."""
        sp = self._param
        for i, net in enumerate(self.test_nets):
            self.log(f"Iteration {self.iter}, Testing net (#{i})", "solver.cpp:330")
            net.share_with(self.net)
            scores, loss = None, 0.0
            for _ in range(sp.test_iter[i]):
                iter_loss = net._forward(0, len(net.layers) - 1)
                loss += iter_loss
                values = [net.blobs[o].data.reshape(-1).astype(np.float64) for o in net.outputs]
                scores = values if scores is None else [a + b for a, b in zip(scores, values)]
            if sp.test_compute_loss:
                self.log(f"Test loss: {g6(loss / sp.test_iter[i])}", "solver.cpp:398")
            self._output_lines("Test", net, [s / sp.test_iter[i] for s in scores or []])

    def _output_lines(self, kind: str, net: Net, values: list) -> None:
        n = 0
        for name, vals in zip(net.outputs, values):
            weight = net.blob_loss_weights[name]
            for v in np.asarray(vals).reshape(-1):
                self.log(output_line(kind, n, name, float(v), weight), "solver.cpp:237")
                n += 1

    # -- snapshots ---------------------------------------------------------------------------------------------
    def snapshot(self) -> str:
        """Solver::Snapshot: ``<prefix>_iter_<iter>.caffemodel`` and ``.solverstate`` (``snapshot_format: HDF5``:
        ``.caffemodel.h5`` and ``.solverstate.h5``), both or neither (:func:`sfport.solver.checkpoint.write_snapshot`);
        returns the model file."""
        def write_model(path, hdf5):
            if hdf5:
                self.net.save_hdf5(path)
            else:
                caffe_files.write_caffemodel(path, self.net.to_proto(self._param.snapshot_diff))

        st = self._state.to_solverstate("")
        return checkpoint.write_snapshot(self._param, self.iter, write_model, st, self.log)[0]

    def restore(self, state_file) -> None:
        """Solver::Restore: iteration, lr step and histories of a ``.solverstate`` (``.h5``: Caffe's HDF5 solver
        state), and the weights of the learned_net it names; checked whole before anything changes."""
        path = os.fspath(state_file)
        st = checkpoint.read_state(path)
        it, step, history = self._state.check_solverstate(st)
        if st.state.learned_net:
            self.net.copy_from(st.state.learned_net)
        self._state.apply(it, step, history)


def _solver_class(kind: str):
    cls = type(f"{kind}Solver", (SGDSolver,), {"type": kind, "__doc__": f"``caffe.{kind}Solver``: Caffe's {kind} "
                                                                          f"rule (sfport.solver.rules)."})
    cls.__module__ = __name__
    return cls


NesterovSolver = _solver_class("Nesterov")
AdaGradSolver = _solver_class("AdaGrad")
RMSPropSolver = _solver_class("RMSProp")
AdaDeltaSolver = _solver_class("AdaDelta")
AdamSolver = _solver_class("Adam")


def get_solver(path) -> SGDSolver:
    """_caffe.cpp GetSolverFromFile: the solver of the file's ``type`` (SolverRegistry::CreateSolver)."""
    sp = caffe_files.read_solver(path).param
    kind = sp.type or _SGD
    cls = {c.type: c for c in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
                               AdamSolver)}.get(kind)
    if cls is None:
        raise CaffeFileError(os.fspath(path), f"unknown solver type '{kind}' (Caffe has SGD, Nesterov, AdaGrad, "
                                              f"RMSProp, AdaDelta, Adam)")
    return cls(path)
