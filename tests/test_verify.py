"""`sfport verify` on any net form: train/test definitions (the reference reads the inference net sfport derived),
fork types the reference knows under another name, and every input of a multi-input net fed."""
import json
import pathlib

from click.testing import CliRunner
from google.protobuf import text_format

import sfport
from sfport import caffe_files
from sfport.cli import cli
from sfport.model import with_random_weights
from sfport.protos import caffe_pb2
from tests.conftest import FIXTURES

NETS = pathlib.Path(__file__).parent / "nets"


def _verify(args):
    r = CliRunner().invoke(cli, ["verify", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _random_model(text, tmp_path):
    net = caffe_pb2.NetParameter()
    text_format.Parse(text, net)
    p, w = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    caffe_files.write_prototxt(p, net)
    caffe_files.write_caffemodel(w, with_random_weights(sfport.CaffeModel.from_net(net), seed=5))
    return p, w


def test_a_train_test_definition_verifies_against_opencv():
    doc = _verify([str(FIXTURES / "lenet/lenet_iter_10000.caffemodel"), "-p", str(NETS / "lenet_train_test.prototxt"),
                   "--shape", "2,1,28,28"])
    names = [b["name"] for b in doc["blobs"]]
    assert doc["passed"] and names[-1] == "prob" and "loss" not in names and "accuracy" not in names
    assert doc["input_shape"] == [2, 1, 28, 28]


def test_depthwise_convolution_is_read_by_opencv_as_a_grouped_convolution(tmp_path):
    p, w = _random_model('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 9 '
                         'dim: 7 } } } layer { name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "dw" '
                         'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }', tmp_path)
    doc = _verify([str(w), "-p", str(p)])
    assert doc["passed"] and [b["name"] for b in doc["blobs"]] == ["dw"]


def test_every_input_of_a_two_input_net_is_fed(tmp_path):
    p, w = _random_model('layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 5 } } } '
                         'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" } '
                         'layer { name: "conv" type: "Convolution" bottom: "s" top: "c" '
                         'convolution_param { num_output: 2 kernel_size: 3 } }', tmp_path)
    doc = _verify([str(w), "-p", str(p), "--shape", "a=1,3,8,7", "--shape", "b=1,3,8,7"])
    # 'sum' = a + b equals OpenCV's only when both inputs are fed, each the same on both sides
    assert doc["passed"] and doc["blobs"][0]["name"] == "sum" and doc["blobs"][0]["shape"] == [1, 3, 8, 7]
