"""Train/test definitions run as their deploy nets: for the SphereFace training prototxts (upstream and ours) and
for the LeNet and MTCNN train_test definitions in tests/nets (written beside the fixtures: Data, ImageData with
stages, HDF5Data with the targets first, a Python data layer and a Python loss, MemoryData and DummyData; no
label top is named 'label' but one), `sfport deploy` writes the fixture's deploy net layer for layer and
`sfport convert -p TRAIN_TEST` gives exactly the deploy net's outputs on the same weights."""
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sfport
from sfport.formats import caffe_files
from sfport.netdef import deploy
from sfport.cli import cli
from sfport.netdef.weight_match import with_random_weights
from tests.conftest import FIXTURES, UPSTREAM

NETS = pathlib.Path(__file__).parent / "nets"
ROOT = pathlib.Path(__file__).resolve().parent.parent

# (train/test definition, the deploy net it must equal, real weights or None (random), the shape to give or None)
CASES = [
    (NETS / "lenet_train_test.prototxt", FIXTURES / "lenet/lenet.prototxt",
     FIXTURES / "lenet/lenet_iter_10000.caffemodel", "64,1,28,28"),
    (NETS / "lenet_imagedata_train_test.prototxt", FIXTURES / "lenet/lenet.prototxt",
     FIXTURES / "lenet/lenet_iter_10000.caffemodel", None),
    (NETS / "det1_train_test.prototxt", FIXTURES / "mtcnn/det1.prototxt", FIXTURES / "mtcnn/det1.caffemodel",
     "data=1,3,12,12"),
    (NETS / "det2_train_test.prototxt", FIXTURES / "mtcnn/det2.prototxt", FIXTURES / "mtcnn/det2.caffemodel",
     "1,3,24,24"),
    (NETS / "det3_train_test.prototxt", FIXTURES / "mtcnn/det3.prototxt", FIXTURES / "mtcnn/det3.caffemodel", None),
] + [(p, ROOT / "prototxt/sphereface20_deploy.prototxt", None, "1,3,112,96")
     for p in sorted((ROOT / "prototxt").glob("*_train.prototxt"))] + [
    (UPSTREAM / "sphereface/train/code/sphereface_model.prototxt",
     UPSTREAM / "sphereface/train/code/sphereface_deploy.prototxt", None, "1,3,112,96"),
    (UPSTREAM / "sphereface/train/model_lib/Sphereface-64/sphereface_64_model.prototxt",
     UPSTREAM / "sphereface/train/model_lib/Sphereface-64/sphereface_64_deploy.prototxt", None, "1,3,112,96"),
] + [(UPSTREAM / f"sphereface-plus/train/code/sfplus/{name}_model.prototxt",
      UPSTREAM / "sphereface-plus/train/code/sfplus/sfplus_deploy.prototxt", None, "1,3,112,96")
     for name in ("sfplus", "m_single", "m_double", "m_triple")]


def _layers(net) -> list[bytes]:
    """Each layer's message, an Input layer without its name (the upgraded `input:` header calls it 'input')."""
    out = []
    for layer in net.layer:
        copy = type(layer)()
        copy.CopyFrom(layer)
        if copy.type == "Input":
            copy.ClearField("name")
        out.append(copy.SerializeToString(deterministic=True))
    return out


def _id(case):
    return case[0].name


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sfport_deploy_writes_the_deploy_net(case, tmp_path):
    train_test, deploy_file, _, shape = case
    out = tmp_path / "deploy.prototxt"
    args = ["deploy", str(train_test), "-o", str(out)] + (["--shape", shape] if shape else [])
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    want = sfport.read_prototxt(deploy_file).net
    got = sfport.read_prototxt(out).net
    # the batch is the one given or the data layer's batch_size; the deploy fixtures have their own
    for mine, theirs in zip(got.layer, want.layer):
        if theirs.type == "Input":
            assert list(mine.input_param.shape[0].dim[1:]) == list(theirs.input_param.shape[0].dim[1:])
            theirs.input_param.shape[0].dim[0] = mine.input_param.shape[0].dim[0]
    if shape is not None:
        assert list(got.layer[0].input_param.shape[0].dim) == [int(v) for v in shape.split("=")[-1].split(",")]
    assert _layers(got) == _layers(want)
    assert f"outputs {', '.join(deploy.net_outputs(want))}" in r.output


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_convert_of_the_train_test_net_gives_the_deploy_nets_outputs(case, tmp_path):
    train_test, deploy_file, weights, shape = case
    if weights is None:   # released weights are not here: random ones, the same for both nets
        weights = tmp_path / "w.caffemodel"
        caffe_files.write_caffemodel(weights, with_random_weights(sfport.read_prototxt(deploy_file), seed=3))
    out = tmp_path / "net.pt"
    args = ["convert", str(weights), "-p", str(train_test), "-o", str(out)] + (["--shape", shape] if shape else [])
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    converted = sfport.TorchNet(str(out))
    reference = sfport.TorchNet(str(deploy_file), weights=str(weights), input_shapes=dict(converted.inputs))
    assert converted.inputs == reference.inputs and converted.outputs == reference.outputs
    assert reference.report.layers_without_weights == []
    x = np.random.default_rng(1).uniform(-1, 1, next(iter(converted.inputs.values()))).astype(np.float32)
    with torch.no_grad():
        got = converted.forward(**{next(iter(converted.inputs)): x})
        want = reference.forward(**{next(iter(reference.inputs)): x})
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


def test_stages_choose_the_test_net(tmp_path):
    """lenet_imagedata_train_test: TEST with stage test-on-train reads the training list at batch 50; plain TEST
    (not_stage test-on-train) the test list at batch 100; TRAIN batch 64."""
    net = sfport.read_prototxt(NETS / "lenet_imagedata_train_test.prototxt").net
    batch = {}
    for phase, stages in (("TEST", ()), ("TEST", ("test-on-train",)), ("TRAIN", ())):
        d = deploy.deploy_net(net, phase, stages=stages)
        batch[(phase, stages)] = list(d.layer[0].input_param.shape[0].dim)
    assert batch == {("TEST", ()): [100, 1, 28, 28], ("TEST", ("test-on-train",)): [50, 1, 28, 28],
                     ("TRAIN", ()): [64, 1, 28, 28]}
    r = CliRunner().invoke(cli, ["deploy", str(NETS / "lenet_imagedata_train_test.prototxt"), "--stage",
                                 "test-on-train", "-o", str(tmp_path / "d.prototxt")])
    assert r.exit_code == 0 and "data [50,1,28,28]" in r.output, r.output


def test_onnx_of_a_train_val_net_has_the_deploy_inputs_and_outputs(tmp_path):
    import onnx
    out = tmp_path / "lenet.onnx"
    r = CliRunner().invoke(cli, ["convert", str(FIXTURES / "lenet/lenet_iter_10000.caffemodel"), "-p",
                                 str(NETS / "lenet_train_test.prototxt"), "--shape", "1,1,28,28", "--format",
                                 "onnx", "-o", str(out)])
    assert r.exit_code == 0, r.output
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["data"] and [o.name for o in graph.output] == ["prob"]


def test_the_shape_a_train_net_lacks_is_one_line_naming_the_input(tmp_path):
    r = CliRunner().invoke(cli, ["deploy", str(NETS / "lenet_train_test.prototxt"), "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "shape of input 'data' is unknown (from layer 'mnist', Data" in r.output and "--shape data=" in r.output
    assert not (tmp_path / "d").exists()
