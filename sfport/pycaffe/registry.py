"""pycaffe's ``layer_type_list()``: the layer types a net may name (_caffe.cpp over LayerRegistry::LayerTypeList,
the keys of Caffe's registry map, so sorted): every type with a converter and every data layer type."""
from __future__ import annotations

from sfport import converters
from sfport.netdef import datalayers


def layer_type_list() -> list[str]:
    return sorted(set(converters.registered_types()) | set(datalayers.DATA_TYPES))
