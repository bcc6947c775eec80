"""DeepLab's segmentation layers (DeepLab v1 and v2, whose V1 types SEG_ACCURACY, MAT_WRITE and PADDING sfport
upgrades to SegAccuracy, MatWrite and Padding): the confusion-matrix accuracy of a segmentation
(seg_accuracy_layer.cpp with util/confusion_matrix.cpp), the sink that writes each image's scores to a MAT-file
(mat_write_layer.cpp with Blob::ToMat), and the zero padding or crop of H and W (padding_layer.cpp). The modules
are :mod:`.modules.segmentation`."""
from __future__ import annotations

from .base import Converter, NoParams, layer_error as _bad, register


@register("SegAccuracy")
class SegAccuracyConverter(NoParams):
    training_only = True   # a measure of test nets: the deploy form drops it, as it drops Accuracy

    def top_shapes(self, layer, bottom_shapes):
        """SegAccuracyLayer::Reshape's CHECKs; its top is 1 x 1 x 1 x 3."""
        if len(layer.bottom) != 2 or len(layer.top) != 1:
            raise _bad(layer, f"takes two bottoms (scores, label) and gives one top, not {len(layer.bottom)} "
                              f"and {len(layer.top)}")
        s, lab = (tuple(b) for b in bottom_shapes)
        if len(s) != 4 or len(lab) != 4:
            raise _bad(layer, f"scores and label are 4-D blobs, not {list(s)} and {list(lab)}")
        if s[0] != lab[0] or lab[1] != 1 or s[2:] != lab[2:]:
            raise _bad(layer, f"the label {list(lab)} must be N x 1 x H x W of the scores {list(s)} (the same "
                              f"number, one channel, the same height and width)")
        return [(1, 1, 1, 3)]

    def build(self, layer, bottom_shapes):
        from .modules.segmentation import SegAccuracy
        self.top_shapes(layer, bottom_shapes)
        return SegAccuracy(layer.name, tuple(layer.seg_accuracy_param.ignore_label))


@register("Padding")
class PaddingConverter(NoParams):
    def top_shapes(self, layer, bottom_shapes):
        """PaddingLayer::LayerSetUp / Reshape: the pads both >= 0 or both <= 0; H and W + pad_beg + pad_end > 0."""
        p = layer.padding_param
        if (p.pad_beg > 0 and p.pad_end < 0) or (p.pad_beg < 0 and p.pad_end > 0):
            raise _bad(layer, f"Padding must either be both positive or negative (pad_beg {p.pad_beg}, pad_end "
                              f"{p.pad_end})")
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4:
            raise _bad(layer, f"takes a 4-D blob, not {list(shape)}")
        h, w = (d + p.pad_beg + p.pad_end for d in shape[2:])
        if h <= 0 or w <= 0:
            raise _bad(layer, f"Padding makes height or width <= 0 ({h} x {w} from {shape[2]} x {shape[3]})")
        return [shape[:2] + (h, w)]

    def build(self, layer, bottom_shapes):
        from .modules.segmentation import Padding
        self.top_shapes(layer, bottom_shapes)
        return Padding(layer.padding_param.pad_beg, layer.padding_param.pad_end)


@register("MatWrite")
class MatWriteConverter(Converter):
    training_only = True   # a sink of test nets: the deploy form drops it, its bottom becomes an output

    def top_shapes(self, layer, bottom_shapes):
        if layer.top:
            raise _bad(layer, f"has no tops, not {len(layer.top)}")
        return []

    def param_shapes(self, layer, bottom_shapes):
        return []

    def build(self, layer, bottom_shapes):
        """MatWriteLayer::LayerSetUp's checks: period > 0, strip >= 0 (the source is read at the first forward)."""
        from .modules.segmentation import MatWrite
        self.top_shapes(layer, bottom_shapes)
        p = layer.mat_write_param
        if p.period <= 0:
            raise _bad(layer, f"period must be positive, not {p.period}")
        if p.HasField("source") and p.strip < 0:
            raise _bad(layer, f"strip cannot be negative ({p.strip})")
        return MatWrite(layer.name, p.prefix, p.source if p.HasField("source") else None, p.strip, p.period)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.segmentation`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import segmentation
    return getattr(segmentation, name)
