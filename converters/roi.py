"""The two-stage detectors' layers: ROIPooling and SmoothL1Loss of py-faster-rcnn's Caffe (rbgirshick/caffe-fast-rcnn,
branch faster-rcnn: roi_pooling_layer.cpp / .cu, smooth_L1_loss_layer.cpp / .cu) and PSROIPooling of R-FCN's
(daijifeng001/caffe-rfcn: psroi_pooling_layer.cu; the SSD-derived oracle fork carries the same kernels).

The forks compute these on the GPU (their Backward_cpu, and PSROIPooling's and SmoothL1Loss's Forward_cpu, are
NOT_IMPLEMENTED); the modules follow the kernels' float arithmetic operation by operation: C's ``round`` (halves
away from zero) of the roi coordinates, the bins' float ``floor`` / ``ceil``, an empty bin giving 0, the first
maximum in row-major order winning, and the backward kernels' routing.

Export: ROIPooling's bins depend on the rois' values, so its eager computation (sparse tables of block maxima as
deep as the largest bin) cannot be a graph; ONNX has the same operator, MaxRoiPool (onnxruntime's kernel is Caffe's
Forward_cpu), which the ONNX export writes. It has no TorchScript form. PSROIPooling is made of standard operators (a summed-area
table in float64, gathers at the bins' corners) and exports to both. The modules are :mod:`.modules.roi`.
"""
from __future__ import annotations

import math

import numpy as np

from .base import NoParams, layer_error as _bad, register


def _check_bottoms(layer, bottom_shapes) -> tuple:
    """The feature map N x C x H x W and the rois R x 5 (a roi ``[batch_index, x1, y1, x2, y2]``; the kernels read
    5 values per roi). Returns (data shape, R)."""
    if len(layer.bottom) != 2 or len(layer.top) != 1:   # MinBottomBlobs / MaxBottomBlobs 2, one top
        raise _bad(layer, f"takes 2 bottoms (the feature map and the rois) and 1 top, not {len(layer.bottom)} and "
                          f"{len(layer.top)}")
    data, rois = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
    if len(data) != 4:
        raise _bad(layer, f"bottom '{layer.bottom[0]}' {list(data)} must be N x C x H x W")
    if len(rois) < 2 or math.prod(rois[1:]) != 5:
        raise _bad(layer, f"bottom '{layer.bottom[1]}' {list(rois)} must be R x 5 rois "
                          f"[batch_index, x1, y1, x2, y2]")
    return data, rois[0]


# ---------------------------------------------------------------------------------------------------------
# ROIPooling
# ---------------------------------------------------------------------------------------------------------


@register("ROIPooling")
class ROIPoolingConverter(NoParams):
    fresh_top = True

    def _setup(self, layer, bottom_shapes):
        p = layer.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:   # LayerSetUp: CHECK_GT(pooled_h, 0), CHECK_GT(pooled_w, 0)
            raise _bad(layer, f"roi_pooling_param pooled_h and pooled_w must be > 0, got {p.pooled_h} and "
                              f"{p.pooled_w}")
        return _check_bottoms(layer, bottom_shapes)

    def top_shapes(self, layer, bottom_shapes):
        """ROIPoolingLayer::Reshape: ``bottom[1]->num() x channels x pooled_h x pooled_w``."""
        data, r = self._setup(layer, bottom_shapes)
        p = layer.roi_pooling_param
        return [(r, data[1], p.pooled_h, p.pooled_w)]

    def build(self, layer, bottom_shapes):
        from .modules.roi import ROIPooling
        self._setup(layer, bottom_shapes)
        p = layer.roi_pooling_param
        return ROIPooling(layer.name, p.pooled_h, p.pooled_w, float(np.float32(p.spatial_scale)))


# ---------------------------------------------------------------------------------------------------------
# PSROIPooling
# ---------------------------------------------------------------------------------------------------------


@register("PSROIPooling")
class PSROIPoolingConverter(NoParams):
    fresh_top = True

    def _setup(self, layer, bottom_shapes):
        p = layer.psroi_pooling_param
        missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not p.HasField(f)]
        if missing:   # `required` fields in R-FCN's caffe.proto
            raise _bad(layer, f"psroi_pooling_param must set {', '.join(missing)}")
        if p.output_dim <= 0 or p.group_size <= 0:   # LayerSetUp: CHECK_GT(output_dim, 0), CHECK_GT(group_size, 0)
            raise _bad(layer, f"psroi_pooling_param output_dim and group_size must be > 0, got {p.output_dim} and "
                              f"{p.group_size}")
        data, r = _check_bottoms(layer, bottom_shapes)
        need = p.output_dim * p.group_size * p.group_size
        if data[1] != need:   # Reshape: CHECK_EQ(channels_, output_dim_ * group_size_ * group_size_)
            raise _bad(layer, f"input channel number does not match layer parameters: bottom '{layer.bottom[0]}' "
                              f"has {data[1]} channels, output_dim * group_size^2 is {need}")
        return data, r

    def top_shapes(self, layer, bottom_shapes):
        """PSROIPoolingLayer::Reshape: ``bottom[1]->num() x output_dim x group_size x group_size``."""
        _, r = self._setup(layer, bottom_shapes)
        p = layer.psroi_pooling_param
        return [(r, p.output_dim, p.group_size, p.group_size)]

    def build(self, layer, bottom_shapes):
        from .modules.roi import PSROIPooling
        self._setup(layer, bottom_shapes)
        p = layer.psroi_pooling_param
        return PSROIPooling(layer.name, p.output_dim, p.group_size, float(np.float32(p.spatial_scale)))


# ---------------------------------------------------------------------------------------------------------
# SmoothL1Loss
# ---------------------------------------------------------------------------------------------------------

def _legacy(shape) -> tuple:
    """Blob::num(), channels(), height(), width() of a blob of at most 4 axes (1 past its last axis)."""
    return tuple(shape) + (1,) * (4 - len(shape))


@register("SmoothL1Loss")
class SmoothL1LossConverter(NoParams):
    """py-faster-rcnn's form: 2 bottoms, or 4 with the inside and outside weights; ``smooth_l1_loss_param.sigma``.
    The SSD fork's SmoothL1Loss is the 2-bottom form with sigma 1 (its hpp allows a third bottom, but it keeps
    LossLayer's ExactNumBottomBlobs() of 2, so its pycaffe refuses one)."""
    loss = True
    label_bottoms = (1, 2, 3)    # the targets and the weights (from the target layers, never an inference input)

    def _check(self, layer, bottom_shapes):
        if len(layer.bottom) not in (2, 4):
            raise _bad(layer, f"takes 2 bottoms (predictions, targets) or 4 (and the inside and outside weights), "
                              f"not {len(layer.bottom)} (caffe-fast-rcnn: 'If weights are used, must specify both "
                              f"inside and outside weights')")
        if len(layer.top) != 1:
            raise _bad(layer, f"takes 1 top, not {len(layer.top)}")
        shapes = [tuple(s) for s in bottom_shapes]
        for name, s in zip(layer.bottom, shapes):
            if not 1 <= len(s) <= 4:   # Blob::LegacyShape: CHECK_LE(num_axes(), 4); LossLayer: bottom[0]->shape(0)
                raise _bad(layer, f"bottom '{name}' {list(s)} must have 1 to 4 axes")
        want = _legacy(shapes[0])
        for name, s in zip(layer.bottom[1:], shapes[1:]):
            # LossLayer::Reshape (the first dimension) and Reshape's CHECK_EQ of channels, height, width; the
            # weights' first dimension too (the kernels read count values of each)
            if _legacy(s) != want:
                raise _bad(layer, f"bottom '{name}' {list(s)} must have the shape of '{layer.bottom[0]}' "
                                  f"{list(shapes[0])} (num, channels, height, width)")
        sigma = np.float32(layer.smooth_l1_loss_param.sigma)
        return float(np.float32(sigma * sigma))   # LayerSetUp: sigma2_ = sigma() * sigma(), a float

    def top_shapes(self, layer, bottom_shapes):
        self._check(layer, bottom_shapes)
        return [()]

    def build(self, layer, bottom_shapes):
        from .modules.roi import SmoothL1Loss
        return SmoothL1Loss(self._check(layer, bottom_shapes))


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.roi`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import roi
    return getattr(roi, name)
