"""The brocolli fork's HardSigmoid, HardSwish, Pad and Unsqueeze against the fork itself (the oracle pycaffe;
tests/data/brocolli/make_reference.py says how the data was made): every top value equal (NaN where the fork
gives NaN), exported to ONNX and checked on onnxruntime, and the fork's impossible parameters as one line."""
from pathlib import Path

import numpy as np
import pytest
import torch

import sfport
from sfport.errors import CaffeFileError
from sfport.runtime import export

DATA = Path(__file__).parent / "data" / "brocolli"
CASES = sorted(p.stem for p in DATA.glob("*.npz"))


def _net(tmp_path, name):
    ref = np.load(DATA / f"{name}.npz")
    path = tmp_path / f"{name}.prototxt"
    path.write_text(str(ref["prototxt"]))
    return sfport.TorchNet(str(path), weights=None), ref


@pytest.mark.parametrize("name", CASES)
def test_forward_equals_the_fork(tmp_path, name):
    net, ref = _net(tmp_path, name)
    out = net.forward(data=torch.from_numpy(ref["x"]))["out"].numpy()
    assert out.shape == ref["out"].shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref["out"]))
    ok = ~np.isnan(ref["out"])
    assert np.abs(out[ok] - ref["out"][ok]).max() <= 1e-6 * max(1.0, float(np.abs(ref["out"][ok]).max()))


@pytest.mark.parametrize("name", [c for c in CASES if not c.startswith("unsqueeze")])
def test_no_gradient_passes_them_as_in_the_fork(tmp_path, name):
    """The fork has no Backward_cpu for HardSigmoid and HardSwish and an empty one for Pad."""
    net, ref = _net(tmp_path, name)
    x = torch.from_numpy(np.nan_to_num(ref["x"])).requires_grad_()
    assert not net.module.run({"data": x})["out"].requires_grad


@pytest.mark.parametrize("name", ["hardsigmoid_params", "hardswish", "pad_reflect", "pad_crop", "unsqueeze_1"])
def test_onnx_export(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    net, ref = _net(tmp_path, name)
    data, result = export.onnx_export(net)   # itself checked on onnxruntime at batch 1, 2 and other sizes
    assert result.worst <= 1e-5
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.nan_to_num(ref["x"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    want = net.forward(data=torch.from_numpy(x))["out"].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("layer, shape, what", [
    ('type: "Pad" pad_param { pad_u: -1 pad_d: 1 }', (1, 1, 4, 4), "negative pads crop only when all four"),
    ('type: "Pad" pad_param { pad_type: REFLECT pad_l: 4 }', (1, 1, 4, 4), "REFLECT pads 0, 0, 4, 0 must be smaller"),
    ('type: "Pad" pad_param { pad_u: -2 pad_d: -2 pad_l: -1 pad_r: -1 }', (1, 1, 4, 4), "leave a 0 x 2 top"),
    ('type: "Pad" pad_param { pad_u: 1 }', (2, 4, 4), "N x C x H x W bottoms"),
    ('type: "Unsqueeze"', (2, 3), "unsqueeze_param.dim must be set"),
    ('type: "Unsqueeze" unsqueeze_param { dim: 4 }', (2, 3), "dim 4 is outside the 2 axes"),
])
def test_impossible_parameters_are_one_line(tmp_path, layer, shape, what):
    path = tmp_path / "bad.prototxt"
    path.write_text(f'input: "data"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                    f'layer {{ name: "l" {layer} bottom: "data" top: "out" }}\n')
    with pytest.raises(CaffeFileError, match=what) as e:
        sfport.TorchNet(str(path), weights=None)
    assert "layer 'l'" in str(e.value) and "\n" not in str(e.value)
