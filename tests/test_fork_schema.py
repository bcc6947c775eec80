"""`--proto`: a Caffe fork's caffe.proto merged with sfport's schema at run time (issue 31). A made-up fork adds a
layer parameter message and a pooling field; with --proto its prototxt parses and the field reaches a
user-registered converter; without it one line names the field, the file and --proto; a fork field no converter
reads is never ignored silently."""
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sfport
from sfport import converters
from sfport.cli import cli
from sfport.errors import CaffeFileError
from sfport.formats import forkschema
from sfport.protos import caffe_pb2

pytest.importorskip("grpc_tools")

NET = """input: "data"
input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }
layer { name: "g" type: "Gain" bottom: "data" top: "g" my_layer_param { gain: 3 } }
layer { name: "p" type: "Pooling" bottom: "g" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 %s } }
"""


@pytest.fixture
def fork(tmp_path):
    """A fork's caffe.proto: sfport's own plus a LayerParameter field (9001, a new message), a PoolingParameter
    field, and a field at a number sfport uses for another (13, as the ceil-mode forks: renumbered)."""
    src = (Path(sfport.protos.__path__[0]) / "caffe.proto").read_text()
    src = src.replace("  optional RoundMode round_mode = 13 [default = CEIL];",   # the fork has 13 for its own field
                      "  optional bool my_ceil = 13 [default = true];\n  optional bool my_flag = 77 [default = false];")
    src = src.replace("message LayerParameter {", "message MyLayerParameter {\n  optional float gain = 1 [default = 2.0];\n"
                                                  "}\n\nmessage LayerParameter {\n"
                                                  "  optional MyLayerParameter my_layer_param = 9001;")
    (tmp_path / "fork.proto").write_text(src)
    (tmp_path / "net.prototxt").write_text(NET % "")
    (tmp_path / "flag.prototxt").write_text(NET % "my_flag: true")
    yield tmp_path
    forkschema.reset()


@pytest.fixture
def gain_converter():
    @converters.register("Gain")
    class Gain(converters.SameShape):
        fork_fields = ("my_layer_param",)

        def build(self, layer, bottom_shapes):
            gain = float(layer.my_layer_param.gain)

            class Mul(converters.NoBlobs):
                def forward(self, x):
                    return x * gain
            return Mul()
    yield
    converters.unregister("Gain")


def test_without_proto_one_line_names_the_field_the_file_and_the_option(fork):
    r = CliRunner().invoke(cli, ["inspect", str(fork / "net.prototxt")])
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert line.startswith(f"sfport: error: {fork / 'net.prototxt'}:3:")
    assert '"my_layer_param"' in line and "--proto" in line and "\n" not in line


def test_with_proto_the_field_reaches_a_users_converter(fork, gain_converter):
    notes = sfport.use_proto(fork / "fork.proto")
    assert any("PoolingParameter.my_ceil = 13 is sfport's round_mode there" in n for n in notes)   # renumbered
    net = sfport.TorchNet(str(fork / "net.prototxt"), input_shapes={"data": (1, 1, 4, 4)}, weights=None)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    out = net.forward(data=x)
    assert torch.equal(out["p"], torch.nn.functional.max_pool2d(3 * x, 2))
    # the same through the command line's --proto (and pycaffe's Net(proto=))
    r = CliRunner().invoke(cli, ["--proto", str(fork / "fork.proto"), "inspect", str(fork / "net.prototxt")])
    assert r.exit_code == 0, r.output
    pnet = sfport.Net(str(fork / "net.prototxt"), sfport.TEST, proto=str(fork / "fork.proto"))
    pnet.blobs["data"].data[...] = x.numpy()
    assert (pnet.forward()["p"] == torch.nn.functional.max_pool2d(3 * x, 2).numpy()).all()


def test_a_fork_field_no_converter_reads_is_refused(fork, gain_converter):
    sfport.use_proto(fork / "fork.proto")
    with pytest.raises(CaffeFileError, match=r"layer 'p' \(Pooling\): field 'pooling_param.my_flag' of .*fork.proto "
                                             r"is not read by sfport's Pooling converter"):
        sfport.TorchNet(str(fork / "flag.prototxt"), input_shapes={"data": (1, 1, 4, 4)}, weights=None)
    r = CliRunner().invoke(cli, ["--proto", str(fork / "fork.proto"), "inspect", str(fork / "flag.prototxt")])
    *notes, line = r.stderr.strip().splitlines()   # the renumbering note, then the one error line
    assert r.exit_code == 2 and line.startswith("sfport: error: ") and "pooling_param.my_flag" in line
    assert notes == [f"sfport: --proto {fork / 'fork.proto'}: caffe.PoolingParameter.my_ceil = 13 is sfport's "
                     f"round_mode there: text files name it and parse; in a binary file the number reads as sfport's "
                     f"field"]


def test_the_schema_is_sfports_own_again_after_reset(fork):
    sfport.use_proto(fork / "fork.proto")
    assert "my_layer_param" in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    forkschema.reset()
    assert "my_layer_param" not in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert not hasattr(caffe_pb2, "MyLayerParameter")


@pytest.mark.parametrize("text, what", [("syntax error here", "does not compile as a .proto"),
                                        ('syntax = "proto2";\npackage other;\nmessage A { optional int32 x = 1; }\n',
                                         "declares no `package caffe;`")])
def test_a_bad_proto_is_one_line(tmp_path, text, what):
    (tmp_path / "bad.proto").write_text(text)
    (tmp_path / "n.prototxt").write_text('input: "data"\n')
    r = CliRunner().invoke(cli, ["--proto", str(tmp_path / "bad.proto"), "inspect", str(tmp_path / "n.prototxt")])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"sfport: error: {tmp_path / 'bad.proto'}: {what}") and \
        len(r.stderr.strip().splitlines()) == 1
