"""sfport against real Caffe on this machine, forward and training, in the same run.

    python bench/bench_vs_caffe.py [--quick] [--rounds 3] [--repeat 5] [--iters 300] [--sf20-iters 4]
                                   [--threads N] [--caffe-python PY]

Real Caffe is the CPU pycaffe that ../shared/tools/build-caffe-oracle.sh builds (brocolli-caffe 9.0.2, an SSD-era
fork with BVLC's solvers; OpenBLAS; no `caffe` binary, no OpenCV), run by its own interpreter: --caffe-python, else
$SFPORT_CAFFE_PYTHON, else ./.caffe-venv/bin/python (the build script's default) or /tmp/oracle/venv/bin/python.
Without one the script prints one line saying how to build it and exits 0.

Rows (every number the best of --rounds processes, the processes of all rows interleaved round by round; each path
runs in a process of its own, because onnxruntime's, OpenBLAS's and OpenMP's threads keep spinning after a run and
would slow the next path down; a forward process times batch 1, then 64, of its one path):

* forward, SphereFace-20 deploy (112x96, random weights written by sfport, as bench_forward.py), batch 1 and 64,
  images/s, best of --repeat forwards after a warm-up: Caffe ``net.forward()`` against sfport's default inference
  path (``sfport.runtime.backend.Runner``: the optimized net on OpenVINO where installed, else onnxruntime) and
  sfport's eager net
  (``Net.exportable()`` under ``torch.inference_mode``). sfport's outputs are checked against Caffe's (1e-4).
* training, the golden tiny SphereFace net (../shared/golden/solver/tiny_sphereface.prototxt with its ImageData
  layer replaced by HDF5Data over the golden input batches, batch 8, init.caffemodel, SGD lr 0.01 momentum 0.9),
  iterations/s: Caffe ``solver.solve()`` (what ``caffe train`` runs) against ``sfport train --workers 0`` and
  ``sfport train`` with its default workers. Both log Caffe's display lines; the rate is the steady state between
  two of them (from iteration --iters / 6 to --iters), start-up excluded. A third row times the same iterations
  of a plain hand-written PyTorch loop of the same layers (``torch_tiny``): not sfport, the floor any eager
  PyTorch trainer of this net stands on, in the sfport column.
* training, SphereFace-20 + a 10,572-way InnerProduct + SoftmaxWithLoss on random 112x96 batches of 32, images/s,
  one net file for both (an Input layer with data and label tops): Caffe ``solver.step(n)`` (Input blobs filled
  once) against ``sfport.solver.Solver.step(n)`` with --synthetic-data (bench_train.py's sfport side), one update
  of warm-up, then --sf20-iters timed.

Caffe's OpenBLAS and sfport's torch both run --threads threads (default: the CPU count).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = pathlib.Path(os.environ.get("SFPORT_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden/solver"
CANDIDATES = (pathlib.Path(".caffe-venv/bin/python"), ROOT / ".caffe-venv/bin/python",
              pathlib.Path("/tmp/oracle/venv/bin/python"))
BUILD_HINT = ("build it with `VENV=/tmp/oracle/venv WORK=/tmp/oracle/work bash ../shared/tools/build-caffe-oracle.sh`"
              " and select its interpreter with SFPORT_CAFFE_PYTHON or --caffe-python")
CLASSES = 10572
SF20_BATCH = 32
TINY_BATCH = 8
# what --backend auto runs the export on here (OpenVINO where it is installed)
DEFAULT = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"

# ---------------------------------------------------------------------------------------------------------------
# the oracle interpreter
# ---------------------------------------------------------------------------------------------------------------


def find_caffe_python(explicit: str | None = None) -> tuple[str | None, str]:
    """(the interpreter that imports caffe, "caffe <its __version__>") or (None, why not). ``explicit``
    (--caffe-python), else $SFPORT_CAFFE_PYTHON, else the first of CANDIDATES that exists; a named one is never
    replaced by another."""
    named = explicit or os.environ.get("SFPORT_CAFFE_PYTHON")
    if named:
        tried = [pathlib.Path(named)]
    else:
        tried = [p for p in CANDIDATES if p.exists()][:1]
        if not tried:
            return None, f"no pycaffe interpreter found (tried {', '.join(str(p) for p in CANDIDATES)})"
    py = tried[0]
    if not py.exists():
        return None, f"the pycaffe interpreter {py} does not exist"
    try:
        p = subprocess.run([str(py), "-c", "import caffe; print('caffe', getattr(caffe, '__version__', '?'))"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "GLOG_minloglevel": "2"})
    except OSError as e:
        return None, f"{py} does not run ({e.strerror})"
    except subprocess.TimeoutExpired:
        return None, f"{py} -c 'import caffe' took over 120 s"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["exit status %d" % p.returncode])[-1]
        return None, f"{py} cannot import caffe ({last})"
    return str(py), p.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------------------------
# workers: each runs in a process of its own; the caffe_* ones in the oracle interpreter (stdlib + numpy only)
# ---------------------------------------------------------------------------------------------------------------


def _best(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def caffe_forward(job: dict) -> list[float]:
    """Images/s of Caffe's net.forward() at each of job["inputs"] (one .npy batch each), its outputs saved."""
    import numpy as np
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(job["proto"], job["weights"], caffe.TEST)
    out = []
    for path, save in zip(job["inputs"], job["outputs"]):
        x = np.load(path)
        net.blobs["data"].reshape(*x.shape)
        net.reshape()
        net.blobs["data"].data[...] = x

        def fn():
            return net.forward()["fc5"]
        if not os.path.exists(save):
            np.save(save, fn())
        out.append(x.shape[0] / _best(fn, job["repeat"]))
    return out


def sfport_forward(job: dict) -> list[float]:
    """Images/s of one sfport path at each of job["inputs"], its outputs checked against Caffe's."""
    import numpy as np
    import torch

    from sfport.runtime import verify
    from sfport.runtime.backend import Runner
    from sfport.runtime.net import Net

    torch.set_num_threads(job["threads"])
    net = Net(job["proto"], job["weights"])
    if job["path"] == "default":          # eval / embed / compare by default
        runner = Runner(net, ["fc5"], backend="auto")
        assert runner.backend == DEFAULT, runner.line
        run_one = lambda x: runner(x)["fc5"]     # noqa: E731
    else:                                  # the plain eager net
        module = net.exportable().eval()

        def run_one(x):
            with torch.inference_mode():
                return module(torch.from_numpy(x))[0].numpy()
    out = []
    for path, ref in zip(job["inputs"], job["outputs"]):
        x = np.load(path)
        fn = lambda: run_one(x)           # noqa: E731
        ref = np.load(ref)
        err = verify.relative_error(np.asarray(fn()).reshape(ref.shape), ref)
        assert err <= 1e-4, f"{job['path']} batch {x.shape[0]}: sfport's fc5 differs from Caffe's by {err:.2e}"
        out.append(x.shape[0] / _best(fn, job["repeat"]))
    return out


def caffe_solve(job: dict) -> float:
    """solver.solve() on the tiny net, Caffe's log on stderr (the orchestrator reads the rate from it)."""
    import caffe
    caffe.set_mode_cpu()
    os.chdir(job["dir"])
    solver = caffe.SGDSolver("solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    solver.solve()
    return 0.0


def caffe_sf20(job: dict) -> float:
    import numpy as np
    import caffe
    caffe.set_mode_cpu()
    os.chdir(job["dir"])
    solver = caffe.SGDSolver("solver.prototxt")
    rng = np.random.RandomState(0)
    blobs = solver.net.blobs
    blobs["data"].data[...] = rng.standard_normal(blobs["data"].data.shape).astype(np.float32)
    blobs["label"].data[...] = rng.randint(0, CLASSES, blobs["label"].data.shape).astype(np.float32)
    solver.step(job["warm"])
    t0 = time.perf_counter()
    solver.step(job["iters"])
    return blobs["data"].data.shape[0] * job["iters"] / (time.perf_counter() - t0)


def sfport_sf20(job: dict) -> float:
    import torch

    from sfport import solver as tr

    torch.set_num_threads(job["threads"])
    opts = tr.Options(synthetic_data=True, workers=0, device="cpu", progress=False)
    s = tr.Solver(os.path.join(job["dir"], "solver.prototxt"), opts, log=tr.CaffeLog(enabled=False))
    s.step(job["warm"])
    t0 = time.perf_counter()
    s.step(job["iters"])
    return s.feeder.batch * job["iters"] / (time.perf_counter() - t0)


def torch_tiny(job: dict) -> float:
    """The peer that shows the floor of eager PyTorch: the tiny net's training step in a plain, hand-written loop
    (nothing of sfport imported), iterations/s over the same window as the display lines. The net as
    tiny_sphereface.prototxt: four 3x3 ``nn.Conv2d`` (8, 8, 8, 16 outputs; strides 2, 1, 1, 2; pad 1) each with an
    ``nn.PReLU`` per channel, the sum of conv1_1's and conv1_3's outputs, ``nn.Linear`` 32 and 8,
    ``F.cross_entropy``; ``torch.optim.SGD`` (lr 0.01, momentum 0.9, weight decay 0.0005; the biases of the
    lr_mult 2 layers at twice the rate without decay, conv1_2's and conv1_3's frozen, as the prototxt's param
    specs); the golden batches of 8 in memory, sliced in order; the loss read back every iteration (as a
    solver reads it). Default initialisation: the values do not change the time."""
    import h5py
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    with h5py.File(os.path.join(job["dir"], "train.h5"), "r") as f:
        data = torch.from_numpy(f["data"][()].astype("float32"))
        label = torch.from_numpy(f["label"][()].astype("int64"))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1_1, self.relu1_1 = nn.Conv2d(3, 8, 3, 2, 1), nn.PReLU(8)
            self.conv1_2, self.relu1_2 = nn.Conv2d(8, 8, 3, 1, 1), nn.PReLU(8)
            self.conv1_3, self.relu1_3 = nn.Conv2d(8, 8, 3, 1, 1), nn.PReLU(8)
            self.conv2_1, self.relu2_1 = nn.Conv2d(8, 16, 3, 2, 1), nn.PReLU(16)
            h, w = data.shape[2], data.shape[3]
            for _ in range(2):
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            self.fc5, self.fc6 = nn.Linear(16 * h * w, 32), nn.Linear(32, 8)

        def forward(self, x):
            a = self.relu1_1(self.conv1_1(x))
            r = a + self.relu1_3(self.conv1_3(self.relu1_2(self.conv1_2(a))))
            return self.fc6(self.fc5(self.relu2_1(self.conv2_1(r)).flatten(1)))

    net = Tiny()
    for conv in (net.conv1_2, net.conv1_3):
        conv.bias.requires_grad_(False)
    doubled = [net.conv1_1.bias, net.conv2_1.bias, net.fc5.bias]
    rest = [p for p in net.parameters() if p.requires_grad and all(p is not d for d in doubled)]
    opt = torch.optim.SGD([{"params": rest}, {"params": doubled, "lr": 0.02, "weight_decay": 0.0}],
                          lr=0.01, momentum=0.9, weight_decay=0.0005, foreach=True)
    b, n = TINY_BATCH, data.shape[0]

    def step(i):
        k = (i * b) % n
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(data[k:k + b]), label[k:k + b])
        loss.backward()
        opt.step()
        return float(loss.detach())

    for i in range(job["first"]):
        step(i)
    t0 = time.perf_counter()
    for i in range(job["first"], job["last"]):
        step(i)
    return (job["last"] - job["first"]) / (time.perf_counter() - t0)


WORKERS = {f.__name__: f for f in (caffe_forward, sfport_forward, caffe_solve, caffe_sf20, sfport_sf20, torch_tiny)}

# ---------------------------------------------------------------------------------------------------------------
# the files both sides read
# ---------------------------------------------------------------------------------------------------------------

HDF5_DATA = ('layer {\n  name: "data"\n  type: "HDF5Data"\n  top: "data"\n  top: "label"\n'
             '  hdf5_data_param {\n    source: "train_h5.txt"\n    batch_size: %d\n  }\n}\n' % TINY_BATCH)
SOLVER = ('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.0005\n'
          'max_iter: {max_iter}\ndisplay: {display}\nsnapshot_after_train: false\nsnapshot_prefix: "snap"\n'
          'random_seed: 1701\nsolver_mode: CPU\n')


def write_tiny(d: pathlib.Path, iters: int, display: int) -> None:
    """The golden tiny net on HDF5Data over the golden batches (the oracle has no ImageData), its init weights,
    and a solver whose display lines fall on multiples of ``display`` up to ``iters`` (max_iter one display
    further: Solve's closing line, after an extra forward, is not used)."""
    import h5py
    import numpy as np
    text = (GOLDEN / "tiny_sphereface.prototxt").read_text()
    start = text.index("layer {")
    end = text.index("layer {", start + 1)
    (d / "net.prototxt").write_text(text[:start] + HDF5_DATA + text[end:])
    batches = np.load(GOLDEN / "input_batches.npz")
    with h5py.File(d / "train.h5", "w") as f:
        f["data"] = batches["data"].astype(np.float32)
        f["label"] = batches["label"].astype(np.float32)
    (d / "train_h5.txt").write_text("train.h5\n")
    shutil.copy(GOLDEN / "init.caffemodel", d / "init.caffemodel")
    (d / "solver.prototxt").write_text(SOLVER.format(max_iter=iters + display, display=display))


def write_sf20_train(d: pathlib.Path, batch: int) -> None:
    """SphereFace-20 with an Input layer (data batch x 3 x 112 x 96, label batch), fc6 InnerProduct 10,572
    (xavier, bias 0) and SoftmaxWithLoss; the solver without display or snapshots."""
    from sfport.formats.caffe_files import net_to_text
    from sfport.netdef import builtin
    from sfport.protos import caffe_pb2
    deploy = builtin.sphereface_deploy(20)
    net = caffe_pb2.NetParameter(name="SphereFace20-softmax")
    inp = net.layer.add(name="data", type="Input", top=["data", "label"])
    inp.input_param.shape.add(dim=[batch, 3, 112, 96])
    inp.input_param.shape.add(dim=[batch])
    for layer in deploy.layer[1:]:
        net.layer.add().CopyFrom(layer)
    fc6 = net.layer.add(name="fc6", type="InnerProduct", bottom=["fc5"], top=["fc6"])
    fc6.param.add(lr_mult=1, decay_mult=1)
    fc6.param.add(lr_mult=2, decay_mult=0)
    fc6.inner_product_param.num_output = CLASSES
    fc6.inner_product_param.weight_filler.type = "xavier"
    fc6.inner_product_param.bias_filler.type = "constant"
    net.layer.add(name="softmax_loss", type="SoftmaxWithLoss", bottom=["fc6", "label"], top=["softmax_loss"])
    (d / "net.prototxt").write_text(net_to_text(net))
    (d / "solver.prototxt").write_text(SOLVER.format(max_iter=1000000, display=0))


def write_deploy(out: pathlib.Path) -> tuple[str, str]:
    """The built-in SphereFace-20 deploy net with random weights (seed 0), as bench_forward.py writes it."""
    from sfport.formats import caffe_files
    from sfport.netdef import builtin, weight_match
    proto, model = out / "sphereface20_deploy.prototxt", out / "sphereface20_random.caffemodel"
    definition = caffe_files.CaffeModel.from_net(builtin.sphereface_deploy(20))
    caffe_files.write_prototxt(proto, definition.net)
    caffe_files.write_caffemodel(model, weight_match.with_random_weights(definition, seed=0))
    return str(proto), str(model)


# ---------------------------------------------------------------------------------------------------------------
# running the processes
# ---------------------------------------------------------------------------------------------------------------

LOG_LINE = re.compile(r"^[IWEF](\d{4}|\d{8}) (\d\d):(\d\d):(\d\d(?:\.\d+)?) .*?\] Iteration (\d+)"
                      r"(?: \([^)]*\))?, loss = ")


def display_times(log: str) -> dict[int, float]:
    """{iteration: seconds since midnight} of the display lines (`Iteration N (...), loss = ` in Caffe 1.0 and
    sfport, `Iteration N, loss = ` in the fork) of a Caffe-style log."""
    out = {}
    for line in log.splitlines():
        m = LOG_LINE.match(line)
        if m:
            h, mi, s, it = int(m.group(2)), int(m.group(3)), float(m.group(4)), int(m.group(5))
            out.setdefault(it, h * 3600 + mi * 60 + s)
    return out


def steady_rate(log: str, first: int, last: int, who: str) -> float:
    """Iterations per second between the display lines of iterations ``first`` and ``last``."""
    t = display_times(log)
    if first not in t or last not in t:
        raise SystemExit(f"{who}: no display line for iteration {first} or {last} in its log:\n{log[-2000:]}")
    dt = (t[last] - t[first]) % 86400    # a run across midnight
    return (last - first) / dt


def run(cmd: list[str], who: str, env: dict | None = None, cwd=None) -> str:
    """The output of one process (stdout + stderr); its wall time on stderr."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    print(f"  {who}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if p.returncode != 0:
        raise SystemExit(f"{who} failed (exit status {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    return p.stdout + p.stderr


def worker_result(output: str):
    return json.loads(re.findall(r"^RESULT (.+)$", output, re.M)[-1])


def _num(v: float, decimals: int = 1) -> str:
    """``decimals`` decimals, or 2 significant digits where that would show fewer (never a bare 0.0)."""
    return f"{v:.{decimals}f}" if v >= 10 ** (1 - decimals) else f"{v:.2g}"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="A smoke run with tiny counts (tests): numbers are noise.")
    ap.add_argument("--rounds", type=int, default=3, help="Processes per path (the best counts), interleaved.")
    ap.add_argument("--repeat", type=int, default=5, help="Timed forwards per forward process (after a warm-up).")
    ap.add_argument("--iters", type=int, default=300, help="Tiny-net training iterations per process.")
    ap.add_argument("--sf20-iters", type=int, default=4, help="Timed SphereFace-20 updates per process.")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--caffe-python", help="The pycaffe interpreter (default: $SFPORT_CAFFE_PYTHON, else a built "
                                           "oracle at ./.caffe-venv or /tmp/oracle/venv).")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(f"RESULT {json.dumps(WORKERS[job['kind']](job))}", flush=True)
        return 0

    caffe_py, why = find_caffe_python(args.caffe_python)
    caffe_version = why
    if caffe_py is None:
        print(f"bench_vs_caffe: needs the oracle pycaffe, {why}: {BUILD_HINT}.")
        return 0

    import numpy as np
    import onnxruntime as ort
    import torch

    fwd_batches, sf20_batch = (1, 64), SF20_BATCH
    if args.quick:   # every path once, at small sizes
        args.rounds, args.repeat, args.iters, args.sf20_iters = 1, 1, 24, 1
        fwd_batches, sf20_batch = (1, 4), 4
    display = max(1, args.iters // 12)
    first = max(display, (args.iters // 6) // display * display)   # start-up excluded
    last = args.iters // display * display
    threads = args.threads
    torch.set_num_threads(threads)
    caffe_env = {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "GLOG_minloglevel": "2"}
    me = [str(pathlib.Path(__file__).resolve())]
    load_before = os.getloadavg()
    started = datetime.datetime.now()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_vs_caffe_"))
    try:
        proto, weights = write_deploy(tmp)
        inputs = {}
        for b in fwd_batches:
            inputs[b] = str(tmp / f"input_b{b}.npy")
            np.save(inputs[b], np.random.default_rng(b).uniform(-1, 1, (b, 3, 112, 96)).astype(np.float32))
        tiny, sf20 = tmp / "tiny", tmp / "sf20"
        tiny.mkdir()
        sf20.mkdir()
        write_tiny(tiny, args.iters, display)
        write_sf20_train(sf20, sf20_batch)

        def worker(py, job, env=None):
            who = job["kind"] + "".join(f" {k}={job[k]}" for k in ("path", "batch") if k in job)
            who += f" batches={','.join(map(str, fwd_batches))}" if "inputs" in job else ""
            return worker_result(run([py] + me + ["--worker", json.dumps(job)], who, env))

        best: dict[str, float] = {}

        def keep(key, value):
            best[key] = max(best.get(key, 0.0), value)

        def tiny_sfport(workers: int | None) -> float:
            d = pathlib.Path(tempfile.mkdtemp(dir=tmp))   # a run directory of its own (snapshots go nowhere)
            for f in tiny.iterdir():
                os.symlink(f, d / f.name)
            cmd = [sys.executable, "-m", "sfport", "train", "solver.prototxt", "--weights", "init.caffemodel",
                   "--no-progress"] + ([] if workers is None else ["--workers", str(workers)])
            log = run(cmd, f"sfport train --workers {workers if workers is not None else 'default'}",
                      {"OMP_NUM_THREADS": str(threads)}, cwd=d)
            return steady_rate(log, first, last, "sfport train")

        for r in range(args.rounds):
            fwd = dict(proto=proto, weights=weights, inputs=[inputs[b] for b in fwd_batches], repeat=args.repeat,
                       outputs=[str(tmp / f"caffe_fc5_b{b}.npy") for b in fwd_batches], threads=threads)
            for path, py, env in (("caffe", caffe_py, caffe_env), ("default", sys.executable, None),
                                  ("eager", sys.executable, None)):
                kind = "caffe_forward" if path == "caffe" else "sfport_forward"
                for b, ips in zip(fwd_batches, worker(py, dict(fwd, kind=kind, path=path), env)):
                    keep(f"{path} fwd {b}", ips)
            log = run([caffe_py] + me + ["--worker", json.dumps(dict(kind="caffe_solve", dir=str(tiny)))],
                      "caffe solve", {**caffe_env, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"})
            keep("caffe tiny", steady_rate(log, first, last, "Caffe solver.solve()"))
            keep("tiny w0", tiny_sfport(0))
            keep("tiny wdefault", tiny_sfport(None))
            keep("tiny torch", worker(sys.executable, dict(kind="torch_tiny", dir=str(tiny), first=first, last=last,
                                                           threads=threads)))
            job = dict(dir=str(sf20), warm=1, iters=args.sf20_iters, threads=threads, batch=sf20_batch)
            keep("caffe sf20", worker(caffe_py, dict(job, kind="caffe_sf20"), caffe_env))
            keep("sfport sf20", worker(sys.executable, dict(job, kind="sfport_sf20")))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    from sfport.data import feed
    from sfport.netdef import datalayers
    default_workers = feed.default_workers(datalayers.HDF5)
    rows = []
    for b in fwd_batches:
        rows += [(f"forward SphereFace-20, batch {b}, img/s: sfport default ({DEFAULT})", f"caffe fwd {b}",
                  f"default fwd {b}"),
                 (f"forward SphereFace-20, batch {b}, img/s: sfport eager", f"caffe fwd {b}", f"eager fwd {b}")]
    rows += [
        (f"train tiny_sphereface (HDF5Data, batch {TINY_BATCH}), iter/s: sfport train --workers 0", "caffe tiny",
         "tiny w0"),
        (f"train tiny_sphereface (HDF5Data, batch {TINY_BATCH}), iter/s: sfport train, default workers "
         f"({default_workers})", "caffe tiny", "tiny wdefault"),
        (f"train tiny_sphereface (HDF5Data, batch {TINY_BATCH}), iter/s: not sfport, the floor of eager PyTorch: "
         f"a plain hand-written PyTorch loop of the same layers", "caffe tiny", "tiny torch"),
        (f"train SphereFace-20 + InnerProduct {CLASSES:,} + SoftmaxWithLoss (batch {sf20_batch}), img/s",
         "caffe sf20", "sfport sf20"),
    ]
    load_after = os.getloadavg()
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, onnxruntime {ort.__version__}; Caffe: pycaffe {caffe_py} "
          f"({caffe_version}, OpenBLAS, {threads} threads)")
    print(f"Date: {started:%Y-%m-%d %H:%M}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"best of {args.rounds} process(es) per path, interleaved; forward: best of {args.repeat} after a warm-up; "
          f"tiny net: display lines {first}..{last} of {args.iters} iterations; SphereFace-20: "
          f"{args.sf20_iters} update(s) after 1{'; --quick: smoke counts, not a measurement' if args.quick else ''}")
    print()
    print("| row | Caffe | sfport | sfport / Caffe |")
    print("|---|---:|---:|---:|")
    for label, c, s in rows:
        print(f"| {label} | {_num(best[c])} | {_num(best[s])} | {_num(best[s] / best[c], 2)}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
