"""pycaffe's classifier.py and detector.py (sfport.pycaffe.classifier / .detector) against references written out
here from BVLC Caffe's python/caffe/classifier.py and detector.py: the resize (sfport.io.resize_image), the crops
(centre, corners, mirrors; R-CNN's context boxes worked out by hand), the Transformer's steps in numpy, and the
net computed in numpy (convolution, inner product, softmax) or by a second, plain pycaffe Net with the same
weights, fed in one batch without forward_all."""
import sys
import types

import cv2
import numpy as np
import pytest

import sfport as caffe
from sfport.protos import caffe_pb2
from sfport.pycaffe.classifier import Classifier
from sfport.pycaffe.detector import Detector
from sfport.pycaffe.net import Net

DEPLOY = """name: "tiny"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }}
                            bias_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.1 }}
                               bias_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "fc" top: "prob" }}
"""
MEAN = np.array([0.3, 0.5, 0.2])      # per channel, in the net's (swapped) order
SWAP = (2, 1, 0)
RAW, SCALE = 2.0, 0.75


@pytest.fixture
def tiny(tmp_path):
    """A deploy net of batch ``n`` and its caffemodel (weights drawn by a Net's fillers, saved by Net.save)."""
    caffe.set_random_seed(7)
    weights = tmp_path / "tiny.caffemodel"

    def make(n):
        path = tmp_path / f"tiny{n}.prototxt"
        path.write_text(DEPLOY.format(n=n))
        if not weights.exists():
            Net(str(path), caffe_pb2.TEST).save(str(weights))
        return str(path), str(weights)
    return make


def numpy_forward(weights_net: Net, x: np.ndarray) -> np.ndarray:
    """The tiny net in numpy (float64): 3x3 valid cross-correlation, inner product over C*H*W, softmax."""
    w, b = (p.data.astype(np.float64) for p in weights_net.params["conv"])
    fw, fb = (p.data.astype(np.float64) for p in weights_net.params["fc"])
    win = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (3, 3), axis=(2, 3))  # N C 6 6 3 3
    conv = np.einsum("ncyxij,ocij->noyx", win, w) + b[None, :, None, None]
    fc = conv.reshape(len(x), -1) @ fw.T + fb
    e = np.exp(fc - fc.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def preprocess(crop: np.ndarray) -> np.ndarray:
    """Transformer.preprocess's steps for an H x W x 3 crop of the input's size: transpose, swap, raw scale,
    mean, input scale."""
    x = crop.astype(np.float32).transpose(2, 0, 1)[list(SWAP)]
    return (x * RAW - MEAN[:, None, None]) * SCALE


def images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((13, 17, 3)).astype(np.float32), rng.random((9, 11, 3)).astype(np.float32) * 3 - 1,
            rng.random((20, 12, 3)).astype(np.float32)]


@pytest.mark.parametrize("oversample", [True, False])
def test_classifier_predict_matches_crops_preprocessing_and_numpy_forward(tiny, oversample):
    model, weights = tiny(10)
    clf = Classifier(model, weights, image_dims=(12, 14), mean=MEAN, input_scale=SCALE, raw_scale=RAW,
                     channel_swap=SWAP)
    assert clf.phase == caffe_pb2.TEST and clf.inputs == ["data"] and clf.outputs == ["prob"]
    assert list(clf.crop_dims) == [8, 8]
    ims = images()
    got = clf.predict(ims, oversample=oversample)

    resized = [caffe.io.resize_image(im, (12, 14)) for im in ims]
    if oversample:   # corners (rows 0/4, columns 0/6), centre (rows 2:10, columns 3:11), then the five mirrored
        boxes = [(0, 0), (0, 6), (4, 0), (4, 6), (2, 3)]
        crops = [[r[y:y + 8, x:x + 8] for y, x in boxes] for r in resized]
        crops = [c + [a[:, ::-1] for a in c] for c in crops]
    else:            # the centre of 12 x 14: (6, 7) -> rows 2:10, columns 3:11
        crops = [[r[2:10, 3:11]] for r in resized]
    ref_net = Net(model, caffe_pb2.TEST, weights=weights)
    want = np.stack([numpy_forward(ref_net, np.stack([preprocess(c) for c in cs])).mean(0) for cs in crops])
    assert got.shape == (3, 5)
    err = np.abs(got - want).max()
    assert err < 1e-5, err
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
    assert not np.allclose(got[0], got[1])   # the images do differ in class probabilities


def test_classifier_default_image_dims_is_the_input_and_a_plain_net_agrees(tiny):
    """Without image_dims the images are resized to the input itself (the centre crop is the whole image); the
    prediction is a plain Net's forward of the preprocessed images (the batch of 10 padded by forward_all)."""
    model, weights = tiny(10)
    clf = Classifier(model, weights, mean=MEAN, input_scale=SCALE, raw_scale=RAW, channel_swap=SWAP)
    assert list(clf.image_dims) == [8, 8]
    ims = images(1)
    got = clf.predict(ims, oversample=False)
    x = np.stack([preprocess(caffe.io.resize_image(im, (8, 8))) for im in ims])
    plain = Net(model, caffe_pb2.TEST, weights=weights)
    plain.blobs["data"].reshape(*x.shape)
    plain.reshape()
    want = plain.forward(data=x)["prob"]
    err = np.abs(got - want).max()
    assert err < 1e-6, err


def write_png(path, rgb_u8: np.ndarray) -> np.ndarray:
    """Writes an RGB uint8 image; returns it as load_image gives it (RGB, [0, 1] float32), by hand."""
    cv2.imwrite(str(path), rgb_u8[:, :, ::-1])
    return (cv2.imread(str(path))[:, :, ::-1] / 255.0).astype(np.float32)


@pytest.mark.parametrize("context_pad", [None, 0, 2])
def test_detector_detect_windows(tiny, tmp_path, context_pad):
    model, weights = tiny(2)
    det = Detector(model, weights, mean=MEAN, input_scale=SCALE, raw_scale=RAW, channel_swap=SWAP,
                   context_pad=context_pad)
    assert list(det.crop_dims) == [8, 8, 3]
    rng = np.random.default_rng(3)
    im = write_png(tmp_path / "im.png", rng.integers(0, 256, (24, 30, 3), dtype=np.uint8))
    windows = [np.array([4, 6, 11, 13]), np.array([0, 0, 5, 7])]
    got = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in got] == [str(tmp_path / "im.png")] * 2
    assert all(d["window"] is w for d, w in zip(got, windows))

    if not context_pad:   # the window itself, warped to 8 x 8
        x = np.stack([preprocess(caffe.io.resize_image(im[y0:y1, x0:x1], (8, 8))) for y0, x0, y1, x1 in windows])
    else:
        # context_pad 2 of 8: the box grows by 8 / (8 - 4) = 2 about its centre (R-CNN's context), worked out:
        # [4, 6, 11, 13]: half 4 x 4 about (8, 10) -> box [0, 2, 16, 18], inside the image: im[0:16, 2:18] -> 8x8.
        first = preprocess(caffe.io.resize_image(im[0:16, 2:18], (8, 8)))
        # [0, 0, 5, 7]: half 3 x 4 about (3, 4) -> box [-3, -4, 9, 12] (17 x 13 pixels for 8): 3 rows and 4
        # columns outside, round(3 * 8/13) = round(4 * 8/17) = 2 input pixels of mean; the clipped im[0:9, 0:12]
        # (10 x 13 by Caffe's count) -> round(10 * 8/13) x round(13 * 8/17) = 6 x 6 at rows and columns 2:8.
        second = np.zeros((3, 8, 8), np.float32)   # the mean, preprocessed, is zero
        second[:, 2:8, 2:8] = preprocess(caffe.io.resize_image(im[0:9, 0:12], (6, 6)))
        x = np.stack([first, second])
        # the mean border in the net's input: exactly what the mean preprocesses to
        np.testing.assert_allclose(det.blobs["data"].data[1], second, atol=1e-6)
    want = numpy_forward(Net(model, caffe_pb2.TEST, weights=weights), x)
    pred = np.stack([d["prediction"] for d in got])
    err = np.abs(pred - want).max()
    assert err < 1e-5, err


def test_detector_crop_mean_and_raw_space(tiny):
    """configure_crop's crop_mean: the mean back in the image's space (channels un-swapped, / raw_scale), which
    the Transformer takes back to zero."""
    model, weights = tiny(2)
    swap = (1, 2, 0)
    det = Detector(model, weights, mean=MEAN, raw_scale=RAW, channel_swap=swap, context_pad=1)
    assert det.crop_mean.shape == (1, 1, 3)
    # the net's channel k is the image's channel swap[k]: image channel swap[k] holds MEAN[k] / RAW
    raw = np.empty(3)
    raw[list(swap)] = MEAN / RAW
    np.testing.assert_allclose(det.crop_mean[0, 0], raw, rtol=1e-6)
    crop = np.ones((8, 8, 3), np.float32) * det.crop_mean
    np.testing.assert_allclose(det.transformer.preprocess("data", crop), 0, atol=1e-6)
    assert Detector(model, weights, context_pad=1).crop_mean.shape == (8, 8, 3)   # no mean: zeros
    assert not Detector(model, weights, context_pad=1).crop_mean.any()


def test_detect_selective_search_names_the_missing_module(tiny, monkeypatch):
    model, weights = tiny(2)
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", None)
    with pytest.raises(ImportError, match="selective_search_ijcv_with_python"):
        Detector(model, weights).detect_selective_search(["a.jpg"])


def test_detect_selective_search_runs_detect_windows_on_its_windows(tiny, tmp_path, monkeypatch):
    """The proposals' windows (absolute paths asked for) go through detect_windows: the zip is read twice."""
    model, weights = tiny(2)
    write_png(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    asked = {}

    def get_windows(fnames, cmd):
        asked.update(fnames=fnames, cmd=cmd)
        return [np.array([[0, 0, 6, 6], [2, 3, 12, 12]])]
    module = types.SimpleNamespace(get_windows=get_windows)
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", module)
    monkeypatch.chdir(tmp_path)
    got = Detector(model, weights).detect_selective_search(["a.png"])
    assert asked == {"fnames": [str(tmp_path / "a.png")], "cmd": "selective_search_rcnn"}
    assert len(got) == 2 and [list(d["window"]) for d in got] == [[0, 0, 6, 6], [2, 3, 12, 12]]


def test_lenet_classifier_oversample_against_a_plain_net(shared):
    """The real LeNet (Input 64 x 1 x 28 x 28): grey 32 x 32 images, 10 crops each; the average of a plain Net's
    softmax over the hand-made crops (x 1, the [0, 1] images LeNet's 1/256 scaling expects)."""
    lenet = shared / "fixtures" / "lenet"
    model, weights = str(lenet / "lenet.prototxt"), str(lenet / "lenet_iter_10000.caffemodel")
    clf = Classifier(model, weights, image_dims=(32, 32))
    rng = np.random.default_rng(5)
    ims = []
    for _ in range(2):   # a bright stroke on dark: a digit-like image
        im = np.zeros((30, 34, 1), np.float32)
        im[rng.integers(4, 10):rng.integers(20, 26), rng.integers(10, 15):rng.integers(18, 24)] = 1
        ims.append(im * 0.9 + rng.random(im.shape, dtype=np.float32) * 0.1)
    got = clf.predict(ims)
    boxes = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    x = []
    for im in ims:
        r = caffe.io.resize_image(im, (32, 32))
        cs = [r[y:y + 28, x0:x0 + 28] for y, x0 in boxes]
        x += [c.transpose(2, 0, 1) for c in cs + [c[:, ::-1] for c in cs]]
    x = np.stack(x)
    plain = Net(model, caffe_pb2.TEST, weights=weights)
    plain.blobs["data"].reshape(*x.shape)
    plain.reshape()
    want = plain.forward(data=x)["prob"].reshape(2, 10, 10).mean(1)
    err = np.abs(got - want).max()
    assert err < 1e-6, err
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
