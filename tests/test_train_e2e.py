"""End to end on CPU: a synthetic face-like dataset (JPEG files, 20 identities, 112x96) trains a reduced-width
SphereFace net with A-Softmax m=4 through `sfport train`; the features separate held-out identities; then a
SphereFace+ finetune (InterClass active) starts from the first run's caffemodel through --weights."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sfport
from sfport.netdef import builtin
from sfport.cli import cli
from sfport.data.imagedata import read_list
from sfport.formats.caffe_files import net_to_text, write_prototxt

import synthfaces

NARROW = dict(num_classes=20, root_folder="data/", batch_size=32, channels=(16, 32, 64, 128), feature_dim=64)


def features(snapshot, listfile, root):
    import cv2
    net = sfport.TorchNet(snapshot, input_shapes={"data": (1, 3, 112, 96)})
    entries = read_list(listfile)
    x = np.stack([(cv2.imread(f"{root}/{e.path}").astype(np.float32) - 127.5) * 0.0078125 for e in entries])
    with torch.no_grad():
        blobs = net.module.run({"data": torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))})
    return blobs[net.graph.final["fc5"]].numpy(), np.array([e.label for e in entries])


def train_accuracy(snapshot, root):
    f, y = features(snapshot, root / "list.txt", root)
    w = sfport.read_caffemodel(snapshot).params["fc6"][0]
    return float(((f @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T).argmax(1) == y).mean())


def heldout(snapshot, root):
    """Verification AUC over all pairs of held-out images, and leave-one-out 1-NN identification accuracy."""
    g, y = features(snapshot, root / "heldout.txt", root)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    c = g @ g.T
    same = y[:, None] == y[None, :]
    iu = np.triu_indices(len(y), 1)
    pos, neg = c[iu][same[iu]], c[iu][~same[iu]]
    np.fill_diagonal(c, -2)
    return float((pos[:, None] > neg[None, :]).mean()), float((y[c.argmax(1)] == y).mean())


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    synthfaces.write_dataset(root / "data", 20, 30, seed=1)
    synthfaces.write_dataset(root / "data", 6, 10, seed=2, list_name="heldout.txt", prefix="new")
    return root


def test_sphereface_then_sphereface_plus(faces, monkeypatch):
    monkeypatch.chdir(faces)
    assert len(list((faces / "data").glob("id_*/*.jpg"))) == 600
    write_prototxt("sf.prototxt", builtin.sphereface_train(4, 4, source="data/list.txt", lambda_gamma=1.0, **NARROW))
    sp = builtin.solver("sf.prototxt", 0.01, 0.1, (180, 230), 250, 50, "runs/sf/x")
    sp.solver_mode = 0
    (faces / "sf_solver.prototxt").write_text(net_to_text(sp))
    r = CliRunner().invoke(cli, ["train", "sf_solver.prototxt", "--workers", "2", "--seed", "3"])
    assert r.exit_code == 0, r.output[-3000:]
    snap = faces / "runs/sf/x_iter_250.caffemodel"
    acc = train_accuracy(snap, faces / "data")
    auc, nn = heldout(snap, faces / "data")
    print(f"SphereFace m=4: train accuracy {acc:.3f}, held-out AUC {auc:.3f}, 1-NN {nn:.3f}")
    assert acc >= 0.95
    assert auc >= 0.9 and nn >= 0.8

    # SphereFace+ finetune from that caffemodel: InterClass (AMONG, alpha 10 from the first forward) on fc6_w
    plus = builtin.sphereface_train(4, 4, source="data/list.txt", lambda_gamma=0.12, iteration=2000,
                                 interclass_alpha=10.0, **NARROW)
    write_prototxt("plus.prototxt", plus)
    sp = builtin.solver("plus.prototxt", 0.001, 0.1, (40,), 50, 10, "runs/plus/x")
    sp.solver_mode = 0
    (faces / "plus_solver.prototxt").write_text(net_to_text(sp))
    r = CliRunner().invoke(cli, ["train", "plus_solver.prototxt", "--weights", str(snap), "--workers", "2"])
    assert r.exit_code == 0, r.output[-3000:]
    copied = [l for l in r.stderr.splitlines() if "Copied weights of" in l]
    assert copied and copied[0].endswith("Copied weights of 10 layers"), copied  # 4 conv, 4 PReLU, fc5, fc6
    assert "Layer inter_class_dist_output: no weights in the file; its blobs are shared with fc6" in r.stderr
    assert "Layer fc6" not in r.stderr
    d = [float(line.rsplit("= ", 1)[1].split()[0]) for line in r.stderr.splitlines()
         if "Train net output" in line and "maximize_inter_class_dist" in line]
    assert len(d) == 5 and all(v > 0 for v in d)
    assert "lambda = 5" in r.stderr
    plus_snap = faces / "runs/plus/x_iter_50.caffemodel"
    w0 = sfport.read_caffemodel(snap).params["fc6"][0]
    w1 = sfport.read_caffemodel(plus_snap).params["fc6"][0]
    assert 0 < np.abs(w1 - w0 / np.linalg.norm(w0, axis=1, keepdims=True)).max() < 0.5
    assert train_accuracy(plus_snap, faces / "data") >= 0.95
    assert heldout(plus_snap, faces / "data")[0] >= 0.9
