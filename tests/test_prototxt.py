"""Acceptance 1: every prototxt of the fixtures, upstream and golden folders parses; spot values hold."""
import pytest

from sfport.formats import caffe_files
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

from conftest import FIXTURES, GOLDEN, UPSTREAM, all_prototxts


def _is_solver(path):
    return "solver" in path.name


# The SSD fork's messages (prior_box_param, resize_param, ...) are not in the schema until the SSD issue (13) adds
# them; until then those files must fail as bad input does: one line naming the file, line, column and field.
SSD_FIELDS = ("prior_box_param", "detection_output_param", "multibox_loss_param", "annotated_data_param",
              "resize_param", "noise_param", "distort_param", "expand_param", "emit_constraint", "batch_sampler",
              "detection_evaluate_param")


def _needs_ssd_schema(path):
    return path.parent.name == "ssd"


@pytest.mark.parametrize("path", [p for p in all_prototxts() if _needs_ssd_schema(p)], ids=lambda p: p.name)
def test_ssd_prototxts_parse_with_the_fork_fields(path):
    """The SSD fork's fields (weiliu89/caffe, ssd branch) are in the schema at their numbers: the MobileNet-SSD
    definitions parse and survive a binary round trip unchanged."""
    net = caffe_files.read_prototxt(path).net
    used = {f.name for layer in net.layer for f, _ in layer.ListFields()}
    used |= {f.name for layer in net.layer for f, _ in layer.transform_param.ListFields()}
    assert used & set(SSD_FIELDS), used
    again = type(net)()
    again.ParseFromString(net.SerializeToString())
    assert again == net


@pytest.mark.parametrize("path", [p for p in all_prototxts() if not _needs_ssd_schema(p)],
                         ids=lambda p: str(p.relative_to(p.parents[2])))
def test_every_prototxt_parses(path):
    if _is_solver(path):
        solver = caffe_files.read_solver(path)
        assert solver.param.base_lr > 0 and solver.param.lr_policy
    else:
        model = caffe_files.read_prototxt(path)
        assert len(model.net.layer) > 0
        assert not model.has_weights()
        assert not len(model.net.input) and not len(model.net.layers)  # upgraded to the current form


def test_sfplus_model_spot_values():
    net = caffe_files.read_prototxt(UPSTREAM / "sphereface-plus/train/code/sfplus/sfplus_model.prototxt").net
    fc6 = next(l for l in net.layer if l.name == "fc6")
    assert fc6.type == "MarginInnerProduct"
    m = fc6.margin_inner_product_param
    assert m.type == caffe_pb2.MarginInnerProductParameter.QUADRUPLE
    assert (m.num_output, m.base, m.lambda_min, m.iteration, m.power) == (10572, 1000, 5, 2000, 1)
    assert m.gamma == pytest.approx(0.12)
    assert fc6.param[0].name == "fc6_w"
    inter = next(l for l in net.layer if l.type == "InterClass")
    p = inter.inter_class_param
    assert p.type == caffe_pb2.InterClassParameter.AMONG
    assert p.alpha_start_value == 10 and p.num_output == 10572
    assert (p.iteration, p.alpha_start_iter) == (16000, 16001)
    assert [x.name for x in inter.param] == ["fc6_w"]
    assert list(inter.bottom) == ["fc5", "label"]


def test_sphereface_model_and_solver_spot_values():
    net = caffe_files.read_prototxt(UPSTREAM / "sphereface/train/code/sphereface_model.prototxt").net
    data = net.layer[0]
    assert data.type == "ImageData"
    assert data.transform_param.scale == 0.0078125 and list(data.transform_param.mean_value) == [127.5] * 3
    assert data.transform_param.mirror is True
    fc6 = next(l for l in net.layer if l.name == "fc6").margin_inner_product_param
    assert (fc6.type, fc6.base, fc6.lambda_min, fc6.iteration) == (fc6.QUADRUPLE, 1000, 5, 0)
    solver = caffe_files.read_solver(UPSTREAM / "sphereface/train/code/sphereface_solver.prototxt").param
    assert solver.lr_policy == "multistep" and list(solver.stepvalue) == [16000, 24000, 28000]
    assert (solver.max_iter, solver.momentum) == (28000, pytest.approx(0.9))
    assert solver.base_lr == pytest.approx(0.1) and solver.weight_decay == pytest.approx(5e-4)
    plus = caffe_files.read_solver(UPSTREAM / "sphereface-plus/train/code/sfplus/sfplus_solver.prototxt").param
    assert plus.layer_wise_reduce is False and plus.snapshot == 500 and list(plus.stepvalue) == [4000, 6000]


@pytest.mark.parametrize("name,mtype,gamma", [("m_single", 0, 0.12), ("m_double", 1, 0.11), ("m_triple", 2, 0.11)])
def test_sfplus_margin_variants(name, mtype, gamma):
    """The SphereFace+ m=1..3 train nets of wy1iu/sphereface-plus."""
    net = caffe_files.read_prototxt(UPSTREAM / f"sphereface-plus/train/code/sfplus/{name}_model.prototxt").net
    fc6 = next(l for l in net.layer if l.name == "fc6").margin_inner_product_param
    assert fc6.type == mtype and fc6.iteration == 0 and fc6.gamma == pytest.approx(gamma)


def test_deploy_header_upgrade_gives_input_layer():
    model = caffe_files.read_prototxt(FIXTURES / "sphereface_prototxt/wy1iu/sphereface_deploy.prototxt")
    first = model.net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data"])
    assert list(first.input_param.shape[0].dim) == [1, 3, 112, 96]
    assert any("Input layer" in u for u in model.upgrades)


def test_text_forms_numeric_enums_tabs_comments_no_space(tmp_path):
    """Forms that real files use (protobuf's text format as Caffe's ReadProtoFromTextFile reads it): numeric enums, name:"x" without space, tabs, # comments,
    input_shape headers."""
    p = tmp_path / "forms.prototxt"
    p.write_text('name:"forms"\t# a comment\ninput: "data"\ninput_shape {\tdim: 2 dim: 3 dim: 8 dim: 8 }\n'
                 'layer {\n\tname:"sum" type:"Eltwise" bottom:"data" bottom:"data" top:"sum"\n'
                 '\teltwise_param { operation: 2 coeff: 1 coeff: -1 }  # MAX by number\n}\n'
                 'layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"\n'
                 '  pooling_param { pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR } }\n')
    net = caffe_files.read_prototxt(p).net
    assert net.name == "forms"
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 8, 8]
    e = net.layer[1].eltwise_param
    assert e.operation == caffe_pb2.EltwiseParameter.MAX and list(e.coeff) == [1, -1]
    assert net.layer[2].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR


def test_syntax_error_reports_file_line_column(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom: "data" top "b"\n}\n')
    with pytest.raises(CaffeFileError) as e:
        caffe_files.read_prototxt(p)
    assert str(e.value).startswith(f"{p}:5:")
    assert "syntax error" in str(e.value) and "\n" not in str(e.value)


def test_unknown_field_is_an_error_with_position(tmp_path):
    p = tmp_path / "unknown.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  colour: "blue"\n}\n')
    with pytest.raises(CaffeFileError) as e:
        caffe_files.read_prototxt(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:5:3") and "colour" in msg


def test_solver_and_net_are_told_apart(tmp_path):
    with pytest.raises(CaffeFileError, match="is a solver prototxt"):
        caffe_files.read_prototxt(GOLDEN / "solver/solver_multistep.prototxt")
    with pytest.raises(CaffeFileError, match="is a net definition"):
        caffe_files.read_solver(GOLDEN / "solver/tiny_sphereface.prototxt")


def test_legacy_solver_type_upgrade(tmp_path):
    p = tmp_path / "old_solver.prototxt"
    p.write_text('net: "n.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nsolver_type: NESTEROV\n')
    s = caffe_files.read_solver(p)
    assert s.param.type == "Nesterov" and not s.param.HasField("solver_type")
    assert s.upgrades == ['solver_type: NESTEROV -> type: "Nesterov"']
    p.write_text('net: "n.prototxt"\nsolver_type: ADAM\ntype: "Adam"\n')
    with pytest.raises(CaffeFileError, match="cannot both be specified"):
        caffe_files.read_solver(p)


def test_prototxt_writer_round_trips(tmp_path):
    """Text out, text in: the same NetParameter (SphereFace-64 train net, the largest upstream file)."""
    src = caffe_files.read_prototxt(UPSTREAM / "sphereface/train/model_lib/Sphereface-64/sphereface_64_model.prototxt")
    out = tmp_path / "rewritten.prototxt"
    caffe_files.write_prototxt(out, src.net)
    again = caffe_files.read_prototxt(out)
    assert again.net == src.net and again.upgrades == []


def test_a_fork_solver_read_as_a_net_gets_the_solver_s_error(tmp_path):
    # DeepLab-Context's lenet_stepearly_solver.prototxt: a solver with its fork's lr policy field, which neither
    # schema reads whole; it reads further as a SolverParameter (to line 4) than as a NetParameter (line 1), so the
    # error is the solver's, at the fork's field
    p = tmp_path / "stepearly_solver.prototxt"
    p.write_text('train_net: "lenet_train.prototxt"\nbase_lr: 0.01\nlr_policy: "stepearly"\nstepearly: 1\n'
                 'max_iter: 10\n')
    with pytest.raises(CaffeFileError) as e:
        caffe_files.read_net(p)
    assert str(e.value) == (f"{p}:4:1: syntax error: Message type \"caffe.SolverParameter\" has no field named "
                            f"\"stepearly\" (the field of a Caffe fork? give that fork's caffe.proto with --proto)")
    # a net with a field no schema has keeps the net's error, where the net's reading stops
    q = tmp_path / "net.prototxt"
    q.write_text('name: "x"\nlayer { name: "a" type: "ReLU" bottom: "d" top: "d" bogus: 1 }\n')
    with pytest.raises(CaffeFileError, match=r'net.prototxt:2:53: syntax error: Message type "caffe.LayerParameter" '
                                             r'has no field named "bogus"'):
        caffe_files.read_net(q)
