"""Training throughput on this machine: sfport's Caffe solver against a plain PyTorch loop, in the same run.

For each net, both sides train the same sfport module (built from the prototxt) on the same in-memory batches:
``sfport`` runs ``sfport.solver.Solver.step`` (Caffe's update with its bookkeeping: lr policy, iter_size,
smoothed loss, divergence checks); ``torch loop`` runs forward, backward and ``torch.optim.SGD.step``. A third
column times the ImageData pipeline alone (OpenCV decode + transform, 2 DataLoader workers) on a synthetic JPEG set.

    python bench/bench_train.py [--iters 30] [--device cpu|cuda] [--amp]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from sfport.netdef import builtin as builder
from sfport import solver as tr
from sfport.formats.caffe_files import net_to_text
from sfport.data.imagedata import ImageDataset, MicroBatches, Transform, loader, read_list

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SFPORT_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "tests"))
import synthfaces  # noqa: E402 - tests/ (the synthetic image set) is on the path from the line above


def _solver_file(d: Path, net_text: str, batch_note: str) -> Path:
    (d / "net.prototxt").write_text(net_text)
    (d / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "multistep"\ngamma: 0.1\n'
                                       'stepvalue: 100000\nmomentum: 0.9\nweight_decay: 0.0005\nmax_iter: 100000\n'
                                       'display: 0\nsolver_mode: CPU\n')
    return d / "solver.prototxt"


def nets():
    out = []
    for name in ("tiny_sphereface", "tiny_bn"):
        text = (SHARED / "golden/solver" / f"{name}.prototxt").read_text()
        text = text.replace('root_folder: "./"', 'root_folder: "./"\n    new_height: 24\n    new_width: 20')
        out.append((name + " (8x3x24x20)", text, None))
    narrow = builder.sphereface_train(4, 4, num_classes=100, batch_size=32, channels=(16, 32, 64, 128),
                                      feature_dim=64, new_size=(112, 96))
    out.append(("SphereFace-4 narrow (32x3x112x96)", net_to_text(narrow), None))
    sf20 = builder.sphereface_train(20, 4, num_classes=10572, batch_size=16, new_size=(112, 96))
    out.append(("SphereFace-20 A-Softmax (16x3x112x96)", net_to_text(sf20), None))
    return out


def bench_sfport(solver_path: Path, iters: int, device: str, amp: bool) -> float:
    opts = tr.Options(synthetic_data=True, workers=0, device=device, amp=amp, progress=False,
                      channels_last=device.startswith("cuda"))
    s = tr.Solver(str(solver_path), opts, log=tr.CaffeLog(enabled=False))
    s.step(2)  # warm-up
    _sync(device)
    t = time.perf_counter()
    s.step(iters)
    _sync(device)
    return s.feeder.batch * iters / (time.perf_counter() - t)


def bench_torch(solver_path: Path, iters: int, device: str, amp: bool) -> float:
    opts = tr.Options(synthetic_data=True, workers=0, device=device, progress=False)
    s = tr.Solver(str(solver_path), opts, log=tr.CaffeLog(enabled=False))  # the same module and batches
    module = s.net.module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=0.0005)
    s.feeder.start(0)
    batches = [{k: v.to(device) for k, v in s.feeder.next().items()} for _ in range(4)]

    def one(i):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            blobs = module.run(batches[i % 4])
            loss = module.loss(blobs)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for i in range(2):
        one(i)
    _sync(device)
    t = time.perf_counter()
    for i in range(iters):
        one(i)
    _sync(device)
    return s.feeder.batch * iters / (time.perf_counter() - t)


def bench_imagedata(n_images: int = 512, workers: int = 2) -> float:
    d = Path(tempfile.mkdtemp())
    try:
        synthfaces.write_dataset(d, 32, n_images // 32, seed=0)
        ds = ImageDataset(read_list(d / "list.txt"), d, Transform(0, True, (127.5, 127.5, 127.5), None, 0.0078125),
                          shuffle=True, seed=0)
        it = iter(loader(ds, MicroBatches(64, stop_update=n_images // 64 * 2), workers))
        next(it)
        t = time.perf_counter()
        n = 0
        for x, _, _, _, _ in it:
            n += len(x)
        return n / (time.perf_counter() - t)
    finally:
        shutil.rmtree(d)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--only", help="substring of the net names to run")
    args = ap.parse_args(argv)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if args.amp else 'fp32'}")
    print("| net | sfport solver (img/s) | torch loop (img/s) | sfport / torch |")
    print("|---|---:|---:|---:|")
    for name, text, _ in nets():
        if args.only and args.only not in name:
            continue
        iters = args.iters if "SphereFace-20" not in name or args.device != "cpu" else max(3, args.iters // 10)
        with tempfile.TemporaryDirectory() as tmp:
            sp = _solver_file(Path(tmp), text, "")
            a = bench_sfport(sp, iters, args.device, args.amp)
            b = bench_torch(sp, iters, args.device, args.amp)
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |", flush=True)
    print(f"\nImageData pipeline (OpenCV JPEG decode + transform, 2 workers, 112x96): "
          f"{bench_imagedata():.0f} img/s")


if __name__ == "__main__":
    main()
