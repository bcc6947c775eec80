"""The SSD fork's AnnotatedData layer and `sfport create-annoset` (sfport.data.annoset, sfport.data.annotated,
sfport.data.boxtransforms): a tiny VOC-style set written through the command line and read back, the deterministic
transforms against formulas written here from the fork's C++ (data_transformer.cpp, im_transforms.cpp,
bbox_util.cpp, sampler.cpp), and the feeder of the MobileNet-SSD train / test prototxts."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

from conftest import FIXTURES
from sfport.cli import cli
from sfport.data import boxtransforms as bt
from sfport.data.annotated import AnnotatedTransform, Sample, collate_annotated
from sfport.data.feed import Feeder
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.netdef import datalayers
from sfport.protos import caffe_pb2
from sfport.report.progress import CaffeLog
from sfport.solver.config import Options

lmdb = pytest.importorskip("lmdb")
cv2 = pytest.importorskip("cv2")

F32 = np.float32
NAMES = ["cat", "dog", "person"]
SSD = FIXTURES / "ssd"
# (name, difficult, xmin, ymin, xmax, ymax) per image; image i is (40 + 8 i) x 64
OBJECTS = [
    [("dog", 0, 3, 4, 30, 33), ("cat", 1, 20, 10, 60, 39), ("dog", 1, 40, 2, 63, 20)],
    [("person", 0, 0, 0, 64, 48), ("cat", 0, 10, 12, 25, 30)],
    [("cat", 0, 5, 5, 15, 15), ("cat", 0, 30, 30, 60, 50), ("person", 1, 1, 2, 3, 4), ("dog", 0, 7, 8, 50, 54)],
]


def _voc(folder, ext="jpg", objects=OBJECTS, sizes=True):
    """Images, VOC XML annotations, the list and a label map in ``folder``."""
    rng = np.random.default_rng(7)
    lines = []
    for i, objs in enumerate(objects):
        h, w = 40 + 8 * i, 64
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"im{i}.{ext}"), img)
        xml = "".join(f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
                      f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
                      for n, d, a, b, c, e in objs)
        size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if sizes else ""
        (folder / f"im{i}.xml").write_text(f"<annotation><filename>im{i}.{ext}</filename>{size}{xml}</annotation>")
        lines.append(f"im{i}.{ext} im{i}.xml")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    (folder / "labelmap.prototxt").write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                                              + "".join(f'item {{ name: "{n}" label: {k + 1} }}\n'
                                                        for k, n in enumerate(NAMES)))
    return folder


def _create(folder, db, *flags):
    return CliRunner().invoke(cli, ["create-annoset", f"{folder}/", str(folder / "list.txt"), str(db),
                                    "--anno-type", "detection", "--label-map-file",
                                    str(folder / "labelmap.prototxt"), *flags])


def _records(db):
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        out = []
        for k, v in txn.cursor():
            ad = caffe_pb2.AnnotatedDatum()
            ad.ParseFromString(v)
            out.append((bytes(k).decode(), ad))
    env.close()
    return out


def _expected_groups(objs, h, w):
    """convert_annoset's groups, by the fork's rule: a group per label in order of first appearance, instance ids
    0, 1, ... within it; boxes float(x) / width in float32."""
    groups: dict = {}
    for n, d, a, b, c, e in objs:
        rows = groups.setdefault(NAMES.index(n) + 1, [])
        rows.append((len(rows), [F32(a) / F32(w), F32(b) / F32(h), F32(c) / F32(w), F32(e) / F32(h)], bool(d)))
    return groups


@pytest.fixture
def voc_db(tmp_path):
    folder = _voc(tmp_path)
    r = _create(folder, tmp_path / "db", "--encode-type", "jpg")
    assert r.exit_code == 0, r.output
    return folder, tmp_path / "db"


# --- create-annoset -------------------------------------------------------------------------------------------

def test_create_annoset_writes_the_forks_records(voc_db):
    folder, db = voc_db
    recs = _records(db)
    assert [k for k, _ in recs] == [f"{i:08d}_im{i}.jpg" for i in range(3)]
    for i, (_, ad) in enumerate(recs):
        h, w = 40 + 8 * i, 64
        d = ad.datum
        assert ad.type == caffe_pb2.AnnotatedDatum.BBOX and d.encoded and d.label == -1
        assert (d.channels, d.height, d.width) == (3, h, w)
        assert d.data == (folder / f"im{i}.jpg").read_bytes()   # jpg as jpg: the file's own bytes
        want = _expected_groups(OBJECTS[i], h, w)
        assert [g.group_label for g in ad.annotation_group] == list(want)
        for g in ad.annotation_group:
            got = [(a.instance_id, [a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax], a.bbox.difficult)
                   for a in g.annotation]
            assert got == [(iid, [float(v) for v in box], diff) for iid, box, diff in want[g.group_label]]


def test_resize_keeps_boxes_normalized_by_the_annotation_size(tmp_path):
    folder = _voc(tmp_path)
    r = _create(folder, tmp_path / "db", "--encode-type", "png", "--resize-height", "30", "--resize-width", "50")
    assert r.exit_code == 0, r.output
    for i, (_, ad) in enumerate(_records(tmp_path / "db")):
        img = cv2.imdecode(np.frombuffer(ad.datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.shape == (30, 50, 3) and (ad.datum.height, ad.datum.width) == (30, 50)
        box = ad.annotation_group[0].annotation[0].bbox
        n, _, a, b, c, e = OBJECTS[i][0]
        assert box.xmin == F32(a) / F32(64) and box.ymax == F32(e) / F32(40 + 8 * i)


def test_shuffle_is_a_seeded_permutation(tmp_path):
    folder = _voc(tmp_path)
    keys = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert _create(folder, tmp_path / name, "--shuffle", "--seed", seed).exit_code == 0
        keys.append([k for k, _ in _records(tmp_path / name)])
    assert keys[0] == keys[1]
    for ks in keys:
        assert [k[:8] for k in ks] == [f"{i:08d}" for i in range(3)]
        assert sorted(k[9:] for k in ks) == [f"im{i}.jpg" for i in range(3)]


def test_json_and_txt_annotations(tmp_path):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))
    (tmp_path / "a.json").write_text(json.dumps({"image": {"height": 20, "width": 40}, "annotation": [
        {"category_id": 18, "iscrowd": 1, "bbox": [2.5, 3, 10, 4]}, {"category_id": 1, "bbox": [0, 0, 40, 20]}]}))
    (tmp_path / "a.txt").write_text("3 1 2 11 12\n3 4 4 8 9\n")
    (tmp_path / "lm.prototxt").write_text('item { name: "1" label: 1 } item { name: "18" label: 7 }')
    (tmp_path / "list.txt").write_text("a.png a.json\n")
    r = CliRunner().invoke(cli, ["create-annoset", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "j"),
                                 "--anno-type", "detection", "--label-type", "json",
                                 "--label-map-file", str(tmp_path / "lm.prototxt")])
    assert r.exit_code == 0, r.output
    (ad,) = [a for _, a in _records(tmp_path / "j")]
    g7, g1 = ad.annotation_group
    b = g7.annotation[0].bbox   # [x, y, w, h] -> xmin, ymin, xmin + w, ymin + h; iscrowd -> difficult
    assert (g7.group_label, g1.group_label) == (7, 1) and b.difficult and not g1.annotation[0].bbox.difficult
    assert [b.xmin, b.ymin, b.xmax, b.ymax] == [F32(2.5) / 40, F32(3) / 20, F32(12.5) / 40, F32(7) / 20]
    (tmp_path / "list.txt").write_text("a.png a.txt\n")
    r = CliRunner().invoke(cli, ["create-annoset", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "t"),
                                 "--anno-type", "detection", "--label-type", "txt"])
    assert r.exit_code == 0, r.output
    (ad,) = [a for _, a in _records(tmp_path / "t")]
    (g,) = ad.annotation_group
    assert g.group_label == 3 and [a.instance_id for a in g.annotation] == [0, 1]
    assert g.annotation[1].bbox.xmax == F32(8) / F32(40) and g.annotation[1].bbox.ymax == F32(9) / F32(20)


@pytest.mark.parametrize("breakage, named, problem", [
    ("missing_image", "list.txt", "is missing"),
    ("malformed_xml", "im1.xml", "malformed XML"),
    ("unknown_name", "im2.xml", "'zebra' is not in the label map"),
    ("float_coordinate", "im0.xml", "not an integer"),
])
def test_bad_input_is_one_line_and_leaves_no_database(tmp_path, breakage, named, problem):
    folder = _voc(tmp_path)
    if breakage == "missing_image":
        (folder / "im1.jpg").unlink()
    elif breakage == "malformed_xml":
        (folder / "im1.xml").write_text("<annotation><object><name>cat</name></annotation>")
    elif breakage == "unknown_name":
        (folder / "im2.xml").write_text((folder / "im2.xml").read_text().replace(">dog<", ">zebra<"))
    else:
        (folder / "im0.xml").write_text((folder / "im0.xml").read_text().replace("<xmin>3<", "<xmin>3.5<"))
    r = _create(folder, tmp_path / "db")
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.startswith("sfport: error:")]
    assert len(lines) == 1 and named in lines[0] and problem in lines[0], r.output
    assert not (tmp_path / "db").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".db.")]   # the temporary name is gone too


def test_check_label_refuses_a_name_given_twice(tmp_path):
    folder = _voc(tmp_path)
    with open(folder / "labelmap.prototxt", "a") as f:
        f.write('item { name: "cat" label: 9 }\n')
    r = _create(folder, tmp_path / "db", "--check-label")
    assert r.exit_code == 2 and "'cat' is given more than once" in r.output
    assert _create(folder, tmp_path / "db2").exit_code == 0   # without it the last one wins (MapNameToLabel)
    groups = [g.group_label for _, ad in _records(tmp_path / "db2") for g in ad.annotation_group]
    assert 9 in groups and 1 not in groups


# --- the deterministic transforms against the fork's formulas -------------------------------------------------

def _resize_param(mode, h=300, w=300):
    p = caffe_pb2.ResizeParameter(height=h, width=w)
    p.resize_mode = mode
    return p


BOXES = np.array([[0.1, 0.2, 0.5, 0.9], [-0.1, 0.3, 0.4, 1.2], [0.6, 0.05, 0.95, 0.3]], F32)


def test_warp_resize_of_boxes_clips_them():
    out = bt.update_bbox_by_resize_policy(_resize_param(caffe_pb2.ResizeParameter.WARP), 500, 375, BOXES)
    np.testing.assert_allclose(out, np.clip(BOXES, 0, 1), atol=1e-6)


@pytest.mark.parametrize("old_w, old_h", [(500, 250), (200, 400)])
def test_fit_large_size_and_pad_moves_boxes_into_the_padded_frame(old_w, old_h):
    nh, nw = 300, 400
    out = bt.update_bbox_by_resize_policy(_resize_param(caffe_pb2.ResizeParameter.FIT_LARGE_SIZE_AND_PAD, nh, nw),
                                          old_w, old_h, BOXES)
    b = np.clip(BOXES.astype(np.float64), 0, None)
    scale = min(nw / old_w, nh / old_h)             # the image scaled to fit, centred, the rest padding
    pad_x, pad_y = (nw - old_w * scale) / 2, (nh - old_h * scale) / 2
    want = np.stack([(pad_x + b[:, 0] * old_w * scale) / nw, (pad_y + b[:, 1] * old_h * scale) / nh,
                     (pad_x + np.minimum(b[:, 2] * old_w * scale, nw)) / nw,
                     (pad_y + np.minimum(b[:, 3] * old_h * scale, nh)) / nh], axis=1)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_mirror_flips_boxes_and_pixels():
    layer = _layer('transform_param { mirror: true }')
    t = AnnotatedTransform(layer, train=True)
    img = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    annos = bt.Annos(np.array([1, 2], np.int32), np.array([0, 0], np.int32), BOXES[[0, 2]].copy(),
                     np.array([False, True]))
    seen = set()
    for seed in range(8):
        x, out = t.final(Sample(img, True, 10, 12, annos), np.random.default_rng(seed))
        flipped = bool(np.array_equal(x, img.astype(F32).transpose(2, 0, 1)[:, :, ::-1]))
        assert flipped or np.array_equal(x, img.astype(F32).transpose(2, 0, 1))
        want = annos.boxes.copy()
        if flipped:
            want[:, 0], want[:, 2] = 1 - annos.boxes[:, 2], 1 - annos.boxes[:, 0]
        np.testing.assert_array_equal(out.boxes, want)
        assert list(out.difficult) == [False, True]
        seen.add(flipped)
    assert seen == {True, False}


def test_crop_to_a_sampled_box_projects_and_emits_by_centre():
    emit = caffe_pb2.EmitConstraint(emit_type=caffe_pb2.EmitConstraint.CENTER)
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.25, 0.25, 0.9, 0.6], [0.0, 0.5, 0.3, 1.0], [0.7, 0.7, 0.8, 0.8]], F32)
    annos = bt.Annos(np.array([1, 1, 2, 3], np.int32), np.array([0, 1, 0, 0], np.int32), boxes,
                     np.array([0, 1, 0, 0], bool))
    crop = np.array([0.2, 0.2, 0.75, 0.8], F32)
    out = bt.transform_annotation(annos, 100, 100, crop, False, emit=emit)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = np.all((centres >= crop[:2]) & (centres <= crop[2:]), axis=1)
    wh = crop[2:] - crop[:2]
    want = np.clip((boxes[inside].reshape(-1, 2, 2) - crop[:2]) / wh, 0, 1).reshape(-1, 4)
    assert list(out.group) == list(annos.group[inside]) and list(out.instance) == list(annos.instance[inside])
    np.testing.assert_allclose(out.boxes, want, atol=1e-6)
    assert list(out.difficult) == list(annos.difficult[inside])
    # CropImage's pixels: the clipped box scaled and truncated to whole pixels
    x, y, w, h = bt.crop_pixels(np.array([-0.1, 0.25, 0.55, 1.3], F32), 37, 53)
    assert (x, y, w, h) == (0, int(0.25 * 37), int(0.55 * 53), int(37 - 0.25 * 37))


def test_expand_places_the_image_and_its_boxes():
    img = np.random.default_rng(3).integers(1, 256, (20, 30, 3), dtype=np.uint8)
    fill = [104, 117, 123]
    canvas, ebox = bt.expand_image(img, 2.5, fill, np.random.default_rng(5))
    assert canvas.shape == (50, 75, 3)   # int(20 * 2.5) x int(30 * 2.5)
    ys, xs = [(canvas[:, :, c] != fill[c]) for c in range(3)][0].nonzero()
    y, x = ys.min(), xs.min()
    np.testing.assert_array_equal(canvas[y:y + 20, x:x + 30], img)
    rest = canvas.copy()
    rest[y:y + 20, x:x + 30] = fill
    assert np.all(rest == np.array(fill, np.uint8))
    np.testing.assert_allclose(ebox, [-x / 30, -y / 20, (75 - x) / 30, (50 - y) / 20], rtol=1e-6)
    annos = bt.Annos(np.array([1], np.int32), np.array([0], np.int32), np.array([[0.1, 0.2, 0.6, 0.9]], F32),
                     np.array([False]))
    out = bt.transform_annotation(annos, 20, 30, ebox, False)
    want = [(0.1 * 30 + x) / 75, (0.2 * 20 + y) / 50, (0.6 * 30 + x) / 75, (0.9 * 20 + y) / 50]
    np.testing.assert_allclose(out.boxes[0], want, atol=1e-6)


def test_raw_records_expand_with_spaces():
    """ExpandImage(const Datum&) of a raw datum fills its buffer with ' ' (32), not the mean; an encoded one with
    the mean values rounded as cv::Mat = Scalar rounds them (104.5 -> 104, 127.5 -> 128)."""
    layer = _layer('transform_param { mean_value: 104.5 mean_value: 117 mean_value: 127.5 '
                   'expand_param { prob: 1 max_expand_ratio: 3 } }')
    t = AnnotatedTransform(layer, train=True)
    img = np.full((10, 14, 3), 200, np.uint8)
    annos = bt.Annos(np.array([1], np.int32), np.array([0], np.int32), np.array([[0, 0, 1, 1]], F32),
                     np.array([False]))
    out = t.expand(Sample(img, False, 10, 14, annos), np.random.default_rng(2))
    canvas = out.img
    assert canvas.shape[0] > 10 and (out.height, out.width) == canvas.shape[:2]
    assert set(np.unique(canvas).tolist()) == {32, 200}
    (y0, x0), (y1, x1) = np.argwhere(canvas[:, :, 0] == 200).min(0), np.argwhere(canvas[:, :, 0] == 200).max(0)
    np.testing.assert_allclose(out.annos.boxes[0], [x0 / canvas.shape[1], y0 / canvas.shape[0],
                                                    (x1 + 1) / canvas.shape[1], (y1 + 1) / canvas.shape[0]],
                               atol=1e-6)
    # encoded: the mean fill (the JPEG round trip that follows it left out here)
    t.settle = lambda s, im, a: Sample(im, s.encoded, im.shape[0], im.shape[1], a)
    canvas = t.expand(Sample(img, True, 10, 14, annos), np.random.default_rng(2)).img
    assert {tuple(v) for v in canvas.reshape(-1, 3).tolist()} == {(104, 117, 128), (200, 200, 200)}


def test_distortion_arithmetic():
    """AdjustBrightness / AdjustContrast are cv::Mat::convertTo(-1, alpha, beta): saturate(round(x * alpha + beta))
    in float; OpenCV's convertScaleAbs does the same arithmetic where the result is not negative."""
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    for delta in (F32(13.7), F32(20.5), F32(-20.7)):
        want = np.clip(np.rint(img.astype(F32) + delta), 0, 255)
        np.testing.assert_array_equal(bt.adjust_brightness(img, delta), want)
        if delta > 0:
            np.testing.assert_array_equal(bt.adjust_brightness(img, delta),
                                          cv2.convertScaleAbs(img, alpha=1, beta=float(delta)))
    for alpha in (F32(1.37), F32(0.61), F32(1.5)):
        np.testing.assert_array_equal(bt.adjust_contrast(img, alpha), cv2.convertScaleAbs(img, alpha=float(alpha)))
        np.testing.assert_array_equal(bt.adjust_contrast(img, alpha),
                                      np.clip(np.rint(img.astype(F32) * alpha), 0, 255))
    assert bt.adjust_brightness(img, 0.0) is img and bt.adjust_contrast(img, 1.0005) is img
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(F32)
    hsv[:, :, 0] = np.clip(np.rint(hsv[:, :, 0] + F32(9.2)), 0, 255)
    np.testing.assert_array_equal(bt.adjust_hue(img, F32(9.2)), cv2.cvtColor(hsv.astype(np.uint8),
                                                                             cv2.COLOR_HSV2BGR))


def test_sampled_boxes_have_their_scale_and_aspect_and_meet_the_constraint():
    s = caffe_pb2.Sampler(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0)
    rng = np.random.default_rng(11)
    for _ in range(50):
        b = bt.sample_bbox(s, rng)
        w, h = b[2] - b[0], b[3] - b[1]
        assert 0 <= b[0] and 0 <= b[1] and b[2] <= 1 + 1e-6 and b[3] <= 1 + 1e-6
        assert 0.3 - 1e-5 <= np.sqrt(w * h) <= 1 + 1e-5 and 0.5 - 1e-4 <= w / h <= 2 + 1e-4
    objects = np.array([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], F32)
    c = caffe_pb2.SampleConstraint(min_jaccard_overlap=0.5)
    for box in (np.array([0.1, 0.1, 0.45, 0.5], F32), np.array([0.0, 0.0, 0.2, 0.2], F32)):
        inter = [max(0.0, min(box[2], o[2]) - max(box[0], o[0])) * max(0.0, min(box[3], o[3]) - max(box[1], o[1]))
                 for o in objects]
        iou = [i / ((box[2] - box[0]) * (box[3] - box[1]) + (o[2] - o[0]) * (o[3] - o[1]) - i)
               for i, o in zip(inter, objects)]
        assert bt.satisfy_sample_constraint(box, objects, c) == (max(iou) >= 0.5)
    assert bt.satisfy_sample_constraint(objects[0], objects, caffe_pb2.SampleConstraint())   # none set


def test_collate_lays_out_the_label_rows_and_the_dummy_row():
    x = torch.zeros(3, 4, 4)
    a = np.array([[1, 0, .1, .2, .3, .4, 0], [2, 0, .5, .5, .6, .6, 1]], F32)
    b = np.zeros((0, 7), F32)
    xs, label, pos, bad, err = collate_annotated([(x, a, 0, None), (x, b, 1, None), (x, a[:1], 2, None)])
    assert err is None and xs.shape == (3, 3, 4, 4) and label.shape == (1, 1, 3, 8)
    np.testing.assert_array_equal(label[0, 0].numpy(), np.concatenate([[[0], [0], [2]], np.concatenate([a, a[:1]])],
                                                                      axis=1))
    _, label, _, _, _ = collate_annotated([(x, b, 0, None), (x, b, 1, None)])
    np.testing.assert_array_equal(label.numpy(), -np.ones((1, 1, 1, 8), F32))


def _layer(text):
    lp = caffe_pb2.LayerParameter(name="data", type="AnnotatedData", top=["data", "label"])
    text_format.Merge(text, lp)
    return lp


def test_the_data_layer_states_its_shapes():
    lp = _layer('transform_param { resize_param { height: 300 width: 300 resize_mode: WARP } mean_value: 127.5 '
                'mean_value: 127.5 mean_value: 127.5 } data_param { batch_size: 24 }')
    assert datalayers.data_tops(lp, {}) == [(24, 3, 300, 300), (1, 1, 1, 8)]
    assert datalayers.data_set_tops(lp, (3, 375, 500), boxes=5) == [(24, 3, 300, 300), (1, 1, 5, 8)]
    assert datalayers.data_set_tops(lp, (3, 375, 500), boxes=0)[1] == (1, 1, 1, 8)
    lp.transform_param.resize_param.resize_mode = caffe_pb2.ResizeParameter.FIT_SMALL_SIZE
    # InferNewSize: the smaller side fitted, the other int(aspect * side)
    assert datalayers.data_set_tops(lp, (3, 375, 500), boxes=1)[0] == (24, 3, 300, int(F32(500) / F32(375) * 300))


# --- the feeder of the MobileNet-SSD prototxts ----------------------------------------------------------------

def _net(name, source, batch):
    if not (SSD / name).exists():
        pytest.skip(f"{SSD / name} not found")
    net = caffe_files.read_prototxt(SSD / name).net
    (layer,) = [lp for lp in net.layer if datalayers.spec_of(lp) is not None]
    layer.data_param.source = str(source)
    layer.data_param.batch_size = batch
    return net


def _batches(net, phase, seed, n=3, workers=0):
    feeder = Feeder(net, phase, Options(workers=workers), None, seed, 1, 0, 1, CaffeLog(enabled=False))
    feeder.start(0)
    return feeder, [feeder.next() for _ in range(n)]


def test_train_prototxt_batches_are_seeded(voc_db):
    """The same seed gives the same batches (in this process or in DataLoader workers), another seed others."""
    _, db = voc_db
    net = _net("MobileNetSSD_train.prototxt", db, 2)
    feeder, first = _batches(net, caffe_pb2.TRAIN, seed=1)
    assert feeder.inputs["data"] == (2, 3, 300, 300) and feeder.inputs["label"] == (1, 1, 3, 8)
    _, again = _batches(net, caffe_pb2.TRAIN, seed=1, workers=2)
    _, other = _batches(net, caffe_pb2.TRAIN, seed=2)
    for a, b in zip(first, again):
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])
    assert any(not torch.equal(a["data"], b["data"]) or a["label"].shape != b["label"].shape
               or not torch.equal(a["label"], b["label"]) for a, b in zip(first, other))
    for b in first:
        rows = b["label"][0, 0]
        assert b["data"].shape == (2, 3, 300, 300) and rows.shape[1] == 8
        if rows[0, 0] >= 0:
            assert set(rows[:, 0].tolist()) <= {0.0, 1.0} and set(rows[:, 1].tolist()) <= {1.0, 2.0, 3.0}
            assert (rows[:, 3:7] >= 0).all() and (rows[:, 3:7] <= 1).all()
            assert (rows[:, 5] > rows[:, 3]).all() and (rows[:, 6] > rows[:, 4]).all()


def test_test_prototxt_gives_the_stored_boxes_and_warped_pixels(tmp_path):
    folder = _voc(tmp_path, ext="png")
    assert _create(folder, tmp_path / "db", "--encode-type", "png").exit_code == 0
    recs = [ad for _, ad in _records(tmp_path / "db")]   # (lmdb opens an environment once per process)
    net = _net("MobileNetSSD_test.prototxt", tmp_path / "db", 2)
    _, batches = _batches(net, caffe_pb2.TEST, seed=0, n=2)
    positions = [0, 1, 2, 0]
    for b, pair in zip(batches, (positions[:2], positions[2:])):
        want_rows = []
        for item, i in enumerate(pair):
            img = cv2.imread(str(folder / f"im{i}.png"))
            # its empty batch_sampler {} samples the whole image: CropImage re-encodes it as JPEG
            img = cv2.imdecode(cv2.imencode(".jpg", img)[1], cv2.IMREAD_UNCHANGED)
            want = (cv2.resize(img, (300, 300), interpolation=cv2.INTER_LINEAR).astype(F32) - F32(127.5)) \
                * F32(0.007843)
            np.testing.assert_array_equal(b["data"][item].numpy(), want.transpose(2, 0, 1))
            for g in recs[i].annotation_group:   # WARP only clips: the stored boxes, in group order
                for a in g.annotation:
                    bb = a.bbox
                    want_rows.append([item, g.group_label, a.instance_id, bb.xmin, bb.ymin, bb.xmax, bb.ymax,
                                      bb.difficult])
        np.testing.assert_allclose(b["label"][0, 0].numpy(), np.array(want_rows, F32), atol=1e-7)


def test_a_bad_record_names_the_database_and_the_record(tmp_path):
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"00000000_a", b"\xff\xff not a proto")
    env.close()
    net = caffe_pb2.NetParameter()
    net.layer.add().CopyFrom(_layer(f'data_param {{ source: "{tmp_path / "db"}" batch_size: 1 backend: LMDB }}'))
    with pytest.raises(CaffeFileError, match="record '00000000_a': not a caffe.AnnotatedDatum"):
        Feeder(net, caffe_pb2.TRAIN, Options(workers=0), None, 0, 1, 0, 1, CaffeLog(enabled=False))


@pytest.mark.parametrize("text, problem", [
    ("transform_param { expand_param { max_expand_ratio: 1 } }", "max_expand_ratio 1 must be > 1"),
    ("transform_param { resize_param { height: 30 width: 30 resize_mode: FIT_SMALL_SIZE } } data_param { "
     "batch_size: 2 }", "FIT_SMALL_SIZE takes batch_size 1"),
    ("annotated_data_param { batch_sampler { sampler { min_scale: 0 } } }", "batch_sampler 1"),
    ("transform_param { distort_param { contrast_prob: 0.5 contrast_lower: 1.5 contrast_upper: 0.5 } }",
     "contrast_upper >= contrast_lower"),
])
def test_the_forks_setup_checks_are_one_line_naming_the_layer(text, problem):
    with pytest.raises(CaffeFileError, match=f"layer 'data' \\(AnnotatedData\\): .*{problem}"):
        AnnotatedTransform(_layer(text), train=True)
