"""The whole LFW evaluation, photos to the accuracy table: ``sfport eval`` (its defaults: alignment from the
landmark list in DataLoader workers, the optimized net on onnxruntime, the evaluation.m protocol) against a
hand-written OpenCV pipeline on the same photos (cv2.imread, a similarity transform from the same landmarks by
cv2.estimateAffinePartial2D, cv2.warpAffine, cv2.dnn's Caffe importer on the image and its mirror image in
batches, and the same protocol on the features), each in its own process, in one run.

    python bench/bench_lfw_pipeline.py [--images 1000] [--model sf20|mfn|sf4] [--batch-sizes 64,256]
                                       [--skip-opencv] [--data DIR] [--rounds 2] [--no-memory]

The photos are synthetic faces at LFW's size (250 x 250 JPEG; a face rendered by tests/synthfaces.py, scaled and
placed, with its five landmarks listed as lfw_landmark.txt lists them) in LFW's layout, with a pairs.txt of 10
folds of at least LFW's 300 + 300 pairs that uses every photo.

Times are the best of --rounds runs of each pipeline, interleaved, with nothing watching them. Memory comes from
one more run of each, sampled every 50 ms as the proportional set size (PSS, so pages the DataLoader workers share
with their parent count once) of the process and all its children, and the largest process's peak RSS (getrusage
of the waited-for children); the sampling slowed the runs it watched (sfport's three processes more than OpenCV's
one), so it is kept out of the timed runs. Prints one markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = pathlib.Path(os.environ.get("SFPORT_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "tests"))

SCALE, OFFSET = 1.25, (65.0, 55.0)   # the 112 x 96 face scaled and placed at (x, y) in the 250 x 250 photo


def make_photos(root: pathlib.Path, n: int, seed: int = 0) -> None:
    """``root/lfw/<name>/<name>_NNNN.jpg`` (n photos, 4 per person), ``root/landmarks.txt``, ``root/pairs.txt``."""
    import cv2
    import synthfaces
    from sfport.face import align as al

    rng = np.random.default_rng(seed)
    tmpl = al.template("sphereface").points
    people = (n + 3) // 4
    names, marks = [], []
    for i in range(people):
        p = synthfaces.identity(rng)
        name = f"Person_{i:05d}"
        (root / "lfw" / name).mkdir(parents=True, exist_ok=True)
        for j in range(1, min(4, n - 4 * i) + 1):
            face = cv2.resize(synthfaces.render(p, rng), None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_LINEAR)
            photo = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
            x0, y0 = int(OFFSET[0]), int(OFFSET[1])
            photo[y0:y0 + face.shape[0], x0:x0 + face.shape[1]] = face
            rel = f"{name}/{name}_{j:04d}.jpg"
            cv2.imwrite(str(root / "lfw" / rel), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
            pts = (tmpl + 0.5) * SCALE - 0.5 + OFFSET
            names.append(rel)
            marks.append(f"{rel} " + " ".join(f"{v:.2f}" for v in pts.ravel()))
    (root / "landmarks.txt").write_text("\n".join(marks) + "\n")
    # 10 folds of k same + k different pairs, LFW's 300 or more: enough to use every photo at least once (LFW's
    # own 6000 pairs reuse photos too), so that the protocol's work is about the same at every number of photos
    k = max(300, (n + 39) // 40)
    by_person = [[r for r in names if r.startswith(f"Person_{i:05d}/")] for i in range(people)]
    multi = [ims for ims in by_person if len(ims) >= 2]
    same, diff, q = [], [], 0
    for f in range(10 * k):
        ims = multi[f % len(multi)]
        a, b = ims[(f // len(multi)) % len(ims)], ims[(f // len(multi) + 1) % len(ims)]
        same.append((a, b))
    order = rng.permutation(len(names))
    for f in range(10 * k):
        a, b = names[order[q % len(names)]], names[order[(q + 1) % len(names)]]
        q += 2
        if a.split("/")[0] == b.split("/")[0]:
            b = names[order[(q + 7) % len(names)]]
        diff.append((a, b))

    def num(rel):
        return int(rel.rsplit("_", 1)[1].split(".")[0])

    lines = [f"10\t{k}"]
    for fold in range(10):
        for a, b in same[fold * k:(fold + 1) * k]:
            lines.append(f"{a.split('/')[0]}\t{num(a)}\t{num(b)}")
        for a, b in diff[fold * k:(fold + 1) * k]:
            lines.append(f"{a.split('/')[0]}\t{num(a)}\t{b.split('/')[0]}\t{num(b)}")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")


def write_model(kind: str, out: pathlib.Path) -> tuple[str, str, str]:
    """(caffemodel, prototxt, template) of the benchmark's model."""
    from sfport.formats import caffe_files
    from sfport.netdef import weight_match, builtin
    if kind == "mfn":
        mfn = SHARED / "fixtures/mobilefacenet_insightface"
        return (str(mfn / "mxnet2caffe_mobilefacenet.caffemodel"), str(mfn / "mxnet2caffe_mobilefacenet.prototxt"),
                "arcface112")
    depth = {"sf20": 20, "sf4": 4}[kind]
    net = builtin.sphereface_deploy(depth)
    caffe_files.write_prototxt(out / f"{kind}.prototxt", net)
    caffe_files.write_caffemodel(out / f"{kind}.caffemodel",
                                 weight_match.with_random_weights(caffe_files.CaffeModel.from_net(net, None), seed=0))
    return str(out / f"{kind}.caffemodel"), str(out / f"{kind}.prototxt"), "sphereface"


def _tree_pss_kb(pid: int) -> int:
    """PSS (kB) of ``pid`` and its descendants, from /proc (0 for a process already gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration, ValueError):
            continue
    return total


def timed(cmd: list[str]) -> tuple[float, str]:
    """(seconds, stdout) of a command run with nothing watching it."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def measured(cmd: list[str]) -> tuple[int, int]:
    """(peak PSS of the process tree in MB, the main process's peak RSS in MB) of a command. Sampling
    /proc/PID/smaps_rollup takes each process's mmap lock, which slows the process that is sampled (the more
    so, the more processes its tree has), so the times come from runs of their own (:func:`timed`)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "sys.stderr.write('\\nMAXRSS %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(r.returncode)")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_pss_kb(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    maxrss = int(err.rsplit("MAXRSS", 1)[1].split()[0])
    return peak[0] // 1024, maxrss // 1024


def opencv_pipeline(args) -> None:
    """The hand-written pipeline (run in its own process by main): prints the accuracy as JSON."""
    import cv2
    from sfport.face import align as al
    from sfport.face import lfw

    t = al.template(args.template)
    h, w = t.size
    marks = {}
    for line in pathlib.Path(args.landmarks).read_text().splitlines():
        parts = line.split()
        marks[parts[0]] = np.array([float(v) for v in parts[1:11]], np.float32).reshape(5, 2)
    pairs = lfw.read_pairs(args.pairs)
    needed = sorted({p.left for p in pairs} | {p.right for p in pairs})
    net = cv2.dnn.readNetFromCaffe(args.prototxt, args.caffemodel)
    out = "fc5" if args.template == "sphereface" else None
    feats = []
    for b in range(0, len(needed), args.batch):
        crops = []
        for rel in needed[b:b + args.batch]:
            img = cv2.imread(os.path.join(args.lfw_dir, rel))
            A, _ = cv2.estimateAffinePartial2D(marks[rel], t.points.astype(np.float32), method=cv2.LMEDS)
            crops.append(cv2.warpAffine(img, A, (w, h)))
        crops += [c[:, ::-1] for c in crops]
        net.setInput(cv2.dnn.blobFromImages(crops, 1 / 128, (w, h), (127.5, 127.5, 127.5)))
        f = net.forward(out) if out else net.forward()
        f = f.reshape(len(crops), -1)
        n = len(crops) // 2
        feats.append(np.concatenate([f[:n], f[n:]], axis=1))
    tmp = pathlib.Path(tempfile.mkdtemp())
    np.save(tmp / "f.npy", np.concatenate(feats).astype(np.float32))
    (tmp / "list.txt").write_text("\n".join(needed) + "\n")
    rep = lfw.evaluate_features(args.pairs, tmp / "f.npy", tmp / "list.txt", "sphereface")
    print(json.dumps({"accuracy": rep.as_dict().get("accuracy"), "images": len(needed)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--model", choices=["sf20", "mfn", "sf4"], default="sf20")
    ap.add_argument("--batch-sizes", default="64")
    ap.add_argument("--skip-opencv", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="Timed runs of each pipeline, interleaved (the best counts).")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="Skip the runs that sample memory (one more run of each pipeline).")
    ap.add_argument("--data", type=pathlib.Path, help="Folder to keep the photos in (reused when it has them).")
    ap.add_argument("--opencv-worker", action="store_true", help=argparse.SUPPRESS)
    for a in ("--lfw-dir", "--pairs", "--landmarks", "--prototxt", "--caffemodel", "--template"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.opencv_worker:
        opencv_pipeline(args)
        return 0
    data = args.data or pathlib.Path(tempfile.mkdtemp()) / f"photos{args.images}"
    if not (data / "pairs.txt").is_file():
        data.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_photos(data, args.images)
        print(f"wrote {args.images} photos in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    caffemodel, prototxt, template = write_model(args.model, data)
    n_images = sum(1 for _ in (data / "lfw").rglob("*.jpg"))
    runs = {}    # name -> (command, read the accuracy from its report or its stdout)
    for b in [int(v) for v in args.batch_sizes.split(",")]:
        report = data / f"report{b}.json"
        cmd = [sys.executable, "-m", "sfport", "eval", "-m", caffemodel, "-p", prototxt, "--lfw-dir", str(data / "lfw"),
               "--pairs", str(data / "pairs.txt"), "--landmarks", str(data / "landmarks.txt"), "--template", template,
               "--no-cache", "--batch-size", str(b), "--report", str(report)]
        runs[f"sfport eval (batch {b})"] = (cmd, lambda out, report=report: json.loads(report.read_text()).get("accuracy"))
    if not args.skip_opencv:
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--opencv-worker", "--lfw-dir", str(data / "lfw"),
               "--pairs", str(data / "pairs.txt"), "--landmarks", str(data / "landmarks.txt"), "--prototxt", prototxt,
               "--caffemodel", caffemodel, "--template", template, "--batch", "64"]
        runs["hand-written OpenCV (batch 64)"] = (cmd, lambda out: json.loads(out.splitlines()[-1])["accuracy"])
    best, acc = {}, {}
    for _ in range(args.rounds):         # interleaved: a slow spell of the machine hits every pipeline
        for name, (cmd, accuracy) in runs.items():
            sec, out = timed(cmd)
            best[name] = min(best.get(name, sec), sec)
            acc[name] = accuracy(out)
    memory = {name: measured(cmd) for name, (cmd, _) in runs.items()} if args.memory else {}
    rows = [(name, best[name], *memory.get(name, ("-", "-")), acc[name]) for name in runs]
    import cv2
    import onnxruntime
    import torch
    print(f"{n_images} photos (250x250), model {args.model}; {os.cpu_count()} cores; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, cv2 {cv2.__version__}")
    print()
    print(f"seconds: the best of {args.rounds} unwatched runs of each, interleaved; memory: "
          + ("one more run of each, sampled every 50 ms" if args.memory else "not measured (--no-memory)"))
    print()
    ref = rows[-1][1] if not args.skip_opencv else None
    print("| pipeline | seconds | images/s | vs OpenCV | peak PSS, all processes (MB) | "
          "peak RSS, largest process (MB) | accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, sec, pss, rss, acc in rows:
        ratio = f"{ref / sec:.2f}x" if ref else "-"
        acc_text = f"{acc:.4f}" if isinstance(acc, float) else str(acc)
        print(f"| {name} | {sec:.1f} | {n_images / sec:.1f} | {ratio} | {pss} | {rss} | {acc_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
