"""The torch side of :mod:`sfport.converters.hdf5`: HDF5Output's module."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from sfport.errors import CaffeFileError

from .base import NoBlobs

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

