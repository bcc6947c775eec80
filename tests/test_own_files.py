"""sfport's own files, read back by every command (issue 33): a `.pt` loads in the NetState it was saved in; every
weights file sfport writes (a caffemodel, Caffe's HDF5 weights, a converted .pt, a training snapshot .pt) is taken
wherever weights are; `convert --random-weights` writes a definition's fillers' weights; `convert` without -o
writes to the current folder."""
import os
import re
import shutil
import stat

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sfport.cli import cli
from sfport.runtime.net import Net, SNAPSHOT_FORMAT

from badinput import assert_bad_input, files_under
from conftest import FIXTURES

LENET = FIXTURES / "lenet"

# a SphereFace-like training net on golden/solver's images (24 x 20, labels 0..7): fc6 (A-Softmax) needs the
# label, so the inference form has no fc6
TINY = """name: "tiny"
layer { name: "data" type: "ImageData" top: "data" top: "label"
  transform_param { scale: 0.0078125 mean_value: 127.5 mean_value: 127.5 mean_value: 127.5 }
  image_data_param { source: "list.txt" root_folder: "./" batch_size: 4 shuffle: false new_height: 24 new_width: 20 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc5" type: "InnerProduct" bottom: "conv1" top: "fc5"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6"
  margin_inner_product_param { num_output: 8 type: DOUBLE weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }
"""

SOLVER = """net: "tiny.prototxt"
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
max_iter: 2
snapshot_prefix: "runs/tiny"
random_seed: 7
solver_mode: CPU
display: 1
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def tensors(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture
def tiny(golden_copy):
    """golden/solver's images in a writable working folder, with the tiny net written there."""
    (golden_copy / "tiny.prototxt").write_text(TINY)
    return golden_copy


# -- 1. a .pt loads in the state it was saved in ------------------------------------------------------------
def test_train_phase_pt_loads_back_in_its_own_state(tiny):
    saved = Net("tiny.prototxt", phase="train", seed=1)
    saved.save("run.pt")
    doc = torch.load("run.pt", weights_only=True)
    assert doc["version"] == 2 and doc["state"] == {"phase": "TRAIN", "level": 0, "stages": []}
    assert doc["inference"] is False
    back = Net("run.pt")                       # the issue: this failed with "Unexpected key(s) ... fc6"
    assert back.state == saved.state and back.inference is False and back.outputs == saved.outputs
    for k, v in saved.module.state_dict().items():
        assert torch.equal(back.module.state_dict()[k], v), k
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (4, 3, 24, 20)).astype(np.float32))
    label = torch.tensor([0.0, 1, 2, 3])
    with torch.no_grad():
        assert float(back.forward(data=x, label=label)["loss"]) == float(saved.forward(data=x, label=label)["loss"])

    for args, name in (((), "a.pt"), (("--phase", "train"), "b.pt"), (("--phase", "TEST"), "c.pt")):
        r = run("convert", "run.pt", *args, "-o", name)
        assert r.exit_code == 0, r.output
        assert r.stdout == f"wrote {name}: pt, inputs {{'data': (4, 3, 24, 20)}}, outputs ['fc5']\n"
        assert "weights of layers not in the converted net (ignored): fc6" in r.stderr
        out = tensors(tiny / name)
        assert set(out) == {k for k in saved.module.state_dict() if not k.startswith("layers.fc6.")}
        assert torch.equal(out["layers.fc5.weight"], saved.module.state_dict()["layers.fc5.weight"])
    # the inference form it was written as is what loads back, in the phase it was written in
    assert torch.load(tiny / "b.pt", weights_only=True)["state"]["phase"] == "TRAIN"
    assert Net("b.pt").inference is True and Net("c.pt").state.phase == 1   # caffe_pb2.TEST


def test_a_pt_that_cannot_fit_the_asked_phase_is_one_line(tiny):
    Net("tiny.prototxt", phase="train").save("run.pt")
    doc = torch.load("run.pt", weights_only=True)
    del doc["state_dict"]["layers.conv1.weight"]
    torch.save(doc, "cut.pt")
    r = run("convert", "cut.pt", "--phase", "TEST", "-o", "x.pt")
    assert_bad_input(r, "cut.pt", "its state_dict does not fit its net in TEST (inference form): no tensor for "
                                  "layers.conv1.weight; it was saved in TRAIN: leave out the phase to load it so")
    assert not (tiny / "x.pt").exists()
    for change, what in ((dict(state={"phase": "VAL", "level": 0, "stages": []}), "'state' is {'phase': 'VAL'"),
                         (dict(inference="yes"), "'inference' is 'yes', not true or false"),
                         (dict(version=3), "'version' is 3: this sfport reads versions 1 and 2")):
        bad = dict(torch.load("run.pt", weights_only=True), **change)
        torch.save(bad, "bad.pt")
        assert_bad_input(run("convert", "bad.pt", "-o", "x.pt"), "bad.pt", what)


def test_an_older_pt_without_its_state_still_loads(tiny):
    """Version 1 (no state record) loads as before, in TEST; a training net's .pt of that version now too."""
    Net("tiny.prototxt", phase="train", seed=2).save("run.pt")
    doc = torch.load("run.pt", weights_only=True)
    old = {k: v for k, v in doc.items() if k not in ("state", "inference")}
    torch.save(dict(old, version=1), "old.pt")
    r = run("convert", "old.pt", "-o", "again.pt")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("wrote again.pt: pt, inputs {'data': (4, 3, 24, 20)}, outputs ['fc5']")
    assert torch.equal(tensors(tiny / "again.pt")["layers.conv1.weight"], doc["state_dict"]["layers.conv1.weight"])
    assert Net("old.pt").state.phase == 1 and Net("old.pt", phase="train").outputs == ["loss"]


# -- 2. every weights file sfport writes, wherever weights are taken ------------------------------------------
def _weights_files(tiny) -> dict:
    """The weights of one short `sfport train` run in every file sfport writes: the caffemodel snapshot, Caffe's
    HDF5 snapshot (snapshot_format: HDF5), a converted .pt (`sfport convert`: the inference form, without fc6),
    the training net's .pt (Net.save), and a training snapshot .pt (the <prefix>_iter_N.pt an earlier sfport
    train wrote: its net's state_dict in an "sfport-checkpoint" container)."""
    (tiny / "solver.prototxt").write_text(SOLVER)
    (tiny / "solver_h5.prototxt").write_text(SOLVER.replace("runs/tiny", "runs/h5") + "snapshot_format: HDF5\n")
    for s in ("solver.prototxt", "solver_h5.prototxt"):
        r = run("train", s, "--workers", "0")
        assert r.exit_code == 0, r.output
    model = tiny / "runs/tiny_iter_2.caffemodel"
    r = run("convert", model, "-p", "tiny.prototxt", "-o", "converted.pt")
    assert r.exit_code == 0, r.output
    trained = Net("tiny.prototxt", weights=str(model), phase="train")
    trained.save(tiny / "saved.pt")
    torch.save({"format": SNAPSHOT_FORMAT, "version": 1, "iter": 2,
                "state_dict": {k: v.detach().clone() for k, v in trained.module.state_dict().items()},
                "rng": torch.get_rng_state(), "cuda_rng": torch.zeros(0, dtype=torch.uint8), "losses": [1.0],
                "smoothed_loss": 1.0, "world": 1, "iter_size": 1, "seed": 7}, tiny / "runs/tiny_iter_2.pt")
    return {"caffemodel": model, "h5": tiny / "runs/h5_iter_2.caffemodel.h5", "converted": tiny / "converted.pt",
            "saved": tiny / "saved.pt", "snapshot": tiny / "runs/tiny_iter_2.pt"}


def test_every_weights_file_sfport_writes_is_taken_by_test_compare_and_convert(tiny):
    files = _weights_files(tiny)
    (tiny / "finetune.prototxt").write_text(SOLVER.replace("runs/tiny", "runs/finetune").replace("max_iter: 2",
                                                                                                 "max_iter: 1"))
    scores, cosines = {}, {}
    for kind, path in files.items():
        r = run("test", "tiny.prototxt", "--weights", path, "--iterations", "2")
        assert r.exit_code == 0, (kind, r.output)
        scores[kind] = re.search(r"^loss = .*$", r.stdout, re.M).group(0)
        if kind == "converted":   # the inference form has no fc6: Caffe's copy by name leaves it to its filler
            assert "Copied weights of 3 layers" in r.stderr and "left to their fillers): fc6" in r.stderr
            del scores[kind]
        else:
            assert f"Copied weights of 4 layers from {path}" in r.stderr, (kind, r.stderr)
        r = run("compare", "images/000.png", "images/001.png", "-m", path, "-p", "tiny.prototxt", "--backend",
                "torch")
        assert r.exit_code == 0, (kind, r.output)
        cosines[kind] = re.search(r"^cosine (\S+): ", r.stdout, re.M).group(1)
        r = run("convert", path, "-p", "tiny.prototxt", "-o", f"from_{kind}.pt")
        assert r.exit_code == 0, (kind, r.output)
        assert r.stdout.startswith(f"wrote from_{kind}.pt: pt, inputs {{'data': (4, 3, 24, 20)}}, outputs ['fc5']")
        layers = 3 if kind == "converted" else 4
        r = run("time", "tiny.prototxt", "--weights", path, "--iterations", "1")
        assert r.exit_code == 0, (kind, r.output)
        assert f"weights: copied into {layers} layers from {path}" in r.stdout, (kind, r.stdout)
        r = run("train", "finetune.prototxt", "--weights", path, "--workers", "0")
        assert r.exit_code == 0, (kind, r.output)
        assert f"Finetuning from {path}" in r.stderr and f"Copied weights of {layers} layers" in r.stderr, kind
    assert len(set(scores.values())) == 1 and len(set(cosines.values())) == 1, (scores, cosines)
    trained = Net("tiny.prototxt", weights=str(files["caffemodel"]), phase="train")
    for kind in files:
        got = tensors(tiny / f"from_{kind}.pt")
        for k, v in got.items():
            assert torch.equal(v, trained.module.state_dict()[k]), (kind, k)
    # the HDF5 snapshot holds what the binary one does (the same seeded run)
    assert scores["h5"] == scores["caffemodel"]


def test_weights_without_a_definition_alone_are_one_line(tiny):
    files = _weights_files(tiny)
    for kind in ("snapshot", "h5"):
        path = files[kind]
        what = "training snapshot" if kind == "snapshot" else "HDF5 weights"
        assert_bad_input(run("convert", path, "-o", "x.pt"), path.name, what)
        assert_bad_input(run("compare", "images/000.png", "images/001.png", "-m", path), path.name, what)
        assert_bad_input(run("test", path), path.name, "give the train_test / train_val prototxt as NET")
    snap = torch.load(files["snapshot"], weights_only=True)
    snap["state_dict"]["layers.fc5.weight"] = torch.zeros(3, 3)
    torch.save(snap, "wrong.pt")
    assert_bad_input(run("test", "tiny.prototxt", "--weights", "wrong.pt"), "wrong.pt", "layer 'fc5' (InnerProduct)")
    snap["state_dict"] = [1, 2]
    torch.save(snap, "list.pt")
    assert_bad_input(run("test", "tiny.prototxt", "--weights", "list.pt"), "list.pt", "'state_dict' is missing or "
                                                                                    "not a dict of tensors by name")


# -- 9. convert --random-weights --------------------------------------------------------------------------------
def test_convert_random_weights_writes_the_fillers_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proto = LENET / "lenet.prototxt"
    r = run("convert", proto, "-o", "x.pt")
    assert_bad_input(r, "lenet.prototxt", "has no weights")
    assert "--random-weights" in r.stderr and not (tmp_path / "x.pt").exists()
    r = run("convert", proto, "--random-weights", "--seed", "3", "-o", "r3.pt")
    assert r.exit_code == 0, r.output
    assert r.stdout == ("wrote r3.pt: pt, inputs {'data': (64, 1, 28, 28)}, outputs ['prob']; weights: random, "
                        "from the fillers (seed 3)\n")
    assert "random weights, from its fillers (seed 3): not a trained model" in r.stderr
    expected = Net(str(proto), seed=3, inference=True).module.state_dict()
    got = tensors(tmp_path / "r3.pt")
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    assert float(got["layers.conv1.weight"].abs().max()) > 0 and float(got["layers.conv1.bias"].abs().max()) == 0
    assert run("convert", proto, "--random-weights", "--seed", "4", "-o", "r4.pt").exit_code == 0
    assert not torch.equal(tensors(tmp_path / "r4.pt")["layers.conv1.weight"], got["layers.conv1.weight"])
    r = run("convert", LENET / "lenet_iter_10000.caffemodel", "-p", proto, "--random-weights", "-o", "y.pt")
    assert r.exit_code == 2 and "--random-weights fills a net definition given as MODEL" in r.output
    r3 = tmp_path / "r3.pt"
    assert_bad_input(run("convert", r3, "--random-weights", "-o", "z.pt"), "r3.pt", "has weights: --random-weights "
                                                                                 "is for a net definition")
    assert "--random-weights" in run("convert", "--help").stdout and "sfport convert lenet.prototxt --random-weights" \
        in run("convert", "--help").stdout


# -- 16. convert without -o writes to the current folder ------------------------------------------------------
def test_convert_without_output_writes_to_the_current_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = files_under(LENET)
    r = run("convert", LENET / "lenet_iter_10000.caffemodel", "-p", LENET / "lenet.prototxt")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("wrote lenet_iter_10000.pt: pt, inputs {'data': (64, 1, 28, 28)}")
    assert f"(no -o: in the current folder, {work / 'lenet_iter_10000.pt'})" in r.stderr
    assert (work / "lenet_iter_10000.pt").is_file() and files_under(LENET) == before
    # a read-only model folder is no obstacle; converting a .pt there, in its own folder, would overwrite it
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(work / "lenet_iter_10000.pt", ro / "lenet.pt")
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = run("convert", ro / "lenet.pt", "--format", "onnx")
        assert r.exit_code == 0, r.output
        assert (work / "lenet.onnx").is_file() and sorted(os.listdir(ro)) == ["lenet.pt"]
        monkeypatch.chdir(ro)
        assert_bad_input(run("convert", "lenet.pt"), "lenet.pt", "is MODEL itself: give another output with -o")
    finally:
        ro.chmod(stat.S_IRWXU)
