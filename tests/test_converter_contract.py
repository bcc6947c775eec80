"""The contract of a converter, the one home of a layer type: for a representative layer of every registered type
(built from caffe.proto's defaults plus the few fields a type requires), the converter says its top shapes and
its parameter blob shapes, builds a module whose Caffe blobs have exactly those shapes, makes random blobs of
those shapes, and the module's forward gives tops of the shapes it claimed. Adding a type means adding its case
here."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.netdef import shapes
from sfport.protos import caffe_pb2
from tests import (contract_catalogue, contract_forks, contract_io, contract_losses, contract_proposal,
                   contract_recurrent, contract_resize, contract_roi, contract_segmentation, contract_ssd)

IMG = (2, 3, 4, 5)
FEATURES, LABELS = (4, 6), (4,)

# type -> (extra LayerParameter text, bottom shapes, number of tops); bottoms named "label" get class indices.
CASES = {
    "Convolution": ("convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 }", [(2, 3, 7, 6)], 1),
    "DepthwiseConvolution": ("convolution_param { num_output: 3 kernel_size: 3 }", [(2, 3, 7, 6)], 1),
    "ConvolutionDepthwise": ("convolution_param { num_output: 6 kernel_size: 3 group: 3 }", [(2, 3, 7, 6)], 1),
    "Deconvolution": ("convolution_param { num_output: 4 kernel_size: 3 stride: 2 }", [(2, 3, 5, 4)], 1),
    "InnerProduct": ("inner_product_param { num_output: 5 }", [IMG], 1),
    "Pooling": ("pooling_param { kernel_size: 3 stride: 2 pad: 1 }", [(2, 3, 7, 6)], 1),
    "ReLU": ("relu_param { negative_slope: 0.1 }", [IMG], 1),
    "PReLU": ("", [IMG], 1),
    "ELU": ("", [IMG], 1),
    "Sigmoid": ("", [IMG], 1),
    "TanH": ("", [IMG], 1),
    "AbsVal": ("", [IMG], 1),
    "Power": ("power_param { power: 2 scale: 0.5 shift: 1 }", [IMG], 1),
    "Exp": ("", [IMG], 1),
    "Log": ("", [IMG], 1),
    "BNLL": ("", [IMG], 1),
    "Threshold": ("", [IMG], 1),
    "Dropout": ("", [IMG], 1),
    "BatchNorm": ("", [IMG], 1),
    "Scale": ("scale_param { bias_term: true }", [IMG], 1),
    "Bias": ("", [IMG], 1),
    "LRN": ("", [IMG], 1),
    "MVN": ("", [IMG], 1),
    "Normalize": ("", [IMG], 1),
    "Eltwise": ("", [IMG, IMG], 1),
    "Concat": ("", [IMG, (2, 2, 4, 5)], 1),
    "Slice": ("", [(2, 4, 3, 3)], 2),
    "Split": ("", [IMG], 3),
    "Flatten": ("", [IMG], 1),
    "Reshape": ("reshape_param { shape { dim: 0 dim: -1 dim: 2 } }", [(2, 3, 4, 4)], 1),
    "Crop": ("crop_param { offset: 1 }", [(2, 3, 6, 6), (2, 3, 4, 4)], 1),
    "Permute": ("permute_param { order: 0 order: 2 order: 3 order: 1 }", [IMG], 1),
    "Softmax": ("", [IMG], 1),
    "ArgMax": ("argmax_param { top_k: 2 out_max_val: true }", [IMG], 1),
    "Silence": ("", [IMG], 0),
    "SoftmaxWithLoss": ("", [(4, 5), LABELS], 2),
    "Accuracy": ("", [(4, 5), LABELS], 2),
    "MarginInnerProduct": ("margin_inner_product_param { num_output: 5 type: DOUBLE }", [FEATURES, LABELS], 2),
    "InterClass": ("inter_class_param { num_output: 5 }", [FEATURES, LABELS], 1),
}
# the families added later keep their cases beside their tests
for _family in (contract_ssd, contract_catalogue, contract_losses, contract_io, contract_resize, contract_recurrent,
                contract_forks, contract_roi, contract_proposal, contract_segmentation):
    assert not set(_family.CASES) & set(CASES), set(_family.CASES) & set(CASES)
    CASES.update(_family.CASES)


def _layer(t: str):
    extra, bottoms, ntop = CASES[t]
    layer = text_format.Parse(extra, caffe_pb2.LayerParameter(name=f"a_{t.lower()}", type=t))
    layer.bottom.extend("label" if len(s) == 1 and len(bottoms) == 2 else f"in{j}" for j, s in enumerate(bottoms))
    layer.top.extend(f"out{j}" for j in range(ntop))
    return layer, [tuple(s) for s in bottoms]


def _inputs(layer, bottoms):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 5, s, generator=g).float() if name == "label" else torch.rand(s, generator=g) + 0.1
            for name, s in zip(layer.bottom, bottoms)]


def test_every_registered_type_has_a_contract_case():
    assert sorted(CASES) == converters.registered_types()


@pytest.mark.parametrize("t", sorted(CASES))
def test_converter_shapes_module_and_forward_agree(t):
    layer, bottoms = _layer(t)
    c = converters.get(t)
    tops = c.top_shapes(layer, bottoms)
    params = c.param_shapes(layer, bottoms)
    assert tops is not None and len(tops) == len(layer.top)
    assert params is not None
    module = c.build(layer, bottoms)
    assert [tuple(p.shape) for p in c.params(module)] == [tuple(s) for s in params]
    assert len(c.fillers(layer)) <= len(params)
    blobs = c.random_blobs(layer, params, np.random.default_rng(0))
    assert [b.shape for b in blobs] == [tuple(s) for s in params] and all(b.dtype == np.float32 for b in blobs)
    c.load(module, blobs)
    assert all(np.array_equal(a, b) for a, b in zip(c.save(module), blobs))
    out = module(*_inputs(layer, bottoms))
    out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    assert [tuple(o.shape) for o in out] == [tuple(s) for s in tops]


@pytest.mark.parametrize("t", sorted(CASES))
def test_shape_inference_asks_the_converter(t):
    """shapes.infer gives a net's layer exactly what its converter says."""
    layer, bottoms = _layer(t)
    net = caffe_pb2.NetParameter()
    inp = net.layer.add(name="input", type="Input", top=list(dict.fromkeys(layer.bottom)))
    for s in dict(zip(layer.bottom, bottoms)).values():
        inp.input_param.shape.add(dim=list(s))
    net.layer.add().CopyFrom(layer)
    ls = shapes.infer(net)[1]
    c = converters.get(t)
    assert ls.tops == c.top_shapes(layer, bottoms) and ls.params == c.param_shapes(layer, bottoms)


def test_roles_are_declared_by_the_converters():
    """Loss and training-only roles come from the converter; the few Caffe types without one list theirs."""
    assert not set(converters.ROLES_WITHOUT_CONVERTER) & set(converters.registered_types())
    assert converters.is_loss("SoftmaxWithLoss") and converters.is_loss("InterClass")
    assert converters.is_loss("EuclideanLoss") and not converters.is_loss("Accuracy")
    assert converters.is_training_only("Accuracy") and converters.is_training_only("Silence")
    assert converters.is_training_only("HDF5Output") and not converters.is_training_only("Convolution")
