"""HDF5Output: the sink layer that writes its two bottoms to an HDF5 file (hdf5_output_layer.cpp). Needs the
optional ``h5py`` (``pip install sfport[hdf5]``)."""
from __future__ import annotations

from sfport.errors import CaffeFileError

from .base import Converter, register


@register("HDF5Output")
class HDF5OutputConverter(Converter):
    training_only = True   # a sink of training and test nets: the deploy form drops it

    def top_shapes(self, layer, bottom_shapes):
        if len(layer.bottom) < 2:   # CHECK_GE(bottom.size(), 2)
            raise CaffeFileError(None, f"layer '{layer.name}' (HDF5Output): needs two bottoms (data, label), "
                                       f"not {len(layer.bottom)}")
        if layer.top:
            raise CaffeFileError(None, f"layer '{layer.name}' (HDF5Output): has no tops, not {len(layer.top)}")
        return []

    def param_shapes(self, layer, bottom_shapes):
        return []

    def build(self, layer, bottom_shapes):
        from .modules.hdf5 import HDF5Output
        self.top_shapes(layer, bottom_shapes)
        if not layer.hdf5_output_param.file_name:
            raise CaffeFileError(None, f"layer '{layer.name}' (HDF5Output): hdf5_output_param.file_name is empty")
        return HDF5Output(layer.hdf5_output_param.file_name, layer.name)


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.hdf5`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import hdf5
    return getattr(hdf5, name)
