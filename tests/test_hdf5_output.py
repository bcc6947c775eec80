"""HDF5Output (hdf5_output_layer.cpp): bottoms 0 and 1 written as the datasets 'data' and 'label'."""
import sys

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sfport
from sfport.cli import cli
from sfport.errors import CaffeFileError

NET = ('layer {{ name: "in" type: "Input" top: "x" top: "y" input_param {{ shape {{ dim: 3 dim: 2 dim: 4 }} '
       'shape {{ dim: 3 }} }} }} '
       'layer {{ name: "sq" type: "Power" bottom: "x" top: "x2" power_param {{ power: 2 }} }} '
       'layer {{ name: "out" type: "HDF5Output" bottom: "x2" bottom: "y" hdf5_output_param {{ file_name: "{f}" }} }}')


def _net(tmp_path, name="out.h5"):
    from google.protobuf import text_format
    from sfport.protos import caffe_pb2
    net = text_format.Parse(NET.format(f=tmp_path / name), caffe_pb2.NetParameter())
    return sfport.TorchNet(sfport.CaffeModel.from_net(net))


def test_each_forward_writes_data_and_label(tmp_path):
    net = _net(tmp_path)
    for k in range(2):
        x = torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(k))
        y = torch.tensor([0.0, 1.0, 2.0]) + k
        net.forward(x=x, y=y)
        with h5py.File(tmp_path / "out.h5", "r") as f:
            assert sorted(f) == ["data", "label"]
            np.testing.assert_array_equal(f["data"][...], (x.numpy() ** 2).astype(np.float32))
            np.testing.assert_array_equal(f["label"][...], y.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]     # no temporary file left


def test_without_h5py_or_a_writable_folder_it_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    net = _net(tmp_path, "blocker/out.h5")
    with pytest.raises(CaffeFileError, match="cannot write the HDF5Output file"):
        net.forward(x=torch.zeros(3, 2, 4), y=torch.zeros(3))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(CaffeFileError, match=r"needs the 'h5py' package: pip install sfport\[hdf5\]"):
        _net(tmp_path).forward(x=torch.zeros(3, 2, 4), y=torch.zeros(3))


def test_wrong_bottoms_are_one_line(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 } } } '
                 'layer { name: "out" type: "HDF5Output" bottom: "x" hdf5_output_param { file_name: "o.h5" } }')
    r = CliRunner().invoke(cli, ["inspect", str(p)])   # the deploy form drops the sink; the definition has it
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"sfport: error: {p}: layer 'out' (HDF5Output): needs two bottoms (data, label), not 1")
