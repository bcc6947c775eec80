"""Alignment and LFW feature extraction throughput on CPU, each against a peer in the same run.

- align from landmarks: sfport (Matlab cp2tform similarity + bilinear warp) against OpenCV's
  estimateAffinePartial2D + warpAffine, on 250x250 face photos;
- detect + align with MTCNN (det1-det3 through sfport), per image;
- feature extraction of SphereFace-20 (random weights, 112x96, with the mirror image, as evaluation.m):
  ``sfport.face.features.extract`` (DataLoader, 2 workers, batch 64; the default backend and --backend torch) against OpenCV's Caffe importer on the same
  images (blobFromImages, batch 64).

    python bench/bench_eval.py [--images 256]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("SFPORT_SHARED", ROOT.parent / "shared")) / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args(argv)
    from sfport.face import align as al
    from sfport.formats import caffe_files
    from sfport.netdef import weight_match, builtin
    from sfport.face.features import Model, extract
    from sfport.face.mtcnn import MTCNN, nearest_centre

    photos = [cv2.imread(str(FIXTURES / "lfw" / f"Anthony_Hopkins_000{i}.jpg")) for i in (1, 2)]
    marks = al.read_landmarks(FIXTURES / "lfw" / "lfw_landmark.txt")
    pts = [marks[f"Anthony_Hopkins/Anthony_Hopkins_000{i}.jpg"] for i in (1, 2)]
    t = al.template("sphereface")
    n = args.images
    rows = []

    start = time.perf_counter()
    for k in range(n):
        al.align(photos[k % 2], pts[k % 2], t)
    rows.append(("align from landmarks", "sfport (cp2tform + warp)", n / (time.perf_counter() - start)))
    start = time.perf_counter()
    for k in range(n):
        A, _ = cv2.estimateAffinePartial2D(pts[k % 2].astype(np.float32), t.points.astype(np.float32),
                                           method=cv2.LMEDS)
        cv2.warpAffine(photos[k % 2], A, (96, 112))
    rows.append(("align from landmarks", "OpenCV estimateAffinePartial2D + warp", n / (time.perf_counter() - start)))

    det = MTCNN(FIXTURES / "mtcnn")
    m = max(8, n // 16)
    start = time.perf_counter()
    for k in range(m):
        f = nearest_centre(det.detect(photos[k % 2]), photos[k % 2].shape)
        al.align(photos[k % 2], f.landmarks, t)
    rows.append(("MTCNN detect + align (250x250)", "sfport", m / (time.perf_counter() - start)))

    tmp = Path(tempfile.mkdtemp())
    try:
        import synthfaces
        synthfaces.write_dataset(tmp / "img", 16, max(1, n // 16), seed=0)
        paths = [l.split()[0] for l in (tmp / "img" / "list.txt").read_text().splitlines()]
        sf20 = weight_match.with_random_weights(caffe_files.CaffeModel.from_net(builtin.sphereface_deploy(20), None), seed=0)
        caffe_files.write_caffemodel(tmp / "sf20.caffemodel", sf20)
        caffe_files.write_prototxt(tmp / "sf20.prototxt", builtin.sphereface_deploy(20))
        for backend, label in (("auto", "sfport extract, default (optimized net on onnxruntime)"),
                               ("torch", "sfport extract, --backend torch (optimized eager)")):
            mdl = Model(tmp / "sf20.caffemodel", backend=backend)
            extract(mdl, paths[:64], tmp / "img", cache_dir=False, workers=2)  # warm-up
            start = time.perf_counter()
            extract(mdl, paths, tmp / "img", cache_dir=False, workers=2, batch_size=64)
            rows.append(("SphereFace-20 features (+ mirror)", label, len(paths) / (time.perf_counter() - start)))
        net = cv2.dnn.readNetFromCaffe(str(tmp / "sf20.prototxt"), str(tmp / "sf20.caffemodel"))
        start = time.perf_counter()
        for b in range(0, len(paths), 64):
            imgs = [cv2.imread(str(tmp / "img" / p)) for p in paths[b:b + 64]]
            imgs = imgs + [im[:, ::-1] for im in imgs]
            net.setInput(cv2.dnn.blobFromImages(imgs, 1 / 128, (96, 112), (127.5, 127.5, 127.5)))
            net.forward("fc5")
        rows.append(("SphereFace-20 features (+ mirror)", "OpenCV readNetFromCaffe",
                     len(paths) / (time.perf_counter() - start)))
    finally:
        shutil.rmtree(tmp)
    print("| task | implementation | img/s |")
    print("|---|---|---:|")
    for task, impl, v in rows:
        print(f"| {task} | {impl} | {v:.1f} |")


if __name__ == "__main__":
    main()
