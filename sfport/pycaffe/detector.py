"""pycaffe's detector.py: ``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
channel_swap=None, context_pad=None)``, a :class:`sfport.pycaffe.net.Net` in the TEST phase for windowed detection
as in R-CNN (Girshick, Donahue, Darrell, Malik, "Rich feature hierarchies for accurate object detection and
semantic segmentation", arXiv:1311.2524): each window (ymin, xmin, ymax, xmax) of an image is cropped, with a
``context_pad`` border of surrounding context if asked (filled with the mean where the image ends), warped to the
net's input by the Transformer (:func:`sfport.pycaffe.classifier.configure_transformer`) and classified, all
windows in batches.

``detect_selective_search`` asks the external ``selective_search_ijcv_with_python`` module
(https://github.com/sergeyk/selective_search_ijcv_with_python, which runs MATLAB) for the windows; it is imported
when called, and its absence is an ImportError naming it.
"""
from __future__ import annotations

import os

import numpy as np

from sfport.data import caffe_io
from sfport.protos import caffe_pb2
from sfport.pycaffe.classifier import configure_transformer
from sfport.pycaffe.net import Net

SELECTIVE_SEARCH = "selective_search_ijcv_with_python"


class Detector(Net):
    """detector.py Detector: a Net for windowed detection over a list of crops or selective search proposals.

    ``mean``, ``input_scale``, ``raw_scale``, ``channel_swap``: the Transformer's pre-processing
    (``self.transformer``). ``context_pad``: the border of the net's input, in its pixels, that is context around
    the window, as in R-CNN feature extraction (:meth:`configure_crop`)."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None, channel_swap=None,
                 context_pad=None):
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows) -> list[dict]:
        """detector.py Detector.detect_windows: for (image filename, window list) pairs, each window cropped from
        its image (``caffe.io.load_image``, :meth:`crop`), warped to the input and classified; a list of
        ``{'window', 'prediction', 'filename'}`` dicts, one per window in order (``prediction`` a row of the net's
        first output). The pairs are read once (an iterator, such as a ``zip``, serves)."""
        images_windows = list(images_windows)   # Python 3's zip is read once; the pairs are walked twice
        # Extract windows.
        window_inputs = []
        for image_fname, windows in images_windows:
            image = caffe_io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))

        # Run through the net (warping windows to input dimensions).
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2]) + self.blobs[in_].data.shape[2:],
                            dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]

        # Package predictions with images and windows.
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames) -> list[dict]:
        """detector.py Detector.detect_selective_search: :meth:`detect_windows` over the Selective Search
        proposals (``selective_search_ijcv_with_python.get_windows(..., cmd='selective_search_rcnn')``) of each
        image, given by absolute paths (for MATLAB)."""
        try:
            import selective_search_ijcv_with_python as selective_search  # noqa: PLC0415 - optional, external
        except ImportError as e:
            raise ImportError(f"Detector.detect_selective_search needs the {SELECTIVE_SEARCH} module "
                              f"(https://github.com/sergeyk/selective_search_ijcv_with_python, with MATLAB) on the "
                              f"Python path: {e}") from e
        # Make absolute paths so MATLAB can find the files.
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        # Run windowed detection on the selective search list.
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im: np.ndarray, window) -> np.ndarray:
        """detector.py Detector.crop: the window (ymin, xmin, ymax, xmax; the maxima exclusive when slicing) of
        an H x W x K image. With ``context_pad``, the window grown so that a ``context_pad`` border of the (square)
        input is context, clipped to the image, resized and placed in an input-sized crop filled with the mean
        (``crop_mean``) where the grown box left the image."""
        # Crop window from the image.
        crop = im[window[0]:window[2], window[1]:window[3]]

        if self.context_pad:
            box = window.copy()
            crop_size = self.blobs[self.inputs[0]].width  # assumes square
            scale = crop_size / (1. * crop_size - self.context_pad * 2)
            # Crop a box + surrounding context.
            half_h = (box[2] - box[0] + 1) / 2.
            half_w = (box[3] - box[1] + 1) / 2.
            center = (box[0] + half_h, box[1] + half_w)
            scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
            box = np.round(np.tile(center, 2) + scaled_dims)
            full_h = box[2] - box[0] + 1
            full_w = box[3] - box[1] + 1
            scale_h = crop_size / full_h
            scale_w = crop_size / full_w
            pad_y = int(round(max(0, -box[0]) * scale_h))  # amount out-of-bounds
            pad_x = int(round(max(0, -box[1]) * scale_w))

            # Clip box to image dimensions.
            im_h, im_w = im.shape[:2]
            box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
            clip_h = box[2] - box[0] + 1
            clip_w = box[3] - box[1] + 1
            assert clip_h > 0 and clip_w > 0
            crop_h = int(round(clip_h * scale_h))
            crop_w = int(round(clip_w * scale_w))
            if pad_y + crop_h > crop_size:
                crop_h = crop_size - pad_y
            if pad_x + crop_w > crop_size:
                crop_w = crop_size - pad_x

            # collect with context padding and place in input
            # with mean padding
            y0, x0, y1, x1 = (int(b) for b in box)   # whole numbers already (rounded, clipped to the image)
            context_crop = im[y0:y1, x0:x1]
            context_crop = caffe_io.resize_image(context_crop, (crop_h, crop_w))
            crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
            crop[pad_y:(pad_y + crop_h), pad_x:(pad_x + crop_w)] = context_crop
        return crop

    def configure_crop(self, context_pad) -> None:
        """detector.py Detector.configure_crop: ``crop_dims``, the input's (height, width, channels), and
        ``context_pad``; with context, ``crop_mean``, the Transformer's mean taken back to the unprocessed image
        (transposed back, channels un-swapped, divided by the raw scale; zeros without a mean), which fills the
        context beyond the image."""
        # crop dimensions
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        # context padding
        self.context_pad = context_pad
        if self.context_pad:
            transpose = self.transformer.transpose.get(in_)
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            # Padding context crops needs the mean in unprocessed input space.
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                inv_transpose = [transpose[t] for t in transpose]
                # a copy, in floating point (an integer mean divided by the raw scale too)
                crop_mean = np.asarray(mean).transpose(inv_transpose).astype(
                    np.promote_types(np.asarray(mean).dtype, np.float32))
                if channel_order is not None:
                    channel_order = list(channel_order)
                    channel_order_inverse = [channel_order.index(i) for i in range(crop_mean.shape[2])]
                    crop_mean = crop_mean[:, :, channel_order_inverse]
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
