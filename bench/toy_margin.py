"""The SphereFace paper's toy experiment on synthetic data: 2-D features trained with A-Softmax, m = 1 and m = 4.

A 10-class synthetic set (noisy class templates in 32 dimensions) is fed to a small Caffe net, built and trained
through sfport (InnerProduct/PReLU layers, a 2-D ``fc5`` and the fork's MarginInnerProduct with its lambda
annealing and its own backward). The script prints, per m, the training accuracy, the minimum inter-class angle
(the smallest angle between held-out features of two different classes) and
the largest intra-class angular spread, and writes a PNG of the angular feature distribution:

    python bench/toy_margin.py [--steps 2000] [--out bench/out/toy_margin.png]
"""
from __future__ import annotations

import argparse
import math
import pathlib

import numpy as np
import torch
from google.protobuf import text_format

import sfport
from sfport.formats.disk import atomic_write
from sfport.protos import caffe_pb2

NET = """
name: "toy_margin_m{m}"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {batch} dim: {dim} }} }} }}
layer {{ name: "label" type: "Input" top: "label" input_param {{ shape {{ dim: {batch} }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param {{ num_output: 64 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "PReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 64 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu2" type: "PReLU" bottom: "ip2" top: "ip2" }}
layer {{ name: "fc5" type: "InnerProduct" bottom: "ip2" top: "fc5"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" top: "lambda"
  margin_inner_product_param {{ num_output: {classes} type: {mtype} weight_filler {{ type: "xavier" }}
    base: 1000 gamma: {gamma} power: 1 lambda_min: {lambda_min} iteration: 0 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }}
"""
MTYPES = {1: "SINGLE", 2: "DOUBLE", 3: "TRIPLE", 4: "QUADRUPLE"}
CLASSES, DIM = 10, 32
NOISE = 0.3


def dataset(n_per_class: int, seed: int):
    """Noisy class templates in 32-D: x = t_y + NOISE * N(0, I), t ~ N(0, 0.25 I)."""
    rng = np.random.default_rng(1234)
    templates = rng.standard_normal((CLASSES, DIM)) * 0.5
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(CLASSES), n_per_class)
    x = templates[y] + NOISE * rng.standard_normal((len(y), DIM))
    return x.astype(np.float32), y


def train(m: int, steps: int = 2000, batch: int = 64, lr: float = 0.05, seed: int = 0, lambda_min: float = 0.0,
          gamma: float = 0.12):
    """Train the toy net for one m; returns (net, train accuracy, held-out features, held-out labels)."""
    net_param = caffe_pb2.NetParameter()
    text_format.Parse(NET.format(m=m, batch=batch, dim=DIM, classes=CLASSES, mtype=MTYPES[m], gamma=gamma,
                                 lambda_min=lambda_min), net_param)
    net = sfport.TorchNet(sfport.formats.caffe_files.CaffeModel.from_net(net_param, None), phase="train", seed=seed)
    opt = torch.optim.SGD(net.module.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    x, y = dataset(300, seed=seed + 1)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        idx = rng.integers(0, len(y), batch)
        opt.zero_grad()
        net.forward_backward(data=torch.from_numpy(x[idx]), label=torch.from_numpy(y[idx].astype(np.float32)))
        for group in opt.param_groups:  # step policy: x0.1 at 60% and 85% of the run
            group["lr"] = lr * (0.1 ** ((step >= 0.6 * steps) + (step >= 0.85 * steps)))
        opt.step()
    train_acc = accuracy(net, x, y)
    xt, yt = dataset(100, seed=seed + 99)
    return net, train_acc, features(net, xt), yt


def features(net, x: np.ndarray) -> np.ndarray:
    """fc5 of each sample (the forward of fc6 needs labels; the features do not depend on them)."""
    with torch.no_grad():
        blobs = net.module.run({"data": torch.from_numpy(x), "label": torch.zeros(len(x))}, keep_all=True)
    return blobs["fc5"].numpy().astype(np.float64)


def accuracy(net, x, y) -> float:
    """Nearest class direction (the decision rule of A-Softmax at test time: largest cosine)."""
    f = features(net, x)
    w = net.params["fc6"][0].detach().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return float(((f @ w.T).argmax(1) == y).mean())


def angles(f: np.ndarray) -> np.ndarray:
    return np.arctan2(f[:, 1], f[:, 0])


def min_inter_class_angle(f: np.ndarray, y: np.ndarray) -> float:
    """Degrees: the smallest angle between two features of different classes (the paper's "minimum inter-class
    angle"; 0 when two classes touch or overlap)."""
    a = angles(f)
    d = np.abs(a[:, None] - a[None, :])
    d = np.minimum(d, 2 * np.pi - d)
    d[y[:, None] == y[None, :]] = np.inf
    return float(np.degrees(d.min()))


def max_intra_class_spread(f: np.ndarray, y: np.ndarray) -> float:
    """Degrees: the largest angle between a held-out feature and its class's mean direction."""
    a = angles(f)
    worst = 0.0
    for c in np.unique(y):
        ac = a[y == c]
        mean = math.atan2(np.sin(ac).mean(), np.cos(ac).mean())
        dev = np.abs((ac - mean + np.pi) % (2 * np.pi) - np.pi)
        worst = max(worst, float(dev.max()))
    return math.degrees(worst)


def draw(results: dict, path: pathlib.Path) -> None:
    """One panel per m: features (radius log-scaled) on the plane, coloured by class, with the class directions."""
    import cv2  # only the drawing needs OpenCV (the experiment and its test do not)
    size, pad = 420, 10
    panels = []
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    for m, (f, y, stats) in results.items():
        img = np.full((size, size, 3), 255, np.uint8)
        c = size // 2
        cv2.circle(img, (c, c), c - pad, (200, 200, 200), 1, cv2.LINE_AA)
        r = np.log1p(np.linalg.norm(f, axis=1))
        r = r / r.max() * (c - pad)
        a = angles(f)
        for ri, ai, yi in zip(r, a, y):
            rgb = colors[int(yi) % len(colors)]
            cv2.circle(img, (int(c + ri * math.cos(ai)), int(c - ri * math.sin(ai))), 2, rgb[::-1], -1, cv2.LINE_AA)
        cv2.putText(img, f"m={m}  min inter-class {stats['min_inter']:.1f} deg", (8, 18), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
        # the angle of every feature on a 0..360 degree strip, one row per class
        strip = np.full((12 * CLASSES + 24, size, 3), 255, np.uint8)
        for ai, yi in zip(a, y):
            u = int((math.degrees(ai) % 360) / 360 * (size - 2 * pad)) + pad
            row = 4 + 12 * int(yi)
            cv2.line(strip, (u, row), (u, row + 9), colors[int(yi) % len(colors)][::-1], 1)
        cv2.putText(strip, "feature angle 0..360 deg, one row per class", (pad, 12 * CLASSES + 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        panels.append(np.concatenate([img, strip], axis=0))
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.concatenate(panels, axis=1))
    atomic_write(path, buf.tobytes())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "out" / "toy_margin.png"))
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    results = {}
    print(f"{'m':>2} | {'train acc':>9} | {'min inter-class angle':>21} | {'max intra-class spread':>22}")
    for m in (1, 4):
        net, acc, f, y = train(m, args.steps, seed=args.seed)
        stats = {"acc": acc, "min_inter": min_inter_class_angle(f, y), "max_intra": max_intra_class_spread(f, y)}
        results[m] = (f, y, stats)
        print(f"{m:>2} | {acc:9.3f} | {stats['min_inter']:17.2f} deg | {stats['max_intra']:18.2f} deg")
    draw(results, pathlib.Path(args.out))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
