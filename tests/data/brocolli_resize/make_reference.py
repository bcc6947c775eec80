"""Makes the reference data of tests/test_brocolli_resize.py with the oracle pycaffe (brocolli-caffe 9.0.2, built by
../shared/tools/build-caffe-oracle.sh):

    /tmp/oracle/venv/bin/python tests/data/brocolli_resize/make_reference.py tests/data/brocolli_resize

One tiny Input-fed net per case (CASES: the layer's parameter text, the input shape, the phase, how many forwards),
``force_backward: true``. Case k draws everything from numpy.random.RandomState(k): the inputs (uniform in [-4, 4]),
BatchNormKyle's blobs (set before the first forward) and the top diff. The net runs its forwards (BatchNormKyle
TRAIN: two, so that the moving blobs are carried), then ``net.backward()`` with that top diff. Saved per case
(<name>.npz): ``prototxt``, ``phase``, ``x`` (``x0``, ``x1`` for two forwards), ``out`` (the top after the last
forward), ``param_<j>`` (blob j before), ``after_<j>`` (after the forwards), ``topdiff``, ``diff`` (the input's
diff after the backward; BilinearInterpolate's Backward_cpu is empty: zeros) and ``paramdiff_<j>``. Then one
SGD solver run (solver_case)."""
import os
import sys
import tempfile

import numpy as np

OUT = os.path.abspath(sys.argv[1])
R = 'type: "Resize" resize_param { %s }'
B = 'type: "BilinearInterpolate" bilinear_interpolate_param { %s }'
K = 'type: "BatchNormKyle" batch_norm_param { %s }'
CASES = {   # name: (layer, input shape, phase, forwards)
    "resize_up_odd": (R % "height: 9 width: 11", (2, 2, 5, 7), "TEST", 1),
    "resize_down": (R % "height: 4 width: 5", (1, 2, 9, 8), "TEST", 1),
    "resize_same": (R % "height: 4 width: 5", (1, 2, 4, 5), "TEST", 1),
    "resize_pyramid": (R % "is_pyramid_test: true out_height_scale: 1.5 out_width_scale: 0.7", (2, 2, 6, 7),
                       "TEST", 1),
    "resize_pyramid_up2": (R % "is_pyramid_test: true out_height_scale: 2 out_width_scale: 2.3", (1, 3, 5, 3),
                           "TEST", 1),
    "resize_3d": (R % "height: 4 width: 3", (2, 3, 5), "TEST", 1),
    "bilinear_dst_align": (B % "dst_h: 9 dst_w: 4", (2, 2, 5, 7), "TEST", 1),
    "bilinear_dst_noalign": (B % "dst_h: 9 dst_w: 4 align_corners: false", (2, 2, 5, 7), "TEST", 1),
    "bilinear_scale_align": (B % "scale_factor: 1.7", (1, 2, 5, 6), "TEST", 1),
    "bilinear_scale_noalign_down": (B % "scale_factor: 0.5 align_corners: false", (1, 2, 7, 9), "TEST", 1),
    "bilinear_dst_h_only": (B % "dst_h: 6 align_corners: false", (1, 2, 4, 5), "TEST", 1),
    "bilinear_src_row": (B % "dst_h: 3 dst_w: 5", (1, 2, 1, 4), "TEST", 1),
    "bilinear_dst_row_nan": (B % "dst_h: 1 dst_w: 3", (1, 2, 3, 4), "TEST", 1),
    "bilinear_dst_row_noalign": (B % "dst_h: 1 dst_w: 3 align_corners: false", (1, 2, 3, 4), "TEST", 1),
    "kyle_test": (K % "", (2, 3, 3, 4), "TEST", 1),
    "kyle_test_alpha": (K % "use_alpha_beta: true eps: 0.001", (2, 3, 3, 4), "TEST", 1),
    "kyle_test_factor0": (K % "", (2, 3, 2, 3), "TEST", 1),
    "kyle_test_batch_stats": (K % "use_global_stats: false moving_average_fraction: 0.9", (2, 3, 3, 4), "TEST", 1),
    "kyle_train": (K % "moving_average_fraction: 0.8", (2, 3, 3, 4), "TRAIN", 2),
    "kyle_train_alpha": (K % "use_alpha_beta: true moving_average_fraction: 0.8", (3, 2, 3, 3), "TRAIN", 2),
    "kyle_train_2d": (K % "use_alpha_beta: true", (5, 4), "TRAIN", 2),
    "kyle_train_global": (K % "use_global_stats: true use_alpha_beta: true", (2, 3, 3, 3), "TRAIN", 1),
}

# a TRAIN net whose BatchNormKyle learns through the fork's SGD solver: its statistics blobs are learnable blobs
# (no lr_mult 0) with a zero diff, so weight decay reaches them
SOLVER_NET = ('layer { name: "in" type: "Input" top: "data" top: "target" input_param { shape { dim: 2 dim: 3 '
              'dim: 2 dim: 3 } shape { dim: 2 dim: 3 dim: 2 dim: 3 } } }\n'
              'layer { name: "l" type: "BatchNormKyle" bottom: "data" top: "out" batch_norm_param { use_alpha_beta: '
              'true moving_average_fraction: 0.9 } }\n'
              'layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }\n')
SOLVER = ('base_lr: 0.1\nmomentum: 0.9\nweight_decay: 0.05\nlr_policy: "fixed"\nmax_iter: 10\ndisplay: 0\n'
          'snapshot_after_train: false\nsolver_mode: CPU\n')
STEPS = 3


def solver_case(caffe, seed: int):
    """solver_kyle_sgd.npz: ``net``, ``solver`` (without its net line), per step ``data`` and ``target`` (drawn from
    RandomState(seed)) and ``loss``, and the layer's blobs after the steps (``after_<j>``)."""
    rng = np.random.RandomState(seed)
    with tempfile.TemporaryDirectory() as tmp:
        net_path, solver_path = os.path.join(tmp, "net.prototxt"), os.path.join(tmp, "solver.prototxt")
        with open(net_path, "w") as f:
            f.write(SOLVER_NET)
        with open(solver_path, "w") as f:
            f.write(f'net: "{net_path}"\n' + SOLVER)
        solver = caffe.SGDSolver(solver_path)
        saved = {"net": np.array(SOLVER_NET), "solver": np.array(SOLVER), "data": [], "target": [], "loss": []}
        for _ in range(STEPS):
            for blob in ("data", "target"):
                v = rng.uniform(-2, 2, solver.net.blobs[blob].data.shape).astype(np.float32)
                solver.net.blobs[blob].data[...] = v
                saved[blob].append(v)
            solver.step(1)
            saved["loss"].append(np.float32(solver.net.blobs["loss"].data))
        for j, b in enumerate(solver.net.params["l"]):
            saved[f"after_{j}"] = b.data.copy()
    np.savez_compressed(os.path.join(OUT, "solver_kyle_sgd.npz"), **{k: np.asarray(v) for k, v in saved.items()})
    print("solver_kyle_sgd", [float(v) for v in saved["loss"]])


def main():
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    for k, (name, (layer, shape, phase, forwards)) in enumerate(CASES.items()):
        text = (f'force_backward: true\ninput: "data"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                f'layer {{ name: "l" {layer} bottom: "data" top: "out" }}\n')
        rng = np.random.RandomState(k)
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
            f.write(text)
        net = caffe.Net(f.name, getattr(caffe, phase))
        os.unlink(f.name)
        saved = {"prototxt": np.array(text), "phase": np.array(phase)}
        blobs = net.params["l"] if "l" in net.params else []
        if name.startswith("kyle") and not name.endswith("factor0"):
            c = shape[1]
            factor = np.float32(2.5)
            values = [rng.normal(0, 1, c) * factor, rng.uniform(0.5, 2, c) * factor, [factor],
                      rng.uniform(0.5, 1.5, c), rng.normal(0, 0.5, c)]
            for b, v in zip(blobs, values):
                b.data[...] = np.asarray(v, np.float32)
        for j, b in enumerate(blobs):
            saved[f"param_{j}"] = b.data.copy()
        for run in range(forwards):
            x = rng.uniform(-4, 4, shape).astype(np.float32)
            saved["x" if forwards == 1 else f"x{run}"] = x
            net.blobs["data"].data[...] = x
            out = net.forward()["out"].copy()
        saved["out"] = out
        for j, b in enumerate(blobs):
            saved[f"after_{j}"] = b.data.copy()
        topdiff = rng.uniform(-1, 1, out.shape).astype(np.float32)
        saved["topdiff"] = topdiff
        net.blobs["data"].diff[...] = 0
        net.backward(out=topdiff)
        saved["diff"] = net.blobs["data"].diff.copy()
        for j, b in enumerate(blobs):
            saved[f"paramdiff_{j}"] = b.diff.copy()
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **saved)
        print(name, shape, "->", out.shape)
    solver_case(caffe, len(CASES))


if __name__ == "__main__":
    main()
