"""Load and forward speed on CPU: sfport (eager, TorchScript, ONNX export on onnxruntime) against OpenCV's
Caffe importer, same weights, same inputs, one run.

    python bench/bench_forward.py [--repeat 3] [--batches 1,64] [--threads N]

Models: SphereFace-20 deploy (112x96) with random weights written by sfport, and the MobileFaceNet fixture
(112x112). Prints two markdown tables: load time (read + build) and forward throughput in images/s (best of
--repeat runs after a warm-up) of the default path of eval / embed / compare (sfport.backend.Runner: the
optimized net's ONNX export on onnxruntime), the optimized eager net, the plain eager net and TorchScript, with
the ratios to OpenCV's Caffe importer (its defaults: fusion and Winograd on).
"""
from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=pathlib.Path, default=HERE / "out")
    args = ap.parse_args(argv)

    import cv2
    import onnxruntime as ort
    import torch

    from sfport import export, caffe_files, model, nets, verify
    from sfport.backend import Runner
    from sfport.net import Net

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    sf_proto, sf_model = args.out / "sphereface20_deploy.prototxt", args.out / "sphereface20_random.caffemodel"
    definition = caffe_files.CaffeModel.from_net(nets.sphereface_deploy(20))
    caffe_files.write_prototxt(sf_proto, definition.net)
    caffe_files.write_caffemodel(sf_model, model.with_random_weights(definition, seed=0))
    mfn = SHARED / "fixtures/mobilefacenet_insightface"
    models = [("SphereFace-20", sf_proto, sf_model),
              ("MobileFaceNet", mfn / "mxnet2caffe_mobilefacenet.prototxt", mfn / "mxnet2caffe_mobilefacenet.caffemodel")]
    batches = [int(b) for b in args.batches.split(",")]

    load_rows, fwd_rows = [], []
    for label, proto, weights in models:
        t_cv = best_time(lambda: cv2.dnn.readNetFromCaffe(str(proto), str(weights)), args.repeat)
        t_sf = best_time(lambda: Net(str(proto), str(weights)), args.repeat)
        load_rows.append((label, t_cv, t_sf))

        net = Net(str(proto), str(weights))
        module = net.exportable().eval()
        (in_name, shape), = list(net.inputs.items())
        out_name = net.outputs[0]
        runner = Runner(net, [out_name])                      # the default path of eval / embed / compare
        assert runner.backend == "onnxruntime", runner.line
        opt_module = runner.net.exportable().eval()            # the optimized eager net
        ts = torch.jit.load(_io.BytesIO(export.torchscript_bytes(net)[0]))
        cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
        # OpenCV names outputs by layer: the last layer that writes the output blob (in-place layers included)
        cv_out = next(gl.name for gl in net.graph.layers if net.graph.final[out_name] in gl.tops)
        for b in batches:
            x = np.random.default_rng(0).uniform(-1, 1, (b,) + tuple(shape[1:])).astype(np.float32)
            xt = torch.from_numpy(x)

            def eager():
                with torch.inference_mode():
                    return module(xt)

            def optimized():
                with torch.inference_mode():
                    return opt_module(xt)

            def torchscript():
                with torch.inference_mode():
                    return ts(xt)

            def default():
                return runner(x)

            def opencv():
                cvnet.setInput(x, in_name)
                return cvnet.forward(cv_out)

            ref = opencv()
            for fn in (eager, optimized):
                assert verify.relative_error(fn()[0].numpy().reshape(ref.shape), ref) <= 1e-4, "outputs disagree"
            assert verify.relative_error(default()[out_name].reshape(ref.shape), ref) <= 1e-4, "outputs disagree"
            times = {name: best_time(fn, args.repeat) for name, fn in
                     (("opencv", opencv), ("default", default), ("optimized", optimized), ("eager", eager),
                      ("torchscript", torchscript))}
            fwd_rows.append((label, b, times))

    print(f"CPU: {os.cpu_count()} cores, {args.threads} threads; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, cv2 {cv2.__version__}; best of {args.repeat} after a warm-up")
    print()
    print("| model | OpenCV load (ms) | sfport load (ms) | sfport / OpenCV |")
    print("|---|---:|---:|---:|")
    for label, t_cv, t_sf in load_rows:
        print(f"| {label} | {t_cv * 1e3:.0f} | {t_sf * 1e3:.0f} | {t_sf / t_cv:.2f}x |")
    print()
    print("| model | batch | OpenCV (img/s) | sfport default (optimized, onnxruntime) | optimized eager | "
          "eager | TorchScript | default / OpenCV | optimized eager / OpenCV |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, b, t in fwd_rows:
        ips = {k: b / v for k, v in t.items()}
        print(f"| {label} | {b} | {ips['opencv']:.1f} | {ips['default']:.1f} | {ips['optimized']:.1f} | "
              f"{ips['eager']:.1f} | {ips['torchscript']:.1f} | {ips['default'] / ips['opencv']:.2f}x | "
              f"{ips['optimized'] / ips['opencv']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
