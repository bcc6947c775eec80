"""Reading a ~90 MB SphereFace-20 caffemodel: sfport against OpenCV's readNetFromCaffe, same file, same run.

    python bench/bench_read.py [--repeat 7] [--out bench/out]

The model is the built-in SphereFace-20 deploy net with random weights, written by sfport (the released
weights are not available here; reading speed depends on sizes, not values). Prints a markdown table of
wall-clock times (median and best of --repeat runs, after one warm-up that also brings the file into the page
cache). Rows:
  opencv     cv2.dnn.readNetFromCaffe(prototxt, caffemodel): parse, upgrade, build the Net with its blobs
  sfport     sfport.read_caffemodel + merge with the deploy prototxt (blobs as zero-copy views of the file)
  +copy      the same, then every blob copied into its own float32 array (memory of its own, like OpenCV's)
  naive      protobuf ParseFromString + numpy.array(blob.data) per blob: what a plain protobuf reader does
  pieces     sfport.read_caffemodel of the same weights with every blob's values cut into packed fields of ~110
             values (200,000 pieces in all: legal protobuf, which some writers produce), next to the file as
             Caffe writes it (one packed field per blob); acceptance: under 1 s
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np


def build(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    from sfport.formats import caffe_files
    from sfport.netdef import weight_match, builtin

    out.mkdir(parents=True, exist_ok=True)
    prototxt, caffemodel = out / "sphereface20_deploy.prototxt", out / "sphereface20_random.caffemodel"
    definition = caffe_files.CaffeModel.from_net(builtin.sphereface_deploy(20))
    caffe_files.write_prototxt(prototxt, definition.net)
    caffe_files.write_caffemodel(caffemodel, weight_match.with_random_weights(definition, seed=0))
    return prototxt, caffemodel


def build_pieces(caffemodel: pathlib.Path, pieces: int = 200_000) -> tuple[pathlib.Path, int]:
    """The caffemodel with its blobs' values cut into about ``pieces`` packed fields; (path, pieces made)."""
    from sfport.formats import caffe_files, wire

    data = caffemodel.read_bytes()
    sizes = [v.size for row in caffe_files.read_caffemodel(caffemodel).values for b in row for v in b.arrays.values()]
    per_field = max(1, -(-sum(sizes) // pieces))
    out = caffemodel.with_name(caffemodel.stem + f"_{pieces}_pieces.caffemodel")
    out.write_bytes(wire.split_packed(data, wire.NET_SPEC, per_field))
    return out, sum(-(-n // per_field) for n in sizes)


def time_it(fn, repeat: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "out")
    args = ap.parse_args(argv)

    import cv2
    from sfport.formats import caffe_files
    from sfport.netdef import weight_match
    from sfport.protos import caffe_pb2

    prototxt, caffemodel = build(args.out)
    size_mb = caffemodel.stat().st_size / 1e6
    pieces_file, n_pieces = build_pieces(caffemodel)

    def opencv():
        return cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))

    def sfport_read():
        merged, _ = weight_match.merge(caffe_files.read_prototxt(prototxt), caffe_files.read_caffemodel(caffemodel))
        return merged

    def sfport_copy():
        merged = sfport_read()
        return {name: [np.array(a, dtype=np.float32) for a in arrays] for name, arrays in merged.params.items()}

    def naive():
        net = caffe_pb2.NetParameter.FromString(caffemodel.read_bytes())
        return [np.array(b.data, dtype=np.float32) for layer in net.layer for b in layer.blobs]

    def read_one_piece():
        return caffe_files.read_caffemodel(caffemodel)

    def read_pieces():
        return caffe_files.read_caffemodel(pieces_file)

    # the readers agree before they are timed
    ours = sfport_read().params
    one, many = read_one_piece(), read_pieces()
    assert all(np.array_equal(a, b) for i in range(len(one.net.layer))
               for a, b in zip(one.blob_arrays(i), many.blob_arrays(i))), "the pieces file reads other values"
    cv_net = opencv()
    for name in ("conv1_1", "conv4_3", "fc5"):
        layer = cv_net.getLayer(cv_net.getLayerId(name))
        assert all(np.array_equal(a.ravel(), b.ravel()) for a, b in zip(ours[name], layer.blobs)), name

    rows = [("opencv readNetFromCaffe", opencv), ("sfport read + merge", sfport_read),
            ("sfport read + merge + copy", sfport_copy), ("naive protobuf + np.array", naive),
            ("sfport read_caffemodel, 1 packed field per blob", read_one_piece),
            (f"sfport read_caffemodel, {n_pieces:,} packed pieces", read_pieces)]
    results = [(label, time_it(fn, args.repeat)) for label, fn in rows]
    base = statistics.median(results[0][1])
    print(f"SphereFace-20 deploy, random weights: {caffemodel.name}, {size_mb:.1f} MB, "
          f"{args.repeat} runs after a warm-up; cv2 {cv2.__version__}, numpy {np.__version__}, "
          f"python {sys.version.split()[0]}")
    print()
    print("| reader | median (ms) | best (ms) | vs OpenCV (median) |")
    print("|---|---:|---:|---:|")
    for label, times in results:
        med = statistics.median(times)
        print(f"| {label} | {med * 1e3:.1f} | {min(times) * 1e3:.1f} | {med / base:.2f}x |")
    med = statistics.median(results[-1][1])
    print()
    print(f"{n_pieces:,}-piece file ({pieces_file.stat().st_size / 1e6:.1f} MB): median read {med * 1e3:.0f} ms "
          f"({'under' if med < 1 else 'NOT under'} the 1 s acceptance)")
    return 0 if med < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
