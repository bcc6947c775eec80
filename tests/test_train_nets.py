"""TRAIN-phase nets: loss layers as Caffe computes them, a real Caffe forward/backward (golden/solver), the upstream
SphereFace / SphereFace+ train nets, and loading released weights into them by layer name."""
import math

import numpy as np
import pytest
import torch

import sfport
from sfport.formats import caffe_files
from sfport.converters.loss import Accuracy, SoftmaxWithLoss
from sfport.protos import caffe_pb2

from conftest import GOLDEN, UPSTREAM

SOLVER = GOLDEN / "solver"
SF20_TRAIN = UPSTREAM / "sphereface/train/code/sphereface_model.prototxt"
SF20_DEPLOY = UPSTREAM / "sphereface/train/code/sphereface_deploy.prototxt"
SFPLUS = UPSTREAM / "sphereface-plus/train/code/sfplus"
TRAIN_NETS = [SF20_TRAIN, SFPLUS / "sfplus_model.prototxt", SFPLUS / "m_single_model.prototxt",
              SFPLUS / "m_double_model.prototxt", SFPLUS / "m_triple_model.prototxt",
              UPSTREAM / "sphereface/train/model_lib/Sphereface-64/sphereface_64_model.prototxt"]
LP = caffe_pb2.LossParameter


def relerr(a, b):
    a = a.detach().double().numpy() if torch.is_tensor(a) else np.asarray(a, np.float64)
    return float(np.abs(a - np.asarray(b, np.float64)).max() / max(1.0, np.abs(b).max()))


# ---------------------------------------------------------------------------------------------------------
# loss layers against numpy (softmax_loss_layer.cpp, accuracy_layer.cpp)
# ---------------------------------------------------------------------------------------------------------

def np_softmax_loss(scores, labels, normalization, ignore):
    """scores (N, C, H, W) or (N, C); Caffe's loop over outer x inner with -log(max(p, FLT_MIN))."""
    s = scores.astype(np.float64)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, c = s.shape[:2]
    inner = int(np.prod(s.shape[2:])) if s.ndim > 2 else 1
    p3 = p.reshape(n, c, inner)
    lab = labels.reshape(n, inner).astype(int)
    loss, count = 0.0, 0
    grad = p3.copy()
    for i in range(n):
        for j in range(inner):
            if ignore is not None and lab[i, j] == ignore:
                grad[i, :, j] = 0
                continue
            loss -= math.log(max(p3[i, lab[i, j], j], np.finfo(np.float32).tiny))
            grad[i, lab[i, j], j] -= 1
            count += 1
    norm = {LP.FULL: n * inner, LP.VALID: count, LP.BATCH_SIZE: n, LP.NONE: 1}[normalization]
    norm = max(1.0, norm)
    return loss / norm, (grad / norm).reshape(s.shape)


@pytest.mark.parametrize("normalization", [LP.FULL, LP.VALID, LP.BATCH_SIZE, LP.NONE])
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_with_loss(normalization, ignore):
    rng = np.random.default_rng(normalization)
    scores = rng.standard_normal((4, 5, 3, 2)) * 3
    labels = rng.integers(0, 5, (4, 1, 3, 2)).astype(np.float64)
    labels.flat[:3] = 2
    layer = SoftmaxWithLoss(1, normalization, ignore, False)
    x = torch.from_numpy(scores).requires_grad_()
    loss = layer(x, torch.from_numpy(labels))
    loss.backward()
    ref, grad = np_softmax_loss(scores, labels, normalization, ignore)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-12)
    assert relerr(x.grad, grad) <= 1e-12


def test_softmax_loss_plateau_and_its_gradient():
    """A zero-probability label costs -log(FLT_MIN) = 87.3365 and still gets Caffe's gradient p - 1."""
    x = torch.tensor([[0.0, 200.0, -200.0], [1.0, 1.0, 1.0]], requires_grad=True)
    layer = SoftmaxWithLoss(1, LP.VALID, None, False)
    loss = layer(x, torch.tensor([2.0, 0.0]))
    assert float(loss.detach()) == pytest.approx((87.3365 + math.log(3)) / 2, abs=1e-4)
    loss.backward()
    assert x.grad[0].tolist() == pytest.approx([0.0, 0.5, -0.5], abs=1e-7)


def test_legacy_normalize_flag():
    from sfport.converters.loss import _normalization
    layer = caffe_pb2.LayerParameter(type="SoftmaxWithLoss")
    assert _normalization(layer) == LP.VALID
    layer.loss_param.normalize = False
    assert _normalization(layer) == LP.BATCH_SIZE
    layer.loss_param.normalize = True
    layer.loss_param.normalization = LP.NONE
    assert _normalization(layer) == LP.VALID


def test_accuracy_top_k_ignore_and_per_class():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    labels = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0])
    # top-1: sample 2 only; samples 1 (tie 0.3 vs 0.3 and 0.4 above) and others wrong
    assert float(Accuracy(1, 1, None, False)(scores, labels)) == pytest.approx(1 / 5)
    # top-2: 0 (one above), 1 (one above: 0.4), 2, 3 (0.6 above; ties not above), 4 (0.5 above)
    assert float(Accuracy(1, 2, None, False)(scores, labels)) == pytest.approx(5 / 5)
    assert float(Accuracy(1, 1, 0, False)(scores, labels)) == pytest.approx(0 / 3)
    acc, per = Accuracy(1, 1, None, True)(scores, labels)
    assert per.tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_loss_weights_follow_caffe():
    from sfport.netdef.graph import loss_weights
    l = caffe_pb2.LayerParameter(type="SoftmaxWithLoss", top=["loss", "prob"])
    assert loss_weights(l) == [1.0, 0.0]
    assert loss_weights(caffe_pb2.LayerParameter(type="InterClass", top=["d"])) == [1.0]
    assert loss_weights(caffe_pb2.LayerParameter(type="Accuracy", top=["a"])) == [0.0]
    assert loss_weights(caffe_pb2.LayerParameter(type="InnerProduct", top=["f"], loss_weight=[0.5])) == [0.5]
    with pytest.raises(sfport.errors.CaffeFileError, match="one per top"):
        loss_weights(caffe_pb2.LayerParameter(type="SoftmaxWithLoss", top=["a", "b"], loss_weight=[1]))


# ---------------------------------------------------------------------------------------------------------
# real Caffe: one TRAIN forward/backward of the golden tiny SphereFace net
# ---------------------------------------------------------------------------------------------------------

def test_golden_train_forward_backward():
    d = np.load(SOLVER / "forward_backward_init_batch0.npz")
    net = sfport.TorchNet(SOLVER / "tiny_sphereface.prototxt", weights=SOLVER / "init.caffemodel", phase="train",
                     input_shapes={"data": (8, 3, 24, 20)})
    assert net.report.layers_without_weights == []
    net.forward(data=d["data:data"], label=d["data:label"])
    for t in net.unique_blobs.values():
        if t.requires_grad and not t.is_leaf:
            t.retain_grad()
    net.backward()
    worst = 0.0
    for key in d.files:
        kind, name = key.split(":")
        if kind == "data":
            got = net.blobs[name]
        elif kind == "diff":
            if name == "loss":
                continue
            got = net.unique_blobs[name].grad  # pre-PReLU conv outputs: the in-place PReLU overwrote Caffe's diff
        else:
            layer, i = name.split("/")
            p = net.params[layer][int(i)]
            got = p.grad if p.requires_grad else torch.zeros_like(p)  # lr_mult 0: Caffe computes no diff
            if not p.requires_grad:
                assert np.all(d[key] == 0)
        err = relerr(got, d[key])
        worst = max(worst, err)
        assert err <= 2e-6, key
    assert float(net.blobs["loss"].detach()) == pytest.approx(float(d["data:loss"]), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# the upstream train nets
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", TRAIN_NETS, ids=lambda p: p.stem)
def test_upstream_train_net_forward_backward(path):
    torch.manual_seed(0)
    net = sfport.TorchNet(path, phase="train", input_shapes={"data": (8, 3, 112, 96)}, seed=0)
    assert net.inputs == {"data": (8, 3, 112, 96), "label": (8,)}  # the ImageData layer became named inputs
    x = torch.rand(8, 3, 112, 96) * 2 - 1
    y = torch.randint(0, 10572, (8,)).float()
    loss = net.forward_backward(data=x, label=y)
    assert math.isfinite(loss)
    fc6 = net.module.module_of("fc6")
    assert int(fc6.iteration) == fc6_param(net).iteration + 1
    assert fc6.weight.grad is not None and float(fc6.weight.grad.abs().sum()) > 0
    conv = net.params["conv1_1"][0]
    assert conv.grad is not None and float(conv.grad.abs().sum()) > 0
    softmax = float(net.blobs["softmax_loss"].detach())
    if fc6.m == 1:  # at initialisation the logits are near 0: the loss is near ln(10572) = 9.27
        assert softmax == pytest.approx(math.log(10572), abs=0.25)
    if "maximize_inter_class_dist" in net.blobs:
        ic = net.module.module_of(next(gl.name for gl in net.graph.layers if gl.type == "InterClass"))
        assert ic.weight is fc6.weight
        assert loss == pytest.approx(softmax + float(net.blobs["maximize_inter_class_dist"].detach()), rel=1e-6)
    else:
        assert loss == pytest.approx(softmax, rel=1e-6)


def fc6_param(net):
    return net.graph.layer("fc6").param.margin_inner_product_param


def test_deploy_weights_and_snapshots_load_into_the_train_net(tmp_path):
    """A released deploy caffemodel (no fc6) loads by layer name, fc6 left to its filler (and reported); a full
    training snapshot (with fc6) loads completely, fc6 included."""
    deploy = sfport.netdef.weight_match.with_random_weights(caffe_files.read_prototxt(SF20_DEPLOY), seed=3)
    caffe_files.write_caffemodel(tmp_path / "released.caffemodel", deploy)
    shapes = {"data": (2, 3, 112, 96)}
    net = sfport.TorchNet(SFPLUS / "sfplus_model.prototxt", weights=tmp_path / "released.caffemodel", phase="train",
                     input_shapes=shapes, seed=0)
    rep = net.report
    assert rep.layers_without_weights == ["fc6", "inter_class_dist_output"]
    assert rep.filled == {"fc6": ["xavier"], "inter_class_dist_output": ["shared with fc6"]}
    text = "\n".join(rep.lines())
    assert "Layer fc6: no weights in the file; initialised by its filler (xavier)" in text
    src = deploy.blob_arrays(deploy.weight_layers()["conv1_1"])
    assert np.array_equal(net.params["conv1_1"][0].detach().numpy(), src[0])
    w = net.params["fc6"][0].detach().numpy()
    bound = math.sqrt(3 / 512)  # xavier, fan_in 512
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound and w.std() > 0.5 * bound / math.sqrt(3)
    # one training step moves everything; the snapshot then carries fc6
    net.forward_backward(data=torch.rand(2, 3, 112, 96), label=torch.tensor([1.0, 5.0]))
    net.save_caffemodel(tmp_path / "snap.caffemodel")
    again = sfport.TorchNet(SFPLUS / "sfplus_model.prototxt", weights=tmp_path / "snap.caffemodel", phase="train",
                       input_shapes=shapes)
    assert again.report.layers_without_weights == []
    assert np.array_equal(again.params["fc6"][0].detach().numpy(), net.params["fc6"][0].detach().numpy())
    # and the snapshot's deploy view still loads the released-style net for inference
    deploy_net = sfport.TorchNet(SF20_DEPLOY, weights=tmp_path / "snap.caffemodel")
    assert deploy_net.report.weights_without_layers == ["fc6", "inter_class_dist_output"]


# ---------------------------------------------------------------------------------------------------------
# real Caffe (pycaffe oracle, where built): loss layers forward and backward
# ---------------------------------------------------------------------------------------------------------

CAFFE_PYTHON = __import__("os").environ.get("SFPORT_CAFFE_PYTHON")
_PYCAFFE_LOSSES = r"""
import sys, numpy as np, caffe
caffe.set_mode_cpu()
d = np.load(sys.argv[3])
out = {}
for path, backward in ((sys.argv[1], True), (sys.argv[2], False)):  # Accuracy has no backward
    net = caffe.Net(path, caffe.TRAIN)
    net.blobs["scores"].data[...] = d["scores"]
    net.blobs["label"].data[...] = d["label"]
    net.forward()
    out.update({k: net.blobs[k].data.copy() for k in net.blobs if k not in ("scores", "label")})
    if backward:
        net.backward()
        out["scores_diff"] = net.blobs["scores"].diff.copy()
np.savez(sys.argv[4], **out)
"""
_LOSS_NET = """
name: "losses" force_backward: true
layer { name: "scores" type: "Input" top: "scores" input_param { shape { dim: 6 dim: 5 dim: 2 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 dim: 1 dim: 2 dim: 3 } } }
layer { name: "full" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "full"
  loss_param { normalization: FULL ignore_label: 3 } }
layer { name: "valid" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "valid"
  loss_weight: 0.5 loss_param { ignore_label: 3 } }
layer { name: "batch" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "batch"
  loss_weight: 2 loss_param { normalize: false } }
layer { name: "none" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "none"
  loss_weight: 0.01 loss_param { normalization: NONE } }
"""
_ACC_NET = """
name: "accuracy"
layer { name: "scores" type: "Input" top: "scores" input_param { shape { dim: 6 dim: 5 dim: 2 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 dim: 1 dim: 2 dim: 3 } } }
layer { name: "acc" type: "Accuracy" bottom: "scores" bottom: "label" top: "acc" top: "per_class"
  accuracy_param { top_k: 2 ignore_label: 1 } }
"""


@pytest.mark.skipif(not CAFFE_PYTHON, reason="pycaffe oracle not built: run ../shared/tools/build-caffe-oracle.sh "
                                              "and set SFPORT_CAFFE_PYTHON to its python")
def test_loss_layers_match_pycaffe(tmp_path):
    import subprocess
    rng = np.random.default_rng(7)
    scores = (rng.standard_normal((6, 5, 2, 3)) * 4).astype(np.float32)
    scores[0, :, 0, 0] = [0, 100, -100, 0, 0]  # a zero-probability label: the 87.3365 cap
    label = rng.integers(0, 5, (6, 1, 2, 3)).astype(np.float32)
    label[0, 0, 0, 0] = 2
    (tmp_path / "net.prototxt").write_text(_LOSS_NET)
    (tmp_path / "acc.prototxt").write_text(_ACC_NET)
    np.savez(tmp_path / "in.npz", scores=scores, label=label)
    p = subprocess.run([CAFFE_PYTHON, "-c", _PYCAFFE_LOSSES, str(tmp_path / "net.prototxt"),
                        str(tmp_path / "acc.prototxt"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    ref = np.load(tmp_path / "out.npz")
    net = sfport.TorchNet(tmp_path / "net.prototxt", phase="train")
    x = torch.from_numpy(scores).requires_grad_()
    net.forward(scores=x, label=torch.from_numpy(label))
    net.backward()
    acc = sfport.TorchNet(tmp_path / "acc.prototxt", phase="train")
    acc.forward(scores=x.detach(), label=torch.from_numpy(label))
    blobs = {**net.blobs, **acc.blobs}
    for name in ("full", "valid", "batch", "none", "acc", "per_class"):
        assert relerr(blobs[name].reshape(ref[name].shape), ref[name]) <= 1e-6, name
    assert float(ref["full"]) > 87.3365 / 36  # the capped sample is in there
    assert relerr(x.grad, ref["scores_diff"]) <= 1e-6
