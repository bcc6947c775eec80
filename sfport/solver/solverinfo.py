"""What ``sfport inspect SOLVER`` shows of a solver prototxt: its settings (every field set in the file and the
defaults that matter), the nets it trains (Solver::InitTrainNet / InitTestNets: files resolved by
:mod:`sfport.solver.paths`, NetStates, layer counts, the TRAIN data layers' batch sizes), its learning-rate schedule
(computed by :func:`sfport.solver.sgd.learning_rate`, Caffe's SGDSolver::GetLearningRate: the one home of the policies)
and the effective batch, as a dict (the ``--json`` document), as text, and the lr schedule as a figure."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from sfport.formats import caffe_files
from sfport.report import plots
from sfport.solver import sgd
from sfport.netdef.netstate import included
from sfport.protos import caffe_pb2
from sfport.solver.config import net_states, nets_of, read_solver
from sfport.netdef.datalayers import batch_size, data_layers
from sfport.solver.log import g6
from sfport.solver.paths import RULE, existing, resolve_path
from sfport.errors import CaffeFileError

CONTINUOUS = ("exp", "inv", "poly", "sigmoid")   # a new rate every iteration: the schedule table is sampled
POLICY_FIELDS = {"fixed": (), "step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
                 "multistep": ("gamma", "stepvalue"), "poly": ("power",), "sigmoid": ("gamma", "stepsize")}
# the fields each update rule reads (sgd_solvers.hpp and the rules of sfport.solver.rules): Adam's beta1 and beta2
# are momentum and momentum2, its eps_hat delta
TYPE_FIELDS = {"SGD": ("momentum",), "Nesterov": ("momentum",), "AdaGrad": ("delta",),
               "RMSProp": ("rms_decay", "delta"), "AdaDelta": ("momentum", "delta"),
               "Adam": ("momentum", "momentum2", "delta")}
SAMPLES = 10        # intervals of the sampled table of a continuous policy
CURVE_POINTS = 500  # iterations the drawn curve of a continuous policy is evaluated at


def important_fields(sp: caffe_pb2.SolverParameter) -> list[str]:
    """The settings shown even when the file leaves them at Caffe's defaults."""
    return (["type", "base_lr", "lr_policy", *POLICY_FIELDS.get(sp.lr_policy, ()),
             *TYPE_FIELDS.get(sp.type or "SGD", ()), "weight_decay", "regularization_type", "clip_gradients",
             "max_iter", "iter_size", "display", "test_iter", "test_interval", "snapshot", "snapshot_prefix",
             "snapshot_format", "solver_mode", "random_seed"])


def _value(msg, fd):
    """A field's value as JSON takes it: enums by name, float32 by its shortest text, messages as text."""
    def one(v):
        if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            return fd.enum_type.values_by_number[v].name if v in fd.enum_type.values_by_number else v
        if fd.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
            return float(str(np.float32(v)))
        if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            return text_format.MessageToString(v, as_one_line=True) or "{}"
        return v
    v = getattr(msg, fd.name)
    return [one(x) for x in v] if fd.is_repeated else one(v)


def lr_at(sp: caffe_pb2.SolverParameter, it: int) -> float:
    """The rate of update ``it`` of a policy that keeps no state (all but multistep)."""
    return sgd.learning_rate(sp, it)[0]


def lr_schedule(sp: caffe_pb2.SolverParameter) -> tuple[list[tuple[int, float]], bool]:
    """(points, sampled): the updates 0 .. max_iter-1 at which the rate changes, with the new rate (fixed,
    step, multistep: every change), or, for the continuous policies (exp, inv, poly, sigmoid), the rate at
    every max_iter/SAMPLES iterations from 0 and at the last update (``sampled`` True). multistep carries
    Caffe's ``current_step`` from one stepvalue to the next, as GetLearningRate does update by update."""
    n = sp.max_iter
    if n <= 0:
        return [], sp.lr_policy in CONTINUOUS
    if sp.lr_policy in CONTINUOUS:
        its = sorted({i * n // SAMPLES for i in range(SAMPLES)} | {n - 1})
        return [(it, lr_at(sp, it)) for it in its], True
    if sp.lr_policy == "step":
        its = range(0, n, sp.stepsize)
    elif sp.lr_policy == "multistep":
        its = [0] + [v for v in sp.stepvalue if 0 < v < n]
    else:
        its = [0]
    points, step = [], 0
    for it in its:
        rate, step, _ = sgd.learning_rate(sp, it, step)
        if not points or rate != points[-1][1]:
            points.append((it, rate))
    return points, False


def lr_curve(sp: caffe_pb2.SolverParameter) -> tuple[list[int], list[float]]:
    """The line drawn: a step line through the change points to the last update, or the continuous policy at up
    to CURVE_POINTS iterations from 0 to the last update."""
    n = sp.max_iter
    points, sampled = lr_schedule(sp)
    if not points:
        return [], []
    if sampled:
        its = sorted({round(i * (n - 1) / CURVE_POINTS) for i in range(CURVE_POINTS + 1)})
        return its, [lr_at(sp, it) for it in its]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return xs + [n - 1], ys + [ys[-1]]


def lr_figure(sp: caffe_pb2.SolverParameter, title: str | None = None):
    """The lr schedule against the iteration (not rendered): the first line is :func:`lr_curve`, the second the
    markers at :func:`lr_schedule`'s points; a log lr axis when the positive rates span more than 10x."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs, ys = lr_curve(sp)
    points, sampled = lr_schedule(sp)
    ax.plot(xs, ys, color="C3", drawstyle="default" if sampled else "steps-post", label=f"lr ({sp.lr_policy})")
    ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="none", marker="o", color="C3",
            label="sampled" if sampled else "change points")
    rates = [v for v in ys if v > 0 and math.isfinite(v)]
    if rates and max(rates) > 10 * min(rates):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def _net(role, raw, file, net, state) -> dict:
    layers = [layer for layer in net.layer if included(layer, state, file)]
    data = [{"layer": layer.name, "type": layer.type, "batch_size": batch_size(layer)}
            for layer in data_layers(net, state)]
    return {"role": role, "path": raw, "resolved": None if raw is None else os.path.abspath(file),
            "state": state.describe(), "layers": len(layers), "layers_in_file": len(net.layer), "data": data}


def _missing_nets(sp: caffe_pb2.SolverParameter, base: Path, path) -> list[dict]:
    """When a net file the solver names (net, train_net, test_net) is not found by :data:`RULE`: one entry per
    named file, the missing ones with ``error`` (the message of :func:`sfport.solver.paths.existing`: the file
    and both places looked in); [] when every named file is found."""
    named = [("train", "net", sp.net)] if sp.HasField("net") else \
        [("train", "train_net", sp.train_net)] if sp.HasField("train_net") else []
    named += [(f"test #{len(sp.test_net_param) + i}", "test_net", t) for i, t in enumerate(sp.test_net)]
    out = []
    for role, field_name, raw in named:
        try:
            found, error = str(existing(raw, base, field_name, path)), None
        except CaffeFileError as e:
            found, error = None, e.message
        out.append({"role": role, "path": raw, "resolved": None if found is None else os.path.abspath(found),
                    "found": found is not None, "error": error, "state": None, "layers": None,
                    "layers_in_file": None, "data": []})
    return out if any(not n["found"] for n in out) else []


def solver_info(path) -> dict:
    """The document of ``sfport inspect SOLVER --json``: ``settings`` (every field set in the file, then the
    :func:`important_fields` left at Caffe's defaults, listed in ``defaults``), ``nets``, ``lr_schedule``,
    ``batch``. Bad input (the solver's rules, a net file not found) is a CaffeFileError."""
    in_file = caffe_files.read_solver(path).param
    sp, notes = read_solver(path)
    base = Path(path).resolve().parent
    settings = {fd.name: _value(sp, fd) for fd, _ in in_file.ListFields()}
    defaults = [f for f in important_fields(sp) if f not in settings]
    for f in defaults:
        settings[f] = _value(sp, sp.DESCRIPTOR.fields_by_name[f])
    if sp.lr_policy == "multistep" and not len(sp.stepvalue):
        settings["stepvalue"] = []
    train_raw = sp.net if sp.HasField("net") else sp.train_net if sp.HasField("train_net") else None
    missing = _missing_nets(sp, base, path)
    if missing:   # the solver itself is fine: its settings and schedule are shown, and where each net was looked for
        nets = missing
    else:
        train, tests, files = nets_of(sp, base, path)
        train_state, test_states = net_states(sp, train, tests)
        nets = [_net("train", train_raw, files[0], train, train_state)]
        test_raw = [None] * len(sp.test_net_param) + list(sp.test_net)
        test_raw += [train_raw] * (len(tests) - len(test_raw))
        for i, (t, st, f, raw) in enumerate(zip(tests, test_states, files[1:], test_raw)):
            nets.append({**_net(f"test #{i}", raw, f, t, st), "test_iter": sp.test_iter[i]})
    points, sampled = lr_schedule(sp)
    batch = next((d["batch_size"] for d in nets[0]["data"] if d["batch_size"]), None)
    iter_size = max(sp.iter_size, 1)
    return {
        "solver": str(path), "notes": notes, "settings": settings, "defaults": defaults,
        "snapshot_prefix": os.path.abspath(resolve_path(sp.snapshot_prefix, base, output=True)),
        "nets": nets,
        "lr_schedule": {"policy": sp.lr_policy, "sampled": sampled, "max_iter": sp.max_iter,
                        "points": [[it, float(str(np.float32(v)))] for it, v in points]},
        "batch": {"batch_size": batch, "iter_size": iter_size, "per_device": batch * iter_size if batch else None,
                  "devices": "x N devices with --gpu (each takes batch_size, as caffe -gpu)"},
    }


def format_info(info: dict) -> str:
    """The text of ``sfport inspect SOLVER``."""
    s, lr = info["settings"], info["lr_schedule"]
    out = [f"{info['solver']}: {s['type']} solver, lr_policy {lr['policy']}, max_iter {lr['max_iter']}, "
           f"solver_mode {s['solver_mode']}"]
    out += [f"  note: {n}" for n in info["notes"]]
    out.append("settings (as in the file; '(default)': not in the file, Caffe's default):")
    width = max(len(k) for k in s)
    for k, v in s.items():
        text = (", ".join(map(str, v)) or "(none)") if isinstance(v, list) else (g6(v) if isinstance(v, float) else str(v))
        if k == "snapshot_prefix":
            text += f" -> {info['snapshot_prefix']}"
        out.append(f"  {k.ljust(width)}  {text}" + ("  (default)" if k in info["defaults"] else ""))
    out.append(f"nets ({RULE}):")
    for n in info["nets"]:
        if "found" in n:   # a net file not found (or not read because another was not)
            out.append(f"  {n['role']:8s} " + (f"not found: {n['error']}" if n["error"] else
                                                f"{n['path']} -> {n['resolved']} (not read: a net file is missing)"))
            continue
        where = f"{n['path']} -> {n['resolved']}" if n["path"] else "(in the solver)"
        extra = f", test_iter {n['test_iter']}" if "test_iter" in n else ""
        out.append(f"  {n['role']:8s} {where}")
        out.append(f"           {n['state']}, {n['layers']} of {n['layers_in_file']} layers{extra}")
        for d in n["data"] if n["role"] == "train" else ():
            out.append(f"           data layer {d['layer']} ({d['type']}): batch_size {d['batch_size'] or '?'}")
    how = (f"sampled at {len(lr['points'])} iterations: the rate changes every iteration" if lr["sampled"]
           else "the iterations at which the rate changes")
    out.append(f"lr schedule ({lr['policy']}; {how}; sfport.solver.sgd.learning_rate):")
    out.append("  iteration  lr")
    out += [f"  {it:9d}  {g6(v)}" for it, v in lr["points"]] or ["  (max_iter 0: no update)"]
    if lr["max_iter"]:
        late = [v for v in s.get("stepvalue", []) if v >= lr["max_iter"]] if lr["policy"] == "multistep" else []
        out.append(f"  max_iter {lr['max_iter']}: the last update is iteration {lr['max_iter'] - 1}" +
                   (f"; stepvalue {', '.join(map(str, late))} not reached" if late else ""))
    b = info["batch"]
    if any("found" in n for n in info["nets"]):
        out.append(f"effective batch: unknown (the net file was not found); x {b['iter_size']} (iter_size) per "
                   f"device, x N devices with --gpu")
    elif b["batch_size"]:
        out.append(f"effective batch: {b['batch_size']} (batch_size) x {b['iter_size']} (iter_size) = "
                   f"{b['per_device']} per device, x N devices with --gpu")
    else:
        out.append(f"effective batch: the train net's data layer does not give its batch_size; x {b['iter_size']} "
                   f"(iter_size) per device, x N devices with --gpu")
    return "\n".join(out)
