"""Make the DetectionEvaluate / detection-test references with a real pycaffe of the SSD fork (brocolli-caffe
9.0.2, CPU). Run with that fork's python (see README.md):

    /path/to/ssd-fork/venv/bin/python tests/data/detection_eval/make_reference.py

Writes, beside this file:
  layer.npz   the layer's cases: inputs (detections N x 7, ground truth G x 8), parameters, and the fork's
              top (N' x 5) of each forward (several forwards for the name_size_file case);
  solver.npz  the solver's detection test: the HDF5 batches fed to a test net with two DetectionEvaluate
              layers, and the fork's log lines of Solver::TestDetection for each ap_version.
Everything random comes from numpy's default_rng with the fixed seeds below.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GLOG = re.compile(r"^([IWEF])(?:\d{4}|\d{8}) [\d:.]+ +\d+ ([\w.]+):(\d+)\] (.*)$")


# ---------------------------------------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------------------------------------

def _box(rng, n):
    x1, y1 = rng.uniform(-0.05, 0.8, n), rng.uniform(-0.05, 0.8, n)
    w, h = rng.uniform(0.05, 0.4, n), rng.uniform(0.05, 0.4, n)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def make_inputs(rng, images, labels, n_gt, n_extra, pad_det=3, pad_gt=2, score_step=0.05, garbage_after_gt=True):
    """Ground truth (rows of 8, then -1 rows and, after them, rows the layer must not read) and detections (rows
    of 7: jittered copies of the ground truth, some with another label, random boxes, invalid boxes, and -1
    rows anywhere) for ``images`` and ``labels``."""
    gi = rng.choice(images[:-1], n_gt)              # the last image has no ground truth
    gl = rng.choice(labels, n_gt)
    gb = _box(rng, n_gt)
    diff = (rng.uniform(size=n_gt) < 0.25).astype(np.float64)
    gt = np.concatenate([gi[:, None], gl[:, None], np.arange(n_gt)[:, None], gb, diff[:, None]], axis=1)
    gt = gt[np.lexsort((gt[:, 0],))]                # grouped by image, as a data layer writes them
    rows = []
    for r in gt:
        if r[0] == images[-2]:                      # the image before the last: ground truth, no detections
            continue
        for _ in range(rng.integers(0, 4)):
            jitter = rng.normal(0, rng.choice([0.005, 0.02, 0.05]), 4)
            label = r[1] if rng.uniform() < 0.85 else rng.choice(labels)
            rows.append([r[0], label, 0, *(r[3:7] + jitter)])
    for _ in range(n_extra):
        b = _box(rng, 1)[0]
        if rng.uniform() < 0.1:
            b = b[[2, 3, 0, 1]]                     # invalid: xmax < xmin
        rows.append([rng.choice(images), rng.choice(labels), 0, *b])
    det = np.array(rows, dtype=np.float64)
    det[:, 2] = np.round(rng.uniform(0.01, 1.0, len(det)) / score_step) * score_step   # ties
    det = det[rng.permutation(len(det))]
    pad = np.full((pad_det, 7), -1.0)
    pad[:, 1:] = rng.uniform(0, 1, (pad_det, 6))
    det = np.concatenate([det[: len(det) // 2], pad[:1], det[len(det) // 2:], pad[1:]])
    tail = [np.full((1, 8), -1.0)]
    if garbage_after_gt:
        tail.append(np.concatenate([gt[:1], np.full((pad_gt - 1, 8), -1.0)]) if pad_gt > 1 else gt[:1])
    gt = np.concatenate([gt] + tail)
    return det.astype(np.float32), gt.astype(np.float32)


def ties_inputs(rng):
    """One image, one label, 40 detections around 6 boxes with scores of 5 values: std::sort's order of equal
    scores (libstdc++'s introsort past 16 elements) decides which detection is the true positive."""
    gb = _box(rng, 6)
    gt = np.concatenate([np.zeros((6, 1)), np.ones((6, 1)), np.arange(6)[:, None], gb, np.zeros((6, 1))], axis=1)
    pick = rng.integers(0, 6, 40)
    det = np.concatenate([np.zeros((40, 1)), np.ones((40, 1)), rng.integers(1, 6, (40, 1)) / 10.0,
                          gb[pick] + rng.normal(0, 0.03, (40, 4))], axis=1)
    return det.astype(np.float32), gt.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------------------

LAYER_CASES = [
    # name, detection_evaluate_param text, seed, inputs
    ("basic", "num_classes: 5 background_label_id: 0 overlap_threshold: 0.5", 1, "random"),
    ("no_difficult", "num_classes: 5 background_label_id: 0 overlap_threshold: 0.45 evaluate_difficult_gt: false",
     1, "random"),
    ("no_background", "num_classes: 4 background_label_id: 4294967295 overlap_threshold: 0.5", 2, "random0"),
    ("middle_background", "num_classes: 6 background_label_id: 2 overlap_threshold: 0.3 "
                          "evaluate_difficult_gt: false", 3, "random_bg2"),
    ("strict", "num_classes: 5 background_label_id: 0 overlap_threshold: 0.9", 4, "random"),
    ("ties", "num_classes: 2 background_label_id: 0 overlap_threshold: 0.5", 5, "ties"),
    ("pixels", "num_classes: 4 background_label_id: 0 overlap_threshold: 0.5 evaluate_difficult_gt: false "
               "name_size_file: \"{sizes}\"", 6, "random_multi"),
]
NAME_SIZES = "img_a 300 500\nimg_b 1 1\nimg_c 375 499\n"


def _inputs_of(kind, rng):
    if kind == "ties":
        return [ties_inputs(rng)]
    if kind == "random0":
        return [make_inputs(rng, np.arange(4), np.arange(4), 18, 12)]
    if kind == "random_bg2":
        return [make_inputs(rng, np.arange(5), np.array([0, 1, 3, 4, 5]), 22, 15)]
    if kind == "random_multi":   # three forwards of two images each: the name_size_file count wraps
        return [make_inputs(rng, np.arange(3), np.arange(1, 4), 8, 6, garbage_after_gt=False) for _ in range(3)]
    return [make_inputs(rng, np.arange(5), np.arange(1, 5), 24, 16)]


def layer_references(caffe, tmp):
    out = {}
    sizes = os.path.join(tmp, "name_size.txt")
    with open(sizes, "w") as f:
        f.write(NAME_SIZES)
    for name, param, seed, kind in LAYER_CASES:
        rng = np.random.default_rng(seed)
        feeds = _inputs_of(kind, rng)
        param = param.replace("{sizes}", sizes)
        tops = []
        net = None
        for k, (det, gt) in enumerate(feeds):
            proto = os.path.join(tmp, f"{name}_{k}.prototxt")
            with open(proto, "w") as f:
                f.write(f'''name: "eval"
layer {{ name: "in" type: "Input" top: "det" top: "gt"
  input_param {{ shape {{ dim: 1 dim: 1 dim: {len(det)} dim: 7 }} shape {{ dim: 1 dim: 1 dim: {len(gt)} dim: 8 }} }} }}
layer {{ name: "ev" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "ev"
  detection_evaluate_param {{ {param} }} }}
''')
            if net is None:     # one net for all the forwards: the layer's count_ runs on
                net = caffe.Net(proto, caffe.TEST)
            else:
                net.blobs["det"].reshape(1, 1, len(det), 7)
                net.blobs["gt"].reshape(1, 1, len(gt), 8)
                net.reshape()
            net.blobs["det"].data[...] = det.reshape(1, 1, -1, 7)
            net.blobs["gt"].data[...] = gt.reshape(1, 1, -1, 8)
            net.forward()
            tops.append(net.blobs["ev"].data.copy())
            out[f"{name}/det{k}"] = det
            out[f"{name}/gt{k}"] = gt
            out[f"{name}/top{k}"] = tops[-1].reshape(-1, 5)
        out[f"{name}/param"] = np.array(param.replace(sizes, "{sizes}"))
        out[f"{name}/forwards"] = np.array(len(feeds))
    out["name_sizes"] = np.array(NAME_SIZES)
    out["cases"] = np.array([c[0] for c in LAYER_CASES])
    return out


# ---------------------------------------------------------------------------------------------------------
# the solver's detection test
# ---------------------------------------------------------------------------------------------------------

TEST_ITER = 4
EVAL_LAYERS = [("eval_a", "num_classes: 6 background_label_id: 0 overlap_threshold: 0.5"),
               ("eval_b", "num_classes: 6 background_label_id: 0 overlap_threshold: 0.6 evaluate_difficult_gt: false")]


def solver_batches():
    """TEST_ITER batches of 1 x 1 x 48 x 7 detections and 1 x 1 x 16 x 8 ground truth (class 5 never detected,
    padded with -1 rows)."""
    rng = np.random.default_rng(11)
    dets, gts = [], []
    for _ in range(TEST_ITER):
        det, gt = make_inputs(rng, np.arange(5), np.arange(1, 5), 12, 6, pad_det=2, garbage_after_gt=False)
        extra = np.array([[0, 5, 0, 0.1, 0.1, 0.3, 0.3, 0]], np.float32)   # class 5: ground truth only
        gt = np.concatenate([gt[gt[:, 0] != -1], extra])
        det = np.concatenate([det, np.full((48 - len(det), 7), -1, np.float32)])[:48]
        gt = np.concatenate([gt, np.full((16 - len(gt), 8), -1, np.float32)])[:16]
        dets.append(det.reshape(1, 48, 7))
        gts.append(gt.reshape(1, 16, 8))
    return np.stack(dets).astype(np.float32), np.stack(gts).astype(np.float32)


def solver_text(h5list, ap_version):
    evals = "\n".join(f'''  layer {{ name: "{n}" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "{n}"
    detection_evaluate_param {{ {p} }} }}''' for n, p in EVAL_LAYERS)
    return f'''train_net_param {{ name: "train"
  layer {{ name: "x" type: "DummyData" top: "x" dummy_data_param {{ shape {{ dim: 1 dim: 2 }} }} }}
  layer {{ name: "y" type: "DummyData" top: "y" dummy_data_param {{ shape {{ dim: 1 dim: 1 }} }} }}
  layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param {{ num_output: 1 }} }}
  layer {{ name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }}
}}
test_net_param {{ name: "test"
  layer {{ name: "data" type: "HDF5Data" top: "det" top: "gt"
    hdf5_data_param {{ source: "{h5list}" batch_size: 1 }} }}
{evals}
}}
test_iter: {TEST_ITER}
test_interval: 1
base_lr: 0
lr_policy: "fixed"
max_iter: 0
display: 0
snapshot_after_train: false
solver_mode: CPU
eval_type: "detection"
ap_version: "{ap_version}"
'''


def run_solver(solver_path):
    """Child process: solve (max_iter 0: one TestAll at the end); glog writes to stderr."""
    import caffe
    caffe.set_mode_cpu()
    caffe.get_solver(solver_path).solve()


def solver_references(tmp):
    import h5py
    det, gt = solver_batches()
    h5 = os.path.join(tmp, "batches.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("det", data=det)
        f.create_dataset("gt", data=gt)
    h5list = os.path.join(tmp, "h5list.txt")
    with open(h5list, "w") as f:
        f.write(h5 + "\n")
    out = {"det": det, "gt": gt, "test_iter": np.array(TEST_ITER),
           "eval_layers": np.array(json.dumps(EVAL_LAYERS))}
    for version in ("11point", "MaxIntegral", "Integral"):
        path = os.path.join(tmp, f"solver_{version}.prototxt")
        with open(path, "w") as f:
            f.write(solver_text(h5list, version))
        env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0")
        r = subprocess.run([sys.executable, __file__, "--solve", path], env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        lines, on = [], False
        for line in r.stderr.splitlines():
            m = GLOG.match(line)
            if not m:
                continue
            if m.group(4).startswith("Iteration 0, Testing net"):
                on = True
            if on and m.group(2) == "solver.cpp":
                lines.append(f"{m.group(1)} {m.group(4)}")
        out[f"log/{version}"] = np.array(lines)
    return out


def main():
    import caffe
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        layer = layer_references(caffe, tmp)
        solver = solver_references(tmp)
    np.savez_compressed(os.path.join(HERE, "layer.npz"), **layer)
    np.savez_compressed(os.path.join(HERE, "solver.npz"), **solver)
    for k in sorted(solver):
        if k.startswith("log/"):
            print(k, *solver[k], sep="\n  ")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--solve":
        run_solver(sys.argv[2])
    else:
        main()
