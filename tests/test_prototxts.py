"""prototxt/: the project's ready-to-run SphereFace nets and solvers, built by sfport.netdef.builtin, against the authors'."""
import numpy as np
import pytest

from sfport.netdef import builtin, shapes
from sfport.formats.caffe_files import read_prototxt, read_solver
from sfport.protos import caffe_pb2

from conftest import ROOT, UPSTREAM

SF = UPSTREAM / "sphereface/train/code"
SFP = UPSTREAM / "sphereface-plus/train/code/sfplus"
PAIRS = [  # (ours, upstream)
    ("sphereface20_train.prototxt", SF / "sphereface_model.prototxt"),
    ("sfplus_m1_train.prototxt", SFP / "m_single_model.prototxt"),
    ("sfplus_m2_train.prototxt", SFP / "m_double_model.prototxt"),
    ("sfplus_m3_train.prototxt", SFP / "m_triple_model.prototxt"),
    ("sfplus_m4_train.prototxt", SFP / "sfplus_model.prototxt"),
]
SOLVERS = [
    ("sphereface20_solver.prototxt", SF / "sphereface_solver.prototxt"),
    ("sfplus_m1_solver.prototxt", SFP / "m_single_solver.prototxt"),
    ("sfplus_m2_solver.prototxt", SFP / "m_double_solver.prototxt"),
    ("sfplus_m3_solver.prototxt", SFP / "m_triple_solver.prototxt"),
    ("sfplus_m4_solver.prototxt", SFP / "sfplus_solver.prototxt"),
]
TYPED = ["convolution_param", "inner_product_param", "margin_inner_product_param", "inter_class_param",
         "eltwise_param", "prelu_param", "transform_param", "loss_param"]


def test_committed_files_are_the_builders_output(tmp_path):
    written = builtin.write_project_prototxts(tmp_path)
    assert len(written) == 11
    for path in written:
        name = path.rsplit("/", 1)[-1]
        assert (ROOT / "prototxt" / name).read_text() == open(path).read(), name


def compare_nets(ours, theirs):
    assert len(ours.layer) == len(theirs.layer)
    inputs = {"data": (2, 3, 112, 96), "label": (2,)}
    so = shapes.infer(ours, caffe_pb2.TRAIN, inputs)
    st = shapes.infer(theirs, caffe_pb2.TRAIN, inputs)
    for a, b, sa, sb in zip(ours.layer, theirs.layer, so, st):
        assert (a.name, a.type, list(a.bottom), list(a.top)) == (b.name, b.type, list(b.bottom), list(b.top))
        assert [(p.name, p.lr_mult, p.decay_mult) for p in a.param] == \
            [(p.name, p.lr_mult, p.decay_mult) for p in b.param], a.name
        for field in TYPED:
            assert getattr(a, field) == getattr(b, field), (a.name, field)
        assert (sa.tops, sa.params) == (sb.tops, sb.params), a.name
        if a.type == "ImageData":
            pa, pb = a.image_data_param, b.image_data_param
            assert (pa.batch_size, pa.shuffle, pa.source) == (pb.batch_size, pb.shuffle, pb.source)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0] for p in PAIRS])
def test_train_nets_equal_upstream(ours, theirs):
    compare_nets(read_prototxt(ROOT / "prototxt" / ours).net, read_prototxt(theirs).net)


def test_depth_is_a_parameter():
    compare_nets(builtin.sphereface_train(64), read_prototxt(UPSTREAM / "sphereface/train/model_lib/Sphereface-64/"
                                                                     "sphereface_64_model.prototxt").net)
    narrow = builtin.sphereface_train(4, channels=(8, 16, 32, 64), num_classes=30, feature_dim=64)
    conv = [l.convolution_param.num_output for l in narrow.layer if l.type == "Convolution"]
    assert conv == [8, 16, 32, 64]


def test_deploy_equals_upstream():
    ours = read_prototxt(ROOT / "prototxt" / "sphereface20_deploy.prototxt").net
    theirs = read_prototxt(SF / "sphereface_deploy.prototxt").net  # legacy input header, upgraded to an Input
    assert [(l.name, l.type) for l in ours.layer] == [(l.name, l.type) for l in theirs.layer]
    for a, b in zip(ours.layer[1:], theirs.layer[1:]):
        assert a == b, a.name


@pytest.mark.parametrize("ours,theirs", SOLVERS, ids=[p[0] for p in SOLVERS])
def test_solvers_equal_upstream(ours, theirs):
    a, b = read_solver(ROOT / "prototxt" / ours).param, read_solver(theirs).param
    for field in ("base_lr", "lr_policy", "gamma", "stepvalue", "max_iter", "momentum", "weight_decay", "display",
                  "snapshot", "iter_size", "solver_mode", "layer_wise_reduce"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.net == ours.replace("_solver", "_train") and b.net.endswith("_model.prototxt")
    assert np.float32(a.base_lr) == np.float32(b.base_lr)
