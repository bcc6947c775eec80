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


APART = sorted(t for t in CASES if converters.get(t).images_apart(*_layer(t)))


def test_the_types_that_compute_each_image_alone():
    """The usual layers of a feature or classification net say so (a batch of theirs may run in parts); losses,
    detection, recurrent and batch-reordering layers do not."""
    assert {"Convolution", "Deconvolution", "InnerProduct", "Pooling", "PReLU", "ReLU", "BatchNorm", "Scale", "Eltwise",
            "Concat", "Softmax", "Flatten", "Reshape", "LRN", "MVN", "Normalize", "Split", "Dropout"} <= set(APART)
    assert not {"SoftmaxWithLoss", "Accuracy", "DetectionOutput", "PriorBox", "LSTM", "BatchReindex", "Filter",
                "Parameter", "ROIPooling", "Proposal", "MarginInnerProduct"} & set(APART)


@pytest.mark.parametrize("t", APART)
def test_a_type_that_computes_each_image_alone_does(t):
    """Row n of each top, the module run on the case's whole batch, is what the same module's blobs give for image
    n alone (a module built for a batch of one), in eval mode, within 1e-6 relative."""
    layer, bottoms = _layer(t)
    c = converters.get(t)
    n = bottoms[0][0]
    assert n >= 2 and all(s[0] == n for s in bottoms)
    module = c.build(layer, bottoms)
    blobs = c.random_blobs(layer, c.param_shapes(layer, bottoms), np.random.default_rng(0))
    c.load(module, blobs)
    module.eval()
    inputs = _inputs(layer, bottoms)
    with torch.no_grad():
        whole = module(*inputs)
        whole = (whole,) if isinstance(whole, torch.Tensor) else tuple(whole)
        one = [(1,) + tuple(s[1:]) for s in bottoms]
        alone_module = c.build(layer, one)
        c.load(alone_module, blobs)
        alone_module.eval()
        for i in range(n):
            alone = alone_module(*[x[i:i + 1] for x in inputs])
            alone = (alone,) if isinstance(alone, torch.Tensor) else tuple(alone)
            for w, a in zip(whole, alone):
                assert w.shape[0] == n and tuple(w.shape[1:]) == tuple(a.shape[1:])
                assert (w[i] - a[0]).abs().max() <= 1e-6 * max(1.0, float(a.abs().max()))
