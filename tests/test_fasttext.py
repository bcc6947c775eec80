"""sfport.formats.fasttext, the fast path for Caffe's text files: where it parses a text, the message is byte for
byte what protobuf's own ``text_format.Merge`` gives; where it cannot decide (anything outside the subset Caffe
files use, and every error), it hands the text to protobuf, whose result and error message the file then gets."""
import glob
import math

import pytest
from google.protobuf import text_format

from sfport.formats import caffe_files, fasttext
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

from tests.conftest import FIXTURES

SHARED = FIXTURES.parent
FILES = sorted(set(glob.glob(str(SHARED / "**" / "*.prototxt"), recursive=True)))


def _both(text, cls=caffe_pb2.NetParameter):
    ref, fast = cls(), cls()
    text_format.Merge(text, ref)
    assert fasttext.merge(text, fast), "the fast path gave up"
    return ref, fast


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.split("/shared/")[-1])
def test_every_shared_prototxt_parses_to_protobufs_bytes(path):
    text = open(path, encoding="utf-8").read()
    cls = caffe_pb2.SolverParameter if "solver" in path.rsplit("/", 1)[-1] else caffe_pb2.NetParameter
    try:
        ref = cls()
        text_format.Merge(text, ref)
    except text_format.ParseError:
        assert not fasttext.merge(text, cls())   # what protobuf refuses, the fast path does not accept
        return
    fast = cls()
    assert fasttext.merge(text, fast), "the fast path gave up on a valid file"
    assert fast.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True)


def test_the_text_format_corners_caffe_files_use():
    text = r'''
    name: "a \"quoted\" name"   # a comment
    layer < name: 'single' type: "Convolution" bottom: "x" "y" top: "c"
      convolution_param { num_output: 0x10 kernel_size: [3, 5] pad: 010 weight_filler: { type: "gaussian"
        std: 1e-2 } bias_filler { value: -.5 } bias_term: f }; >
    layer { name: "e" type: "Pooling" pooling_param { pool: 1 } }
    layer { name: "p" type: "PReLU" prelu_param { channel_shared: True } phase: TEST loss_weight: inf }
    layer { name: "n" loss_weight: -inf loss_weight: nan loss_weight: 3 propagate_down: 1 }
    layer { name: "empty" softmax_param { } }
    state { phase: TEST } state { level: 2 }
    '''
    ref, fast = _both(text)
    assert fast.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True)
    conv = fast.layer[0]
    assert conv.bottom[0] == "xy" and list(conv.convolution_param.kernel_size) == [3, 5]
    assert conv.convolution_param.num_output == 16 and list(conv.convolution_param.pad) == [8]
    assert fast.layer[1].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert fast.layer[4].HasField("softmax_param") and fast.state.phase == caffe_pb2.TEST and fast.state.level == 2
    assert math.isnan(fast.layer[3].loss_weight[1])


@pytest.mark.parametrize("text", [
    'layer { name: "x" convolution_param { num_output: -1 } }',     # out of a uint32's range
    'layer { name: "x" convolution_param { num_output: 1.5 } }',
    'layer { name: "x" nonsense: 1 }',
    'layer { name: "x" ',
    'layer { name: x }',
    'layer { name: "x" } }',
    'layer { name: "x" type: "ReLU" relu_param { engine: TURBO } }',
    '[caffe.ext] { }',
    'name: "\\xff"',
])
def test_what_it_cannot_decide_goes_to_protobuf(text):
    msg = caffe_pb2.NetParameter(name="kept")
    assert not fasttext.merge(text, msg) and msg.name == "kept"   # untouched


def test_errors_are_protobufs_with_line_and_column(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "n"\nlayer {\n  name: "x"\n  convolution_param { num_output: -1 }\n}\n')
    with pytest.raises(CaffeFileError, match=r"bad.prototxt:4:\d+: syntax error: .*num_output"):
        caffe_files.read_prototxt(p)


def test_an_integer_of_many_digits_goes_to_protobuf():
    assert not fasttext.merge("layer { convolution_param { num_output: " + "9" * 5000 + " } }", caffe_pb2.NetParameter())


@pytest.mark.parametrize("text", ['layer [ { name: "a" }, { name: "b" } ]', 'layer: [ ]',
                                  'layer { bottom: [] top: ["a", "b"] loss_weight: [1, 2.5] }'])
def test_lists_of_messages_and_scalars(text):
    ref, fast = _both(text)
    assert fast.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True)


@pytest.mark.parametrize("sep", ["  # a comment\n", " "], ids=["lines", "one-line"])
def test_texts_longer_than_a_chunk(sep):
    # past fasttext's chunk of lines (findall) and, on one line, its match-by-match path: the same bytes as protobuf
    layer = ('layer {{ name: "conv{0}" type: "Convolution" bottom: "d{0}" top: "c{0}" '
             'convolution_param {{ num_output: {0} kernel_size: [3, 1] weight_filler {{ std: 0.{0} }} }} }}')
    text = sep.join(layer.format(i) for i in range(4000))
    assert len(text) > 4 * fasttext._CHUNK
    ref, fast = _both(text)
    assert fast.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True)
    assert len(fast.layer) == 4000 and fast.layer[3999].convolution_param.num_output == 3999


@pytest.mark.parametrize("line", ["\n", " "], ids=["lines", "one-line"])
def test_garbage_is_given_up_where_it_starts(monkeypatch, line):
    # a character no token starts with, early in 8 MB: the parse gives up after tokenizing one list of tokens
    lists = []

    def counted(text):
        for chunk in chunks(text):
            lists.append(len(chunk))
            yield chunk
    chunks = fasttext._chunks
    monkeypatch.setattr(fasttext, "_chunks", counted)
    assert not fasttext.merge('name: "n" \x01' + ("a" + line) * (4 << 20), caffe_pb2.NetParameter())
    assert len(lists) == 1 and lists[0] < 40_000
