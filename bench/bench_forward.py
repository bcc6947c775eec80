"""Load and forward speed on CPU: sfport (eager, TorchScript, ONNX export on OpenVINO and onnxruntime) against
OpenCV's Caffe importer, same weights, same inputs, one run.

    python bench/bench_forward.py [--repeat 5] [--rounds 3] [--batches 1,64] [--threads N]

Models: SphereFace-20 deploy (112x96) with random weights written by sfport, and the MobileFaceNet fixture
(112x112). Prints two markdown tables: load time (read + build) and forward throughput in images/s (the best of
--repeat runs after a warm-up, in --rounds processes of each path, interleaved) of the default path of eval /
embed / compare (sfport.runtime.backend.Runner: the optimized net's ONNX export on OpenVINO where it is
installed, else onnxruntime), the export on onnxruntime, the optimized eager net, the plain eager net and
TorchScript, with the ratios to OpenCV's Caffe importer (its defaults: fusion and Winograd on).
"""
from __future__ import annotations

import argparse
import importlib.util
import io as _io
import os
import pathlib
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SHARED = pathlib.Path(os.environ.get("SFPORT_SHARED", HERE.parent.parent / "shared"))


def best_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# what --backend auto runs the export on here (OpenVINO where it is installed)
DEFAULT = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"
PATHS = ("opencv", "default", "onnxruntime", "optimized", "eager", "torchscript")


def measure(path: str, proto: str, weights: str, batch: int, repeat: int, threads: int) -> float:
    """Images/s of one forward path at one batch (best of ``repeat`` after a warm-up), its output checked
    against OpenCV's. Run in a process of its own (see main), so that no other path's threads (onnxruntime's
    spin for a while after each run) share the CPU with it."""
    import cv2
    import torch

    from sfport.runtime import export, verify
    from sfport.runtime.backend import Runner
    from sfport.runtime.net import Net

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    net = Net(proto, weights)
    (in_name, shape), = list(net.inputs.items())
    out_name = net.outputs[0]
    x = np.random.default_rng(0).uniform(-1, 1, (batch,) + tuple(shape[1:])).astype(np.float32)
    xt = torch.from_numpy(x)
    cvnet = cv2.dnn.readNetFromCaffe(proto, weights)
    # OpenCV names outputs by layer: the last layer that writes the output blob (in-place layers included)
    cv_out = next(gl.name for gl in net.graph.layers if net.graph.final[out_name] in gl.tops)
    cvnet.setInput(x, in_name)
    ref = cvnet.forward(cv_out)
    if path == "opencv":
        def fn():
            cvnet.setInput(x, in_name)
            return cvnet.forward(cv_out)
    elif path in ("default", "onnxruntime", "optimized"):   # eval / embed / compare: auto, and two --backend
        runner = Runner(net, [out_name], backend={"default": "auto", "optimized": "torch"}.get(path, path))
        assert runner.backend == ({"default": DEFAULT, "optimized": "torch"}.get(path, path)), runner.line
        fn = lambda: runner(x)[out_name]        # noqa: E731
    elif path == "torchscript":
        module = torch.jit.load(_io.BytesIO(export.torchscript_bytes(net)[0]))

        def fn():
            with torch.inference_mode():
                return module(xt)[0].numpy()
    else:   # sfport.Net's module: what sfport.Net, verify, training and a user's own script run
        module = net.module.eval()

        def fn():
            with torch.inference_mode():
                return module(xt)[out_name].numpy()
    assert verify.relative_error(np.asarray(fn()).reshape(ref.shape), ref) <= 1e-4, f"{path}: outputs disagree"
    return batch / best_time(fn, repeat)


def first_output(proto: str, weights: str, repeat: int) -> tuple[float, float]:
    """Seconds from the files to the first output at batch 1 (the best of ``repeat``), OpenCV's and sfport's
    eager net's (``sfport.Net``'s module): OpenCV's readNet only reads the files and sets up its layers at the
    first forward, where sfport's Net has built its modules and copied the weights when it returns."""
    import cv2
    import torch

    from sfport.runtime.net import Net

    def opencv():
        cvnet = cv2.dnn.readNetFromCaffe(proto, weights)
        cvnet.setInput(x)
        return cvnet.forward()

    def sfport():
        net = Net(proto, weights)
        with torch.inference_mode():
            return net.module(torch.from_numpy(x))

    shape = next(iter(Net(proto, weights).inputs.values()))
    x = np.random.default_rng(0).uniform(-1, 1, (1,) + tuple(shape[1:])).astype(np.float32)
    return best_time(opencv, repeat), best_time(sfport, repeat)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="Processes per path and batch (the best counts).")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=pathlib.Path, default=HERE / "out")
    ap.add_argument("--one", nargs=3, metavar=("PATH", "PROTOTXT", "WEIGHTS"), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(measure(*args.one, args.batch, args.repeat, args.threads))
        return 0

    import subprocess

    import cv2
    import onnxruntime as ort
    import torch

    from sfport.formats import caffe_files
    from sfport.netdef import weight_match, builtin
    from sfport.runtime.net import Net

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    sf_proto, sf_model = args.out / "sphereface20_deploy.prototxt", args.out / "sphereface20_random.caffemodel"
    definition = caffe_files.CaffeModel.from_net(builtin.sphereface_deploy(20))
    caffe_files.write_prototxt(sf_proto, definition.net)
    caffe_files.write_caffemodel(sf_model, weight_match.with_random_weights(definition, seed=0))
    mfn = SHARED / "fixtures/mobilefacenet_insightface"
    models = [("SphereFace-20", sf_proto, sf_model),
              ("MobileFaceNet", mfn / "mxnet2caffe_mobilefacenet.prototxt", mfn / "mxnet2caffe_mobilefacenet.caffemodel")]
    batches = [int(b) for b in args.batches.split(",")]

    load_rows, fwd_rows = [], []
    for label, proto, weights in models:
        t_cv = best_time(lambda: cv2.dnn.readNetFromCaffe(str(proto), str(weights)), args.repeat)
        t_sf = best_time(lambda: Net(str(proto), str(weights)), args.repeat)
        first_cv, first_sf = first_output(str(proto), str(weights), args.repeat)
        load_rows.append((label, t_cv, t_sf, first_cv, first_sf))
        for b in batches:
            ips = {}
            for _ in range(args.rounds):    # rounds interleave the paths: a slow spell of the machine hits all
                for path in PATHS:
                    out = subprocess.run([sys.executable, __file__, "--one", path, str(proto), str(weights),
                                          "--batch", str(b), "--repeat", str(args.repeat), "--threads",
                                          str(args.threads)], capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(f"{label} batch {b} {path}: {out.stderr[-2000:]}")
                    ips[path] = max(ips.get(path, 0.0), float(out.stdout.split()[-1]))
            fwd_rows.append((label, b, ips))

    print(f"CPU: {os.cpu_count()} cores, {args.threads} threads; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, cv2 {cv2.__version__}; best of {args.repeat} runs after a warm-up in "
          f"each of {args.rounds} processes per path, the paths interleaved")
    print()
    print("| model | OpenCV load (ms) | sfport load (ms) | sfport / OpenCV | OpenCV load + first forward (ms) | "
          "sfport load + first eager forward (ms) | sfport / OpenCV |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, t_cv, t_sf, first_cv, first_sf in load_rows:
        print(f"| {label} | {t_cv * 1e3:.0f} | {t_sf * 1e3:.0f} | {t_sf / t_cv:.2f}x | {first_cv * 1e3:.0f} | "
              f"{first_sf * 1e3:.0f} | {first_sf / first_cv:.2f}x |")
    print()
    print(f"| model | batch | OpenCV (img/s) | sfport default (optimized, {DEFAULT}) | optimized, onnxruntime | "
          "optimized eager | eager | TorchScript | default / OpenCV | optimized eager / OpenCV |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, b, ips in fwd_rows:
        print(f"| {label} | {b} | {ips['opencv']:.1f} | {ips['default']:.1f} | {ips['onnxruntime']:.1f} | "
              f"{ips['optimized']:.1f} | {ips['eager']:.1f} | {ips['torchscript']:.1f} | "
              f"{ips['default'] / ips['opencv']:.2f}x | {ips['optimized'] / ips['opencv']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
