"""The SSD fork's PriorBox and DetectionOutput (weiliu89/caffe, branch ssd): MobileNet-SSD (../shared/fixtures/ssd)
against OpenCV 4 blob by blob including detection_out, its train/test definitions against its deploy net, the
export before the NMS (pre_nms; the whole layer's export is test_ssd_export.py), and hand-built cases whose expected
rows are worked out here from the fork's prior_box_layer.cpp, detection_output_layer.cpp and bbox_util.cpp."""
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

from sfport import converters
from sfport.formats import caffe_files
from sfport.runtime import export, verify
from sfport.netdef import weight_match
from sfport.cli import cli
from sfport.converters import ssd
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net, load_net
from sfport.protos import caffe_pb2


@pytest.fixture(scope="module")
def fixture_dir(request):
    from pathlib import Path
    d = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
    if not d.is_dir():
        pytest.fail(f"the shared fixtures are missing: {d}")
    return d


@pytest.fixture(scope="module")
def ssd_dir(fixture_dir):
    return fixture_dir / "ssd"


def _ssd_weights(definition, seed, conf_scale):
    """Seeded random weights; the class-confidence heads scaled so softmax scores pass the 0.25 threshold (with
    plain random weights every score is near 1/21 and nothing is detected)."""
    m = weight_match.with_random_weights(definition, seed=seed)
    for i, layer in enumerate(m.net.layer):
        if layer.name.endswith("_mbox_conf"):
            w, b = m.blob_arrays(i)
            m.set_blob_arrays(i, [w * conf_scale, b])
    return m


@pytest.fixture(scope="module")
def deploy(ssd_dir, tmp_path_factory):
    p = ssd_dir / "MobileNetSSD_deploy.prototxt"
    w = tmp_path_factory.mktemp("ssd") / "ssd.caffemodel"
    caffe_files.write_caffemodel(w, _ssd_weights(caffe_files.read_prototxt(p), 1, 30.0))
    return str(p), str(w)


# ------------------------------------------------------------------------------------------ MobileNet-SSD vs OpenCV

@pytest.mark.parametrize("source", ["random", "mtcnn/test1.jpg", "lfw/Anthony_Hopkins_0001.jpg"])
def test_mobilenet_ssd_every_blob_and_detection_out_match_opencv(deploy, fixture_dir, source):
    p, w = deploy
    src = source if source == "random" else str(fixture_dir / source)
    v = verify.run(w, p, input=src)
    assert v.passed, verify.format_table(v.failed)
    det = next(c for c in v.checks if c.name == "detection_out")
    assert det.shape[2] > 20 and det.rel_err <= 1e-5            # real detections, row by row
    assert {c.name for c in v.checks} >= {"mbox_priorbox", "conv11_mbox_priorbox", "mbox_conf_flatten"}


def test_mobilenet_ssd_without_detections_verifies_through_the_cli(ssd_dir, tmp_path):
    """Plain random weights: nothing passes the threshold; the fork's one row per image [i, -1, ...] and OpenCV's
    zeros are the same outcome."""
    p = ssd_dir / "MobileNetSSD_deploy.prototxt"
    w = tmp_path / "plain.caffemodel"
    caffe_files.write_caffemodel(w, weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=4))
    r = CliRunner().invoke(cli, ["verify", str(w), "-p", str(p), "--json"])
    assert r.exit_code == 0, r.output
    import json
    doc = json.loads(r.stdout)
    det = next(b for b in doc["blobs"] if b["name"] == "detection_out")
    assert doc["passed"] and det["shape"] == [1, 1, 1, 7]
    out = Net(str(p), str(w)).forward(data=verify.make_input((1, 3, 300, 300), "random", 0))["detection_out"]
    np.testing.assert_array_equal(out.numpy(), [[[[0, -1, -1, -1, -1, -1, -1]]]])


def _fold_bn(test_net, deploy_net):
    """The deploy weights of a BatchNorm + Scale training net (merge_bn, computed here): for conv -> bn -> scale,
    W' = W g / sqrt(var / s + eps), b' = (b - mean / s) g / sqrt(var / s + eps) + beta."""
    for name, params in deploy_net.params.items():
        src = test_net.params.get(name)
        if not src:
            continue
        w = src[0].detach().double()
        b = src[1].detach().double() if len(src) > 1 else torch.zeros(w.shape[0], dtype=torch.float64)
        bn, sc = test_net.params.get(f"{name}/bn"), test_net.params.get(f"{name}/scale")
        if bn:
            mean, var, s = (t.detach().double() for t in bn)
            eps = 1e-5
            f = 0 if float(s) == 0 else 1 / float(s)
            g, beta = (sc[0].detach().double(), sc[1].detach().double()) if sc else (1, 0)
            k = g / torch.sqrt(var * f + eps)
            w = w * k.reshape(-1, *([1] * (w.dim() - 1)))
            b = (b - mean * f) * k + beta
        with torch.no_grad():
            params[0].copy_(w.float())
            if len(params) > 1:
                params[1].copy_(b.float())


def _randomize(net, seed):
    g = np.random.default_rng(seed)
    with torch.no_grad():
        for name, params in net.params.items():
            for j, p in enumerate(params):
                if name.endswith("/bn"):
                    v = [g.normal(0, 0.1, p.shape), g.uniform(0.5, 1.5, p.shape), np.ones(p.shape)][j]
                elif name.endswith("/scale"):
                    v = (1 if j == 0 else 0) + 0.1 * g.standard_normal(p.shape)
                elif p.dim() >= 2:
                    scale = 30.0 if name.endswith("_mbox_conf") else 1.0
                    v = scale * g.normal(0, 1 / math.sqrt(max(p[0].numel(), 1)), p.shape)
                else:
                    v = 0.1 * g.standard_normal(p.shape)
                p.copy_(torch.from_numpy(np.asarray(v, np.float32)))


def test_train_and_test_definitions_give_the_deploy_nets_detections(ssd_dir):
    """The test definition (AnnotatedData as the input, BatchNorm + Scale, DetectionEvaluate dropped) gives the
    deploy net's detection_out once its BatchNorm is folded into the deploy convolutions (and the deploy net keeps
    as many boxes as the test definition asks); the train definition
    (MultiBoxLoss dropped) gives the blobs detection_out is made of."""
    shape = {"data": (1, 3, 300, 300)}
    test = load_net(str(ssd_dir / "MobileNetSSD_test.prototxt"), input_shapes=shape, phase="test")
    _randomize(test, 3)
    # the test definition keeps more boxes (top_k 400, keep_top_k 200, threshold 0.01): the deploy net with those
    definition = caffe_files.read_prototxt(ssd_dir / "MobileNetSSD_deploy.prototxt")
    test_def = caffe_files.read_prototxt(ssd_dir / "MobileNetSSD_test.prototxt")
    param = next(la for la in test_def.net.layer if la.type == "DetectionOutput").detection_output_param
    next(la for la in definition.net.layer if la.type == "DetectionOutput").detection_output_param.CopyFrom(param)
    dep = Net(definition)
    _fold_bn(test, dep)
    x = verify.make_input((1, 3, 300, 300), "random", 7)
    got, want = test.forward(data=x)["detection_out"].numpy(), dep.forward(data=x)["detection_out"].numpy()
    assert got.shape == want.shape and got.shape[2] > 20
    want = ssd.align_detections(got, want)   # as verify aligns them (the converter's align_reference_output)
    assert np.abs(got - want).max() <= 1e-5 * max(1, np.abs(want).max())

    train = load_net(str(ssd_dir / "MobileNetSSD_train.prototxt"), input_shapes=shape, phase="train")
    train.load_weights(test.to_caffemodel())
    train.module.eval()          # BatchNorm on its stored statistics, as Caffe's TEST (TRAIN uses the batch's)
    outs = train.forward(data=x)
    assert "detection_out" not in outs and "mbox_loss" not in outs
    for blob in ("mbox_loc", "mbox_conf", "mbox_priorbox"):
        a, b = outs[blob].detach().numpy(), dep.blobs[blob].detach().numpy()
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5 * max(1, np.abs(b).max()), blob


# ------------------------------------------------------------------------------------------------------ export

def test_onnx_export_before_the_nms_gives_eager_detections(deploy):
    import onnx
    import onnxruntime as ort
    p, w = deploy
    net = Net(p, w)
    data, res = export.onnx_export(net, pre_nms=True)
    assert res.dynamic_size and "exported before its NMS" in res.summary()
    proto = onnx.load_from_string(data)
    meta = {m.key: m.value for m in proto.metadata_props}
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for shape, seed in (((1, 3, 300, 300), 0), ((2, 3, 320, 256), 1)):
        x = verify.make_input(shape, "random", seed)
        rows = sess.run(None, {"data": x})[0]
        got = ssd.detections(meta["sfport:DetectionOutput:detection_out"], rows)
        eager = Net(p, w, input_shapes={"data": shape}).forward(data=x)["detection_out"].numpy()
        assert got.shape == eager.shape and got.shape[2] > 20
        assert np.array_equal(got[..., :2], eager[..., :2])                     # same images, labels, order
        assert np.abs(got - eager).max() <= 1e-5 * max(1, np.abs(eager).max())


def test_torchscript_export_carries_the_parameters_as_an_extra_file(deploy):
    import io
    p, w = deploy
    net = Net(p, w)
    data, res = export.torchscript_export(net, dynamic=False, pre_nms=True)
    extra = {"sfport:DetectionOutput:detection_out": ""}
    loaded = torch.jit.load(io.BytesIO(data), _extra_files=extra)
    x = verify.make_input((1, 3, 300, 300), "random", 2)
    with torch.no_grad():
        rows = loaded(torch.from_numpy(x))[0].numpy()
    got = ssd.detections(extra["sfport:DetectionOutput:detection_out"], rows)
    np.testing.assert_array_equal(got, net.forward(data=x)["detection_out"].numpy())


# ------------------------------------------------------------------------------------------------------ PriorBox

def _prior_layer(text):
    layer = text_format.Parse(text, caffe_pb2.LayerParameter(name="pb", type="PriorBox"))
    layer.bottom.extend(["f", "data"])
    layer.top.append("pb")
    return layer


def _priors(text, fshape, ishape):
    layer = _prior_layer(text)
    c = converters.get("PriorBox")
    out = c.build(layer, [fshape, ishape])(torch.zeros(fshape), torch.zeros(ishape)).numpy()
    assert out.shape == c.top_shapes(layer, [fshape, ishape])[0]
    return out


def test_prior_boxes_hand_built():
    """min_size 30, max_size 60, aspect_ratio 2, 2.0000001 (a duplicate within 1e-6) and 0.5 (already there as
    flip of 2) on a 2 x 3 map of a 60 x 90 image (step 30, offset 0.5): per position the min box, the sqrt(30 x 60)
    box, then ratios 2 and 1/2 - four priors, as the fork orders them."""
    out = _priors("prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 2.0000001 "
                  "aspect_ratio: 0.5 flip: true variance: 0.1 }", (1, 8, 2, 3), (1, 3, 60, 90))
    assert out.shape == (1, 2, 2 * 3 * 4 * 4)
    want = []
    for h in range(2):
        for w in range(3):
            cx, cy = (w + 0.5) * 30.0, (h + 0.5) * 30.0
            s = math.sqrt(30 * 60)
            for bw, bh in ((30, 30), (s, s), (30 * math.sqrt(2), 30 / math.sqrt(2)),
                           (30 * math.sqrt(0.5), 30 / math.sqrt(0.5))):
                want += [(cx - bw / 2) / 90, (cy - bh / 2) / 60, (cx + bw / 2) / 90, (cy + bh / 2) / 60]
    np.testing.assert_allclose(out[0, 0], want, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(out[0, 1], np.float32(0.1))


def test_prior_boxes_clip_four_variances_img_size_step_and_offset():
    """Boxes past the image clipped to [0, 1]; img_size and step override the bottoms; offset 0; the four
    variances repeat per prior; min_size 7.9 is truncated to 7 as Forward_cpu's int min_size_ does."""
    out = _priors("prior_box_param { min_size: 7.9 clip: true img_size: 16 step: 4 offset: 0 "
                  "variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4 }", (1, 1, 2, 2), (1, 3, 99, 77))
    want = []
    for h in range(2):
        for w in range(2):
            cx, cy = w * 4.0, h * 4.0
            want += [max(0, (cx - 3.5) / 16), max(0, (cy - 3.5) / 16), min(1, (cx + 3.5) / 16),
                     min(1, (cy + 3.5) / 16)]
    np.testing.assert_allclose(out[0, 0], want, rtol=0, atol=1e-7)
    assert out[0, 0].min() == 0.0                                  # the first box started left of the image
    np.testing.assert_allclose(out[0, 1], np.tile([0.1, 0.2, 0.3, 0.4], 4).astype(np.float32))


@pytest.mark.parametrize("text", [
    "prior_box_param { min_size: 20 aspect_ratio: 3 flip: true clip: false variance: 0.1 }",
    "prior_box_param { min_size: 10 min_size: 25 max_size: 20 max_size: 50 aspect_ratio: 2 aspect_ratio: 3 "
    "flip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }",
    "prior_box_param { min_size: 16 step: 8 offset: 0.25 clip: true }",
])
def test_prior_boxes_match_opencv(text, tmp_path):
    import cv2
    (tmp_path / "pb.prototxt").write_text(
        'name: "pb"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 64 dim: 48 }\n'
        'layer { name: "f" type: "Pooling" bottom: "data" top: "f" pooling_param { pool: MAX kernel_size: 8 '
        'stride: 8 } }\n'
        f'layer {{ name: "pb" type: "PriorBox" bottom: "f" bottom: "data" top: "pb" {text} }}\n')
    from sfport.runtime.net import Net as _Net
    # the reference reads the definition as verify writes it for OpenCV (the fork's defaults spelled out)
    definition = verify.reference_definition(_Net(str(tmp_path / "pb.prototxt")))
    caffe_files.write_prototxt(tmp_path / "ref.prototxt", definition)
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "ref.prototxt"))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 48)).astype(np.float32)
    net.setInput(x)
    ref = net.forward("pb")
    ours = _priors(text, (1, 3, 8, 6), (1, 3, 64, 48))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-6


@pytest.mark.parametrize("text,said", [
    ("prior_box_param { aspect_ratio: 2 }", "must provide min_size"),
    ("prior_box_param { min_size: 30 max_size: 20 }", "max_size 20 must be greater than min_size 30"),
    ("prior_box_param { min_size: 30 variance: 0.1 variance: 0.2 }", "give 4 variances or 1"),
    ("prior_box_param { min_size: 30 img_size: 10 img_h: 10 img_w: 10 }", "not both"),
    ("prior_box_param { min_size: 30 step: 0 }", "step should be larger than 0"),
])
def test_prior_box_bad_parameters_name_the_layer(text, said):
    with pytest.raises(CaffeFileError, match=f"layer 'pb' \\(PriorBox\\): .*{said}"):
        converters.get("PriorBox").top_shapes(_prior_layer(text), [(1, 1, 2, 2), (1, 3, 8, 8)])


# ------------------------------------------------------------------------------------------------ DetectionOutput

def _det(text, loc, conf, prior):
    layer = text_format.Parse(text, caffe_pb2.LayerParameter(name="det", type="DetectionOutput"))
    layer.bottom.extend(["loc", "conf", "prior"])
    layer.top.append("det")
    loc, conf, prior = (torch.tensor(np.asarray(a, np.float32)) for a in (loc, conf, prior))
    c = converters.get("DetectionOutput")
    module = c.build(layer, [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape)])
    return module(loc, conf, prior).numpy()


def _prior_blob(boxes, variance=(0.1, 0.1, 0.2, 0.2)):
    boxes = np.asarray(boxes, np.float32)
    return np.stack([boxes.ravel(), np.tile(np.asarray(variance, np.float32), len(boxes))])[None]


CORNER = "code_type: CORNER variance_encoded_in_target: true"


def test_detection_rows_ties_threshold_overlap_and_order():
    """Four priors decoded as themselves (CORNER, zero offsets). Class 1 scores 0.9, 0.9 (a tie: stable order
    keeps prior 0 first), 0.5, 0.2 (not above the 0.2 threshold); priors 0 and 1 overlap with IoU exactly 1/3,
    priors 0 and 2 with 1/2 = nms_threshold (kept: overlap <= threshold). Class 2 has no score above the threshold
    (no rows); class 0 is the background. Rows come by label, then score."""
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.0, 0.0, 0.5, 0.25], [0.6, 0.6, 1.2, 1.3]]
    conf = [[0.9, 0.9, 0.1], [0.1, 0.9, 0.0], [0.0, 0.5, 0.1], [0.9, 0.2, 0.2]]
    out = _det(f"detection_output_param {{ num_classes: 3 {CORNER} confidence_threshold: 0.2 "
               f"nms_param {{ nms_threshold: 0.5 }} }}", np.zeros((1, 16)), np.asarray(conf).reshape(1, 12),
               _prior_blob(boxes))
    want = [[0, 1, 0.9, *boxes[0]], [0, 1, 0.9, *boxes[1]], [0, 1, 0.5, *boxes[2]]]
    np.testing.assert_array_equal(out[0, 0], np.asarray(want, np.float32))
    # a threshold just below 1/2 suppresses prior 2, and one below 1/3 also prior 1
    out = _det(f"detection_output_param {{ num_classes: 3 {CORNER} confidence_threshold: 0.2 "
               f"nms_param {{ nms_threshold: 0.3 }} }}", np.zeros((1, 16)), np.asarray(conf).reshape(1, 12),
               _prior_blob(boxes))
    np.testing.assert_array_equal(out[0, 0], np.asarray(want[:1], np.float32))


def test_detection_boxes_outside_the_image_stay_unclipped_and_center_size_decodes():
    """CENTER_SIZE with variances: prior [0.5, 0.5, 0.9, 0.9] (center 0.7, size 0.4), offsets (1, 0, ln 2, 0) and
    variances (0.5, 0.5, 1, 1): center x 0.7 + 0.5 x 1 x 0.4 = 0.9, width 0.8 -> [0.5, 0.5, 1.3, 0.9]: past the
    image, kept as it is (DetectionOutput decodes with clip_bbox false)."""
    loc = [[1.0, 0.0, math.log(2.0), 0.0]]
    out = _det("detection_output_param { num_classes: 2 code_type: CENTER_SIZE }", loc, [[0.3, 0.7]],
               _prior_blob([[0.5, 0.5, 0.9, 0.9]], (0.5, 0.5, 1.0, 1.0)))
    np.testing.assert_allclose(out[0, 0], [[0, 1, 0.7, 0.5, 0.5, 1.3, 0.9]], rtol=0, atol=1e-6)


def test_no_detection_gives_one_row_per_image():
    """No score above the threshold anywhere: the fork writes [i, -1, -1, -1, -1, -1, -1] for every image."""
    out = _det(f"detection_output_param {{ num_classes: 2 {CORNER} confidence_threshold: 0.95 }}",
               np.zeros((3, 4)), np.full((3, 2), 0.5), _prior_blob([[0, 0, 1, 1]]))
    np.testing.assert_array_equal(out[0, 0], [[i, -1, -1, -1, -1, -1, -1] for i in range(3)])
    # one image with a detection: the others give no rows at all
    out = _det(f"detection_output_param {{ num_classes: 2 {CORNER} confidence_threshold: 0.5 }}",
               np.zeros((3, 4)), [[0.5, 0.5], [0.2, 0.8], [0.6, 0.4]], _prior_blob([[0, 0, 1, 1]]))
    np.testing.assert_array_equal(out[0, 0], np.float32([[1, 1, 0.8, 0, 0, 1, 1]]))


def test_keep_top_k_across_classes_top_k_and_eta():
    """keep_top_k 2 of three detections (classes 1, 1, 2) keeps the two best across classes, rows then by label;
    nms top_k 1 keeps one candidate per class before the NMS; eta 0.5 lowers the 0.9 threshold to 0.45 after the
    first kept box (ApplyNMSFast: while the threshold is above 0.5)."""
    boxes = [[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.0, 0.5, 0.2, 0.7]]
    conf = [[0, 0.9, 0.1], [0, 0.3, 0.2], [0, 0.1, 0.8]]
    base = f"num_classes: 3 {CORNER} confidence_threshold: 0.15"
    out = _det(f"detection_output_param {{ {base} keep_top_k: 2 }}", np.zeros((1, 12)),
               np.asarray(conf, np.float32).reshape(1, 9), _prior_blob(boxes))
    np.testing.assert_array_equal(out[0, 0, :, :3], np.float32([[0, 1, 0.9], [0, 2, 0.8]]))
    out = _det(f"detection_output_param {{ {base} nms_param {{ nms_threshold: 0.9 top_k: 1 }} }}",
               np.zeros((1, 12)), np.asarray(conf, np.float32).reshape(1, 9), _prior_blob(boxes))
    np.testing.assert_array_equal(out[0, 0, :, :3], np.float32([[0, 1, 0.9], [0, 2, 0.8]]))
    # eta: B overlaps A by 0.4 (IoU), C overlaps A by 0.6, B and C by 0.19. With eta 1 all three stay (<= 0.9);
    # with eta 0.5 the threshold drops to 0.45 once A is kept: B (0.4) stays, C (0.6) goes
    b3 = [[0.0, 0.0, 1.0, 1.0], [3 / 7, 0.0, 1 + 3 / 7, 1.0], [-0.25, 0.0, 0.75, 1.0]]
    c3 = np.float32([[0, 0.9], [0, 0.8], [0, 0.7]]).reshape(1, 6)
    txt = "num_classes: 2 " + CORNER + " nms_param {{ nms_threshold: 0.9 eta: {} }}"
    full = _det(f"detection_output_param {{ {txt.format(1.0)} }}", np.zeros((1, 12)), c3, _prior_blob(b3))
    adapt = _det(f"detection_output_param {{ {txt.format(0.5)} }}", np.zeros((1, 12)), c3, _prior_blob(b3))
    assert full.shape[2] == 3 and adapt.shape[2] == 2
    np.testing.assert_array_equal(adapt[0, 0, :, 2], np.float32([0.9, 0.8]))


def test_share_location_false_uses_each_class_boxes():
    """Two location classes per prior: class 1's box comes from the second set of offsets (CORNER, variance in
    target: prior + offset)."""
    loc = [[0, 0, 0, 0, 0.1, 0.1, 0.1, 0.1]]
    out = _det(f"detection_output_param {{ num_classes: 2 share_location: false background_label_id: 0 "
               f"{CORNER} }}", loc, [[0.4, 0.6]], _prior_blob([[0.2, 0.2, 0.4, 0.4]]))
    np.testing.assert_allclose(out[0, 0], [[0, 1, 0.6, 0.3, 0.3, 0.5, 0.5]], rtol=0, atol=1e-7)


@pytest.mark.parametrize("text,shapes,said", [
    ("detection_output_param { share_location: true }", [(1, 4), (1, 2), (1, 2, 4)], "num_classes"),
    ("detection_output_param { num_classes: 2 }", [(1, 8), (1, 2), (1, 2, 4)], "location predictions"),
    ("detection_output_param { num_classes: 3 }", [(1, 4), (1, 2), (1, 2, 4)], "confidence predictions"),
    ("detection_output_param { num_classes: 2 nms_param { eta: 1.5 } }", [(1, 4), (1, 2), (1, 2, 4)], "eta"),
])
def test_detection_output_bad_parameters_name_the_layer(text, shapes, said):
    layer = text_format.Parse(text, caffe_pb2.LayerParameter(name="det", type="DetectionOutput"))
    layer.bottom.extend(["loc", "conf", "prior"])
    with pytest.raises(CaffeFileError, match=f"layer 'det' \\(DetectionOutput\\): .*{said}"):
        converters.get("DetectionOutput").top_shapes(layer, shapes)


def test_a_degenerate_prior_is_one_line():
    with pytest.raises(CaffeFileError, match="prior 0 has a width or height <= 0"):
        _det("detection_output_param { num_classes: 2 code_type: CENTER_SIZE }", [[0, 0, 0, 0]], [[0.5, 0.5]],
             _prior_blob([[0.5, 0.5, 0.5, 0.9]]))


# ----------------------------------------------------------------------------------------- std::sort's tie order

_SORT_CPP = r"""
#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>
bool Desc(const std::pair<float, std::pair<int, int> >& a, const std::pair<float, std::pair<int, int> >& b) {
  return a.first > b.first;
}
int main() {
  int n;
  while (std::scanf("%d", &n) == 1) {
    std::vector<std::pair<float, std::pair<int, int> > > v;
    for (int i = 0; i < n; ++i) { float s; std::scanf("%f", &s); v.push_back(std::make_pair(s, std::make_pair(0, i))); }
    std::sort(v.begin(), v.end(), Desc);
    for (int i = 0; i < n; ++i) std::printf("%d ", v[i].second.second);
    std::printf("\n");
  }
}
"""


def test_keep_top_k_sort_is_libstdcxx_std_sort(tmp_path):
    """libstdcxx_sort against std::sort itself (compiled here with g++, libstdc++ as BVLC Caffe is built on
    Linux) on lists with many ties: the same permutation."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ on this machine to build the std::sort reference")
    (tmp_path / "s.cpp").write_text(_SORT_CPP)
    subprocess.run([gxx, "-O2", "-o", str(tmp_path / "s"), str(tmp_path / "s.cpp")], check=True)
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, k, size=n).astype(np.float32) / 4 for n in (1, 2, 15, 16, 17, 40, 200, 2000)
             for k in (1, 3, 50)]
    text = "".join(f"{len(c)} " + " ".join(f"{v:.2f}" for v in c) + "\n" for c in cases)
    ref = subprocess.run([str(tmp_path / "s")], input=text, capture_output=True, text=True, check=True).stdout
    for c, line in zip(cases, ref.splitlines()):
        pairs = [(float(v), 0, i) for i, v in enumerate(c)]
        ssd.libstdcxx_sort(pairs, lambda a, b: a[0] > b[0])
        assert [p[2] for p in pairs] == [int(t) for t in line.split()], len(c)
