"""`sfport test` (sfport.solver.score) against caffe.cpp test(): per batch `Batch i, <output> = <value>` for every element
of every output, then `Loss: <mean>` and `<output> = <mean>` (` (* w = w*mean loss)` for a loss), the means over
the iterations, the data set wrapping around. The expected numbers are written out here with numpy from the
pixels the test wrote (InnerProduct, softmax, the softmax loss and top-1 accuracy formulas), and for the real
LeNet caffemodel from OpenCV's own Caffe importer on its deploy net."""
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FIXTURES, lenet_solver
from sfport.solver import score as score_mod
from sfport.cli import cli
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

cv2 = pytest.importorskip("cv2")

N, H, W, K, BATCH, SCALE = 5, 2, 3, 3, 2, 0.01
PIXELS = np.random.default_rng(7).integers(0, 256, (N, H, W), dtype=np.uint8)
LABELS = [0, 2, 1, 1, 0]
WEIGHT = np.random.default_rng(8).normal(0, 0.5, (K, H * W)).astype(np.float32)
BIAS = np.array([0.1, -0.2, 0.05], dtype=np.float32)
LOSS_WEIGHT = 2

LAYERS = f"""
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: {K} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "ip" top: "prob" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: {LOSS_WEIGHT} }}
"""


def data_layer(kind, source, batch=BATCH, rule='include { phase: TEST }'):
    param = {"ImageData": f'image_data_param {{ source: "{source}" batch_size: {batch} is_color: false }}',
             "Data": f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}',
             "HDF5Data": f'hdf5_data_param {{ source: "{source}" batch_size: {batch} }}'}[kind]
    scale = f"transform_param {{ scale: {SCALE} }}" if kind != "HDF5Data" else ""
    return f'layer {{ name: "d" type: "{kind}" top: "data" top: "label" {rule} {scale} {param} }}\n'


def write_caffemodel(path, layers):
    """A caffemodel of {layer: [arrays]}, written with protobuf itself."""
    net = caffe_pb2.NetParameter(name="tiny")
    for name, arrays in layers.items():
        lp = net.layer.add(name=name, type="InnerProduct")
        for a in arrays:
            blob = lp.blobs.add()
            blob.shape.dim.extend(a.shape)
            blob.data.extend(a.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return path


def make_data(folder):
    """The N gray images as PNGs with their list, an LMDB of them (convert-imageset) and an HDF5 file of the
    same values (scaled as the transform would); returns {kind: source}."""
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(N):
        assert cv2.imwrite(str(folder / f"img/{i}.png"), PIXELS[i])
        lines.append(f"img/{i}.png {LABELS[i]}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(cli, ["convert-imageset", "--gray", f"{folder}/", str(folder / "list.txt"),
                                 str(folder / "db")])
    assert r.exit_code == 0, r.output
    h5py = pytest.importorskip("h5py")
    with h5py.File(folder / "d.h5", "w") as f:
        f["data"] = (PIXELS.astype(np.float32) * np.float32(SCALE)).reshape(N, 1, H, W)
        f["label"] = np.array(LABELS, dtype=np.float32)
    (folder / "h5.txt").write_text(f"{folder / 'd.h5'}\n")
    return {"ImageData": folder / "list.txt", "Data": folder / "db", "HDF5Data": folder / "h5.txt"}


@pytest.fixture
def tiny(tmp_path):
    sources = make_data(tmp_path)
    weights = write_caffemodel(tmp_path / "tiny.caffemodel", {"ip": [WEIGHT, BIAS]})
    return tmp_path, sources, weights


def expected(iterations, batch=BATCH):
    """Per batch (accuracy, softmax loss, prob values) of the stream 0, 1, ..., N-1, 0, 1, ... (Caffe's data
    layers start again at the first item at the end), from the formulas."""
    x = PIXELS.reshape(N, -1).astype(np.float64) * SCALE
    logits = x @ WEIGHT.T.astype(np.float64) + BIAS
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = []
    for i in range(iterations):
        idx = [(i * batch + j) % N for j in range(batch)]
        y = np.array([LABELS[j] for j in idx])
        loss = -np.mean(np.log(p[idx, y]))                  # SoftmaxWithLoss, normalization VALID
        acc = np.mean(np.argmax(logits[idx], 1) == y)        # Accuracy, top_k 1
        out.append((acc, loss, p[idx].ravel()))
    return out


def run(*args):
    r = CliRunner().invoke(cli, ["test", *map(str, args), "--workers", "0"])
    return r


def parse(stdout):
    """caffe.cpp test()'s lines: [(batch, name, value)], loss, [(name, mean, weight, weighted)]."""
    batches, summary, loss = [], [], None
    for line in stdout.splitlines():
        if m := re.fullmatch(r"Batch (\d+), (\w+) = (\S+)", line):
            batches.append((int(m[1]), m[2], float(m[3])))
        elif m := re.fullmatch(r"Loss: (\S+)", line):
            loss = float(m[1])
        elif m := re.fullmatch(r"(\w+) = (\S+)(?: \(\* (\S+) = (\S+) loss\))?", line):
            summary.append((m[1], float(m[2]), m[3] and float(m[3]), m[4] and float(m[4])))
        else:
            raise AssertionError(f"not a line of caffe test: {line!r}")
    return batches, loss, summary


def check_output(stdout, iterations):
    exp = expected(iterations)
    batches, loss, summary = parse(stdout)
    want = []
    for i, (acc, l, prob) in enumerate(exp):   # outputs in Caffe's order: by name
        want += [(i, "accuracy", acc), (i, "loss", l)] + [(i, "prob", v) for v in prob]
    assert [(i, n) for i, n, _ in batches] == [(i, n) for i, n, _ in want]
    assert [v for *_, v in batches] == pytest.approx([v for *_, v in want], rel=1e-5, abs=1e-6)
    acc = np.mean([e[0] for e in exp])
    mean_loss = np.mean([e[1] for e in exp])
    probs = np.mean([e[2] for e in exp], axis=0)
    assert loss == pytest.approx(LOSS_WEIGHT * mean_loss, rel=1e-5)
    assert [s[0] for s in summary] == ["accuracy", "loss"] + ["prob"] * (BATCH * K)
    # pytest 9's approx compares numbers only: the Nones (no loss weight on accuracy) are asserted exactly
    assert summary[0][1] == pytest.approx(acc, rel=1e-5) and summary[0][2:] == (None, None)
    assert summary[1][1:] == pytest.approx((mean_loss, LOSS_WEIGHT, LOSS_WEIGHT * mean_loss), rel=1e-5)
    assert [s[1] for s in summary[2:]] == pytest.approx(list(probs), rel=1e-5)
    assert all(s[2] is None for s in summary[2:])
    return exp


@pytest.mark.parametrize("kind", ["ImageData", "Data", "HDF5Data"])
def test_scores_each_data_layer_as_caffe_test(tiny, kind):
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    # the TRAIN data layer names a list that does not exist: the TEST net does not read it
    net.write_text(data_layer("ImageData", "missing_train.txt", rule='include { phase: TRAIN }')
                   + data_layer(kind, sources[kind]) + LAYERS)
    r = run(net, "--weights", weights, "--iterations", 4)   # 8 samples of 5: the stream wraps around
    assert r.exit_code == 0, r.output
    exp = check_output(r.stdout, 4)
    assert len({e[0] for e in exp}) > 1   # the batches' accuracies differ: a wrong batch order would show


def test_weights_from_an_sfport_pt(tiny):
    """--weights of a .pt (written by `sfport convert`) are its layers' blobs: the same scores."""
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    net.write_text(data_layer("ImageData", sources["ImageData"]) + LAYERS)
    r = CliRunner().invoke(cli, ["convert", str(weights), "-p", str(net), "-o", str(folder / "tiny.pt"),
                                 "--shape", f"data={BATCH},1,{H},{W}"])
    assert r.exit_code == 0, r.output
    r = run(net, "--weights", folder / "tiny.pt", "--iterations", 3)
    assert r.exit_code == 0, r.output
    check_output(r.stdout, 3)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu(tiny):
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    net.write_text(data_layer("Data", sources["Data"]) + LAYERS)
    r = run(net, "--weights", weights, "--iterations", 4, "--gpu", "0")
    assert r.exit_code == 0, r.output
    assert "Use GPU with device ID 0" in r.stderr
    check_output(r.stdout, 4)


def test_default_iterations_is_caffes_50(tiny):
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    net.write_text(data_layer("ImageData", sources["ImageData"]) + LAYERS)
    report = score_mod.score(net, weights)
    assert report.iterations == 50 and len(report.batches) == 50
    exp = expected(50)
    assert report.loss == pytest.approx(LOSS_WEIGHT * np.mean([e[1] for e in exp]), rel=1e-5)
    assert report.outputs[0].name == "accuracy"
    assert report.outputs[0].mean == pytest.approx([np.mean([e[0] for e in exp])], rel=1e-5)


def test_solver_test_net_with_its_state_and_paths(tiny, tmp_path, monkeypatch):
    folder, sources, weights = tiny
    (folder / "net.prototxt").write_text(
        data_layer("ImageData", "missing_train.txt", rule='include { phase: TRAIN }')
        + data_layer("Data", "db", rule='include { phase: TEST stage: "a" }')    # relative: next to the solver
        + data_layer("ImageData", "nothing.txt", rule='include { phase: TEST stage: "b" }') + LAYERS)
    solver = folder / "solver.prototxt"
    solver.write_text('net: "net.prototxt"\ntest_iter: 3\ntest_state { stage: "a" }\ntest_iter: 2\n'
                      'test_state { stage: "b" }\ntest_interval: 100\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                      'max_iter: 10\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = run(solver, "--weights", weights)   # test net 0, stage a, the solver's test_iter 3
    assert r.exit_code == 0, r.output
    check_output(r.stdout, 3)
    r = run(solver, "--weights", weights, "--test-net", 1)   # stage b: its list is missing
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "nothing.txt" in r.output, r.output
    r = run(solver, "--weights", weights, "--test-net", 2)
    assert r.exit_code == 2 and "test nets 0 to 1" in r.output, r.output
    r = run(solver, "--weights", weights, "--stage", "a")
    assert r.exit_code == 2 and "test_state" in r.output, r.output


def test_json_document(tiny):
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    net.write_text(data_layer("Data", sources["Data"]) + LAYERS)
    r = run(net, "--weights", weights, "--iterations", 3, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    exp = expected(3)
    assert doc["iterations"] == 3 and doc["net"] == str(net) and doc["weights"] == str(weights)
    assert doc["state"] == "TEST" and doc["layers_without_weights"] == []
    assert [o["name"] for o in doc["outputs"]] == ["accuracy", "loss", "prob"]
    acc, loss, prob = doc["outputs"]
    assert acc["loss_weight"] == 0 and acc["weighted_loss"] is None
    assert acc["mean"] == pytest.approx([np.mean([e[0] for e in exp])], rel=1e-6)
    assert loss["loss_weight"] == LOSS_WEIGHT
    assert loss["weighted_loss"] == pytest.approx([LOSS_WEIGHT * np.mean([e[1] for e in exp])], rel=1e-5)
    assert prob["mean"] == pytest.approx(list(np.mean([e[2] for e in exp], axis=0)), rel=1e-5)
    assert doc["loss"] == pytest.approx(LOSS_WEIGHT * np.mean([e[1] for e in exp]), rel=1e-5)
    assert len(doc["batches"]) == 3
    for b, (a, l, p) in zip(doc["batches"], exp):
        assert b["loss"] == pytest.approx(LOSS_WEIGHT * l, rel=1e-5)
        assert b["outputs"]["accuracy"] == pytest.approx([a]) and b["outputs"]["loss"] == pytest.approx([l], rel=1e-5)
        assert b["outputs"]["prob"] == pytest.approx(list(p), rel=1e-5)


def test_layers_without_weights_are_a_warning(tiny):
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    ip2 = 'layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "ip2" inner_product_param { num_output: 2 } }\n'
    net.write_text(data_layer("ImageData", sources["ImageData"]) + LAYERS.replace(
        'layer { name: "prob" type: "Softmax" bottom: "ip"',
        ip2 + 'layer { name: "prob" type: "Softmax" bottom: "ip2"'))
    r = run(net, "--weights", weights, "--iterations", 1)
    assert r.exit_code == 0, r.output
    assert "warning: layers without weights (left to their fillers): ip2" in r.stderr
    batches, _, _ = parse(r.stdout)
    assert [v for _, n, v in batches if n == "accuracy"] == pytest.approx([expected(1)[0][0]])


LENET_TRAIN_TEST = """name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "examples/mnist/mnist_train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "examples/mnist/mnist_test_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" }
  bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1 weight_filler { type: "xavier" }
  bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""   # BVLC caffe examples/mnist/lenet_train_test.prototxt
LENET_SOLVER = lenet_solver("lenet_train_test.prototxt", "lenet")   # snapshot_prefix: here
LENET_WEIGHTS = FIXTURES / "lenet" / "lenet_iter_10000.caffemodel"


@pytest.mark.parametrize("what", ["net", "solver"])
def test_lenet_without_its_mnist_lmdb_is_one_line(shared, tmp_path, what):
    (tmp_path / "lenet_train_test.prototxt").write_text(LENET_TRAIN_TEST)
    (tmp_path / "lenet_solver.prototxt").write_text(LENET_SOLVER)
    r = run(tmp_path / f"lenet_{'train_test' if what == 'net' else 'solver'}.prototxt", "--weights", LENET_WEIGHTS)
    assert r.exit_code == 2
    assert r.output.startswith("sfport: error: ") and r.output.count("\n") == 1, r.output
    assert "mnist_test_lmdb" in r.output and "Traceback" not in r.output


def test_lenet_caffemodel_against_opencv(shared, tmp_path):
    """The real LeNet weights on 10 generated digits in an LMDB (batch 4, 3 iterations: the last wraps): the
    logits from OpenCV's Caffe importer on the deploy lenet.prototxt give the expected loss and accuracy."""
    rng = np.random.default_rng(3)
    imgs = np.zeros((10, 28, 28), np.uint8)
    for i, img in enumerate(imgs):
        cv2.putText(img, str(i), (4 + i % 3, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
        img[:] = np.clip(img.astype(int) + rng.integers(0, 40, img.shape), 0, 255)
    ref = cv2.dnn.readNetFromCaffe(str(FIXTURES / "lenet" / "lenet.prototxt"), str(LENET_WEIGHTS))
    ref.setInput(imgs[:, None].astype(np.float32) * np.float32(0.00390625))
    logits = ref.forward("ip2").reshape(10, 10).astype(np.float64)
    pred = logits.argmax(1)
    labels = [int(p) if i % 3 else int(p + 1) % 10 for i, p in enumerate(pred)]   # a third wrong
    (tmp_path / "img").mkdir()
    for i, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"img/{i}.png"), img)
    (tmp_path / "list.txt").write_text("".join(f"img/{i}.png {labels[i]}\n" for i in range(10)))
    r = CliRunner().invoke(cli, ["convert-imageset", "--gray", f"{tmp_path}/", str(tmp_path / "list.txt"),
                                 str(tmp_path / "mnist_test_lmdb")])
    assert r.exit_code == 0, r.output
    net = tmp_path / "lenet_train_test.prototxt"
    net.write_text(LENET_TRAIN_TEST.replace("examples/mnist/mnist_test_lmdb", str(tmp_path / "mnist_test_lmdb"))
                   .replace("batch_size: 100", "batch_size: 4"))
    r = run(net, "--weights", LENET_WEIGHTS, "--iterations", 3)
    assert r.exit_code == 0, r.output
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    accs, losses = [], []
    for i in range(3):
        idx = [(4 * i + j) % 10 for j in range(4)]
        accs.append(np.mean([pred[j] == labels[j] for j in idx]))
        losses.append(-np.mean([logp[j, labels[j]] for j in idx]))
    batches, loss, summary = parse(r.stdout)
    assert [(i, n) for i, n, _ in batches] == [(i, n) for i in range(3) for n in ("accuracy", "loss")]
    assert [v for *_, v in batches] == pytest.approx([v for a, l in zip(accs, losses) for v in (a, l)],
                                                     rel=1e-4, abs=1e-5)
    assert loss == pytest.approx(np.mean(losses), rel=1e-4)
    mean_loss = pytest.approx(np.mean(losses), rel=1e-4)
    assert summary == [("accuracy", pytest.approx(np.mean(accs)), None, None), ("loss", mean_loss, 1.0, mean_loss)]
    # the caffemodel alone is its stored TRAIN net: its Data layer's mnist_train_lmdb is not here
    r = run(LENET_WEIGHTS)
    assert r.exit_code == 2 and "mnist_train_lmdb" in r.output and r.output.count("\n") == 1, r.output


def test_bad_input_is_one_line(tiny):
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    net.write_text(data_layer("ImageData", sources["ImageData"]) + LAYERS)
    deploy = folder / "deploy.prototxt"
    deploy.write_text('layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 '
                      'dim: 1 dim: 2 dim: 3 } shape { dim: 2 } } }' + LAYERS)
    other = write_caffemodel(folder / "other.caffemodel", {"fc": [WEIGHT, BIAS]})
    cases = [
        ((net, "--weights", folder / "missing.caffemodel"), "missing.caffemodel"),
        ((net,), "has no weights"),
        ((net, "--weights", other), "other.caffemodel: no layer of the weights matches"),
        ((deploy, "--weights", weights), "found 'data' (Input)"),
        ((net, "--weights", weights, "--iterations", 0), "--iterations 0"),
        ((net, "--weights", weights, "--test-net", 1), "not a solver"),
        ((net, "--weights", weights, "--gpu", "x"), "--gpu x"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("sfport: error: ") and r.output.count("\n") == 1, (args, r.output)
        assert message in r.output, (args, r.output)


def test_library_errors_name_the_file(tiny):
    folder, sources, weights = tiny
    net = folder / "net.prototxt"
    net.write_text(data_layer("ImageData", "absent.txt") + LAYERS)
    with pytest.raises(CaffeFileError, match="absent.txt"):
        score_mod.score(net, weights, 1)
