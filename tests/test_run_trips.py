"""Trips on the way of a run (issue 33): `sfport test` takes train's --source / --data-root; `sfport verify` says when
it runs on filler weights, refuses a TRAIN-phase net whose BatchNorm uses the batch's statistics (naming the
layers), and runs a photo at its own size through a fully convolutional net; `sfport train --plot` draws every
Train and Test net output of the log."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from sfport.cli import cli
from sfport.solver import curves

from conftest import FIXTURES, ROOT

cv2 = pytest.importorskip("cv2")

LENET_WEIGHTS = FIXTURES / "lenet" / "lenet_iter_10000.caffemodel"
LENET_IMAGEDATA = ROOT / "tests" / "nets" / "lenet_imagedata_train_test.prototxt"   # source: "test.txt"
DET1 = (FIXTURES / "mtcnn" / "det1.caffemodel", FIXTURES / "mtcnn" / "det1.prototxt")
PHOTO = FIXTURES / "mtcnn" / "test1.jpg"   # 450x344
MFN = FIXTURES / "mobilefacenet_insightface"
MFN_MODEL, MFN_NET = MFN / "mxnet2caffe_mobilefacenet.caffemodel", MFN / "mxnet2caffe_mobilefacenet.prototxt"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --- item 6: sfport test --source / --data-root ---------------------------------------------------------------


def _digits(folder):
    """Ten 28x28 digits drawn with OpenCV in folder/digits, a list of them relative to that folder (labels: the
    real LeNet's own predictions, by OpenCV's Caffe importer, with 3 of 10 changed), and OpenCV's log-softmax."""
    (folder / "digits").mkdir()
    imgs = np.zeros((10, 28, 28), np.uint8)
    for i, img in enumerate(imgs):
        cv2.putText(img, str(i), (4 + i % 3, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
        assert cv2.imwrite(str(folder / "digits" / f"{i}.png"), img)
    ref = cv2.dnn.readNetFromCaffe(str(FIXTURES / "lenet" / "lenet.prototxt"), str(LENET_WEIGHTS))
    ref.setInput(imgs[:, None].astype(np.float32) * np.float32(0.00390625))
    logits = ref.forward("ip2").reshape(10, 10).astype(np.float64)
    pred = logits.argmax(1)
    labels = [int(p) if i % 3 else int(p + 1) % 10 for i, p in enumerate(pred)]   # 0, 3, 6, 9 wrong
    (folder / "val.txt").write_text("".join(f"{i}.png {labels[i]}\n" for i in range(10)))
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return np.mean(pred == labels), -np.mean([logp[i, labels[i]] for i in range(10)])


def test_test_reads_the_list_given_by_source_and_data_root(tmp_path, monkeypatch):
    """The LeNet ImageData net names 'test.txt' (on another machine): without --source it is one line naming it;
    with --source val.txt --data-root digits/ the batch of 100 (the 10 images 10 times) scores what OpenCV's
    logits give."""
    accuracy, loss = _digits(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["test", LENET_IMAGEDATA, "--weights", LENET_WEIGHTS, "--iterations", 1, "--workers", 0]
    r = invoke(*args)
    assert r.exit_code == 2 and r.output == "sfport: error: test.txt: image list not found\n", r.output
    r = invoke(*args, "--source", "val.txt", "--data-root", "digits/")
    assert r.exit_code == 0, r.output
    summary = [ln for ln in r.stdout.splitlines() if not ln.startswith(("Batch ", "prob = "))]
    assert summary[1] == f"accuracy = {accuracy:.6g}" == "accuracy = 0.6"
    assert re.fullmatch(r"Loss: (\S+)", summary[0]) and float(summary[0].split()[1]) == pytest.approx(loss, rel=1e-5)
    m = re.fullmatch(r"loss = (\S+) \(\* 1 = (\S+) loss\)", summary[2])
    assert m and float(m.group(1)) == float(m.group(2)) == pytest.approx(loss, rel=1e-5)
    # --json: the same numbers
    doc = json.loads(invoke(*args, "--source", tmp_path / "val.txt", "--data-root", "digits", "--json").stdout)
    assert doc["loss"] == pytest.approx(loss, rel=1e-5)
    assert [o["mean"] for o in doc["outputs"] if o["name"] == "accuracy"] == [[pytest.approx(0.6)]]
    h = " ".join(invoke("test", "--help").stdout.split())
    assert "--source TEXT" in h and "--data-root TEXT" in h and "scored net's data layer" in h
    assert "--source val.txt --data-root /data/images/" in h


def test_train_source_is_the_same_option(golden_copy):
    """train's --source (the same option definition): the TRAIN net reads the list given, logged as resolved."""
    (golden_copy / "other.txt").write_text("".join(ln + "\n" for ln in
                                                   (golden_copy / "list.txt").read_text().splitlines()[:16]))
    r = invoke("train", "solver_multistep.prototxt", "--weights", "init.caffemodel", "--max-iter", 1,
               "--workers", 0, "--source", "other.txt")
    assert r.exit_code == 0, r.output
    assert f"Resolved source: other.txt -> {golden_copy / 'other.txt'}" in r.stderr
    h = " ".join(invoke("train", "--help").stdout.split())
    assert "--source TEXT" in h and "the TRAIN data layer" in h


# --- item 8: verify on filler weights, and a TRAIN-phase BatchNorm ---------------------------------------------


def test_verify_of_a_prototxt_alone_says_it_runs_on_fillers():
    net = DET1[1]
    r = invoke("verify", net, "--seed", 3)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == (f"{net}: no trained weights, every layer runs on its fillers' values (seed 3); input "
                        f"1x3x12x12 random; against opencv")
    assert lines[1].split()[:2] == ["blob", "shape"] and lines[-1].startswith("passed: 10 blobs")
    first = json.loads(invoke("verify", net, "--seed", 3, "--json").stdout)
    again = json.loads(invoke("verify", net, "--seed", 3, "--json").stdout)
    assert first["filler_weights"] and first["notes"] == [lines[0]]
    assert [b["max_ref"] for b in first["blobs"]] == [b["max_ref"] for b in again["blobs"]]   # seeded fillers
    assert first["blobs"][0]["max_ref"] > 0
    trained = invoke("verify", *map(str, DET1[:1]), "-p", net)
    assert trained.exit_code == 0 and trained.stdout.splitlines()[0].split()[:2] == ["blob", "shape"]
    assert not json.loads(invoke("verify", DET1[0], "-p", net, "--json").stdout)["filler_weights"]


def test_verify_in_train_phase_names_the_batchnorm_layers_that_use_batch_statistics(tmp_path):
    """MobileFaceNet's BatchNorm layers state use_global_stats: true, so its TRAIN net is the reference's net and
    verifies; without it they normalize by the batch's statistics in TRAIN: one line naming them, exit 2."""
    r = invoke("verify", MFN_MODEL, "-p", MFN_NET, "--phase", "TRAIN")
    assert r.exit_code == 0 and r.stdout.splitlines()[-1].startswith("passed: 195 blobs"), r.output
    text = MFN_NET.read_text()
    bn = re.findall(r'name: "([^"]+)"\s*type: "BatchNorm"', text)
    assert len(bn) == 50
    p = tmp_path / "batch_stats.prototxt"
    p.write_text(re.sub(r"\n\s*use_global_stats: true", "", text))
    r = invoke("verify", MFN_MODEL, "-p", p, "--phase", "TRAIN")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output == (f"sfport: error: {p}: the reference (opencv) does not apply in phase TRAIN, as it runs the "
                        f"net for inference: 50 BatchNorm layers ({', '.join(bn[:4])} and 46 more): the batch's "
                        f"statistics normalize there (use_global_stats is not true), the stored ones in the "
                        f"reference; verify with --phase TEST\n")
    r = invoke("verify", MFN_MODEL, "-p", p, "--phase", "TEST")
    assert r.exit_code == 0 and r.stdout.splitlines()[-1].startswith("passed: 195 blobs"), r.output
    # the same for a Dropout in TRAIN (MTCNN's O-Net, its train_test definition)
    net = ROOT / "tests" / "nets" / "det3_train_test.prototxt"
    r = invoke("verify", FIXTURES / "mtcnn" / "det3.caffemodel", "-p", net, "--phase", "TRAIN")
    assert r.exit_code == 2 and r.output == (
        f"sfport: error: {net}: the reference (opencv) does not apply in phase TRAIN, as it runs the net for "
        f"inference: 1 Dropout layer (drop5): a random part of the input is dropped there; verify with --phase "
        f"TEST\n")


# --- item 15: a photo through a fully convolutional net ---------------------------------------------------------


def test_verify_runs_a_photo_at_its_own_size_through_a_fully_convolutional_net():
    """det1 states 1x3x12x12 but has no parameter of the input's size: the 450x344 photo runs at its size (prob1
    1x2x167x220); MobileFaceNet's InnerProduct fixes its input: the photo is resized, and a line says why."""
    r = invoke("verify", DET1[0], "-p", DET1[1], "--input", PHOTO)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == (f"input 'data': {PHOTO} at its own size 344x450, not resized to the declared 12x12: the net "
                        f"is fully convolutional (--shape 1,3,12,12 resizes it)")
    assert lines[-1].startswith("passed: 10 blobs")
    doc = json.loads(invoke("verify", DET1[0], "-p", DET1[1], "--input", PHOTO, "--json").stdout)
    assert doc["passed"] and doc["input_shape"] == [1, 3, 344, 450] and doc["notes"] == [lines[0]]
    assert {b["name"]: b["shape"] for b in doc["blobs"]}["prob1"] == [1, 2, 167, 220]
    r = invoke("verify", DET1[0], "-p", DET1[1], "--input", PHOTO, "--shape", "1,3,24,24")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[0] == f"input 'data': {PHOTO} (344x450) resized to 24x24 (--shape)"
    r = invoke("verify", MFN_MODEL, "-p", MFN_NET, "--input", PHOTO, "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["passed"] and doc["input_shape"] == [1, 3, 112, 112]
    assert doc["notes"] == [f"input 'data': {PHOTO} (344x450) resized to 112x112, the net's input size: layer "
                            f"'pre_fc1' (InnerProduct) has parameters of its input's size"]
    h = " ".join(invoke("verify", "--help").stdout.split())
    assert "at its own size for a fully convolutional net" in h and "--prototxt det1.prototxt --input photo.jpg" in h


# --- item 14: train --plot draws every output -------------------------------------------------------------------


EXTRA = """
layer { name: "aux" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "aux" loss_weight: 0.5 }
layer { name: "fc6_mean" type: "Reduction" bottom: "fc6" top: "fc6_mean" reduction_param { operation: MEAN axis: 1 } }
"""


def test_train_plot_draws_every_train_and_test_output(golden_copy, monkeypatch):
    """The tiny net with a second loss (weight 0.5) and an output of 8 elements (a Reduction per image) and a test
    net: the figure has a line for each Train and Test net output of the log (each element of fc6_mean), with
    the logged values."""
    with open(golden_copy / "tiny_sphereface.prototxt", "a") as f:
        f.write(EXTRA)
    text = re.sub(r"^snapshot_prefix:.*$", 'snapshot_prefix: "runs/t/x"', (golden_copy / "solver_multistep.prototxt")
                  .read_text(), flags=re.M)
    (golden_copy / "s.prototxt").write_text(text + "test_iter: 1\ntest_interval: 2\n")
    drawn = []
    real = curves.curves_figure
    monkeypatch.setattr(curves, "curves_figure", lambda c, title=None: drawn.append(real(c, title)) or drawn[-1])
    r = invoke("train", "s.prototxt", "--weights", "init.caffemodel", "--max-iter", 4, "--workers", 0,
               "--plot", "curves.png")
    assert r.exit_code == 0, r.output
    assert (golden_copy / "curves.png").stat().st_size > 1000
    lines = {a.get_label(): a for ax in drawn[-1].axes for a in ax.lines}
    logged = {}
    for kind, name, value in re.findall(r"(Train|Test) net output #\d+: (\S+) = (\S+)", r.stderr):
        logged.setdefault((kind, name), []).append(float(value))
    assert {n for _, n in logged} == {"loss", "aux", "accuracy", "fc6_mean"}
    expected = {f"{kind.lower()} {name}" for kind, name in logged if name != "fc6_mean"} | \
        {f"{kind} fc6_mean[{j}]" for kind in ("train", "test") for j in range(8)}
    assert expected <= set(lines), sorted(set(lines))
    assert list(lines["train aux"].get_ydata()) == logged[("Train", "aux")]
    assert list(lines["test aux"].get_ydata()) == logged[("Test", "aux")]
    assert list(lines["train fc6_mean[7]"].get_ydata()) == logged[("Train", "fc6_mean")][7::8]
    assert list(lines["loss (weighted sum)"].get_ydata()) == pytest.approx(
        [a + 0.5 * b for a, b in zip(logged[("Train", "loss")], logged[("Train", "aux")])], rel=1e-5)
