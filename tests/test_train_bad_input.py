"""Bad input to `sfport train` (issue 14, the training part): the solver, the snapshot outputs, checkpoints,
--weights, the ImageData / Data / HDF5Data layers' input. Each is one line `sfport: error: FILE: what`, exit status
2, no traceback, nothing left half-written; what Caffe accepts trains as Caffe does.

Errors found while the run is set up are the only line on stderr (the setup's log lines are held until it is
done); errors found while it trains (a batch, a snapshot) come after the log written so far, as the last line
and the only error line (`assert_run_error`). Tiny nets on 6x6 images made in tmp_path."""
import base64
import json
import os
import zlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from badinput import assert_bad_input, files_under, run
from sfport.formats import caffe_files
from sfport import solver as tr
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

cv2 = pytest.importorskip("cv2")

NET = """name: "tiny"
layer { name: "data" type: "ImageData" top: "data" top: "label"
  transform_param { scale: 0.00390625 }
  image_data_param { source: "list.txt" batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
SOLVER = {"net": "net.prototxt", "base_lr": 0.01, "lr_policy": "fixed", "max_iter": 2, "snapshot_prefix": "out/s",
          "display": 1, "random_seed": 1}


def write_solver(name="s.prototxt", drop=(), **fields) -> str:
    """SOLVER with ``fields`` replaced or added (a list: a repeated field), without ``drop``."""
    lines = []
    for k, v in {**SOLVER, **fields}.items():
        if k in drop:
            continue
        for one in v if isinstance(v, list) else [v]:
            lines.append(f'{k}: "{one}"' if isinstance(one, str) else f"{k}: {one}")
    Path(name).write_text("\n".join(lines) + "\n")
    return name


def write_list(name, lines):
    Path(name).write_text("\n".join(lines) + "\n")


def image(name, h=6, w=6, seed=0):
    assert cv2.imwrite(name, np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def net(text=NET, name="net.prototxt", **replace):
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    Path(name).write_text(text)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """tmp_path as the working directory: four 6x6 images, list.txt, net.prototxt, s.prototxt."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    for i in range(4):
        image(f"img/{i}.png", seed=i)
    write_list("list.txt", [f"img/{i}.png {i % 2}" for i in range(4)])
    net()
    write_solver()
    return tmp_path


def train(*args, solver="s.prototxt"):
    return run("train", solver, "--workers", "0", *args)


def assert_run_error(result, path_fragment, what):
    """An error found while training: the one error line, last, after the log so far; exit 2, no traceback."""
    assert "Traceback" not in result.output, result.output[-3000:]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output[-3000:])
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [l for l in lines if l.startswith("sfport:")] == [lines[-1]], result.stderr[-3000:]
    assert lines[-1].startswith("sfport: error: ") and path_fragment in lines[-1] and what in lines[-1], lines[-1]
    return lines[-1]


def ok(result):
    assert result.exit_code == 0, result.output[-3000:]
    return result


# ---------------------------------------------------------------------------------------------------------------
# 1. the solver: checked when it is read, before any net (the net file does not even exist here)
# ---------------------------------------------------------------------------------------------------------------

SOLVER_CASES = {   # id: (fields, drop, what the line says)
    "unknown policy": ({"lr_policy": "bogus"}, (), "lr_policy: unknown learning rate policy 'bogus' (Caffe has fixed"),
    "no policy": ({}, ("lr_policy",), "lr_policy: not set"),
    "step without stepsize": ({"lr_policy": "step"}, (), "stepsize: lr_policy 'step' needs stepsize > 0"),
    "stepsize 0": ({"lr_policy": "step", "stepsize": 0}, (), "stepsize: lr_policy 'step' needs stepsize > 0, not 0"),
    "negative gamma": ({"lr_policy": "exp", "gamma": -0.5}, (), "gamma: -0.5 must not be negative"),
    "stepvalue down": ({"lr_policy": "multistep", "stepvalue": [5, 3]}, (),
                       "stepvalue: stepvalue 2 (3) must be greater than the one before (5)"),
    "stepvalue twice": ({"lr_policy": "multistep", "stepvalue": [4, 4]}, (), "stepvalue 2 (4) must be greater"),
    "L3": ({"regularization_type": "L3"}, (), "regularization_type: unknown regularization type 'L3'"),
    "average_loss 0": ({"average_loss": 0}, (), "average_loss: 0 must be at least 1"),
    "average_loss -1": ({"average_loss": -1}, (), "average_loss: -1 must be at least 1"),
    "iter_size 0": ({"iter_size": 0}, (), "iter_size: 0 must be at least 1"),
    "momentum nan": ({"momentum": float("nan")}, (), "momentum: nan is not a finite number"),
    "base_lr inf": ({"base_lr": float("inf")}, (), "base_lr: inf is not a finite number"),
    "clip nan": ({"clip_gradients": float("nan")}, (), "clip_gradients: nan is not a finite number"),
    "display -1": ({"display": -1}, (), "display: -1 must not be negative"),
    "max_iter -1": ({"max_iter": -1}, (), "max_iter: -1 must not be negative"),
    "snapshot -5": ({"snapshot": -5}, (), "snapshot: -5 must not be negative"),
    "test_iter, no test net": ({"train_net": "missing.prototxt", "test_iter": 1}, ("net",),
                               "test_iter: test_iter must be specified for each test network (1 test_iter for 0"),
    "test net, no test_iter": ({"train_net": "missing.prototxt", "test_net": "missing.prototxt",
                                "test_interval": 1}, ("net",), "test_iter must be specified for each test network"),
    "no test_interval": ({"test_iter": 1}, (), "test_interval: test nets need test_interval > 0, not 0"),
    "test_iter 0": ({"test_iter": 0, "test_interval": 1}, (), "test_iter: test_iter 1 is 0"),
    "test_state count": ({"test_iter": 1, "test_interval": 1, "test_state": ["{ stage: 'a' }", "{ stage: 'b' }"]},
                         (), "test_state: test_state must be unspecified or specified once per test net"),
    "Adamw": ({"type": "AdamW"}, (), "type: unknown solver type 'AdamW' (known types: SGD, Nesterov"),
    "AdaGrad momentum": ({"type": "AdaGrad", "momentum": 0.9}, (), "momentum: 0.9: momentum cannot be used with AdaGrad"),
}


@pytest.mark.parametrize("case", SOLVER_CASES, ids=list(SOLVER_CASES))
def test_solver_is_checked_before_the_net(work, case):
    fields, drop, what = SOLVER_CASES[case]
    fields = {"net": "missing.prototxt", **fields}
    text = Path(write_solver(drop=drop, **fields)).read_text()
    Path("s.prototxt").write_text(re.sub(r'test_state: "(.*)"', r"test_state \1", text))
    before = files_under(work)
    assert_bad_input(train(), "s.prototxt", what)
    assert files_under(work) == before


def test_command_line_numbers(work):
    for args, what in ((["--workers", "-1"], "--workers -1: give 0"), (["--seed", "-3"], "--seed -3: give a seed"),
                       (["--max-iter", "-1"], "--max-iter -1: must not be negative"),
                       (["--synthetic-data", "--shape", "3,0,6"], "--shape 3,0,6: give the synthetic images' C,H,W")):
        assert_bad_input(run("train", "s.prototxt", *args), args[-1], what)
    assert not Path("out").exists()


def test_what_caffe_accepts_trains_as_caffe(work):
    """sigmoid's stepsize is a midpoint (0 is fine); a generic net with two test_iter is two test nets
    (Solver::InitTestNets: the net once per test_iter left); no snapshot_prefix is the solver's name, a folder
    the folder / the solver's stem (upgrade_proto.cpp UpgradeSnapshotPrefixProperty)."""
    write_solver(lr_policy="sigmoid", stepsize=0, gamma=0.5, test_iter=[1, 1], test_interval=2, drop=("snapshot_prefix",))
    r = ok(train())
    assert "Testing net (#1)" in r.stderr and "Testing net (#2)" not in r.stderr
    assert {"s_iter_2.caffemodel", "s_iter_2.solverstate"} <= files_under(work)
    assert not any(f.endswith(".pt") for f in files_under(work))   # Caffe's two files, nothing else
    os.mkdir("snaps")
    write_solver(snapshot_prefix="snaps")
    r = ok(train())
    assert "snapshot_prefix was a directory and is replaced to snaps/s" in r.stderr
    assert files_under(work / "snaps") == {"s_iter_2.caffemodel", "s_iter_2.solverstate"}


# ---------------------------------------------------------------------------------------------------------------
# 2. snapshot outputs: probed before the first iteration; a snapshot is written whole or not at all
# ---------------------------------------------------------------------------------------------------------------

def test_unwritable_snapshot_prefix_fails_before_training(work):
    Path("afile").write_text("x")
    write_solver(snapshot_prefix="afile/s")
    before = files_under(work)
    assert_bad_input(train(), "s.prototxt", "snapshot_prefix 'afile/s': afile/s_iter_2.caffemodel: cannot write "
                                            "snapshot: afile is not a folder")
    assert files_under(work) == before
    os.makedirs("out/s_iter_2.solverstate")   # the last snapshot's solver state is a folder
    write_solver()
    before = files_under(work)
    assert_bad_input(train(), "s.prototxt", "out/s_iter_2.solverstate: snapshot is a folder, not a file")
    assert files_under(work) == before


def test_a_snapshot_that_cannot_be_written_leaves_nothing(work, monkeypatch):
    os.makedirs("out/s_iter_1.caffemodel")   # only the snapshot of iteration 1 is in the way
    write_solver(snapshot=1)
    assert_run_error(train(), "out/s_iter_1.caffemodel", "snapshot is a folder, not a file")
    assert files_under(work / "out") == {"s_iter_1.caffemodel"}

    def full_disk(path, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(caffe_files, "write_solverstate", full_disk)
    os.rmdir("out/s_iter_1.caffemodel")
    assert_run_error(train(), "out/s_iter_1", "cannot write the snapshot of iteration 1 (nothing of it was left): "
                                              "No space left on device")
    assert files_under(work / "out") == set()   # neither the .caffemodel written first nor the half solverstate


# ---------------------------------------------------------------------------------------------------------------
# 3. checkpoints: every key checked against the solver and the net before any state changes
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def snap(work):
    """A run's snapshot at iteration 2: (its resume record, the .solverstate)."""
    ok(train())
    st = caffe_files.read_solverstate("out/s_iter_2.solverstate")
    return json.loads(zlib.decompress(st.resume)), st


def _record_cases(rec):
    b64 = base64.b64encode(bytes(10)).decode()
    return {
        "format": (dict(rec, format="other"), "sfport's resume record has another format"),
        "version": (dict(rec, version=2), "resume record 'version' is 2: this sfport reads version 1"),
        "type": (dict(rec, type="Adam"), "resume record: written by a Adam solver, this solver is SGD"),
        "rng x": (dict(rec, rng="x!"), "resume record: 'rng' is not base64 bytes"),
        "rng short": (dict(rec, rng=b64), "resume record: 'rng' is not a torch RNG state (10 bytes)"),
        "blob names": (dict(rec, blob_names=["fc/0", "fc/1"]),
                       "resume record: 'blob_names' are those of another net: blob 0 is 'fc/0', the net's is 'ip/0'"),
        "buffers": (dict(rec, buffers={"x": {}}), "resume record: 'buffers' are not the net's layer counters"),
        "world": (dict(rec, world="2"), "resume record: 'world' is '2', not a positive integer"),
        "losses": (dict(rec, losses="abc"), "resume record: 'losses' is not a list of numbers"),
        "smoothed": (dict(rec, smoothed_loss=None), "resume record: 'smoothed_loss' is not a number"),
        "not json": (None, "sfport's resume record is not zlib-compressed JSON"),
    }


def test_bad_resume_records(snap, work):
    rec, st = snap
    for case, (doc, what) in _record_cases(rec).items():
        caffe_files.write_solverstate("bad.solverstate", st.state, st.history,
                                      zlib.compress(b"{" if doc is None else json.dumps(doc).encode()))
        before = files_under(work)
        assert_bad_input(train("--snapshot", "bad.solverstate"), "bad.solverstate", what)
        assert files_under(work) == before, case   # nothing trained, no snapshot written


def test_a_failed_restore_changes_nothing(snap, work):
    """The net's weights, the solver state and the torch RNG are as before a restore that fails on its last check."""
    rec, st = snap
    caffe_files.write_solverstate("bad.solverstate", st.state, st.history,
                                  zlib.compress(json.dumps(dict(rec, smoothed_loss="x")).encode()))
    s = tr.Solver("s.prototxt", tr.Options(workers=0))
    weights = {k: v.clone() for k, v in s.net.module.state_dict().items()}
    saved = caffe_files.read_caffemodel("out/s_iter_2.caffemodel").params
    assert not np.array_equal(weights["layers.ip.weight"].numpy(), saved["ip"][0])   # the snapshot's differ
    rng = torch.get_rng_state()
    with pytest.raises(CaffeFileError, match="'smoothed_loss' is not a number"):
        s.restore("bad.solverstate")
    assert all(torch.equal(weights[k], v) for k, v in s.net.module.state_dict().items())
    assert s.state.iter == 0 and all(float(b.history.abs().sum()) == 0 for b in s.state.blobs)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_pt_checkpoint_of_an_earlier_sfport_points_to_its_solverstate(work):
    Path("old.pt").write_bytes(b"PK\x03\x04")
    assert_bad_input(train("--snapshot", "old.pt"), "old.pt", "a .pt training checkpoint of an earlier sfport: "
                                                              "resume from the .solverstate written beside it")


def test_bad_solverstates(snap, work):
    _, st = snap
    cases = {"short": (st.history[:1], "incorrect length of history blobs: 1 history blobs, where the SGD solver of this net has 2"),
             "long": (st.history + [np.zeros(3, np.float32)], "incorrect length of history blobs: 3 history blobs"),
             "size": ([np.zeros(5, np.float32), st.history[1]], "history of ip/0: [5] does not fit [2, 108]")}
    for case, (history, what) in cases.items():
        caffe_files.write_solverstate("bad.solverstate", st.state, history)
        assert_bad_input(train("--snapshot", "bad.solverstate"), "bad.solverstate", what)
    state = caffe_pb2.SolverState()
    state.CopyFrom(st.state)
    state.learned_net = "gone/x.caffemodel"
    caffe_files.write_solverstate("bad.solverstate", state, st.history)
    assert_bad_input(train("--snapshot", "bad.solverstate"), "bad.solverstate", "learned_net 'gone/x.caffemodel' "
                                                                                "not found")
    r = ok(train("--snapshot", "out/s_iter_2.solverstate", "--max-iter", "3"))   # the good one resumes
    assert "Iteration 2, lr = " in r.stderr and "Iteration 1, lr = " not in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# 4. --weights
# ---------------------------------------------------------------------------------------------------------------

def _weights_of(text, name):
    """The caffemodel of a net ``text`` (trained 0 iterations)."""
    net(text, name=f"{name}.prototxt")
    write_solver(f"{name}_s.prototxt", net=f"{name}.prototxt", snapshot_prefix=f"w/{name}")
    ok(run("train", f"{name}_s.prototxt", "--workers", "0", "--max-iter", "0"))
    return f"w/{name}_iter_0.caffemodel"


def test_weights_that_match_nothing_or_do_not_fit(work):
    other = _weights_of(NET.replace('name: "ip"', 'name: "fc"'), "fc")
    wide = _weights_of(NET.replace("num_output: 2", "num_output: 3"), "wide")
    before = files_under(work)
    assert_bad_input(train("--weights", other), other, "no layer of the weights matches a layer with parameters of "
                                                       "net.prototxt (weights for: fc; the net's: ip)")
    assert_bad_input(train("--weights", wide), wide, "does not fit net.prototxt: layer 'ip' (InnerProduct) blob 0: "
                                                     "weights have shape [3, 108], the net needs [2, 108]")
    write_solver(weights=other)   # the solver's own weights (caffe.cpp: used when -weights is not given)
    assert_bad_input(train(), other, "no layer of the weights matches")
    assert files_under(work) - before == set()
    same = _weights_of(NET, "same")
    write_solver(weights=same)
    assert f"Finetuning from {same}" in ok(train()).stderr


# ---------------------------------------------------------------------------------------------------------------
# 5. ImageData
# ---------------------------------------------------------------------------------------------------------------

def test_image_data_layer_parameters(work):
    net(**{'source: "list.txt" ': ""})
    assert_bad_input(train(), "net.prototxt", "layer 'data' (ImageData): image_data_param.source is not set")
    net(**{"batch_size: 2": "batch_size: 0"})   # hung before: empty micro-batches forever
    assert_bad_input(train(), "net.prototxt", "layer 'data' (ImageData): batch_size must be positive, not 0")
    net(**{"scale: 0.00390625": "scale: nan"})
    assert_bad_input(train(), "net.prototxt", "layer 'data': transform_param scale nan is not a finite number")
    net(**{"scale: 0.00390625": "crop_size: 7"})
    assert_bad_input(train(), "list.txt", "line 1: image 'img/0.png': image 6x6 is smaller than crop_size 7")
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 3, 5, 5])
    blob.data.extend([0.0] * 75)
    Path("mean.binaryproto").write_bytes(blob.SerializeToString())
    net(**{"scale: 0.00390625": 'mean_file: "mean.binaryproto"'})
    assert_bad_input(train(), "list.txt", "image 'img/0.png': the image is 3x6x6, the mean_file mean.binaryproto "
                                          "is 3x5x5")
    net(**{"batch_size: 2": "batch_size: 4294967295"})   # blob.cpp Blob::Reshape: CHECK_LE(count_, INT_MAX)
    assert_bad_input(train(), "net.prototxt", "the top 'data' of 4294967295 x 3 x 6 x 6 is 463856467860 values, "
                                              "more than a Caffe blob holds (INT_MAX)")
    assert not Path("out").exists()


def test_labels(work):
    for label, what in (("1" + "0" * 30, "line 2: the label 1000000000000000000000000000000 is out of range (Caffe "
                                         "reads labels as 32-bit integers"),
                        ("2147483648", "line 2: the label 2147483648 is out of range"),
                        ("\uff11", "line 2: the label '\uff11' is not an integer")):
        write_list("list.txt", ["img/0.png 0", f"img/1.png {label}", "img/2.png 1"])
        assert_bad_input(train(), "list.txt", what)
    write_list("list.txt", ["img/0.png 0", "img/1.png 5", "img/2.png 1", "img/3.png 0"])   # not a class of the loss
    assert_run_error(train(), "list.txt", "the batch of line 1: image 'img/0.png', line 2: image 'img/1.png': "
                                          "SoftmaxWithLoss: a label is outside 0..1")


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("skip", [[], ["--skip-bad-images"]], ids=["", "skip"])
def test_images_of_another_size_in_a_batch(work, workers, skip):
    """Caffe's ImageDataLayer shapes a batch to its first image; another size fails DataTransformer's CHECKs."""
    image("img/big.png", 8, 7)
    write_list("list.txt", ["img/0.png 0", "img/big.png 1", "img/1.png 1", "img/2.png 0"])
    r = run("train", "s.prototxt", "--workers", workers, *skip)
    assert_run_error(r, "list.txt", "line 2: image 'img/big.png' is 3x8x7, the first image of its batch (line 1: "
                                    "image 'img/0.png') is 3x6x6")


def test_batches_of_another_size(work):
    """A batch of another size than the first: the net is reshaped as Caffe's; one that cannot take it is an
    error naming the image (a fully convolutional net takes it)."""
    image("img/big.png", 8, 7)
    image("img/big2.png", 8, 7, seed=9)
    write_list("list.txt", ["img/0.png 0", "img/1.png 1", "img/big.png 1", "img/big2.png 0"])
    assert_run_error(train(), "list.txt", "line 3: image 'img/big.png' is 3x8x7, the net was set up for 3x6x6 (its "
                                          "first image) and cannot take it")
    net(**{'bottom: "data" top: "ip"': 'bottom: "pool" top: "ip"',
           'layer { name: "ip"': 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                                 'convolution_param { num_output: 2 kernel_size: 1 } }\n'
                                 'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" '
                                 'pooling_param { pool: AVE global_pooling: true } }\nlayer { name: "ip"'})
    ok(train())


def test_skip_bad_images_counts_each_line_once(work):
    write_list("list.txt", ["img/0.png 0", "img/missing.png 1", "img/1.png 1", "img/2.png 0"])
    r = ok(train("--skip-bad-images", "--max-iter", "6"))   # the list is read three times over
    assert "Skipped 1 unreadable images (--skip-bad-images)" in r.stderr


def test_worker_errors_are_one_line_and_leave_no_temp_folders(work):
    """In its own process, with TMPDIR of its own: the DataLoader workers' error comes back as the one line, and
    no pymp-* folder of theirs is left behind."""
    image("img/big.png", 8, 7)
    write_list("list.txt", ["img/0.png 0", "img/big.png 1", "img/1.png 1", "img/2.png 0"])
    (work / "tmp").mkdir()
    p = subprocess.run([sys.executable, "-m", "sfport", "train", "s.prototxt", "--workers", "2"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, TMPDIR=str(work / "tmp"), OMP_NUM_THREADS="1"))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1].startswith("sfport: error: list.txt: line 2: image 'img/big.png' is 3x8x7")
    assert files_under(work / "tmp") == set()


# ---------------------------------------------------------------------------------------------------------------
# 6. Data (LMDB) and HDF5Data
# ---------------------------------------------------------------------------------------------------------------

DATA = NET.replace('type: "ImageData"', 'type: "Data"').replace(
    'image_data_param { source: "list.txt" batch_size: 2 }', 'data_param { source: "db" backend: LMDB batch_size: 2 }')
HDF5 = NET.replace('type: "ImageData"', 'type: "HDF5Data"').replace("transform_param { scale: 0.00390625 }", "") \
    .replace('image_data_param { source: "list.txt" batch_size: 2 }', 'hdf5_data_param { source: "h5.txt" batch_size: 2 }')


def _lmdb(path, records):
    lmdb = pytest.importorskip("lmdb")
    with lmdb.open(str(path), map_size=1 << 20) as env, env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k, v)


def _datum(c=3, h=6, w=6, n=None):
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=b"\1" * (c * h * w if n is None else n),
                           label=1).SerializeToString()


def test_data_layer_sources(work):
    pytest.importorskip("lmdb")
    net(DATA)
    ok(run("convert-imageset", "./", "list.txt", "db"))
    ok(train())
    cases = {"list.txt": "list.txt: not a LMDB database (a database is a folder)",
             "nothing": "nothing: no such LMDB database",
             "folder": "folder: not a readable LMDB database"}
    os.mkdir("folder")
    _lmdb("empty", {})
    cases["empty"] = "empty: the LMDB database is empty"
    _lmdb("garbage", {b"k": b"\xff\xff garbage"})
    cases["garbage"] = "garbage: record 'k': not a caffe.Datum"
    _lmdb("short", {b"k": _datum(n=10)})
    cases["short"] = "short: record 'k': a 3x6x6 Datum holds 10 values, not 108"
    _lmdb("huge", {b"k": _datum(3, 2**20, 2**20, n=108)})
    cases["huge"] = "huge: record 'k': a 3x1048576x1048576 Datum holds 108 values, not 3298534883328"
    for source, what in cases.items():
        net(DATA.replace('source: "db"', f'source: "{source}"'))
        assert_bad_input(train(), source, what)
    net(DATA.replace("batch_size: 2", "batch_size: 0"))
    assert_bad_input(train(), "net.prototxt", "layer 'data' (Data): batch_size must be positive, not 0")
    _lmdb("mixed", {b"a": _datum(), b"b": _datum(3, 5, 6)})
    net(DATA.replace('source: "db"', 'source: "mixed"'))
    assert_run_error(train(), "mixed", "record 'b' gives a [3, 5, 6] sample, the first record [3, 6, 6]")


def test_hdf5_data_sources(work):
    h5py = pytest.importorskip("h5py")
    net(HDF5)

    def h5(name, **arrays):
        with h5py.File(name, "w") as f:
            for k, v in arrays.items():
                f[k] = v
        write_list("h5.txt", [name])

    h5("a.h5", data=np.zeros((4, 3, 6, 6)), label=np.zeros(4))
    ok(train())
    h5("b.h5", data=np.zeros((4, 3, 6, 6)))
    assert_bad_input(train(), "b.h5", "no dataset 'label' (a top of layer 'data' (HDF5Data))")
    h5("c.h5", data=np.zeros((4, 3, 6, 6)), label=np.zeros(3))   # hdf5_data_layer.cpp: CHECK_EQ of the rows
    assert_bad_input(train(), "c.h5", "the datasets 'data' [4, 3, 6, 6], 'label' [3] differ in rows")
    h5("d.h5", data=np.zeros((4, 3, 6, 6)), label=np.full(4, 7.0))
    assert_run_error(train(), "d.h5", "the batch of row 0, row 1: SoftmaxWithLoss: a label is outside 0..1")
    h5("a.h5", data=np.zeros((4, 3, 6, 6)), label=np.zeros(4))
    net(HDF5.replace("batch_size: 2", "batch_size: 0"))
    assert_bad_input(train(), "net.prototxt", "layer 'data' (HDF5Data): batch_size must be positive, not 0")


def test_convert_imageset_checks_before_reading(work):
    Path("afile").write_text("x")
    before = files_under(work)
    assert_bad_input(run("convert-imageset", "./", "list.txt", "afile/db"), "afile/db", "cannot write database: "
                                                                                       "afile is not a folder")
    write_list("list.txt", ["img/0.png 0", "img/1.png 99999999999"])
    assert_bad_input(run("convert-imageset", "./", "list.txt", "db"), "list.txt", "line 2: the label 99999999999 "
                                                                                  "is out of range")
    assert files_under(work) == before | set()


# ---------------------------------------------------------------------------------------------------------------
# 7. convolutions past Caffe's int arithmetic (the stride+pad case needs the net-definition checks of
#    sfport/netdef/shapes.py being added alongside: until they land it is killed by SIGFPE in the convolution backward)
# ---------------------------------------------------------------------------------------------------------------

HUGE_CONVS = {"stride": "kernel_size: 3 stride: 2147483647",                 # one output pixel, as Caffe computes
              "stride+pad": "kernel_size: 3 stride: 2147483647 pad: 1073741824",   # height + 2 pad past int32
              "kernel": "kernel_size: 2147483647"}                           # larger than the image


@pytest.mark.parametrize("case", HUGE_CONVS)
def test_huge_convolution_is_not_a_crash(work, case):
    """In its own process: a clean run where Caffe's arithmetic holds (stride 2^31-1 on a 6x6 image is one
    output pixel), else one line naming the net and the layer; never a signal. conv0 comes first so that conv's
    input takes a gradient (the backward that crashed)."""
    net(**{'bottom: "data" top: "ip"': 'bottom: "conv" top: "ip"',
           'layer { name: "ip"': 'layer { name: "conv0" type: "Convolution" bottom: "data" top: "conv0" '
                                 'convolution_param { num_output: 2 kernel_size: 1 } }\n'
                                 f'layer {{ name: "conv" type: "Convolution" bottom: "conv0" top: "conv" '
                                 f'convolution_param {{ num_output: 2 {HUGE_CONVS[case]} }} }}\nlayer {{ name: "ip"'})
    write_solver(max_iter=1)
    p = subprocess.run([sys.executable, "-m", "sfport", "train", "s.prototxt", "--workers", "0"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode >= 0, f"killed by signal {-p.returncode}"
    assert "Traceback" not in p.stderr
    if case == "stride":
        assert p.returncode == 0, p.stderr[-2000:]
    else:
        assert p.returncode == 2, p.stderr[-2000:]
        assert len(p.stderr.splitlines()) == 1, p.stderr[-2000:]
        assert p.stderr.startswith("sfport: error: net.prototxt: layer 'conv' (Convolution)"), p.stderr
