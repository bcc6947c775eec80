"""The segmentation forks' data layers (sfport.data.segdata, their specifications in sfport.netdef.datalayers):
caffe-segnet's DenseImageData and DeepLab's ImageSegData.

Every image is written here with OpenCV at run time. The expected tops are computed independently with numpy from
the pixels written, following the forks' C++ (dense_image_data_layer.cpp with its Transform(cv::Mat, Blob*,
is_label); image_seg_data_layer.cpp with TransformImgAndSeg): ``(pixel - mean) * scale`` in float32, BGR, crops
and paddings at the offsets the forks use, labels as uint8 values. The random crops and mirrors are found by
trying every offset and flip against the output: exactly one must give the data, and the label must be the label
image at the same one."""
import re

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from sfport.cli import cli
from sfport.data.feed import Feeder
from sfport.data.segdata import SegDataset, atoi
from sfport.errors import CaffeFileError
from sfport.netdef import datalayers
from sfport.protos import caffe_pb2
from sfport.report.progress import CaffeLog
from sfport.solver.config import Options

cv2 = pytest.importorskip("cv2")

H, W, CLASSES = 6, 8, 4
MEAN = (np.float32(104.008), np.float32(116.669), np.float32(122.675))
SCALE = np.float32(0.5)
DENSE_TYPE, SEG_TYPE = "DenseImageData", "ImageSegData"


def write_set(folder, sizes=((H, W),) * 3, color=True, seed=0, classes=CLASSES):
    """Images and label images as PNGs under ``folder``, and ``list.txt`` of ``img label`` pairs; returns the
    arrays (BGR images, labels)."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    imgs, labs, lines = [], [], []
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3) if color else (h, w), dtype=np.uint8)
        lab = rng.integers(0, classes, (h, w), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"img/{i}.png"), img) and cv2.imwrite(str(folder / f"img/{i}_l.png"), lab)
        imgs.append(img)
        labs.append(lab)
        lines.append(f"img/{i}.png   img/{i}_l.png")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return imgs, labs


def layer_of(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def _tops(tops):
    return " ".join(f'top: "{t}"' for t in tops)


def dense_layer(folder, params="", transform="", batch=2, tops=("data", "label")):
    return layer_of(f'name: "data" type: "{DENSE_TYPE}" {_tops(tops)} dense_image_data_param {{ '
                    f'source: "{folder / "list.txt"}" root_folder: "{folder}/" batch_size: {batch} {params} }} '
                    f'transform_param {{ {transform} }}')


def seg_layer(folder, params="label_type: PIXEL", transform="", batch=2, tops=("data", "label", "data_dim")):
    return layer_of(f'name: "data" type: "{SEG_TYPE}" {_tops(tops)} image_data_param {{ '
                    f'source: "{folder / "list.txt"}" root_folder: "{folder}/" batch_size: {batch} {params} }} '
                    f'transform_param {{ {transform} }}')


MEAN_SCALE = "mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 scale: 0.5"


def normalized(img):
    """(pixel - mean) * scale, HWC BGR -> CHW float32, as the forks' transformers."""
    img = img.astype(np.float32)
    if img.ndim == 2:
        return ((img - MEAN[0]) * SCALE)[None]
    return ((img - np.asarray(MEAN, np.float32)) * SCALE).transpose(2, 0, 1)


def item(ds, pos):
    x, y, dim, p, err = ds[pos]
    assert err is None, err
    return x.numpy(), y.numpy(), dim.numpy()


def feeder(layer, phase=caffe_pb2.TRAIN, **opts):
    net = caffe_pb2.NetParameter()
    net.layer.add().CopyFrom(layer)
    f = Feeder(net, phase, Options(workers=0, **opts), None, 0, 1, 0, 1, CaffeLog(enabled=False),
               net_path="net.prototxt")
    f.start(0)
    return f


# ----------------------------------------------------------------------------------------------------------------
# DenseImageData (caffe-segnet)
# ----------------------------------------------------------------------------------------------------------------

def test_dense_reads_pairs_exactly(tmp_path):
    imgs, labs = write_set(tmp_path)
    f = feeder(dense_layer(tmp_path, transform=MEAN_SCALE), caffe_pb2.TEST)
    assert f.inputs == {"data": (2, 3, H, W), "label": (2, 1, H, W)}
    for b, idx in enumerate([(0, 1), (2, 0)]):   # the list in order, wrapping at its end
        batch = f.next()
        np.testing.assert_array_equal(batch["data"].numpy(), np.stack([normalized(imgs[i]) for i in idx]))
        np.testing.assert_array_equal(batch["label"].numpy(), np.stack([labs[i][None] for i in idx]).astype(np.float32))


def test_dense_new_size_resizes_image_bilinear_and_label_nearest(tmp_path):
    imgs, labs = write_set(tmp_path, classes=200)
    ds = SegDataset.from_layer(dense_layer(tmp_path, "new_height: 5 new_width: 11 is_color: false"), train=False)
    gray = [cv2.imread(str(tmp_path / f"img/{i}.png"), cv2.IMREAD_GRAYSCALE) for i in range(3)]
    for i in range(3):
        x, y, _ = item(ds, i)
        np.testing.assert_array_equal(x, cv2.resize(gray[i], (11, 5)).astype(np.float32)[None])
        nearest = cv2.resize(labs[i], (11, 5), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(y[0], nearest.astype(np.float32))
        assert (nearest != cv2.resize(labs[i], (11, 5))).any()   # the test tells nearest from bilinear


def _matches(x, y, img, lab, ch, cw, flip_first):
    """The (flip, y0, x0) at which the data ``x`` is the normalized crop of ``img``, and whether the label is
    ``lab`` cropped at the same place. ``flip_first``: caffe-segnet flips the images before cropping; DeepLab
    crops, then flips the output."""
    found = []
    for flip in (0, 1):
        for y0 in range(img.shape[0] - ch + 1):
            for x0 in range(img.shape[1] - cw + 1):
                def cut(a):
                    if flip_first:
                        return (a[:, ::-1] if flip else a)[y0:y0 + ch, x0:x0 + cw]
                    c = a[y0:y0 + ch, x0:x0 + cw]
                    return c[:, ::-1] if flip else c
                if np.array_equal(x, normalized(cut(img))):
                    found.append((flip, y0, x0, np.array_equal(y[0], cut(lab).astype(np.float32))))
    return found


def test_dense_mirror_and_crop_move_image_and_label_together(tmp_path):
    imgs, labs = write_set(tmp_path)
    layer = dense_layer(tmp_path, "mirror: true crop_height: 4 crop_width: 5", MEAN_SCALE)
    draws = set()
    for phase in (True, False):   # the fork crops and mirrors at random in TEST too
        ds = SegDataset.from_layer(layer, train=phase)
        for pos in range(12):
            x, y, _ = item(ds, pos)
            assert x.shape == (3, 4, 5) and y.shape == (1, 4, 5)
            found = _matches(x, y, imgs[pos % 3], labs[pos % 3], 4, 5, flip_first=True)
            assert len(found) == 1 and found[0][3], (pos, found)
            draws.add(found[0][:3])
            np.testing.assert_array_equal(item(SegDataset.from_layer(layer, train=phase), pos)[0], x)   # repeatable
    assert {d[0] for d in draws} == {0, 1} and len({d[1:] for d in draws}) > 3


def test_dense_batch_of_one_takes_each_image_size(tmp_path):
    write_set(tmp_path, sizes=((H, W), (5, 7)))
    f = feeder(dense_layer(tmp_path, batch=1))
    assert f.inputs["data"] == (1, 3, H, W)
    assert f.next()["label"].shape == (1, 1, H, W)
    second = f.next()
    assert second["data"].shape == (1, 3, 5, 7) and second["label"].shape == (1, 1, 5, 7)


def test_dense_images_of_another_size_than_the_first(tmp_path):
    write_set(tmp_path, sizes=((H, W), (5, 7)))
    f = feeder(dense_layer(tmp_path, batch=2))
    with pytest.raises(CaffeFileError) as e:
        f.next()
    assert str(e.value) == (f"{tmp_path / 'list.txt'}: line 2: image 'img/1.png': it is 5x7, the layer was set up "
                            f"for 6x8 by its first image (resize them all with new_height and new_width)")


@pytest.mark.parametrize("transform", ["mirror: true", "crop_size: 4"])
def test_dense_refuses_transform_param_mirror_and_crop(tmp_path, transform):
    write_set(tmp_path)
    with pytest.raises(CaffeFileError) as e:
        feeder(dense_layer(tmp_path, transform=transform))
    assert str(e.value).startswith(f"net.prototxt: layer 'data' ({DENSE_TYPE}): transform_param mirror / crop_size")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------------------------
# ImageSegData (DeepLab)
# ----------------------------------------------------------------------------------------------------------------

def test_seg_pads_with_mean_and_ignore_label_then_centre_crops_in_test(tmp_path):
    imgs, labs = write_set(tmp_path, sizes=((5, 11), (11, 4), (5, 11)))
    f = feeder(seg_layer(tmp_path, "label_type: PIXEL ignore_label: 250", f"crop_size: 8 {MEAN_SCALE}"), caffe_pb2.TEST)
    assert f.inputs == {"data": (2, 3, 8, 8), "label": (2, 1, 8, 8), "data_dim": (2, 1, 1, 2)}
    batch = f.next()
    for j in range(2):
        img, lab = imgs[j], labs[j]
        rows, cols = img.shape[:2]
        ph, pw = max(8 - rows, 0), max(8 - cols, 0)
        padded = np.empty((rows + ph, cols + pw, 3), np.float32)
        padded[:] = MEAN                                   # the mean at the bottom and the right
        padded[:rows, :cols] = img
        plab = np.full((rows + ph, cols + pw), 250, np.uint8)
        plab[:rows, :cols] = lab
        y0, x0 = (padded.shape[0] - 8) // 2, (padded.shape[1] - 8) // 2
        want = ((padded[y0:y0 + 8, x0:x0 + 8] - np.asarray(MEAN, np.float32)) * SCALE).transpose(2, 0, 1)
        np.testing.assert_array_equal(batch["data"][j].numpy(), want)
        np.testing.assert_array_equal(batch["label"][j, 0].numpy(), plab[y0:y0 + 8, x0:x0 + 8].astype(np.float32))
        np.testing.assert_array_equal(batch["data_dim"][j].numpy(), [[[min(8, rows), min(8, cols)]]])
    # the padding of image 0 is zero after the mean comes off, its label is ignore_label
    assert (batch["data"][0, :, 5:].numpy() == 0).all() and (batch["label"][0, 0, 5:].numpy() == 250).all()
    assert (y0, x0) == (1, 0)   # image 1 (11 x 4, padded to 11 x 8) is centred at row 1
    x1 = (11 - 8) // 2   # image 0 is 11 wide: centred at 1
    np.testing.assert_array_equal(batch["data"][0, :, :5].numpy(), normalized(imgs[0][:, x1:x1 + 8]))


def test_seg_random_crop_and_mirror_in_train(tmp_path):
    imgs, labs = write_set(tmp_path, sizes=((7, 9),) * 3)
    ds = SegDataset.from_layer(seg_layer(tmp_path, transform=f"crop_size: 5 mirror: true {MEAN_SCALE}"), train=True)
    draws = set()
    for pos in range(12):
        x, y, dim = item(ds, pos)
        found = _matches(x, y, imgs[pos % 3], labs[pos % 3], 5, 5, flip_first=False)
        assert len(found) == 1 and found[0][3], (pos, found)
        draws.add(found[0][:3])
        np.testing.assert_array_equal(dim, [5, 5])
    assert {d[0] for d in draws} == {0, 1} and len({d[1:] for d in draws}) > 3


def test_seg_label_types_image_and_none(tmp_path):
    imgs, _ = write_set(tmp_path)
    (tmp_path / "list.txt").write_text("img/0.png 7abc\nimg/1.png 300\n\nimg/2.png -3 extra\n")
    ds = SegDataset.from_layer(seg_layer(tmp_path, "label_type: IMAGE"), train=False)
    assert [item(ds, i)[1][0, 0, 0] for i in range(3)] == [7, 255, 0]   # atoi, then saturate_cast<uchar>
    assert [e.line for e in ds.entries] == [1, 2, 4]
    assert atoi("  +12x") == 12 and atoi("seg.png") == 0 and atoi("") == 0
    (tmp_path / "list.txt").write_text("img/0.png\nimg/1.png img/1_l.png\n")
    for params, value in [("label_type: NONE ignore_label: 77", 77), ("has_label: false", 0)]:
        ds = SegDataset.from_layer(seg_layer(tmp_path, params), train=False)
        for i in range(2):
            x, y, _ = item(ds, i)
            assert (y == value).all() and y.shape == (1, H, W)
            np.testing.assert_array_equal(x, imgs[i].astype(np.float32).transpose(2, 0, 1))


def test_seg_new_size_resizes_labels_bilinear_as_deeplab(tmp_path):
    imgs, labs = write_set(tmp_path, classes=200)
    ds = SegDataset.from_layer(seg_layer(tmp_path, "label_type: PIXEL new_height: 5 new_width: 11"), train=False)
    x, y, dim = item(ds, 1)
    np.testing.assert_array_equal(x, cv2.resize(imgs[1], (11, 5)).astype(np.float32).transpose(2, 0, 1))
    np.testing.assert_array_equal(y[0], cv2.resize(labs[1], (11, 5)).astype(np.float32))   # io.cpp: INTER_LINEAR
    np.testing.assert_array_equal(dim, [5, 11])


def test_seg_without_crop_reads_the_first_images_size_from_the_top_left(tmp_path):
    imgs, labs = write_set(tmp_path, sizes=((H, W), (H + 2, W + 3), (H - 1, W)))
    ds = SegDataset.from_layer(seg_layer(tmp_path), train=False)
    x, y, dim = item(ds, 1)
    np.testing.assert_array_equal(x, imgs[1][:H, :W].astype(np.float32).transpose(2, 0, 1))
    np.testing.assert_array_equal(y[0], labs[1][:H, :W])
    np.testing.assert_array_equal(dim, [H, W])
    _, _, _, _, err = ds[2]
    assert err[1] == (f"line 3: image 'img/2.png': it is 5x8, smaller than the first image's 6x8 the layer was set "
                      f"up for (the fork would read past it; give crop_size or new_height / new_width)")


# ----------------------------------------------------------------------------------------------------------------
# shapes: the specifications, deploy, inspect
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, params, transform, want", [
    (DENSE_TYPE, "crop_height: 4 crop_width: 5", "", (2, 3, 4, 5)),
    (DENSE_TYPE, "new_height: 9 new_width: 7 is_color: false", "", (2, 1, 9, 7)),
    (DENSE_TYPE, "new_height: 9 new_width: 7 crop_height: 4 crop_width: 5", "", (2, 3, 4, 5)),
    (DENSE_TYPE, "crop_height: 4 crop_width: 5", "crop_size: 3", (2, 3, 3, 3)),   # the fork's setup order
    (SEG_TYPE, "label_type: PIXEL", "crop_size: 513", (2, 3, 513, 513)),
    (SEG_TYPE, "new_height: 9 new_width: 7", "", (2, 3, 9, 7)),
    (SEG_TYPE, "new_height: 9 new_width: 7", "crop_size: 5", (2, 3, 5, 5)),
])
def test_stated_shapes(tmp_path, kind, params, transform, want):
    layer = (dense_layer if kind == DENSE_TYPE else seg_layer)(tmp_path, params, transform)
    n, _, h, w = want
    labels = [(n, 1, h, w)] + ([(n, 1, 1, 2)] if kind == SEG_TYPE else [])
    assert datalayers.stated_image_shape(layer) == want
    assert datalayers.data_tops(layer, {}) == [want] + labels


@pytest.mark.parametrize("kind", [DENSE_TYPE, SEG_TYPE])
def test_shapes_from_the_first_image_when_nothing_states_them(tmp_path, kind):
    write_set(tmp_path, sizes=((5, 7), (H, W)))
    layer = (dense_layer if kind == DENSE_TYPE else seg_layer)(tmp_path, batch=3)
    assert datalayers.stated_image_shape(layer) == (3, 3, None, None)
    assert datalayers.data_tops(layer, {}) == [None] * len(layer.top)
    f = feeder(layer)
    assert f.inputs["data"] == (3, 3, 5, 7) and f.inputs["label"] == (3, 1, 5, 7)
    assert datalayers.data_set_tops(layer, (3, 5, 7)) == list(f.inputs.values())


def deploy(path, *args):
    out = path.parent / "deploy.prototxt"
    r = CliRunner().invoke(cli, ["deploy", str(path), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    net = text_format.Parse(out.read_text(), caffe_pb2.NetParameter())
    return r.output, net


CONV = """layer { name: "conv" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 4
kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" loss_param { ignore_label:
255 } }
"""


@pytest.mark.parametrize("kind, params, transform, shape", [
    (DENSE_TYPE, "crop_height: 4 crop_width: 5 mirror: true shuffle: true", "", [4, 3, 4, 5]),
    (DENSE_TYPE, "new_height: 9 new_width: 7 is_color: false", "", [4, 1, 9, 7]),
    (SEG_TYPE, "label_type: PIXEL", "crop_size: 321 mirror: true", [4, 3, 321, 321]),
])
def test_deploy_gives_an_input_of_the_stated_shape(tmp_path, kind, params, transform, shape):
    layer = (dense_layer if kind == DENSE_TYPE else seg_layer)(tmp_path, params, transform, batch=4,
                                                               tops=("data", "label"))
    path = tmp_path / "train.prototxt"
    path.write_text(f"layer {{ {text_format.MessageToString(layer, as_one_line=True)} }}\n{CONV}")
    out, net = deploy(path)
    assert [(l.name, l.type) for l in net.layer] == [("data", "Input"), ("conv", "Convolution")]
    assert list(net.layer[0].top) == ["data"] and list(net.layer[0].input_param.shape[0].dim) == shape
    assert f"inputs data [{','.join(map(str, shape))}]; outputs score" in out


DEEPLAB_TEST = """name: "deeplab_largefov"
layers {
  name: "data"
  type: IMAGE_SEG_DATA
  top: "data"
  top: "label"
  image_data_param {
    root_folder: "/nonexistent/VOC2012"
    source: "list/test.txt"
    batch_size: 1
    has_label: false
  }
  transform_param {
    mean_value: 104.008
    mean_value: 116.669
    mean_value: 122.675
    crop_size: 513
    mirror: false
  }
  include: { phase: TEST }
}
layers { name: "fc8" type: CONVOLUTION bottom: "data" top: "fc8" convolution_param { num_output: 21 kernel_size: 1 } }
"""


def test_deploy_of_deeplabs_v1_test_net(tmp_path):
    """The published DeepLab-LargeFOV test.prototxt's data layer (V1 IMAGE_SEG_DATA, has_label false, crop_size
    513, batch 1, three mean_values), upgraded to ImageSegData: its data top is a 1 x 3 x 513 x 513 input."""
    path = tmp_path / "test.prototxt"
    path.write_text(DEEPLAB_TEST)
    out, net = deploy(path)
    assert net.layer[0].type == "Input" and list(net.layer[0].input_param.shape[0].dim) == [1, 3, 513, 513]
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if f" {SEG_TYPE} " in line)
    assert "-> data,label    1 3 513 513 (789507)" in row


# ----------------------------------------------------------------------------------------------------------------
# sfport test over a tiny net: data -> 1x1 Convolution -> SoftmaxWithLoss with the label images
# ----------------------------------------------------------------------------------------------------------------

WEIGHT = np.random.default_rng(5).normal(0, 0.01, (CLASSES, 3, 1, 1)).astype(np.float32)
BIAS = np.array([0.1, -0.2, 0.05, 0.0], np.float32)


def write_weights(path):
    """The 1x1 convolution's WEIGHT and BIAS as a caffemodel, written with protobuf itself."""
    weights = caffe_pb2.NetParameter(name="tiny")
    conv = weights.layer.add(name="conv", type="Convolution")
    for a in (WEIGHT, BIAS):
        blob = conv.blobs.add()
        blob.shape.dim.extend(a.shape)
        blob.data.extend(a.ravel().tolist())
    path.write_bytes(weights.SerializeToString())


def expected_loss(data, label):
    """SoftmaxWithLoss (normalization VALID, ignore_label 255) of the 1x1 convolution of ``data``, in float64."""
    logits = np.einsum("kc,nchw->nkhw", WEIGHT[:, :, 0, 0].astype(np.float64), data) + BIAS[None, :, None, None]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    lab = label[:, 0].astype(int)
    valid = lab != 255
    n, _, h, w = data.shape
    picked = logp[np.arange(n)[:, None, None], np.where(valid, lab, 0), np.arange(h)[None, :, None],
                  np.arange(w)[None, None, :]]
    return -picked[valid].sum() / valid.sum()


@pytest.mark.parametrize("kind", [DENSE_TYPE, SEG_TYPE])
def test_sfport_test_reads_the_pairs(tmp_path, kind):
    imgs, labs = write_set(tmp_path, sizes=((5, 6),) * 3)
    if kind == DENSE_TYPE:
        layer = dense_layer(tmp_path, transform=MEAN_SCALE, tops=("data", "label"))
        data = [normalized(i) for i in imgs]
        label = [lb[None].astype(np.float32) for lb in labs]
    else:   # padded to 7 x 7 (the padding's label 255 is ignored), centred: offset 0
        layer = seg_layer(tmp_path, transform=f"crop_size: 7 {MEAN_SCALE}", tops=("data", "label"))
        data, label = [], []
        for img, lab in zip(imgs, labs):
            d = np.zeros((3, 7, 7), np.float32)
            d[:, :5, :6] = normalized(img)
            lb = np.full((1, 7, 7), 255, np.float32)
            lb[0, :5, :6] = lab
            data.append(d)
            label.append(lb)
    layer.include.add(phase=caffe_pb2.TEST)
    path = tmp_path / "net.prototxt"
    path.write_text(f"layer {{ {text_format.MessageToString(layer, as_one_line=True)} }}\n{CONV}")
    write_weights(tmp_path / "w.caffemodel")
    r = CliRunner().invoke(cli, ["test", str(path), "--weights", str(tmp_path / "w.caffemodel"), "--iterations", "2",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    losses = [float(m[1]) for m in re.finditer(r"^Batch \d+, loss = (\S+)$", r.stdout, re.M)]
    want = [expected_loss(np.stack([data[i] for i in idx]).astype(np.float64), np.stack([label[i] for i in idx]))
            for idx in [(0, 1), (2, 0)]]
    assert losses == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# bad input: one line naming the file and the line
# ----------------------------------------------------------------------------------------------------------------

def _error(layer, phase=caffe_pb2.TRAIN):
    with pytest.raises(CaffeFileError) as e:
        f = feeder(layer, phase)
        f.next()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_lists_and_images(tmp_path):
    write_set(tmp_path)
    lst = tmp_path / "list.txt"
    assert _error(dense_layer(tmp_path / "nowhere")) == f"{tmp_path / 'nowhere' / 'list.txt'}: image list not found"
    lst.write_text("img/0.png img/0_l.png\nimg/1.png\n")
    assert _error(dense_layer(tmp_path)) == f"{lst}: line 2: expected 'image label_image', got 'img/1.png'"
    assert _error(seg_layer(tmp_path)) == (f"{lst}: line 2: expected 'image label_image' (label_type PIXEL), got "
                                           f"'img/1.png'")
    assert _error(seg_layer(tmp_path, "label_type: IMAGE")).startswith(f"{lst}: line 2: expected 'image label' "
                                                                       f"(label_type IMAGE; has_label: false")
    lst.write_text("img/0.png img/0_l.png\nimg/9.png img/1_l.png\n")
    assert _error(dense_layer(tmp_path)) == f"{lst}: line 2: image '{tmp_path}/img/9.png' is missing"
    lst.write_text("img/0.png img/0_l.png\nimg/1.png img/9_l.png\n")
    assert _error(seg_layer(tmp_path)) == f"{lst}: line 2: label image '{tmp_path}/img/9_l.png' is missing"
    (tmp_path / "img/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    lst.write_text("img/bad.png img/0_l.png\n")
    assert _error(dense_layer(tmp_path)).startswith(f"{lst}: line 1: image '{tmp_path}/img/bad.png' is ")
    assert cv2.imwrite(str(tmp_path / "img/small_l.png"), np.zeros((H - 1, W), np.uint8))
    lst.write_text("img/0.png img/0_l.png\nimg/1.png img/small_l.png\n")
    for layer in (dense_layer(tmp_path), seg_layer(tmp_path)):
        assert _error(layer) == (f"{lst}: line 2: label image 'img/small_l.png' is 5x8, its image 'img/1.png' is "
                                 f"6x8: the fork needs them of one size")
    lst.write_text("\n  \n")
    assert _error(dense_layer(tmp_path)) == f"{lst}: the image list is empty"


def test_bad_parameters(tmp_path):
    write_set(tmp_path)
    assert _error(dense_layer(tmp_path, batch=0)) == ("net.prototxt: layer 'data' (DenseImageData): batch_size must "
                                                      "be positive, not 0")
    assert _error(seg_layer(tmp_path, batch=0)).endswith("batch_size must be positive, not 0")
    assert _error(dense_layer(tmp_path, "crop_height: 4")).startswith(
        f"net.prototxt: layer 'data' ({DENSE_TYPE}): crop_height 4 and crop_width 0: set both or neither")
    assert _error(dense_layer(tmp_path, "crop_height: 7 crop_width: 9")) == (
        f"{tmp_path / 'list.txt'}: line 1: image 'img/0.png': it is 6x8, smaller than crop_height x crop_width 7x9")
    assert _error(seg_layer(tmp_path, transform='mean_file: "mean.binaryproto"')) == (
        f"net.prototxt: layer 'data' ({SEG_TYPE}): transform_param mean_file: DeepLab's ImageSegData does not "
        f"support a mean file (give mean_value)")
    assert _error(seg_layer(tmp_path, "is_color: false", MEAN_SCALE)) == (
        f"net.prototxt: layer 'data' ({SEG_TYPE}): 3 mean_value entries for 1-channel images (is_color false): "
        f"give 1")


def test_sfport_train_reads_the_pairs(tmp_path):
    """`sfport train` from the same weights: the first iteration's loss is the loss of the first two pairs."""
    imgs, labs = write_set(tmp_path, sizes=((5, 6),) * 3)
    layer = dense_layer(tmp_path, transform=MEAN_SCALE, tops=("data", "label"))
    (tmp_path / "net.prototxt").write_text(f"layer {{ {text_format.MessageToString(layer, as_one_line=True)} }}\n"
                                           f"{CONV}")
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                              f'max_iter: 1\ndisplay: 1\nsnapshot_prefix: "{tmp_path}/s"\n')
    write_weights(tmp_path / "w.caffemodel")
    r = CliRunner().invoke(cli, ["train", str(tmp_path / "solver.prototxt"), "--weights",
                                 str(tmp_path / "w.caffemodel"), "--workers", "0"])
    assert r.exit_code == 0, r.output
    loss = float(re.search(r"Iteration 0 \(.*\), loss = (\S+)", r.output)[1])
    want = expected_loss(np.stack([normalized(imgs[0]), normalized(imgs[1])]).astype(np.float64),
                         np.stack([labs[0][None], labs[1][None]]).astype(np.float32))
    assert loss == pytest.approx(want, rel=1e-5)
