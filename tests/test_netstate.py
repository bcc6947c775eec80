"""Caffe's NetState filtering (net.cpp Net::FilterNet / StateMeetsRule, solver.cpp InitTrainNet / InitTestNets)
and the inference form of train/test definitions (data layers to inputs, losses dropped).

The expected layer lists are written from the rules in net.cpp, by hand, for each case: a layer with include
rules runs when it meets one of them; one without runs unless it meets an exclude rule; a rule is met when its
phase (if any) is the state's, min_level <= level <= max_level (where given), all its stages are in the state
and none of its not_stages."""
import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

import sfport
from sfport.netdef import deploy, netstate, wiring
from sfport.errors import CaffeFileError
from sfport.netdef.netstate import NetState
from sfport.protos import caffe_pb2
from sfport.solver.config import net_states
from sfport.cli import cli
from tests.conftest import FIXTURES

RULES = """
name: "rules"
layer { name: "always" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "x" top: "b" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "x" top: "c" exclude { phase: TEST } }
layer { name: "level_1_up" type: "ReLU" bottom: "x" top: "d" include { min_level: 1 } }
layer { name: "level_up_to_1" type: "ReLU" bottom: "x" top: "e" include { max_level: 1 } }
layer { name: "stage_deploy" type: "ReLU" bottom: "x" top: "f" include { stage: "deploy" } }
layer { name: "stages_a_and_b" type: "ReLU" bottom: "x" top: "g" include { stage: "a" stage: "b" } }
layer { name: "stage_a_or_b" type: "ReLU" bottom: "x" top: "h" include { stage: "a" } include { stage: "b" } }
layer { name: "not_stage_a" type: "ReLU" bottom: "x" top: "i" include { not_stage: "a" } }
layer { name: "exclude_stage_a" type: "ReLU" bottom: "x" top: "j" exclude { stage: "a" } }
layer { name: "test_level_2" type: "ReLU" bottom: "x" top: "k" include { phase: TEST min_level: 2 } }
layer { name: "exclude_train_b" type: "ReLU" bottom: "x" top: "l" exclude { phase: TRAIN stage: "b" } }
"""

# From net.cpp's rules, by hand, for each state.
EXPECTED = {
    NetState(caffe_pb2.TEST): ["always", "test_only", "level_up_to_1", "not_stage_a", "exclude_stage_a",
                               "exclude_train_b"],
    NetState(caffe_pb2.TRAIN): ["always", "train_only", "not_test", "level_up_to_1", "not_stage_a",
                                "exclude_stage_a", "exclude_train_b"],
    NetState(caffe_pb2.TEST, 2): ["always", "test_only", "level_1_up", "not_stage_a", "exclude_stage_a",
                                  "test_level_2", "exclude_train_b"],
    NetState(caffe_pb2.TEST, 1, ("a",)): ["always", "test_only", "level_1_up", "level_up_to_1", "stage_a_or_b",
                                          "exclude_train_b"],
    NetState(caffe_pb2.TRAIN, 0, ("b",)): ["always", "train_only", "not_test", "level_up_to_1", "stage_a_or_b",
                                           "not_stage_a", "exclude_stage_a"],
    NetState(caffe_pb2.TEST, 0, ("a", "b", "deploy")): ["always", "test_only", "level_up_to_1", "stage_deploy",
                                                       "stages_a_and_b", "stage_a_or_b", "exclude_train_b"],
}


def _net(text):
    net = caffe_pb2.NetParameter()
    text_format.Parse(text, net)
    return net


@pytest.mark.parametrize("state", list(EXPECTED), ids=lambda s: s.describe())
def test_filter_net_keeps_the_layers_caffe_keeps(state):
    kept = [layer.name for layer in netstate.filter_net(_net(RULES), state).layer]
    assert kept == EXPECTED[state]


def test_the_files_own_state_adds_stages_and_the_constructor_sets_phase_and_level():
    net = _net(RULES + 'state { phase: TRAIN level: 5 stage: "a" }')
    # Net::Net(file, TEST, level 0, stages ["b"]): phase and level set, stages added to the file's
    kept = [layer.name for layer in netstate.filter_net(net, NetState.of("TEST", 0, ["b"])).layer]
    assert kept == EXPECTED[NetState(caffe_pb2.TEST, 0, ("a", "b", "deploy"))][:1] + \
        ["test_only", "level_up_to_1", "stages_a_and_b", "stage_a_or_b", "exclude_train_b"]


def test_a_layer_with_include_and_exclude_is_refused():
    net = _net('layer { name: "both" type: "ReLU" bottom: "x" top: "x" include { phase: TEST } '
               'exclude { phase: TRAIN } }')
    with pytest.raises(CaffeFileError, match="'both'.*either include rules or exclude rules"):
        netstate.filter_net(net, "TEST")


def test_solver_states_merge_as_init_train_net_and_init_test_nets():
    sp = caffe_pb2.SolverParameter()
    text_format.Parse('train_state { stage: "s1" level: 3 } test_state { stage: "test-on-train" } '
                      'test_state { stage: "test-on-test" level: 1 }', sp)
    train = _net('state { stage: "file" }')
    train_state, test_states = net_states(sp, train, [train, _net("")])
    assert train_state == NetState(caffe_pb2.TRAIN, 3, ("file", "s1"))
    assert test_states == [NetState(caffe_pb2.TEST, 0, ("file", "test-on-train")),
                           NetState(caffe_pb2.TEST, 1, ("test-on-test",))]


def test_a_net_built_from_a_solvers_state_keeps_its_level_and_stages():
    """Solver::InitTestNets builds the test net with the merged test_state, level included: a Net given that
    NetState as its phase keeps the level (a layer with min_level 2 is in) unless a level is given."""
    net = _net('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } } '
               'layer { name: "deep" type: "ReLU" bottom: "x" top: "y" include { phase: TEST min_level: 2 } } '
               'layer { name: "staged" type: "ReLU" bottom: "x" top: "z" include { stage: "s" } }')
    model = sfport.CaffeModel.from_net(net, "n.prototxt")
    state = NetState(caffe_pb2.TEST, 2, ("s",))
    assert [ly.name for ly in sfport.TorchNet(model, phase=state).definition.layer] == ["x", "deep", "staged"]
    assert [ly.name for ly in sfport.TorchNet(model, phase=state, level=1).definition.layer] == ["x", "staged"]
    assert [ly.name for ly in sfport.TorchNet(model, phase="test").definition.layer] == ["x"]


# -- data layers become inputs ------------------------------------------------------------------------------

TAIL = """
layer { name: "ip" type: "InnerProduct" bottom: "%s" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "%s" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "%s" top: "acc" include { phase: TEST } }
"""

# (data layer text, image top, label top, the input shape the layer states: written from each layer's
# DataLayerSetUp in Caffe)
DATA_LAYERS = {
    "Data": ('layer { name: "d" type: "Data" top: "Data1" top: "Data2" transform_param { crop_size: 8 '
             'mean_value: 1 mean_value: 2 mean_value: 3 } data_param { source: "x" batch_size: 5 } }',
             "Data1", "Data2", (5, 3, 8, 8)),
    "ImageData": ('layer { name: "d" type: "ImageData" top: "img" top: "cls" image_data_param { source: "l" '
                  'batch_size: 4 new_height: 6 new_width: 7 is_color: false } }', "img", "cls", (4, 1, 6, 7)),
    "ImageData crop": ('layer { name: "d" type: "ImageData" top: "img" top: "cls" transform_param { crop_size: 5 } '
                       'image_data_param { source: "l" batch_size: 2 new_height: 9 new_width: 9 } }',
                       "img", "cls", (2, 3, 5, 5)),
    "WindowData": ('layer { name: "d" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 6 }'
                   ' window_data_param { source: "w" batch_size: 3 } }', "data", "label", (3, 3, 6, 6)),
    "MemoryData": ('layer { name: "d" type: "MemoryData" top: "m" top: "y" memory_data_param { batch_size: 2 '
                   'channels: 4 height: 3 width: 5 } }', "m", "y", (2, 4, 3, 5)),
    "DummyData": ('layer { name: "d" type: "DummyData" top: "z" top: "t" dummy_data_param { shape { dim: 3 dim: 2 '
                  'dim: 4 dim: 4 } shape { dim: 3 } } }', "z", "t", (3, 2, 4, 4)),
    "DummyData legacy": ('layer { name: "d" type: "DummyData" top: "z" top: "t" dummy_data_param { num: 2 '
                         'channels: 3 height: 4 width: 5 num: 2 channels: 1 height: 1 width: 1 } }',
                         "z", "t", (2, 3, 4, 5)),
    "AnnotatedData": ('layer { name: "d" type: "AnnotatedData" top: "data" top: "gt" transform_param { crop_size: 4 '
                      'force_color: true } data_param { source: "x" batch_size: 2 } }', "data", "gt", (2, 3, 4, 4)),
    "Python": ('layer { name: "d" type: "Python" top: "feat" top: "target" python_param { module: "m" layer: "L" } }',
               "feat", "target", None),
    "HDF5Data targets first": ('layer { name: "d" type: "HDF5Data" top: "y" top: "x" hdf5_data_param { source: "h" '
                               'batch_size: 2 } }', "x", "y", None),
}


@pytest.mark.parametrize("kind", list(DATA_LAYERS))
def test_each_data_layer_becomes_an_input_and_its_labels_go(kind):
    text, image, label, stated = DATA_LAYERS[kind]
    net = _net(text + TAIL % (image, label, label))
    d = deploy.derive(net, "TEST")
    assert [(layer.name, layer.type, list(layer.top)) for layer in d.net.layer] == \
        [("d", "Input", [image]), ("ip", "InnerProduct", ["ip"])]
    assert d.labels == [label] and d.dropped == ["loss", "acc"] and deploy.net_outputs(d.net) == ["ip"]
    assert d.inputs == {image: stated}
    if stated is None:   # nothing states the shape: the one line names the input and the option
        with pytest.raises(CaffeFileError, match=f"shape of input '{image}' is unknown.*--shape {image}="):
            deploy.deploy_net(net)
    given = deploy.deploy_net(net, input_shapes=(1, 2, 3, 3))
    assert list(given.layer[0].input_param.shape[0].dim) == [1, 2, 3, 3]


def test_a_data_layer_without_stated_channels_needs_a_shape():
    net = _net('layer { name: "mnist" type: "Data" top: "data" top: "label" transform_param { scale: 0.004 } '
               'data_param { source: "db" batch_size: 64 } }' + TAIL % ("data", "label", "label"))
    assert deploy.derive(net).inputs == {"data": None}
    with pytest.raises(CaffeFileError, match="'data' is unknown \\(from layer 'mnist', Data"):
        sfport.TorchNet(sfport.CaffeModel.from_net(net), inference=True)


def test_a_python_loss_layer_goes_and_a_python_layer_with_bottoms_is_not_data():
    net = _net('layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 4 } } }'
               'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 4 } }'
               'layer { name: "pyloss" type: "Python" bottom: "ip" bottom: "t" top: "loss" '
               'python_param { module: "pyloss" layer: "EuclideanLossLayer" } loss_weight: 1 }')
    d = deploy.derive(net)
    # the Input top 't' is read only by the dropped loss: it goes; 'x' stays
    assert [(layer.name, list(layer.top)) for layer in d.net.layer] == [("in", ["x"]), ("ip", ["ip"])]
    assert d.dropped == ["pyloss"] and deploy.net_outputs(d.net) == ["ip"]
    # without loss_weight a Python layer with bottoms computes: it stays, and building it names its type
    net.layer[2].ClearField("loss_weight")
    d = deploy.derive(net)
    assert [layer.name for layer in d.net.layer] == ["in", "ip", "pyloss"]
    with pytest.raises(CaffeFileError, match=r"'pyloss' is a Python layer.*register a converter with @sfport.converters.register\('Python'\)"):
        sfport.TorchNet(sfport.CaffeModel.from_net(d.net))


def test_layers_that_need_a_label_or_only_feed_silence_go():
    net = _net('layer { name: "d" type: "Data" top: "data" top: "y" data_param { source: "s" batch_size: 2 } }'
               'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }'
               'layer { name: "y_flat" type: "Flatten" bottom: "y" top: "y_flat" }'
               'layer { name: "margin" type: "MarginInnerProduct" bottom: "ip" bottom: "y_flat" top: "logits" '
               'margin_inner_product_param { num_output: 5 } }'
               'layer { name: "relu" type: "ReLU" bottom: "ip" top: "side" }'
               'layer { name: "side2" type: "Power" bottom: "side" top: "side2" }'
               'layer { name: "mute" type: "Silence" bottom: "side2" }'
               'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "y" top: "loss" }')
    d = deploy.derive(net, input_shapes={"data": (2, 6)})
    assert [layer.name for layer in d.net.layer] == ["d", "ip"]
    assert d.dropped == ["y_flat", "margin", "relu", "side2", "mute", "loss"]
    assert deploy.net_outputs(d.net) == ["ip"]


def test_caffes_inserted_splits_fold_into_their_producers():
    # det1.caffemodel stores its training net as Caffe ran it: HDF5Data (label first), the Split layers
    # InsertSplits added, Silence, losses
    from tests.conftest import FIXTURES, HAVE_SHARED
    if not HAVE_SHARED:
        pytest.skip("shared fixtures absent (SFPORT_SHARED)")
    stored = sfport.read_caffemodel(FIXTURES / "mtcnn/det1.caffemodel").net
    assert any(wiring.is_inserted_split(layer) for layer in stored.layer)
    net = deploy.deploy_net(FIXTURES / "mtcnn/det1.caffemodel", input_shapes=(1, 3, 12, 12))
    assert not any(layer.type == "Split" for layer in net.layer)
    assert [layer.type for layer in net.layer] == ["Input"] + ["Convolution", "PReLU", "Pooling"] + \
        ["Convolution", "PReLU"] * 2 + ["Convolution", "Convolution"]
    assert list(net.layer[0].top) == ["data12face"] and deploy.net_outputs(net) == ["conv4-1", "conv4-2"]


def test_a_shape_for_a_blob_that_is_not_an_input_is_refused():
    net = _net(DATA_LAYERS["MemoryData"][0] + TAIL % ("m", "y", "y"))
    with pytest.raises(CaffeFileError, match="'ip', which is not an input"):
        deploy.derive(net, input_shapes={"ip": (1, 3)})


def test_net_runs_the_inference_form_and_the_full_test_net_on_request():
    net = _net(DATA_LAYERS["MemoryData"][0] + TAIL % ("m", "y", "y"))
    model = sfport.netdef.weight_match.with_random_weights(sfport.CaffeModel.from_net(net))
    inference = sfport.TorchNet(model, inference=True)
    full = sfport.TorchNet(model)   # pycaffe's caffe.Net(file, TEST): the loss and the accuracy too
    assert inference.outputs == ["ip"] and list(inference.inputs) == ["m"]
    assert sorted(full.outputs) == ["acc", "loss"] and list(full.inputs) == ["m", "y"]
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 5)).astype(np.float32)
    y = np.array([0, 2], np.float32)
    full.forward(m=x, y=y)
    np.testing.assert_array_equal(inference.forward(m=x)["ip"].numpy(), full.blobs["ip"].numpy())


def test_a_loss_without_a_top_goes_and_the_classifier_is_the_output():
    """A detection finetune net: WindowData, the loss layer writes no top (Caffe's net outputs would be the
    accuracy); the inference net's output is the classifier."""
    net = _net(DATA_LAYERS["WindowData"][0] +
               'layer { name: "fc8" type: "InnerProduct" bottom: "data" top: "fc8" inner_product_param { num_output: 21 } }'
               'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" }'
               'layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" }')
    assert deploy.net_outputs(netstate.filter_net(net, "TEST")) == ["accuracy"]
    d = deploy.derive(net)
    assert deploy.net_outputs(d.net) == ["fc8"] and d.inputs == {"data": (3, 3, 6, 6)}


def test_a_training_definition_read_in_test_names_its_data_layer_and_the_option():
    """MobileNet-SSD's train prototxt has its only data layer in TRAIN: deploy and inspect (TEST by default) name
    that layer, its rule and the options that select it, in the one error line (issue 31 item 6)."""
    path = str(FIXTURES / "ssd" / "MobileNetSSD_train.prototxt")
    for args in (["deploy", path, "-o", "unused.prototxt"], ["inspect", path]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2
        assert r.stderr.strip() == (
            f"sfport: error: {path}: layer 'conv0' (Convolution): unknown bottom blob 'data' (bottom index 0): no "
            f"earlier layer produces it; in this file layer 'data' (AnnotatedData) makes it with include "
            f"{{ phase: TRAIN }}, and this net is TEST: choose the state that includes it with --phase, --stage or "
            f"--level")
    r = CliRunner().invoke(cli, ["inspect", "--phase", "TRAIN", path])
    assert r.exit_code == 0 and "24 3 300 300" in r.output
