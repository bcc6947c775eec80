"""Net.__init__'s steps (sfport.runtime.net): read the model, the weights to copy, filter, the inference form or
the first input's shape, the graph, the weights' shapes, the modules, the load; each on its own, and the order in
which the constructor's checks come. Small nets written here, no shared data."""
import pytest
import torch

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.netdef.netstate import NetState
from sfport.protos import caffe_pb2
from sfport.runtime import caffenet, net as net_mod
from sfport.runtime.net import CaffeNet, Net

IP = ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
      'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }\n')
DEPLOY = 'name: "t"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n' + IP
# an Input layer that does not fix the shape of 'data'
UNSHAPED = 'name: "t"\nlayer { name: "data" type: "Input" top: "data" }\n' + IP
TRAIN_ONLY = ('layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" include { phase: TRAIN } }\n')


def _write(tmp_path, text, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_caffenet_lives_in_caffenet_and_is_importable_from_net():
    assert CaffeNet is caffenet.CaffeNet
    assert net_mod.CaffeNet is caffenet.CaffeNet


def test_read_a_prototxt_is_not_stored_and_has_no_weights(tmp_path):
    read = net_mod._read_model(_write(tmp_path, DEPLOY), None)
    assert not read.stored and read.state is None and read.input_shapes is None
    assert net_mod._weights_to_copy(None, read.definition) is None


def test_read_a_caffemodel_is_stored_and_its_blobs_are_the_weights(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    Net(_write(tmp_path, DEPLOY), seed=1).save_caffemodel(path)
    read = net_mod._read_model(path, None)
    assert read.stored and read.state is None
    assert net_mod._weights_to_copy(None, read.definition) is read.definition
    other = caffe_files.read_caffemodel(path)
    assert net_mod._weights_to_copy(other, read.definition) is other     # the weights argument wins
    assert net_mod._weights_to_copy(path, read.definition).path == path


def test_read_a_pt_gives_its_state_and_saved_shapes_unless_shapes_are_given(tmp_path):
    path = str(tmp_path / "n.pt")
    Net(_write(tmp_path, DEPLOY), seed=1).save(path)
    read = net_mod._read_model(path, None)
    assert read.stored and set(read.state) == {"layers.ip.weight", "layers.ip.bias"}
    assert read.input_shapes == {"data": (1, 4)}
    assert net_mod._read_model(path, {"data": (2, 4)}).input_shapes == {"data": (2, 4)}


def test_filter_keeps_the_state_s_layers_and_drops_a_stored_net_s_rules(tmp_path):
    definition = caffe_files.read_net(_write(tmp_path, DEPLOY + TRAIN_ONLY))
    test = NetState.of("test", None, ())
    assert [l.name for l in net_mod._filtered(definition, False, test).layer] == ["data", "ip"]
    stored = net_mod._filtered(definition, True, test)
    assert [l.name for l in stored.layer] == ["data", "ip", "drop"]
    assert not any(len(l.include) or len(l.exclude) for l in stored.layer)


def test_one_shape_is_the_first_input_s(tmp_path):
    definition = caffe_files.read_net(_write(tmp_path, UNSHAPED))
    net, shapes_ = net_mod._shaped(definition.net, False, (2, 4), definition.path)
    assert net is definition.net and shapes_ == {"data": (2, 4)}
    assert net_mod._shaped(definition.net, False, None, definition.path)[1] is None
    bare = caffe_pb2.NetParameter(name="empty")
    with pytest.raises(CaffeFileError, match="the net has no input to give a shape to"):
        net_mod._shaped(bare, False, (2, 4), "x.prototxt")


def test_an_input_without_a_shape_is_named_before_the_weights_are_matched(tmp_path):
    # weights that cannot fit (num_output 5 vs 3) and an input without a shape: step (5) speaks first
    wrong = Net(_write(tmp_path, DEPLOY.replace("num_output: 3", "num_output: 5"), "w.prototxt"), seed=1)
    weights = wrong.to_caffemodel()
    with pytest.raises(CaffeFileError, match="the shape of input 'data' is unknown"):
        Net(_write(tmp_path, UNSHAPED), weights=weights)
    with pytest.raises(CaffeFileError, match="does not fit"):
        Net(_write(tmp_path, UNSHAPED), weights=weights, input_shapes=(1, 4))


def test_a_layer_s_complaint_names_the_definition_s_file(tmp_path):
    path = _write(tmp_path, DEPLOY + 'layer { name: "x" type: "NoSuchType" bottom: "ip" top: "x" }\n')
    with pytest.raises(CaffeFileError) as e:
        Net(path)
    assert e.value.path == path and "NoSuchType" in str(e.value)


def test_the_three_loads_and_their_reports(tmp_path):
    proto = _write(tmp_path, DEPLOY)
    filled = Net(proto, seed=3)                      # fillers only
    assert not filled.has_weights and filled.report.no_weights and filled.report.layers_without_weights == ["ip"]
    again = Net(proto, seed=3)
    assert torch.equal(filled.params["ip"][0], again.params["ip"][0])   # the seed's fillers
    model = str(tmp_path / "w.caffemodel")
    filled.save_caffemodel(model)
    copied = Net(proto, weights=model)               # weights by name
    assert copied.has_weights and copied.report.copied == ["ip"]
    assert torch.equal(copied.params["ip"][0], filled.params["ip"][0])
    pt = str(tmp_path / "n.pt")
    copied.save(pt)
    converted = Net(pt)                              # a .pt's state_dict
    assert converted.has_weights and converted.report.copied == ["ip"] and converted.input_shapes == {"data": (1, 4)}
    assert torch.equal(converted.params["ip"][0], filled.params["ip"][0])
    assert converted.path == pt and not converted.inference and converted.blobs == {} and converted.loss is None
    assert converted.layer_outputs == {} and converted.optimization is None and converted.origin is None


def test_weights_that_match_no_layer_are_an_error(tmp_path):
    other = Net(_write(tmp_path, DEPLOY.replace('"ip"', '"fc"'), "other.prototxt"), seed=1).to_caffemodel()
    with pytest.raises(CaffeFileError, match="no layer of the weights matches a layer with parameters"):
        Net(_write(tmp_path, DEPLOY), weights=other)


def test_layers_named_as_module_dict_attributes_build_run_and_save(tmp_path):
    # a Caffe layer may be named keys, forward, training, update, state_dict...: names nn.ModuleDict's
    # add_module refused ("attribute 'keys' already exists", a KeyError traceback). Each runs, with its weights,
    # and a converted .pt and a caffemodel written back load into the same values.
    import numpy as np
    names = ["keys", "forward", "training", "update", "state_dict", "_modules"]
    text = 'name: "t"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }\n'
    bottom = "data"
    for n in names:
        text += (f'layer {{ name: "{n}" type: "InnerProduct" bottom: "{bottom}" top: "{n}" '
                 f'inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.5 }} '
                 f'bias_filler {{ type: "gaussian" std: 0.5 }} }} }}\n')
        bottom = n
    net = Net(_write(tmp_path, text), seed=3)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    got = net.forward(data=torch.from_numpy(x))[names[-1]].detach().numpy()
    want = x.astype(np.float64)
    for n in names:   # the chain of y = x W^T + b, computed here from the layers' own blobs
        w, b = (p.detach().numpy().astype(np.float64) for p in net.params[n])
        want = want @ w.T + b
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert len(set(net.module.keys.values())) == len(names)
    pt, model = tmp_path / "t.pt", tmp_path / "t.caffemodel"
    net.save(pt)
    net.save_caffemodel(model)
    for again in (Net(str(pt)), Net(_write(tmp_path, text), str(model))):
        assert np.array_equal(again.forward(data=torch.from_numpy(x))[names[-1]].detach().numpy(), got)


# py-faster-rcnn's deploy header style (input: / input_shape) in a file named .pt, as its
# models/*/faster_rcnn_alt_opt/faster_rcnn_test.pt and rpn_test.pt are
PT_NAMED_NET = """name: "ZF-like"
input: "data"
input_shape { dim: 2 dim: 3 dim: 9 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_a_prototxt_named_pt_is_a_net_definition_and_runs_as_opencv_reads_it(tmp_path):
    # Caffe reads a file whatever its name; sfport's own .pt is a torch.save zip archive, and a .pt of protobuf
    # text is a prototxt: sfport.Net and pycaffe's caffe.Net take it, and its forward agrees with OpenCV's Caffe
    # reader on the same two files
    import cv2
    import numpy as np
    import sfport as caffe
    from sfport.netdef import weight_match
    proto = _write(tmp_path, PT_NAMED_NET, "faster_rcnn_test.pt")
    weights = str(tmp_path / "w.caffemodel")
    caffe_files.write_caffemodel(weights, weight_match.with_random_weights(caffe_files.read_prototxt(proto), seed=2))
    assert not caffe_files.is_torch_pt(proto)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 9, 8)).astype(np.float32)
    cv = cv2.dnn.readNetFromCaffe(proto, weights)
    cv.setInput(x)
    want = cv.forward("prob")
    got = Net(proto, weights).forward(data=torch.from_numpy(x))["prob"].detach().numpy()
    assert np.abs(got - want).max() <= 1e-5
    py = caffe.Net(proto, weights, caffe.TEST)
    py.blobs["data"].data[...] = x
    assert np.abs(py.forward()["prob"] - want).max() <= 1e-5
    # sfport's own .pt is still its converted net; a .pt of other bytes is still refused as one
    converted = tmp_path / "converted.pt"
    Net(proto, weights).save(converted)
    assert caffe_files.is_torch_pt(converted)
    assert np.array_equal(Net(str(converted)).forward(data=torch.from_numpy(x))["prob"].detach().numpy(), got)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CaffeFileError, match="not the zip archive torch.save writes"):
        Net(str(junk))
