"""The reference data of tests/test_fork_layers.py: the brocolli fork's Pooling (``ceil_mode``, the mask top), BN,
MaxUnPool and PixelShuffle run by the fork itself (brocolli-caffe 9.0.2, built CPU-only by
../shared/tools/build-caffe-oracle.sh), one net per .npz file of this folder.

Run with the oracle's Python (see README.md)::

    /tmp/oracle/venv/bin/python tests/data/forklayers/make_reference.py [--work /tmp/oracle/work]

The fork compiles ``BNLayer`` (src/caffe/layers/bn_layer.cpp) but never registers it (no REGISTER_LAYER_CLASS(BN)),
so its pycaffe cannot make a BN layer. For the BN cases this script compiles one translation unit holding only
``REGISTER_LAYER_CLASS(BN)`` with the flags of the oracle's build and links it with the build's own objects into a
copy of ``_caffe.so`` in a temporary folder (the oracle itself is left as it is); the BN code run is the fork's,
unchanged. Each net runs in its own subprocess (a failed Caffe CHECK aborts the process).

Every net is a tiny Input-fed net with ``force_backward: true``. Saved per net: its prototxt text (``ceil_mode``
written as the fork and OpenCV name it; sfport reads that name too), the inputs, the blobs set before the run,
every top after the forward, the top diff given to the last layer, and after net.backward() the input diffs and
the parameter diffs. Inputs come from ``numpy.random.RandomState`` with a fixed seed per net, so a rerun writes the
same files.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def inp(tops_shapes) -> str:
    shapes = " ".join(f"shape {{ {' '.join(f'dim: {d}' for d in s)} }}" for _, s in tops_shapes)
    tops = " ".join(f'top: "{t}"' for t, _ in tops_shapes)
    return f'layer {{ name: "input" type: "Input" {tops} input_param {{ {shapes} }} }}\n'


def lay(name, type_, bottoms, tops, extra="") -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {extra} }}\n'


def net(name, body) -> str:
    return f'name: "{name}"\nforce_backward: true\n{body}'


# ---- the cases: name -> (prototxt, phase, {input: (shape, kind)}, {layer: [blob arrays]} maker, forwards) --------
# kind "normal": N(0, 1); "ties": integers in [0, 4) (many equal values: the pooling scan order decides)

POOLS = {
    "pool_max_floor_k3s2p1": ((2, 3, 9, 11), "pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false", "normal"),
    "pool_max_ceil_k3s2p1": ((2, 3, 9, 11), "pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: true", "normal"),
    "pool_max_floor_k2s2_ties": ((1, 2, 7, 9), "pool: MAX kernel_size: 2 stride: 2 ceil_mode: false", "ties"),
    "pool_max_ceil_k2s2_ties": ((1, 2, 7, 9), "pool: MAX kernel_size: 2 stride: 2", "ties"),
    "pool_max_floor_hw": ((2, 2, 10, 9), "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 "
                                         "pad_w: 1 ceil_mode: false", "ties"),
    "pool_max_ceil_k2s3": ((1, 2, 8, 8), "pool: MAX kernel_size: 2 stride: 3 ceil_mode: true", "normal"),
    "pool_max_floor_k4s3p3": ((1, 2, 10, 11), "pool: MAX kernel_size: 4 stride: 3 pad: 3 ceil_mode: false",
                              "normal"),
    "pool_ave_floor_k3s2p1": ((2, 3, 9, 11), "pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false", "normal"),
    "pool_ave_floor_k3s2p2": ((1, 2, 8, 11), "pool: AVE kernel_size: 3 stride: 2 pad: 2 ceil_mode: false", "normal"),
    "pool_ave_ceil_k3s2p2": ((1, 2, 8, 11), "pool: AVE kernel_size: 3 stride: 2 pad: 2", "normal"),
    "pool_ave_floor_hw": ((1, 2, 7, 12), "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 "
                                         "pad_w: 1 ceil_mode: false", "normal"),
    # ceil without padding, stride > kernel: the last window starts at the input's end and is empty (MAX: -FLT_MAX
    # and mask -1; AVE: 0 / 0); the same geometry with ceil_mode: false has no such window
    "pool_max_ceil_k2s3_empty_window": ((1, 2, 9, 9), "pool: MAX kernel_size: 2 stride: 3", "normal"),
    "pool_ave_ceil_k2s3_empty_window": ((1, 2, 9, 9), "pool: AVE kernel_size: 2 stride: 3", "normal"),
    "pool_max_floor_k2s3": ((1, 2, 9, 9), "pool: MAX kernel_size: 2 stride: 3 ceil_mode: false", "normal"),
}


def pool_case(name):
    shape, param, kind = POOLS[name]
    tops = ["pool", "mask"] if "pool: MAX" in param else ["pool"]
    text = net(name, inp([("data", shape)]) + lay("pool", "Pooling", ["data"], tops,
                                                  f"pooling_param {{ {param} }}"))
    return text, "TEST", {"data": (shape, kind)}, {}, 1


BNS = {  # name -> (bottom shape, bn_param, phase, forwards)
    "bn_test": ((2, 3, 4, 5), "momentum: 0.8", "TEST", 1),
    "bn_test_frozen": ((2, 3, 4, 5), "frozen: true", "TEST", 1),
    "bn_train": ((2, 3, 4, 5), "momentum: 0.8 eps: 0.001", "TRAIN", 2),
    "bn_train_frozen": ((2, 3, 4, 5), "frozen: true", "TRAIN", 1),
    "bn_train_2d": ((5, 4), "", "TRAIN", 1),
    "bn_train_3d": ((3, 2, 6), "momentum: 0.5", "TRAIN", 1),
}


def bn_case(name):
    shape, param, phase, forwards = BNS[name]
    c = shape[1]

    def blobs(rng):
        return {"bn": [(1 + 0.3 * rng.standard_normal((1, c))).astype(np.float32),
                       (0.2 * rng.standard_normal((1, c))).astype(np.float32),
                       (0.3 * rng.standard_normal((1, c))).astype(np.float32),
                       rng.uniform(0.5, 1.5, (1, c)).astype(np.float32)]}
    text = net(name, inp([("data", shape)]) + lay("bn", "BN", ["data"], ["bn"], f"bn_param {{ {param} }}"))
    return text, phase, {"data": (shape, "normal")}, blobs, forwards


UNPOOLS = {  # name -> (input shape, pooling_param, dst_h, dst_w, kind)
    "unpool_k2s2_ties": ((2, 3, 6, 8), "pool: MAX kernel_size: 2 stride: 2", 6, 8, "ties"),
    "unpool_k3s2p1": ((1, 2, 7, 9), "pool: MAX kernel_size: 3 stride: 2 pad: 1", 7, 9, "normal"),
    "unpool_floor_larger_dst": ((1, 2, 7, 9), "pool: MAX kernel_size: 2 stride: 2 ceil_mode: false", 8, 10, "normal"),
}


def unpool_case(name):
    if name == "unpool_duplicate_indices":   # a mask of its own, with repeated indices: the later write wins
        text = net(name, inp([("data", (1, 2, 3, 4)), ("mask", (1, 2, 3, 4))])
                   + lay("unpool", "MaxUnPool", ["data", "mask"], ["unpool"],
                         "max_unpool_param { dst_h: 5 dst_w: 5 }"))
        return text, "TEST", {"data": ((1, 2, 3, 4), "normal"), "mask": ((1, 2, 3, 4), "indices25")}, {}, 1
    shape, param, dh, dw, kind = UNPOOLS[name]
    text = net(name, inp([("data", shape)])
               + lay("pool", "Pooling", ["data"], ["pool", "mask"], f"pooling_param {{ {param} }}")
               + lay("unpool", "MaxUnPool", ["pool", "mask"], ["unpool"],
                     f"max_unpool_param {{ dst_h: {dh} dst_w: {dw} }}"))
    return text, "TEST", {"data": (shape, kind)}, {}, 1


SHUFFLES = {  # name -> (input shape, upscale_factor)
    "pixelshuffle_r2": ((2, 8, 3, 4), 2),
    "pixelshuffle_r3": ((1, 18, 2, 3), 3),
    "pixelshuffle_r2_unread_channels": ((1, 6, 3, 2), 2),   # C % r == 0, C % r^2 != 0: channels 4, 5 unread
    "pixelshuffle_r1": ((1, 3, 2, 2), 1),
}


def shuffle_case(name):
    shape, r = SHUFFLES[name]
    text = net(name, inp([("data", shape)]) + lay("ps", "PixelShuffle", ["data"], ["ps"],
                                                  f"pixelshuffle_param {{ upscale_factor: {r} }}"))
    return text, "TEST", {"data": (shape, "normal")}, {}, 1


# MAX Backward_cpu adds each top diff at bottom_diff[mask]: an empty window's mask -1 writes before the plane
# (into the previous channel's last value, or before the buffer): no reference for the backward there
NO_BACKWARD = ("pool_max_ceil_k2s3_empty_window",)

CASES = {**{k: pool_case for k in POOLS}, **{k: bn_case for k in BNS}, **{k: unpool_case for k in UNPOOLS},
         "unpool_duplicate_indices": unpool_case, **{k: shuffle_case for k in SHUFFLES}}


def make_input(rng, shape, kind):
    if kind == "ties":
        return rng.randint(0, 4, shape).astype(np.float32)
    if kind == "indices25":
        return rng.randint(0, 25, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def run_one(name: str, seed: int) -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    caffe.set_mode_cpu()
    text, phase, inputs, blobs, forwards = CASES[name](name)
    rng = np.random.RandomState(seed)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    try:
        n = caffe.Net(f.name, caffe.TRAIN if phase == "TRAIN" else caffe.TEST)
    finally:
        os.unlink(f.name)
    out = {"prototxt": np.asarray(text), "phase": np.asarray(phase)}
    given = blobs(rng) if callable(blobs) else {}
    for layer, arrays in given.items():
        for j, a in enumerate(arrays):
            n.params[layer][j].data[...] = a
            out[f"param_{layer}_{j}"] = a
    for k in range(forwards):
        for b, (shape, kind) in inputs.items():
            x = make_input(rng, shape, kind)
            n.blobs[b].data[...] = x
            out[f"input{k}_{b}" if forwards > 1 else f"input_{b}"] = x
        n.forward()
    last = list(n._layer_names)[-1]
    tops = [t for t in n.top_names[last]]
    for t in n.blobs:
        if t not in inputs:
            out[f"top_{t}"] = n.blobs[t].data.copy()
    for layer in given:
        for j in range(len(given[layer])):
            out[f"after_{layer}_{j}"] = n.params[layer][j].data.copy()
    diffs = {t: rng.standard_normal(n.blobs[t].data.shape).astype(np.float32) for t in tops}
    if name in NO_BACKWARD:
        np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **out)
        print(f"{name}: forward only")
        return
    n.backward(**diffs)
    for t, d in diffs.items():
        out[f"topdiff_{t}"] = d
    for b in inputs:
        out[f"diff_{b}"] = n.blobs[b].diff.copy()
    for layer in given:
        for j in range(len(given[layer])):
            out[f"paramdiff_{layer}_{j}"] = n.params[layer][j].diff.copy()
    np.savez_compressed(os.path.join(HERE, f"{name}.npz"), **out)
    print(f"{name}: {', '.join(f'{k} {v.shape}' for k, v in out.items() if k.startswith('top_'))}")


def bn_pycaffe(work: str, dest: str) -> str:
    """A copy of the oracle's pycaffe whose _caffe.so also registers BN: bn_register.cpp compiled with the flags of
    the oracle's pycaffe target and linked, by that target's own link line, with its objects. Returns the folder
    to put on PYTHONPATH."""
    build = os.path.join(work, "build", "python")
    flags = open(os.path.join(build, "CMakeFiles", "pycaffe.dir", "flags.make")).read()
    args = []
    for key in ("CXX_FLAGS", "CXX_DEFINES", "CXX_INCLUDES"):
        args += re.search(rf"^{key} = (.*)$", flags, re.M).group(1).split()
    src = os.path.join(dest, "bn_register.cpp")
    with open(src, "w") as f:
        f.write('#include "caffe/layers/bn_layer.hpp"\n#include "caffe/layer_factory.hpp"\n'
                'namespace caffe {\nREGISTER_LAYER_CLASS(BN);\n}  // namespace caffe\n')
    obj = os.path.join(dest, "bn_register.o")
    subprocess.run(["c++", *args, "-c", src, "-o", obj], check=True)
    import caffe  # the oracle's package, copied as it is
    pkg = os.path.join(dest, "pkg")
    shutil.copytree(os.path.dirname(caffe.__file__), os.path.join(pkg, "caffe"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    link = open(os.path.join(build, "CMakeFiles", "pycaffe.dir", "link.txt")).read().strip()
    target = os.path.join(pkg, "caffe", "_caffe.so")
    link = link.replace(" -o ../lib/_caffe.so ", f" -o {target} {obj} ")
    subprocess.run(link, shell=True, check=True, cwd=build)
    return pkg


def main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", nargs="?")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=os.environ.get("ORACLE_WORK", "/tmp/oracle/work"))
    a = ap.parse_args(argv[1:])
    if a.case:
        run_one(a.case, a.seed)
        return 0
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=bn_pycaffe(a.work, tmp))
        for seed, name in enumerate(CASES):
            if subprocess.run([sys.executable, os.path.abspath(__file__), name, "--seed", str(seed)],
                              env=env).returncode != 0:
                failed.append(name)
    if failed:
        print("failed:", " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
