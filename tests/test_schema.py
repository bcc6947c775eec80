"""protos/caffe.proto: the committed bindings match it, and the wire facts of Caffe's caffe.proto and the forks hold."""
import struct

import pytest
from google.protobuf import unknown_fields

from sfport.protos import caffe_pb2, regen


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, wire_type, payload):
    tag = _varint(num << 3 | wire_type)
    if wire_type == 2:
        return tag + _varint(len(payload)) + payload
    return tag + payload


def test_committed_bindings_match_the_proto():
    """Regenerating caffe_pb2.py from caffe.proto gives the same schema as the committed file."""
    source = regen.generate()
    ns = {}
    exec(compile(source, "regenerated_caffe_pb2.py", "exec"), ns)  # private descriptor pool: no clash
    fresh = ns["DESCRIPTOR"].serialized_pb
    assert fresh == caffe_pb2.DESCRIPTOR.serialized_pb, (
        "protos/caffe_pb2.py is stale: run `python -m sfport.protos.regen`")
    # the committed bindings live in a private pool, as the regen command makes them
    assert "_descriptor_pool.DescriptorPool().AddSerializedFile(" in regen.TARGET.read_text()


def test_sphereface_fork_fields_decode_from_hand_encoded_bytes():
    """Field numbers of the SphereFace forks' caffe.proto: 147 MarginInnerProduct, 148 InterClass, 149 Normalize, IP normalize = 7."""
    margin = (_field(1, 0, _varint(10572)) + _field(2, 0, _varint(3)) + _field(5, 5, struct.pack("<f", 1000))
              + _field(6, 5, struct.pack("<f", 0.12)) + _field(8, 0, _varint(2000))
              + _field(9, 5, struct.pack("<f", 5)))
    inter = (_field(1, 0, _varint(10572)) + _field(2, 0, _varint(1)) + _field(5, 0, _varint(16000))
             + _field(6, 0, _varint(16001)) + _field(7, 5, struct.pack("<f", 10))
             + _field(9, 2, _varint(3) + _varint(7)) + _field(10, 0, _varint(0)))
    norm = _field(1, 2, b"L1") + _field(2, 0, _varint(1)) + _field(3, 0, _varint(1))
    ip = _field(1, 0, _varint(512)) + _field(7, 0, _varint(1))
    pool = _field(13, 0, _varint(1))
    raw = (_field(1, 2, b"fc6") + _field(117, 2, ip) + _field(121, 2, pool) + _field(147, 2, margin)
           + _field(148, 2, inter) + _field(149, 2, norm))  # canonical order: by field number
    layer = caffe_pb2.LayerParameter.FromString(raw)
    m = layer.margin_inner_product_param
    assert (m.num_output, m.type, m.base, m.iteration, m.lambda_min) == (10572, m.QUADRUPLE, 1000.0, 2000, 5.0)
    assert m.gamma == pytest.approx(0.12)
    i = layer.inter_class_param
    assert (i.num_output, i.type, i.iteration, i.alpha_start_iter, i.alpha_start_value) == (
        10572, i.AMONG, 16000, 16001, 10.0)
    assert list(i.alpha_stepvalue) == [3, 7] and i.normalize is False
    n = layer.normalize_param
    assert (n.normalize_type, n.fix_gradient, n.bp_norm) == ("L1", True, True)
    assert layer.inner_product_param.normalize is True
    assert layer.pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert len(unknown_fields.UnknownFieldSet(layer)) == 0
    # and our writer produces exactly these bytes again
    assert layer.SerializeToString() == raw


def test_defaults_are_the_wire_facts():
    m = caffe_pb2.MarginInnerProductParameter()
    assert (m.type, m.axis, m.base, m.gamma, m.power, m.iteration, m.lambda_min) == (m.SINGLE, 1, 1, 0, 1, 0, 0)
    i = caffe_pb2.InterClassParameter()
    assert (i.type, i.axis, i.iteration, i.alpha_start_iter, i.alpha_start_value, i.normalize) == (
        i.AMONG, 1, 0, 0, 0, True)
    assert i.alpha_step == pytest.approx(0.1)
    assert caffe_pb2.InterClassParameter.DESCRIPTOR.fields_by_name["alpha_stepvalue"].is_packed
    assert caffe_pb2.NormalizeParameter().normalize_type == "L2"
    bn = caffe_pb2.BatchNormParameter()
    assert bn.moving_average_fraction == pytest.approx(0.999) and bn.eps == pytest.approx(1e-5)
    assert caffe_pb2.PReLUParameter().channel_shared is False
    assert caffe_pb2.EltwiseParameter().operation == caffe_pb2.EltwiseParameter.SUM
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    s = caffe_pb2.SolverParameter()
    assert (s.clip_gradients, s.iter_size, s.average_loss, s.type, s.layer_wise_reduce) == (-1, 1, 1, "SGD", True)
    assert caffe_pb2.ParamSpec().lr_mult == 1 and caffe_pb2.ParamSpec().decay_mult == 1


def test_field_numbers_of_the_big_messages():
    """A few numbers that a mistyped schema would silently break (BVLC caffe.proto)."""
    f = lambda msg, name: getattr(caffe_pb2, msg).DESCRIPTOR.fields_by_name[name].number
    assert (f("NetParameter", "layer"), f("NetParameter", "layers"), f("NetParameter", "input_dim")) == (100, 2, 4)
    assert (f("LayerParameter", "blobs"), f("LayerParameter", "convolution_param"),
            f("LayerParameter", "batch_norm_param"), f("LayerParameter", "input_param")) == (7, 106, 139, 143)
    assert (f("BlobProto", "data"), f("BlobProto", "shape"), f("BlobProto", "double_data")) == (5, 7, 8)
    assert (f("V1LayerParameter", "blobs_lr"), f("V1LayerParameter", "layer"), f("V0LayerParameter", "blobs")) == (
        7, 1, 50)
    assert (f("SolverParameter", "iter_size"), f("SolverParameter", "layer_wise_reduce"),
            f("SolverState", "current_step")) == (36, 41, 4)
    assert caffe_pb2.V1LayerParameter.LayerType.Value("DECONVOLUTION") == 39
    # BVLC master's swish (147) / clip (148) must not be here: those numbers are the fork's
    names = {fd.number: fd.name for fd in caffe_pb2.LayerParameter.DESCRIPTOR.fields}
    assert names[147] == "margin_inner_product_param" and names[148] == "inter_class_param"
