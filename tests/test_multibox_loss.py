"""The SSD fork's MultiBoxLoss (converters/multibox.py) against the fork itself: each tests/data/multibox/*.npz
holds a net the fork's own pycaffe ran (brocolli-caffe 9.0.2 built CPU-only by ../shared/tools/build-caffe-oracle.sh;
how: tests/data/multibox/README.md), its inputs, its loss and the diffs of the loss layer's loc and conf bottoms
after net.backward(). sfport's converter, built from the same prototxt text, and sfport's pycaffe Net running the
whole net must give the same loss and diffs within 1e-5 * max(1, max |reference|). Then shape inference in the
MobileNet-SSD train net (its AnnotatedData layer replaced by an Input layer) and bad parameters and bottoms, each
a CaffeFileError of one line naming the layer."""
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.netdef import shapes
from sfport.protos import caffe_pb2
from sfport.pycaffe.net import Net

DATA = Path(__file__).resolve().parent / "data" / "multibox"
CASES = sorted(p.stem for p in DATA.glob("*.npz"))
TYPE = "MultiBoxLoss"
INPUTS = ("loc_in", "conf_in", "prior", "label")


def _load(name: str):
    with np.load(DATA / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    net = text_format.Parse(str(arrays.pop("prototxt")), caffe_pb2.NetParameter())
    return net, arrays


def _loss_layer(net):
    (layer,) = [layer for layer in net.layer if layer.type == TYPE]
    return layer


def _close(ours, ref, what: str) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, what
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"
    return err


def test_the_reference_covers_the_configurations():
    """Every configuration make_reference.py lists has its file (a lost file would silently drop a case)."""
    assert len(CASES) == 32, CASES
    for needed in ("ssd_max_negative", "bipartite", "mining_none", "hard_example_nms", "hard_example_sorted",
                   "logistic_none", "l2", "norm_full", "norm_batch_size", "norm_none", "legacy_normalize_false",
                   "no_share_prior_match", "no_share_decoded_match", "encode_variance_in_target", "corner",
                   "corner_size_variance_in_target", "loss_weight", "propagate_down_loc_only", "max_negative_ties"):
        assert needed in CASES


@pytest.mark.parametrize("name", CASES)
def test_converter_matches_the_fork(name):
    """The converter's module: its loss, and its gradients against the top diff Caffe's Net gives a loss top
    (the layer's loss_weight), are the fork's loss and bottom diffs."""
    net, a = _load(name)
    layer = _loss_layer(net)
    xs = [torch.tensor(a[k], requires_grad=k in ("loc_in", "conf_in")) for k in INPUTS]
    module = converters.get(TYPE).build(layer, [tuple(x.shape) for x in xs])
    loss = module(*xs)
    assert loss.shape == ()
    weight = layer.loss_weight[0] if len(layer.loss_weight) else 1.0
    grads = torch.autograd.grad(loss, xs[:2], torch.tensor(weight), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, xs)]
    _close(loss.detach().numpy(), a["loss"], "loss")
    _close(grads[0].numpy(), a["loc_diff"], "loc diff")
    _close(grads[1].numpy(), a["conf_diff"], "conf diff")


@pytest.mark.parametrize("name", CASES)
def test_pycaffe_net_matches_the_fork(name, tmp_path):
    """The same net in sfport's pycaffe Net (Input, the two Scale layers, the loss): forward, backward, the
    blobs' diffs."""
    net, a = _load(name)
    path = tmp_path / "net.prototxt"
    path.write_text(text_format.MessageToString(net))
    n = Net(str(path), phase="train")
    for k in INPUTS:
        n.blobs[k].data[...] = a[k]
    top = _loss_layer(net).top[0]
    _close(n.forward()[top], a["loss"], "loss")
    n.backward()
    _close(n.blobs["loc"].diff, a["loc_diff"], "loc diff")
    _close(n.blobs["conf"].diff, a["conf_diff"], "conf diff")


# ------------------------------------------------------------------------------------------ in MobileNet-SSD

def _ssd_train_with_inputs(num=2, num_gt=5):
    """../shared/fixtures/ssd/MobileNetSSD_train.prototxt with its AnnotatedData layer replaced by an Input layer
    of the same tops."""
    fixture = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "ssd" / "MobileNetSSD_train.prototxt"
    if not fixture.is_file():
        pytest.fail(f"the shared fixture is missing: {fixture}")
    net = caffe_pb2.NetParameter()
    net.CopyFrom(caffe_files.read_prototxt(fixture).net)
    data = net.layer[0]
    inp = caffe_pb2.LayerParameter(name=data.name, type="Input", top=list(data.top))
    inp.input_param.shape.add(dim=[num, 3, 300, 300])
    inp.input_param.shape.add(dim=[1, 1, num_gt, 8])
    data.CopyFrom(inp)
    return net


def test_shape_inference_in_mobilenet_ssd_train():
    net = _ssd_train_with_inputs()
    found = [ls for ls in shapes.infer(net, caffe_pb2.TRAIN) if net.layer[ls.index].type == TYPE]
    assert len(found) == 1
    ls = found[0]
    assert ls.bottoms == [(2, 1917 * 4), (2, 1917 * 21), (1, 2, 1917 * 4), (1, 1, 5, 8)]
    assert ls.tops == [()] and ls.params == []
    assert converters.is_loss(TYPE) and converters.is_training_only(TYPE)
    assert converters.label_bottoms(TYPE) == (3,)


# ------------------------------------------------------------------------------------------ bad input

def _net_with(param: str, label_shape=(1, 1, 3, 8), loc_width=16, extra=""):
    """An Input-fed net of 4 priors and 3 classes with one MultiBoxLoss."""
    return text_format.Parse(f"""
        layer {{ name: "in" type: "Input" top: "loc" top: "conf" top: "prior" top: "label"
                 input_param {{ shape {{ dim: 2 dim: {loc_width} }} shape {{ dim: 2 dim: 12 }}
                               shape {{ dim: 1 dim: 2 dim: 16 }}
                               shape {{ {" ".join(f"dim: {d}" for d in label_shape)} }} }} }}
        layer {{ name: "mbox_loss" type: "{TYPE}" bottom: "loc" bottom: "conf" bottom: "prior" bottom: "label"
                 top: "loss" {extra} multibox_loss_param {{ {param} }} }}""", caffe_pb2.NetParameter())


@pytest.mark.parametrize("param, kw, says", [
    ("", {}, "num_classes"),
    ("num_classes: 0", {}, "num_classes"),
    ("num_classes: 3", {"label_shape": (1, 1, 3, 7)}, "1 x 1 x G x 8"),
    ("num_classes: 3", {"label_shape": (3, 8)}, "1 x 1 x G x 8"),
    ("num_classes: 3", {"loc_width": 12}, "location predictions"),
    ("num_classes: 3 share_location: false", {}, "share_location"),
    ("num_classes: 3 do_neg_mining: false", {}, "do_neg_mining"),
    ("num_classes: 3 background_label_id: 3", {}, "background_label_id"),
    ("num_classes: 3 mining_type: HARD_EXAMPLE sample_size: 0", {}, "sample_size"),
    ("num_classes: 3 map_object_to_agnostic: true", {}, "map_object_to_agnostic"),
    ("num_classes: 3", {"extra": "propagate_down: true propagate_down: true"}, "propagate_down"),
    ("num_classes: 3", {"extra": " ".join(["propagate_down: true"] * 4)}, "prior and label"),
])
def test_bad_parameters_and_bottoms_name_the_layer(param, kw, says):
    with pytest.raises(CaffeFileError) as e:
        shapes.infer(_net_with(param, **kw), filtered=True)
    assert "layer 'mbox_loss' (MultiBoxLoss)" in str(e.value) and says in str(e.value)
    assert "\n" not in str(e.value)


def _run(param: str, label_rows, prior_rows=None):
    layer = _loss_layer(_net_with(param, label_shape=(1, 1, len(label_rows), 8)))
    prior = np.asarray(prior_rows if prior_rows is not None else
                       [[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9], [0.0, 0.5, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5]],
                       dtype=np.float32)
    xs = [torch.zeros(2, 16), torch.zeros(2, 12), torch.tensor(np.stack([prior.reshape(-1), np.full(16, 0.1)]))[None],
          torch.tensor(np.asarray(label_rows, dtype=np.float32))[None, None]]
    return converters.get(TYPE).build(layer, [tuple(x.shape) for x in xs])(*xs)


@pytest.mark.parametrize("param, rows, says", [
    # GetGroundTruth: CHECK_NE(background_label_id, label) "Found background label in the dataset."
    ("num_classes: 3", [[0, 0, 0, 0.1, 0.1, 0.5, 0.5, 0]], "background label"),
    # a matched label outside [0, num_classes) (ComputeConfLoss's CHECK_LT; without mining the fork reads past)
    ("num_classes: 3", [[0, 5, 0, 0.1, 0.1, 0.5, 0.5, 0]], "outside [0, 3)"),
    ("num_classes: 3 mining_type: NONE", [[0, 5, 0, 0.1, 0.1, 0.5, 0.5, 0]], "outside [0, 3)"),
])
def test_bad_data_names_the_layer(param, rows, says):
    with pytest.raises(CaffeFileError) as e:
        _run(param, rows)
    assert "layer 'mbox_loss' (MultiBoxLoss)" in str(e.value) and says in str(e.value)


DEGENERATE = [[0.1, 0.1, 0.5, 0.5]] * 3 + [[0.5, 0.5, 0.5, 0.9]]   # the last prior has width 0


def test_a_prior_of_no_width_is_refused_where_the_fork_checks_it():
    """DecodeBBox (CENTER_SIZE) CHECK_GT(prior_width, 0) on every prior when the decoded boxes are matched; with
    the priors matched it is never decoded nor matched (its overlaps are 0), and the fork runs on."""
    rows = [[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0]]
    with pytest.raises(CaffeFileError, match="'mbox_loss'.*width and height"):
        _run("num_classes: 3 code_type: CENTER_SIZE use_prior_for_matching: false", rows, DEGENERATE)
    assert np.isfinite(float(_run("num_classes: 3 code_type: CENTER_SIZE", rows, DEGENERATE)))


def test_no_ground_truth_gives_a_zero_loss():
    """Rows of item -1 only: no matches, so no location loss, and MAX_NEGATIVE mines no negatives (there are no
    positives): the loss is 0."""
    assert float(_run("num_classes: 3", [[-1] * 8])) == 0.0
