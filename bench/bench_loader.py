"""Data loader throughput: does sfport's training feeder keep a GPU fed? Images/s per worker of the three readers
`sfport train` uses, through its real feeder.

    python bench/bench_loader.py [--images 2000] [--batch 256] [--seconds 10] [--workers 0,1,2] [--quick] [--out DIR]

Made at run time in a temporary folder (removed at the end): --images random face-like 112x96 crops, written by
cv2.imwrite as JPEG quality 95, and from them (1) an ImageData list file (`path label`), (2) an LMDB of encoded
Datum records written by sfport's convert-imageset (`sfport convert-imageset --encode_type jpg`: the JPEG bytes as
they are), (3) HDF5 files of the decoded, transformed float32 images (1000 rows a file). Each reader's TRAIN net is
its data layer (batch --batch; ImageData and Data with transform_param mean_value 127.5 x3, scale 0.0078125,
mirror true, as SphereFace's) and a Silence layer. Each (reader, workers) runs in a process of its own: it builds
sfport.data.feed.Feeder as sfport/solver/loop.py does (Options(workers=W)), calls start(0) and next() as the
training loop does, takes a warm-up (2 s and 2 x (W + 1) micro-batches), then counts images over --seconds of
next() calls that do nothing else: the most the loader delivers. Workers: 0 (read in the training process), 1, 2
and doubling up to the core count (--workers to choose). Per worker: img/s / max(W, 1); CPU cores busy: the CPU
time of the training process and its workers over the timed stretch (on a loaded machine, below W + 1). The workers
needed for 10,000 img/s assume that the best per-worker rate (of W >= 1: the training process itself does not
multiply, and each worker pays the copy of its batches to it) scales linearly across cores.
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SIZE = (112, 96)          # SphereFace's aligned crops, height x width
H5_ROWS = 1000            # rows per HDF5 file
TARGET = 10_000           # img/s to feed
TRANSFORM = "transform_param { mean_value: 127.5 mean_value: 127.5 mean_value: 127.5 scale: 0.0078125 mirror: true }"
READERS = {   # name -> (label in the table, data layer with {src} and {batch})
    "imagedata": ("ImageData (JPEG list)", 'layer { name: "data" type: "ImageData" top: "data" top: "label" '
                  + TRANSFORM + ' image_data_param { source: "{src}" root_folder: "{root}/" batch_size: {batch} '
                  'shuffle: true } }'),
    "lmdb": ("Data (LMDB, encoded JPEG)", 'layer { name: "data" type: "Data" top: "data" top: "label" ' + TRANSFORM
             + ' data_param { source: "{src}" backend: LMDB batch_size: {batch} } }'),
    "hdf5": ("HDF5Data (float32 .h5)", 'layer { name: "data" type: "HDF5Data" top: "data" top: "label" '
             'hdf5_data_param { source: "{src}" batch_size: {batch} shuffle: true } }'),
}
SILENCE = 'layer { name: "silence" type: "Silence" bottom: "data" bottom: "label" }'


def face_like(rng: np.random.Generator) -> np.ndarray:
    """A 112x96 BGR crop that compresses like an aligned face: a background gradient, a skin-toned head with hair,
    eyes, nose and mouth near SphereFace's five reference landmarks, a slight blur and sensor noise."""
    import cv2

    h, w = SIZE
    img = np.empty((h, w, 3), np.float32)
    img[:] = rng.uniform(30, 220, 3)
    img += np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-40, 40, 3)
    tone = rng.uniform(0.35, 1.0)
    skin = (np.array([120, 150, 200]) * tone + rng.normal(0, 10, 3)).tolist()
    dark = (rng.uniform(10, 70, 3)).tolist()
    j = lambda x, y: (int(x + rng.normal(0, 2)), int(y + rng.normal(0, 2)))   # noqa: E731
    cv2.ellipse(img, j(48, 64), (int(rng.uniform(30, 38)), int(rng.uniform(44, 52))), rng.uniform(-8, 8), 0, 360,
                skin, -1)
    cv2.ellipse(img, j(48, 30), (int(rng.uniform(34, 42)), int(rng.uniform(18, 28))), 0, 180, 360, dark, -1)
    for x, y in ((30.3, 51.7), (65.5, 51.5)):   # eyes and brows
        cv2.ellipse(img, j(x, y), (6, 3), 0, 0, 360, (230, 230, 230), -1)
        cv2.circle(img, j(x, y), 3, dark, -1)
        cv2.line(img, j(x - 8, y - 9), j(x + 8, y - 10), dark, 2)
    cv2.line(img, j(48, 56), j(48, 72), [c * 0.8 for c in skin], 3)                       # nose
    cv2.ellipse(img, j(48, 92), (15, 5), 0, 0, 360, [c * 0.7 for c in skin], -1)           # mouth
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.7, 1.3))
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_data(folder: pathlib.Path, n: int, batch: int) -> dict:
    """The JPEGs, the list file, the LMDB and the HDF5 files; one train prototxt per reader. -> {reader: prototxt}"""
    import cv2
    import h5py

    from sfport.data import db

    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    labels = rng.integers(0, 100, n)
    names = [f"{i:06d}.jpg" for i in range(n)]
    rows = np.empty((min(n, H5_ROWS), 3) + SIZE, np.float32)
    h5_files = []
    for i, name in enumerate(names):
        img = face_like(rng)
        cv2.imwrite(str(folder / "img" / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        # what ImageData / Data give before mirroring: BGR, C x H x W, (pixel - mean) * scale
        rows[i % H5_ROWS] = (img.transpose(2, 0, 1).astype(np.float32) - 127.5) * 0.0078125
        if i % H5_ROWS == H5_ROWS - 1 or i == n - 1:
            first = i - i % H5_ROWS
            h5_files.append(folder / f"faces_{len(h5_files)}.h5")
            with h5py.File(h5_files[-1], "w") as f:
                f["data"] = rows[:i - first + 1]
                f["label"] = labels[first:i + 1].astype(np.float32)
    (folder / "list.txt").write_text("".join(f"{nm} {lb}\n" for nm, lb in zip(names, labels)))
    (folder / "h5.txt").write_text("".join(f"{f}\n" for f in h5_files))
    db.convert_imageset(str(folder / "img") + "/", folder / "list.txt", folder / "lmdb", encode_type="jpg")
    sources = {"imagedata": folder / "list.txt", "lmdb": folder / "lmdb", "hdf5": folder / "h5.txt"}
    protos = {}
    for reader, (_, layer) in READERS.items():
        text = layer.replace("{src}", str(sources[reader])).replace("{root}", str(folder / "img"))
        protos[reader] = folder / f"{reader}_train.prototxt"
        protos[reader].write_text(f'name: "loader_{reader}"\n{text.replace("{batch}", str(batch))}\n{SILENCE}\n')
    jpeg_kb = sum((folder / "img" / nm).stat().st_size for nm in names) / n / 1024
    return {"protos": protos, "jpeg_kb": jpeg_kb}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc; NaN elsewhere)."""
    try:
        return sum(sum(int(v) for v in open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11:13])
                   for p in pids) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return math.nan


def measure(proto: str, workers: int, seconds: float, warmup: float) -> tuple[float, int, float]:
    """(images/s, micro-batches timed, CPU cores busy) of the training feeder on ``proto``'s TRAIN data layer, with
    ``workers`` DataLoader workers, over ``seconds`` of next() calls after the warm-up; cores busy: the CPU time of
    this process and its workers over the wall time. Run in a process of its own."""
    import torch

    from sfport.data.feed import Feeder
    from sfport.formats import caffe_files
    from sfport.protos import caffe_pb2
    from sfport.report.progress import CaffeLog
    from sfport.solver.config import Options

    net = caffe_files.read_prototxt(proto).net
    feeder = Feeder(net, caffe_pb2.TRAIN, Options(workers=workers), pathlib.Path(proto).parent, 0, 1, 0, 1,
                    CaffeLog(enabled=False), net_path=proto)
    assert feeder.workers == workers, (feeder.workers, workers)
    feeder.start(0, None, pin=torch.cuda.is_available())   # as Solver.step: pinned when training on CUDA
    size = lambda out: int(out[net.layer[0].top[0]].shape[0])   # noqa: E731
    t0, count = time.perf_counter(), 0
    while time.perf_counter() - t0 < warmup or count < 2 * (workers + 1):
        size(feeder.next())
        count += 1
    pids = [os.getpid()] + [w.pid for w in getattr(feeder._it, "_workers", [])]
    t0, c0, images, count = time.perf_counter(), cpu_seconds(pids), 0, 0
    while (elapsed := time.perf_counter() - t0) < seconds or count < 3:
        images += size(feeder.next())
        count += 1
    return images / elapsed, count, (cpu_seconds(pids) - c0) / elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0, help="Timed seconds per configuration.")
    ap.add_argument("--workers", default=None, help="Worker counts, e.g. 0,1,2 (default: 0, 1, 2 and doubling "
                                                    "up to the core count).")
    ap.add_argument("--quick", action="store_true", help="Tiny counts: a smoke test.")
    ap.add_argument("--out", type=pathlib.Path, default=HERE / "out", help="Where bench_loader.md is written.")
    ap.add_argument("--one", nargs=2, metavar=("PROTOTXT", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=float, default=2.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(*measure(args.one[0], int(args.one[1]), args.seconds, args.warmup), flush=True)
        return 0
    if args.quick:
        args.images, args.batch, args.seconds, args.warmup = min(args.images, 200), min(args.batch, 32), 1.0, 0.3

    import subprocess

    import cv2
    import torch

    cores = os.cpu_count() or 1
    if args.workers:
        workers = [int(w) for w in args.workers.split(",")]
    else:
        workers = sorted({0, 1, 2, cores} | {2 ** k for k in range(cores.bit_length()) if 2 ** k <= cores})
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rows = []
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sfport_bench_loader_") as tmp:
        t0 = time.perf_counter()
        made = make_data(pathlib.Path(tmp), args.images, args.batch)
        t_make = time.perf_counter() - t0
        for reader, proto in made["protos"].items():
            for w in workers:
                out = subprocess.run([sys.executable, __file__, "--one", str(proto), str(w), "--seconds",
                                      str(args.seconds), "--warmup", str(args.warmup)], capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{reader} workers {w}: {out.stderr[-3000:]}")
                ips, count, busy = (float(v) for v in out.stdout.split()[-3:])
                rows.append((reader, w, ips, busy))
                print(f"  {READERS[reader][0]}, {w} workers: {ips:.0f} img/s, {busy:.2f} cores busy ({count:.0f} "
                      f"batches)", file=sys.stderr, flush=True)

    lines = [f"CPU: {cores} cores ({cpu}); torch {torch.__version__}, cv2 {cv2.__version__}, Python "
             f"{platform.python_version()}; {args.images} JPEG crops {SIZE[0]}x{SIZE[1]} (quality 95, "
             f"{made['jpeg_kb']:.1f} KB average), batch {args.batch}; {args.seconds:g} s timed per configuration "
             f"after a warm-up, each in a process of its own; data made in {t_make:.0f} s, total "
             f"{time.perf_counter() - t_start:.0f} s; load average {load0:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end",
             "", "| reader | workers | img/s | img/s per worker | CPU cores busy |", "|---|---:|---:|---:|---:|"]
    for reader, w, ips, busy in rows:
        lines.append(f"| {READERS[reader][0]} | {w} | {ips:,.0f} | {ips / max(w, 1):,.0f} | {busy:.2f} |")
    lines.append("")
    for reader in READERS:
        mine = [(w, ips) for r, w, ips, _ in rows if r == reader]
        best = max(ips / max(w, 1) for w, ips in [m for m in mine if m[0] > 0] or mine)
        need = math.ceil(TARGET / best)
        lines.append(f"- {READERS[reader][0]}: {need} worker{'s' if need > 1 else ''} for {TARGET:,} img/s (best "
                     f"{best:,.0f} img/s per worker)")
    lines.append(f"\n(workers for {TARGET:,} img/s = ceil({TARGET:,} / best img/s per worker): this assumes the rate "
                 f"scales linearly with workers, one core each; measured on {cores} cores. Workers 0 reads in the "
                 f"training process itself, counted as one worker but not used for the estimate: only workers scale, "
                 f"and each pays the copy of its batches to the training process. CPU cores busy: CPU time of the training process "
                 f"and its workers over the wall time.)")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_loader.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
