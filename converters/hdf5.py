"""HDF5Output: the sink layer that writes its two bottoms to an HDF5 file (hdf5_output_layer.cpp). Needs the
optional ``h5py`` (``pip install sfport[hdf5]``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from sfport.errors import CaffeFileError

from .base import Converter, NoBlobs, register

# hdf5_output_layer.hpp: HDF5_DATA_DATASET_NAME, HDF5_DATA_LABEL_NAME
DATASETS = ("data", "label")


class HDF5Output(NoBlobs):
    """Writes bottoms 0 and 1 as the float datasets ``data`` and ``label`` of ``file_name`` at every forward
    (HDF5OutputLayer::Forward_cpu + SaveBlobs). Caffe creates the file once (H5F_ACC_TRUNC in LayerSetUp) and a
    second forward fails on the existing datasets; here each forward replaces the file whole (temporary name,
    then rename), so the file holds the last batch. Nothing is written while a net is traced or exported."""

    def __init__(self, file_name: str, layer_name: str):
        super().__init__()
        self.file_name, self.layer_name = file_name, layer_name

    def forward(self, data, label):
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            return ()
        if data.shape[0] != label.shape[0]:   # CHECK_EQ(bottom[0]->num(), bottom[1]->num())
            raise CaffeFileError(None, f"layer '{self.layer_name}' (HDF5Output): data and label have different "
                                       f"numbers ({data.shape[0]} and {label.shape[0]})")
        try:
            import h5py
        except ImportError:
            raise CaffeFileError(self.file_name, "writing HDF5 needs the 'h5py' package: pip install "
                                                 "sfport[hdf5]") from None
        target = Path(self.file_name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as e:
            raise CaffeFileError(self.file_name, f"cannot write the HDF5Output file: {e.strerror}") from None
        os.close(fd)
        try:
            with h5py.File(tmp, "w") as f:
                for name, blob in zip(DATASETS, (data, label)):
                    f.create_dataset(name, data=blob.detach().float().cpu().numpy())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ()


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
        self.top_shapes(layer, bottom_shapes)
        if not layer.hdf5_output_param.file_name:
            raise CaffeFileError(None, f"layer '{layer.name}' (HDF5Output): hdf5_output_param.file_name is empty")
        return HDF5Output(layer.hdf5_output_param.file_name, layer.name)
