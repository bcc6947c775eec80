"""pycaffe's classifier.py: ``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
raw_scale=None, channel_swap=None)``, a :class:`sfport.pycaffe.net.Net` in the TEST phase that classifies H x W x K
images: each is resized to ``image_dims``, then cropped to the net's input (the centre, or pycaffe's 10 crops of
``caffe.io.oversample``, whose predictions are averaged), prepared by a ``caffe.io.Transformer``
(:class:`sfport.data.caffe_io.Transformer`) and run through the net in batches (``forward_all``).

:func:`configure_transformer` is the pre-processing both classifier.py and detector.py set up in their
constructors: H x W x K -> K x H x W, then channel swap, raw scale, mean and input scale as given.
"""
from __future__ import annotations

import numpy as np

from sfport.data import caffe_io
from sfport.protos import caffe_pb2
from sfport.pycaffe.net import Net


def configure_transformer(net: Net, mean=None, input_scale=None, raw_scale=None,
                          channel_swap=None) -> caffe_io.Transformer:
    """classifier.py / detector.py ``__init__``'s "configure pre-processing": a Transformer for the net's first
    input, transposing (2, 0, 1), with each of ``mean``, ``input_scale``, ``raw_scale`` and ``channel_swap``
    that is given."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """classifier.py Classifier: a Net for image class prediction by scaling, centre cropping or oversampling.

    ``image_dims``: the (height, width) images are scaled to before cropping; by default the net input's own, so
    that the crop is the whole image. ``mean``, ``input_scale``, ``raw_scale``, ``channel_swap``: the
    Transformer's pre-processing (``self.transformer``). ``self.crop_dims`` is the input's (height, width)."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None):
        Net.__init__(self, model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:   # classifier.py: ``if not image_dims``
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """classifier.py Classifier.predict: (N x C) class probabilities of a sequence of N (H x W x K) images
        (the net's first output, sorted by name as Caffe's are). ``oversample``: averaged over the centre, the
        four corners and their mirrors (``caffe.io.oversample``); else the centre crop only."""
        # Scale to standardize input dimensions.
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]),
                          dtype=np.float32)
        for ix, in_ in enumerate(inputs):
            input_[ix] = caffe_io.resize_image(in_, self.image_dims)

        if oversample:
            # Generate center, corner, and mirrored crops.
            input_ = caffe_io.oversample(input_, self.crop_dims)
        else:
            # Take center crop.
            center = np.array(self.image_dims) / 2.0
            crop = np.tile(center, (1, 2))[0] + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]

        # Classify
        in_name = self.inputs[0]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(in_name, in_)
        out = self.forward_all(**{in_name: caffe_in})
        predictions = out[self.outputs[0]]

        # For oversampling, average predictions across crops.
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1))
            predictions = predictions.mean(1)
        return predictions
