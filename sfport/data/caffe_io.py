"""pycaffe's ``caffe.io`` without Caffe or scikit-image: ``import sfport as caffe`` and a script's
``caffe.io.Transformer``, ``caffe.io.load_image``, ``resize_image``, ``oversample`` and the blob / datum
conversions behave as BVLC Caffe's ``python/caffe/io.py`` (final version, N-D ``array_to_blobproto``, argsort
inverses in ``deprocess``).

Where pycaffe calls scikit-image, sfport does what the scikit-image of pycaffe's time (0.12 - 0.15, the releases
that still took ``imread(..., as_grey=...)``) did:

* :func:`load_image` decodes with OpenCV (``cv2.imread(IMREAD_UNCHANGED)`` through :func:`sfport.data.images.read_image`,
  with its size and corruption checks) instead of ``skimage.io.imread``, turns BGR(A) into RGB(A), and scales as
  ``img_as_float`` (uint8 * (1/255), uint16 * (1/65535), floats unchanged); ``color=False`` on a colour file is
  ``rgb2grey`` (0.2125 R + 0.7154 G + 0.0721 B of the first three channels, in float64).
* :func:`resize_image`'s 1- or 3-channel path is ``skimage.transform.resize(im, new_dims, order, mode='constant')``:
  ``warp`` with the affine map ``src = (in/out) * (dst + 0.5) - 0.5`` per axis, skimage's own interpolation
  (``_warp_fast`` / ``interpolation.pxd``: nearest with round-half-away-from-zero, bilinear, its biquadratic, and
  Catmull-Rom bicubic), pixels outside the image read as 0 (``mode='constant'``, ``cval=0``: upsampled borders
  darken, as they did in pycaffe), no anti-aliasing (it came with skimage 0.15's ``anti_aliasing``), output clipped
  to the input's range. skimage derived the map from ``AffineTransform.estimate`` (an SVD), so its sample
  positions differ from these in the last bits: results agree to ~1e-7, and order 0 can pick the other pixel
  where a position falls exactly half-way. The other channel counts go to ``scipy.ndimage.zoom`` as in pycaffe.

The Transformer's misuse raises what pycaffe raises (``Exception`` for an unknown input or an order of the wrong
length, ``ValueError`` for a mean that does not fit); unlike pycaffe, ``preprocess`` never writes into the array
it was given (pycaffe's ``astype(copy=False)`` and in-place scaling could), and shapes given as lists compare as
tuples. A missing or corrupt image is a :class:`sfport.errors.CaffeFileError`.
"""
from __future__ import annotations

import numpy as np

from sfport.formats import caffe_files
from sfport.data import images
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

__all__ = ["Transformer", "array_to_blobproto", "array_to_datum", "arraylist_to_blobprotovecor_str",
           "arraylist_to_blobprotovector_str", "blobproto_to_array", "blobprotovector_str_to_arraylist",
           "datum_to_array", "load_image", "oversample", "resize_image"]


# ---------------------------------------------------------------------------------------------------------
# proto / datum / ndarray conversion (io.py: blobproto_to_array ... datum_to_array)
# ---------------------------------------------------------------------------------------------------------

def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as a float64 array of its shape: the legacy num/channels/height/width when
    any is set, else ``shape.dim`` (:func:`sfport.formats.caffe_files.blob_shape`, as Blob::FromProto). A blob that holds
    only ``double_data`` / ``double_diff`` gives those (pycaffe would fail to reshape an empty array)."""
    values = blob.diff if return_diff else blob.data
    if not len(values):
        values = blob.double_diff if return_diff else blob.double_data
    return np.array(values).reshape(caffe_files.blob_shape(blob))


def array_to_blobproto(arr, diff=None):
    """An N-D array (and optionally its diff, of the same shape: not checked) as a BlobProto with ``shape.dim``."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(diff.astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """A list of arrays as a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str  # pycaffe's own (misspelt) name


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """A serialized BlobProtoVector as a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A C x H x W array as a Datum: uint8 as the ``data`` bytes, any other dtype as ``float_data``; the label is
    set when given."""
    if arr.ndim != 3:
        raise ValueError('Incorrect array shape.')
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum) -> np.ndarray:
    """A raw Datum as a C x H x W array: uint8 from ``data``, else float64 from ``float_data`` (the label is
    ``datum.label``)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data).astype(float).reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# Pre-processing (io.py: class Transformer)
# ---------------------------------------------------------------------------------------------------------

class Transformer:
    """Input preparation for a net, as pycaffe's ``caffe.io.Transformer``.

    ``inputs``: input name -> blob shape (N, C, H, W), e.g. ``sfport.TorchNet(...).inputs`` or
    ``{'data': net.blobs['data'].data.shape}``. The classic recipe for an RGB [0, 1] image from
    :func:`load_image` and a BGR [0, 255] Caffe model::

        t = Transformer({'data': (1, 3, 227, 227)})
        t.set_transpose('data', (2, 0, 1))       # H x W x C -> C x H x W
        t.set_channel_swap('data', (2, 1, 0))    # RGB -> BGR
        t.set_raw_scale('data', 255)             # [0, 1] -> [0, 255]
        t.set_mean('data', np.array([104, 117, 123]))
        blob = t.preprocess('data', load_image('cat.jpg'))
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception('{} is not one of the net inputs: {}'.format(in_, self.inputs))

    def preprocess(self, in_, data) -> np.ndarray:
        """H' x W' x K image -> K x H x W float32 blob, in pycaffe's order: to float32, resize to the input's H x
        W (:func:`resize_image`) when it differs, transpose, channel swap, ``*= raw_scale``, ``-= mean``,
        ``*= input_scale`` (in place on float32, as pycaffe: a float64 mean is subtracted in float64 and the
        result rounded to float32)."""
        self.__check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)  # a copy: the caller's array is left alone
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[channel_swap, :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data) -> np.ndarray:
        """The inverse of :meth:`preprocess` (but for the resize), on a squeezed copy of ``data``: ``/=
        input_scale``, ``+= mean``, ``/= raw_scale``, the inverse channel swap and transpose."""
        self.__check_input(in_)
        decaf_in = data.copy().squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """The axis order that turns the given image into the blob's layout, e.g. (2, 0, 1): H x W x C -> C x H x
        W; it must name one axis fewer than the input's shape has."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception('Transpose order needs to have the same number of dimensions as the input.')
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """The channel order taken after the transpose (channels are then the first axis), e.g. (2, 1, 0): RGB ->
        BGR; one entry per input channel."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception('Channel swap needs to have the same number of dimensions as the input channels.')
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """The factor applied before the mean: 255 for models trained on [0, 255] pixels and fed
        :func:`load_image`'s [0, 1]."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean subtracted after the raw scale: a (C,) array per channel, or a (C, H, W) / (H, W) mean image
        of the input's own C x H x W (``ValueError`` otherwise, with pycaffe's messages)."""
        self.__check_input(in_)
        ms = mean.shape
        if mean.ndim == 1:
            # broadcast channels
            if ms[0] != self.inputs[in_][1]:
                raise ValueError('Mean channels incompatible with input.')
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            # elementwise mean
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError('Mean shape invalid')
            if ms != tuple(self.inputs[in_][1:]):
                raise ValueError('Mean shape incompatible with input shape.')
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """The factor applied last, after the mean (e.g. 0.0078125 for SphereFace's (x - 127.5) / 128)."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


# ---------------------------------------------------------------------------------------------------------
# Image IO (io.py: load_image, resize_image, oversample)
# ---------------------------------------------------------------------------------------------------------

def _img_as_float(img: np.ndarray, path) -> np.ndarray:
    """skimage.img_as_float: unsigned integers * (1 / max) in float64, floats unchanged."""
    if img.dtype in (np.uint8, np.uint16):
        return np.multiply(img, 1.0 / np.iinfo(img.dtype).max, dtype=np.float64)
    if img.dtype.kind == "f":
        return img
    raise CaffeFileError(path, f"a {img.dtype} image: load_image reads 8- and 16-bit and floating-point images")


def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as float32 H x W x 3 RGB in [0, 1] (``color``), or H x W x 1 intensity (``color=False``:
    a colour file becomes 0.2125 R + 0.7154 G + 0.0721 B, skimage's rgb2grey); a grey file is tiled to 3
    channels for ``color``, an alpha channel dropped. pycaffe's ``caffe.io.load_image``."""
    img = images.read_image(filename, None)  # cv2.imread(IMREAD_UNCHANGED): grey, BGR or BGRA
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] not in (3, 4):
            raise CaffeFileError(filename, f"an image of {img.shape[2]} channels: load_image reads grey, RGB "
                                           f"and RGBA images")
    if img.ndim == 3:
        rgb = img[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped (what load_image does after skimage's RGBA)
        if color:
            return _img_as_float(rgb, filename).astype(np.float32)
        rgb = _img_as_float(rgb, filename)
        gray = 0.2125 * rgb[..., 0]   # skimage rgb2grey, term by term as it summed them
        gray[:] += 0.7154 * rgb[..., 1]
        gray[:] += 0.0721 * rgb[..., 2]
        return gray.astype(np.float32)[:, :, np.newaxis]
    img = _img_as_float(img, filename).astype(np.float32)[:, :, np.newaxis]
    return np.tile(img, (1, 1, 3)) if color else img


def _round_away(x: np.ndarray) -> np.ndarray:
    """interpolation.pxd round(): half away from zero."""
    return np.where(x > 0, np.trunc(x + 0.5), np.trunc(x - 0.5)).astype(np.intp)


def _interp_axis(a: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """skimage 0.13's interpolation (interpolation.pxd) along one axis of ``a``, which carries 2 zero pixels
    (``mode='constant'``, ``cval=0``) on each side of its ``n`` real ones, at the positions resize samples:
    ``(n / n_out) * (i + 0.5) - 0.5``."""
    n = a.shape[axis] - 4
    r = (float(n) / float(n_out)) * (np.arange(n_out) + 0.5) - 0.5

    def at(idx, shift=0):
        return np.take(a, idx + shift + 2, axis=axis)

    def col(x):
        shape = [1] * a.ndim
        shape[axis] = n_out
        return x.reshape(shape)

    if order == 0:
        return at(_round_away(r))
    if order == 1:
        lo, hi = np.floor(r).astype(np.intp), np.ceil(r).astype(np.intp)
        d = col(r - lo)
        return (1 - d) * at(lo) + d * at(hi)
    if order == 2:   # skimage's biquadratic ("not implemented correctly", but what order=2 did)
        r0 = _round_away(r) - 1
        x = col(r - r0)
        f0, f1, f2 = at(r0), at(r0, 1), at(r0, 2)
        return (x * f2 * (x - 1)) / 2 - x * f1 * (x - 2) + (f0 * (x - 1) * (x - 2)) / 2
    r0 = np.floor(r).astype(np.intp)   # order 3: Catmull-Rom (Keys) cubic convolution
    x = col(r - r0)
    f0, f1, f2, f3 = at(r0, -1), at(r0), at(r0, 1), at(r0, 2)
    return f1 + 0.5 * x * (f2 - f0 + x * (2.0 * f0 - 5.0 * f1 + 4.0 * f2 - f3 + x * (3.0 * (f1 - f2) + f3 - f0)))


def _skimage_resize(image: np.ndarray, new_dims, order: int) -> np.ndarray:
    """skimage.transform.resize(image, new_dims, order=order, mode='constant') of an H x W or H x W x K image in
    float64, as in skimage 0.12 - 0.14 (see the module's docstring)."""
    if order not in (0, 1, 2, 3):
        raise CaffeFileError(None, f"resize_image: interp_order {order}: sfport reproduces skimage's resize "
                                   f"orders 0 to 3 for 1- and 3-channel images")
    rows, cols = int(new_dims[0]), int(new_dims[1])
    img = np.asarray(image, dtype=np.float64)
    flat = img.ndim == 2
    a = np.pad(img[:, :, None] if flat else img, ((2, 2), (2, 2), (0, 0)))
    out = _interp_axis(_interp_axis(a, 1, cols, order), 0, rows, order)  # columns first, as the .pxd
    if order != 0:   # warp's clip=True: to the input's range
        np.clip(out, img.min(), img.max(), out=out)
    return out[:, :, 0] if flat else out


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """An H x W x K array resized to ``new_dims`` (height, width), float32: 1 or 3 channels by skimage's resize
    of the image scaled to [0, 1] and back (a constant image stays that constant), other channel counts by
    ``scipy.ndimage.zoom``. pycaffe's ``caffe.io.resize_image``."""
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            # skimage is fast but only understands {1,3} channel images in [0, 1].
            im_std = (im - im_min) / (im_max - im_min)
            resized_std = _skimage_resize(im_std, new_dims, interp_order)
            resized_im = resized_std * (im_max - im_min) + im_min
        else:
            # the image is a constant -- avoid divide by 0
            ret = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        from scipy.ndimage import zoom  # noqa: PLC0415 - scipy loads with the first such resize
        # ndimage interpolates anything but more slowly.
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized_im = zoom(im, scale + (1,), order=interp_order)
    return resized_im.astype(np.float32)


def oversample(images, crop_dims) -> np.ndarray:
    """10 crops of each H x W x K image: the four corners and the centre, then the same five mirrored left to
    right; float32, (10 N) x h x w x K. pycaffe's ``caffe.io.oversample``."""
    # Dimensions and center.
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0

    # Make crop coordinates
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))

    # Extract crops
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]  # flip for mirrors
    return crops
