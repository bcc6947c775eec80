"""Acceptance 4 and the other legacy forms: V1 'layers', V0 nets with padding layers, data transformation
fields, deploy headers, BatchNorm param specs - each upgraded as Caffe's UpgradeNetAsNeeded does."""
import numpy as np
import pytest
from click.testing import CliRunner

from sfport.formats import caffe_files
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

from conftest import FIXTURES

# Written here from the V1 enum of caffe.proto, independently of sfport.formats.upgrade's table.
V1_ENUM = {"Data": "DATA", "Convolution": "CONVOLUTION", "Pooling": "POOLING", "InnerProduct": "INNER_PRODUCT",
           "ReLU": "RELU", "SoftmaxWithLoss": "SOFTMAX_LOSS", "Accuracy": "ACCURACY", "Softmax": "SOFTMAX"}
V1_PARAMS = ["convolution_param", "pooling_param", "inner_product_param", "relu_param", "softmax_param",
             "loss_param", "accuracy_param", "data_param", "transform_param"]


def to_v1(net):
    """A V1-format copy of a current-format NetParameter (blobs included), with the old-style data layer
    (transformation fields inside data_param), as 2014 Caffe wrote them."""
    v1net = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layer:
        v1 = v1net.layers.add(name=layer.name, bottom=layer.bottom, top=layer.top)
        v1.type = caffe_pb2.V1LayerParameter.LayerType.Value(V1_ENUM[layer.type])
        v1.include.extend(layer.include)
        v1.exclude.extend(layer.exclude)
        v1.loss_weight.extend(layer.loss_weight)
        for p in layer.param:
            if p.HasField("lr_mult"):
                v1.blobs_lr.append(p.lr_mult)
            if p.HasField("decay_mult"):
                v1.weight_decay.append(p.decay_mult)
        v1.blobs.extend(layer.blobs)
        for name in V1_PARAMS:
            if layer.HasField(name):
                getattr(v1, name).CopyFrom(getattr(layer, name))
        if layer.type == "Data" and v1.transform_param.HasField("scale"):
            v1.data_param.scale = v1.transform_param.scale
            v1.transform_param.ClearField("scale")
            if not v1.transform_param.ListFields():
                v1.ClearField("transform_param")
    return v1net


def test_v1_copy_of_lenet_upgrades_to_the_original(tmp_path):
    src = FIXTURES / "lenet/lenet_iter_10000.caffemodel"
    original = caffe_pb2.NetParameter.FromString(src.read_bytes())
    for layer in original.layer:
        layer.ClearField("phase")  # the only field V1 cannot express (Caffe records the phase it ran in)
    v1_path = tmp_path / "lenet_v1.caffemodel"
    v1_path.write_bytes(to_v1(original).SerializeToString())
    assert len(caffe_pb2.NetParameter.FromString(v1_path.read_bytes()).layers) == 9

    upgraded = caffe_files.read_caffemodel(v1_path)
    assert any(u.startswith("V1LayerParameter 'layers' -> LayerParameter 'layer' (9 layers") for u in upgraded.upgrades)
    assert any("transformation fields -> transform_param (1 fields)" in u for u in upgraded.upgrades)
    # the same net, blob for blob: serializing it gives the original message's bytes exactly
    assert caffe_files.net_to_bytes(upgraded) == original.SerializeToString()
    for name, arrays in caffe_files.read_caffemodel(src).params.items():
        for a, b in zip(arrays, upgraded.params[name]):
            assert np.array_equal(a, b)

    # the command line does the same and writes the current format
    out = tmp_path / "lenet_upgraded.caffemodel"
    from sfport.cli import cli
    result = CliRunner().invoke(cli, ["upgrade", str(v1_path), str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == original.SerializeToString()


def test_v1_text_prototxt_with_enum_types(tmp_path):
    p = tmp_path / "v1.prototxt"
    p.write_text('name: "old"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 28\ninput_dim: 28\n'
                 'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2\n'
                 '  weight_decay: 1 weight_decay: 0 param: "shared_w"\n'
                 '  convolution_param { num_output: 4 kernel_size: 3 } }\n'
                 'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n'
                 'layers { name: "prob" type: 20 bottom: "conv" top: "prob" }\n')
    m = caffe_files.read_prototxt(p)
    assert [(l.name, l.type) for l in m.net.layer] == [("input", "Input"), ("conv", "Convolution"),
                                                       ("relu", "ReLU"), ("prob", "Softmax")]
    conv = m.net.layer[1]
    assert [(x.name, x.lr_mult, x.decay_mult) for x in conv.param] == [("shared_w", 1, 1), ("", 2, 0)]
    assert len(m.upgrades) == 2


def test_v0_net_with_padding_layer(tmp_path):
    """V0: a 'padding' layer is folded into the conv it feeds; V0 fields move to their V1/V2 params."""
    p = tmp_path / "v0.prototxt"
    p.write_text('name: "v0net"\ninput: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 32\ninput_dim: 32\n'
                 'layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }\n'
                 'layers { layer { name: "conv1" type: "conv" num_output: 16 kernelsize: 5 stride: 1 group: 1\n'
                 '    weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 }\n'
                 '  bottom: "pad1" top: "conv1" }\n'
                 'layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } '
                 'bottom: "conv1" top: "pool1" }\n'
                 'layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool1" top: "pool1" }\n'
                 'layers { layer { name: "fc" type: "innerproduct" num_output: 10 biasterm: false } '
                 'bottom: "pool1" top: "fc" }\n')
    expected = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse(
        'name: "v0net"\n'
        'layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 } } }\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } '
        'param { lr_mult: 2 } convolution_param { num_output: 16 pad: 2 kernel_size: 5 group: 1 stride: 1 '
        'weight_filler { type: "gaussian" std: 0.01 } } }\n'
        'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
        'pooling_param { pool: AVE kernel_size: 3 stride: 2 } }\n'
        'layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.3 } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" '
        'inner_product_param { num_output: 10 bias_term: false } }\n', expected)
    m = caffe_files.read_prototxt(p)
    assert m.net == expected
    assert m.upgrades[0] == "V0LayerParameter -> V1LayerParameter"


def test_input_shape_header_with_two_inputs(tmp_path):
    p = tmp_path / "two.prototxt"
    p.write_text('input: "a"\ninput_shape { dim: 1 dim: 3 }\ninput: "b"\ninput_shape { dim: 1 }\n'
                 'layer { name: "r" type: "ReLU" bottom: "a" top: "r" }\n')
    net = caffe_files.read_prototxt(p).net
    assert list(net.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 3], [1]]
    p.write_text('input: "a"\ninput_dim: 1\ninput_dim: 3\n')
    with pytest.raises(CaffeFileError, match="1 inputs need 4 input_dim values, found 2"):
        caffe_files.read_prototxt(p)


def test_batchnorm_param_specs_become_frozen():
    """sphereface04bn declares three BatchNorm params; Caffe 1.0 forces lr_mult/decay_mult 0 on them."""
    m = caffe_files.read_prototxt(FIXTURES / "sphereface_prototxt/zuoqing1988/sphereface04bn_deploy.prototxt")
    bns = [l for l in m.net.layer if l.type == "BatchNorm"]
    assert len(bns) == 5
    assert all((p.lr_mult, p.decay_mult) == (0, 0) for l in bns for p in l.param)
    assert "BatchNorm param specs -> lr_mult 0, decay_mult 0 (5 layers)" in m.upgrades
