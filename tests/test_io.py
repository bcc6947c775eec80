"""sfport.data.caffe_io against pycaffe's caffe.io (BVLC Caffe python/caffe/io.py): the Transformer's order of operations
written out here as a numpy reference, load_image's values by img_as_float's formula on PNGs written here,
resize_image by skimage's interpolation written pixel by pixel, oversample by slicing, and proto round trips."""
import math

import cv2
import numpy as np
import pytest
import scipy.ndimage

import sfport
from sfport.data import caffe_io as sio
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

RNG = np.random.default_rng(7)


def pycaffe_preprocess(data, transpose=None, channel_swap=None, raw_scale=None, mean=None, input_scale=None):
    """python/caffe/io.py Transformer.preprocess, for data already of the input's H x W (no resize): astype
    float32, transpose, channel_swap, *= raw_scale, -= mean, *= input_scale (in place, as pycaffe)."""
    x = data.astype(np.float32, copy=True)
    if transpose is not None:
        x = x.transpose(transpose)
    if channel_swap is not None:
        x = x[list(channel_swap), :, :]
    if raw_scale is not None:
        x *= raw_scale
    if mean is not None:
        x -= mean if mean.ndim != 1 else mean[:, None, None]
    if input_scale is not None:
        x *= input_scale
    return x


def transformer(shape=(1, 3, 6, 5), **settings):
    t = sio.Transformer({"data": shape})
    for name, value in settings.items():
        getattr(t, f"set_{name}")("data", value)
    return t


# --- Transformer -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    {},
    {"transpose": (2, 0, 1)},
    {"transpose": (2, 0, 1), "channel_swap": (2, 1, 0), "raw_scale": 255, "mean": np.array([104., 117., 123.])},
    {"transpose": (2, 0, 1), "channel_swap": (1, 2, 0), "raw_scale": 255.0,
     "mean": RNG.uniform(0, 200, (3, 6, 5)), "input_scale": 0.0078125},
    {"transpose": (2, 0, 1), "mean": RNG.uniform(0, 1, (3,)).astype(np.float32), "input_scale": 1 / 3},
])
def test_preprocess_is_pycaffes_order_of_operations_bit_for_bit(settings):
    data = RNG.uniform(0, 1, (6, 5, 3))          # float64, as skimage-loaded images often are
    t = transformer(**settings)
    got = t.preprocess("data", data)
    want = pycaffe_preprocess(data, **settings)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)


def test_preprocess_leaves_the_callers_array_alone():
    data = RNG.uniform(0, 1, (6, 5, 3)).astype(np.float32)
    keep = data.copy()
    transformer(transpose=(2, 0, 1), raw_scale=255, mean=np.array([1., 2., 3.])).preprocess("data", data)
    assert np.array_equal(data, keep)


def test_classic_recipe_on_a_face_photo_is_opencvs_bgr_minus_mean(shared):
    # the pycaffe classification recipe: RGB [0, 1] from load_image -> BGR [0, 255] C x H x W minus a (3,) mean
    path = shared / "fixtures" / "lfw" / "Anthony_Hopkins_0001.jpg"
    bgr = cv2.imread(str(path))
    mean = np.array([104.0, 117.0, 123.0])
    t = sio.Transformer({"data": (1, 3) + bgr.shape[:2]})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", mean)
    got = t.preprocess("data", sio.load_image(path))
    want = bgr.transpose(2, 0, 1).astype(np.float64) - mean[:, None, None]
    assert got.shape == (3, 250, 250)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_deprocess_inverts_preprocess():
    # a channel swap and a transpose that are not their own inverses: deprocess must take argsort's
    data = RNG.uniform(0, 1, (6, 5, 3)).astype(np.float32)
    t = transformer(transpose=(2, 0, 1), channel_swap=(1, 2, 0), raw_scale=255.0,
                    mean=RNG.uniform(0, 100, (3, 6, 5)), input_scale=0.5)
    back = t.deprocess("data", t.preprocess("data", data)[None])     # a 1 x C x H x W blob, squeezed
    assert back.shape == data.shape
    np.testing.assert_allclose(back, data, rtol=0, atol=1e-5)
    blob = t.preprocess("data", data)
    assert np.array_equal(blob[0], (data[:, :, 1] * np.float32(255) - t.mean["data"][0]).astype(np.float32) * 0.5)


def test_preprocess_resizes_to_the_inputs_height_and_width():
    data = RNG.uniform(0, 1, (9, 7, 3)).astype(np.float32)
    t = transformer(shape=(1, 3, 6, 5), transpose=(2, 0, 1))
    got = t.preprocess("data", data)
    assert got.shape == (3, 6, 5)
    assert np.array_equal(got, sio.resize_image(data, (6, 5)).transpose(2, 0, 1))


def test_transformer_misuse_raises_what_pycaffe_raises():
    t = transformer(shape=(1, 3, 4, 4))
    cases = [
        (lambda: t.preprocess("image", np.zeros((4, 4, 3))), Exception, "image is not one of the net inputs"),
        (lambda: t.set_raw_scale("image", 255), Exception, "image is not one of the net inputs"),
        (lambda: t.set_transpose("data", (1, 0)), Exception, "Transpose order needs to have the same number"),
        (lambda: t.set_channel_swap("data", (1, 0)), Exception, "Channel swap needs to have the same number"),
        (lambda: t.set_mean("data", np.zeros(4)), ValueError, "Mean channels incompatible with input."),
        (lambda: t.set_mean("data", np.zeros((3, 5, 4))), ValueError, "Mean shape incompatible with input shape."),
        (lambda: t.set_mean("data", np.zeros((4, 4))), ValueError, "Mean shape incompatible with input shape."),
        (lambda: t.set_mean("data", np.zeros((1, 3, 4, 4))), ValueError, "Mean shape invalid"),
    ]
    for call, kind, message in cases:
        with pytest.raises(Exception) as e:
            call()
        assert type(e.value) is kind and message in str(e.value)
    assert t.mean == {} and t.transpose == {} and t.channel_swap == {}


def test_set_mean_accepts_what_fits():
    t = transformer(shape=(1, 3, 4, 4))
    t.set_mean("data", np.array([1.0, 2.0, 3.0]))
    assert t.mean["data"].shape == (3, 1, 1)
    image = np.ones((3, 4, 4))
    t.set_mean("data", image)
    assert t.mean["data"] is image
    gray = transformer(shape=[1, 1, 4, 4])     # a list shape compares as the tuple it is
    gray.set_mean("data", np.zeros((4, 4)))
    assert gray.mean["data"].shape == (4, 4)


def test_sfport_exposes_pycaffes_io_names():
    assert sfport.Transformer is sio.Transformer
    assert sfport.data.caffe_io.load_image is sio.load_image
    assert sfport.protos.caffe_pb2 is caffe_pb2
    assert {"Transformer", "io", "proto"} <= set(sfport.__all__)


# --- load_image --------------------------------------------------------------------------------------------

def write_png(path, rgb_or_gray):
    """A PNG written by OpenCV (which takes BGR / BGRA) holding the given RGB / RGBA / grey values."""
    a = rgb_or_gray
    if a.ndim == 3:
        a = a[:, :, [2, 1, 0, 3][:a.shape[2]]]
    assert cv2.imwrite(str(path), a)
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_load_image_is_img_as_float_in_rgb(tmp_path, dtype):
    top = np.iinfo(dtype).max
    rgb = RNG.integers(0, top + 1, (5, 7, 3)).astype(dtype)
    rgb[0, 0] = (0, top, 1)
    img = sio.load_image(write_png(tmp_path / "rgb.png", rgb))
    assert img.dtype == np.float32 and img.shape == (5, 7, 3)
    assert np.array_equal(img, (rgb / top).astype(np.float32))        # skimage.img_as_float: x / 255, x / 65535
    assert img[0, 0].tolist() == [0.0, 1.0, np.float32(1 / top)]


def test_load_image_of_rgba_drops_alpha_and_of_gray_tiles(tmp_path):
    rgba = RNG.integers(0, 256, (4, 6, 4)).astype(np.uint8)
    img = sio.load_image(write_png(tmp_path / "rgba.png", rgba))
    assert img.shape == (4, 6, 3) and np.array_equal(img, (rgba[:, :, :3] / 255).astype(np.float32))
    gray = RNG.integers(0, 256, (4, 6)).astype(np.uint8)
    path = write_png(tmp_path / "gray.png", gray)
    want = (gray / 255).astype(np.float32)[:, :, None]
    assert np.array_equal(sio.load_image(path), np.concatenate([want] * 3, axis=2))
    assert np.array_equal(sio.load_image(path, color=False), want)
    gray16 = RNG.integers(0, 65536, (3, 3)).astype(np.uint16)
    assert np.array_equal(sio.load_image(write_png(tmp_path / "g16.png", gray16), color=False),
                          (gray16 / 65535).astype(np.float32)[:, :, None])


def test_load_image_gray_of_a_colour_file_is_rgb2grey(tmp_path):
    rgb = RNG.integers(0, 256, (5, 4, 3)).astype(np.uint8)
    for name, a in (("rgb.png", rgb), ("rgba.png", np.dstack([rgb, RNG.integers(0, 256, (5, 4), np.uint8)]))):
        img = sio.load_image(write_png(tmp_path / name, a), color=False)
        r, g, b = (rgb[:, :, k] / 255 for k in range(3))
        want = (0.2125 * r + 0.7154 * g + 0.0721 * b).astype(np.float32)[:, :, None]   # skimage rgb2grey
        assert img.shape == (5, 4, 1) and img.dtype == np.float32
        np.testing.assert_allclose(img, want, rtol=0, atol=1e-7)


def test_load_image_of_a_bad_file_is_a_caffe_file_error(tmp_path):
    with pytest.raises(CaffeFileError, match="missing"):
        sio.load_image(tmp_path / "none.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a JPEG at all")
    with pytest.raises(CaffeFileError) as e:
        sio.load_image(bad)
    assert e.value.path == str(bad) and "corrupt" in e.value.message


# --- resize_image ------------------------------------------------------------------------------------------

def keys_cubic(t):
    """The Catmull-Rom (Keys, a = -1/2) cubic convolution kernel."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
    return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2 if t < 2 else 0.0


def skimage_resize_reference(im, new_dims, order):
    """skimage.transform.resize(im, new_dims, order, mode='constant') of pycaffe's time, pixel by pixel: output
    pixel (i, j) samples at ((H/h)(i + 0.5) - 0.5, (W/w)(j + 0.5) - 0.5), pixels outside the image are 0,
    bilinear / nearest (half away from zero) / cubic convolution, then clipped to the input's range."""
    H, W, K = im.shape
    h, w = new_dims
    out = np.zeros((h, w, K))

    def px(y, x):
        return im[y, x] if 0 <= y < H and 0 <= x < W else np.zeros(K)

    for i in range(h):
        for j in range(w):
            r, c = H / h * (i + 0.5) - 0.5, W / w * (j + 0.5) - 0.5
            if order == 0:
                out[i, j] = px(int(math.copysign(math.floor(abs(r) + 0.5), r)),
                               int(math.copysign(math.floor(abs(c) + 0.5), c)))
            elif order == 1:
                y0, x0 = math.floor(r), math.floor(c)
                for y in (y0, y0 + 1):
                    for x in (x0, x0 + 1):
                        out[i, j] += (1 - abs(r - y)) * (1 - abs(c - x)) * px(y, x)
            else:
                y0, x0 = math.floor(r), math.floor(c)
                for y in range(y0 - 1, y0 + 3):
                    for x in range(x0 - 1, x0 + 3):
                        out[i, j] += keys_cubic(r - y) * keys_cubic(c - x) * px(y, x)
    return out if order == 0 else np.clip(out, im.min(), im.max())


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("channels,src,dst", [(3, (5, 4), (7, 9)), (1, (8, 6), (3, 5)), (3, (6, 6), (6, 6))])
def test_resize_image_is_skimages_resize_of_the_standardized_image(order, channels, src, dst):
    im = RNG.uniform(-3, 5, src + (channels,)).astype(np.float32)
    lo, hi = float(im.min()), float(im.max())
    want = skimage_resize_reference((im.astype(np.float64) - lo) / (hi - lo), dst, order) * (hi - lo) + lo
    got = sio.resize_image(im, dst, interp_order=order)
    assert got.dtype == np.float32 and got.shape == dst + (channels,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_resize_image_halving_averages_2x2_blocks_and_upsampling_darkens_borders():
    im = RNG.uniform(0, 1, (8, 6, 3))
    blocks = im.reshape(4, 2, 3, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(sio.resize_image(im, (4, 3)), blocks, rtol=0, atol=1e-6)
    two = np.array([[0.0, 1.0], [1.0, 1.0]])[:, :, None]
    up = sio.resize_image(two, (4, 4))
    # corner (0, 0) samples at (-0.25, -0.25): 3/4 * 3/4 of pixel (0, 0), the rest outside (0) -> 0.0;
    # corner (3, 3) samples at (1.25, 1.25): 3/4 * 3/4 of pixel (1, 1) = 0.5625
    assert up[0, 0, 0] == 0.0 and up[3, 3, 0] == pytest.approx(0.5625, abs=1e-7)


def test_resize_image_of_a_constant_image_and_of_other_channel_counts():
    const = np.full((3, 4, 3), 7.5)
    got = sio.resize_image(const, (5, 2))
    assert got.dtype == np.float32 and got.shape == (5, 2, 3) and (got == 7.5).all()
    for channels in (2, 4):
        im = RNG.uniform(0, 1, (6, 4, channels))
        want = scipy.ndimage.zoom(im, (10 / 6, 6 / 4, 1), order=1).astype(np.float32)
        got = sio.resize_image(im, (10, 6))
        assert got.shape == (10, 6, channels) and np.array_equal(got, want)
    with pytest.raises(CaffeFileError, match="interp_order 4"):
        sio.resize_image(RNG.uniform(0, 1, (4, 4, 3)), (2, 2), interp_order=4)


# --- oversample --------------------------------------------------------------------------------------------

def test_oversample_gives_corners_centre_and_their_mirrors():
    ims = [RNG.uniform(0, 1, (7, 9, 3)) for _ in range(2)]
    crops = sio.oversample(ims, (4, 5))
    assert crops.shape == (20, 4, 5, 3) and crops.dtype == np.float32
    for n, im in enumerate(ims):
        # corners; centre (3.5, 4.5) -/+ (2, 2.5) -> rows 1.5:5.5, cols 2:7, truncated to int as pycaffe's array
        five = [im[0:4, 0:5], im[0:4, 4:9], im[3:7, 0:5], im[3:7, 4:9], im[1:5, 2:7]]
        want = np.stack(five + [c[:, ::-1] for c in five]).astype(np.float32)
        assert np.array_equal(crops[10 * n:10 * n + 10], want)


# --- protos ------------------------------------------------------------------------------------------------

def test_datum_round_trips():
    u8 = RNG.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    d = sio.array_to_datum(u8, label=7)
    assert (d.channels, d.height, d.width, d.label) == (3, 4, 5, 7)
    assert d.data == u8.tobytes() and len(d.float_data) == 0
    d2 = caffe_pb2.Datum.FromString(d.SerializeToString())
    back = sio.datum_to_array(d2)
    assert back.dtype == np.uint8 and np.array_equal(back, u8)
    back[0, 0, 0] ^= 1          # writable, as np.fromstring's array was
    f = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    d = sio.array_to_datum(f)
    assert not d.HasField("label") and d.data == b"" and list(d.float_data) == f.ravel().tolist()
    back = sio.datum_to_array(d)
    assert back.dtype == np.float64 and np.array_equal(back, f)
    with pytest.raises(ValueError, match="Incorrect array shape."):
        sio.array_to_datum(np.zeros((2, 2)))


def test_blobproto_round_trips():
    a = RNG.normal(size=(2, 3, 4))
    diff = RNG.normal(size=(2, 3, 4))
    blob = sio.array_to_blobproto(a, diff)
    assert list(blob.shape.dim) == [2, 3, 4] and not blob.HasField("num")
    blob = caffe_pb2.BlobProto.FromString(blob.SerializeToString())
    assert np.array_equal(sio.blobproto_to_array(blob), a.astype(np.float32))   # BlobProto.data is float32
    assert np.array_equal(sio.blobproto_to_array(blob, return_diff=True), diff.astype(np.float32))
    legacy = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2, data=list(range(12)))  # a mean.binaryproto
    assert sio.blobproto_to_array(legacy).shape == (1, 3, 2, 2)
    assert sio.blobproto_to_array(legacy)[0, 2].tolist() == [[8.0, 9.0], [10.0, 11.0]]
    doubles = caffe_pb2.BlobProto(double_data=[0.1, 0.2])
    doubles.shape.dim.append(2)
    assert sio.blobproto_to_array(doubles).tolist() == [0.1, 0.2]


def test_blobprotovector_round_trips():
    arrays = [RNG.normal(size=(2, 3)).astype(np.float32), np.arange(24.0).reshape(1, 2, 3, 4)]
    data = sio.arraylist_to_blobprotovector_str(arrays)
    assert sio.arraylist_to_blobprotovecor_str(arrays) == data       # pycaffe's spelling
    vec = caffe_pb2.BlobProtoVector.FromString(data)
    assert [list(b.shape.dim) for b in vec.blobs] == [[2, 3], [1, 2, 3, 4]]
    back = sio.blobprotovector_str_to_arraylist(data)
    assert len(back) == 2 and all(np.array_equal(x, y) for x, y in zip(back, arrays))
