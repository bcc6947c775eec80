"""pycaffe's own names in sfport: net_spec.py's NetSpec / layers / params / to_proto, layer_type_list, TRAIN and
TEST, draw.py's functions, and `python -m sfport.pycaffe SCRIPT` running an unchanged pycaffe script whose
`import caffe` resolves to sfport (never shadowing a real pycaffe unless asked). The expected prototxt text is
written out here from net_spec.py's rules (python/caffe/net_spec.py of BVLC Caffe), not produced by it."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from google.protobuf import text_format

import sfport as caffe
from sfport import converters
from sfport.formats import caffe_files
from sfport.netdef import datalayers
from sfport.protos import caffe_pb2
from sfport.runtime.net import Net

L, P = caffe.layers, caffe.params


def named_net():
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[2, 1, 8, 8]), dict(dim=[2])], transform_param=dict(scale=0.5),
                                  ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=4, weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.ip = L.InnerProduct(n.relu1, num_output=3, loss_weight=0)
    n.loss = L.SoftmaxWithLoss(n.ip, n.label)
    return n.to_proto()


NAMED = """
layer { name: "data" type: "DummyData" top: "data" top: "label" transform_param { scale: 0.5 }
        dummy_data_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 }
        param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip" loss_weight: 0 inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def test_netspec_names_params_and_in_place_as_net_spec_does():
    """Tops named by assignment; keyword arguments into the type's own <type>_param (kernel_size a repeated field
    given one value), *param keywords and fields the type's message lacks (loss_weight) into the LayerParameter;
    in_place tops are the bottoms."""
    assert named_net() == _net(NAMED)


def test_anonymous_tops_are_named_by_type_and_count():
    data, label = L.DummyData(shape=[dict(dim=[2, 1, 8, 8]), dict(dim=[2])], ntop=2)
    conv = L.Convolution(data, kernel_size=3, num_output=4)
    relu = L.ReLU(conv, in_place=True)
    conv2 = L.Convolution(relu, kernel_size=1, num_output=2)
    loss = L.SoftmaxWithLoss(conv2, label)
    got = loss.to_proto()
    assert [(l.name, list(l.bottom), list(l.top)) for l in got.layer] == [
        ("DummyData1", [], ["DummyData1", "DummyData2"]),
        ("Convolution1", ["DummyData1"], ["Convolution1"]),
        ("ReLU1", ["Convolution1"], ["Convolution1"]),
        ("Convolution2", ["Convolution1"], ["Convolution2"]),
        ("SoftmaxWithLoss1", ["Convolution2", "DummyData2"], ["SoftmaxWithLoss1"])]


def test_layers_without_tops_and_the_type_error():
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    anonymous = L.Silence(n.data2, ntop=0)
    assert isinstance(anonymous, caffe.pycaffe.net_spec.Function)
    got = n.to_proto()
    assert [(l.name, list(l.top)) for l in got.layer] == [("data", ["data", "data2"]), ("silence_data", [])]
    assert got.layer[0].dummy_data_param.shape[0].dim == [3]
    assert [l.name for l in caffe.to_proto(anonymous).layer] == ["DummyData1", "Silence1"]
    pair = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(pair, ntop=0)
    L.Silence(*pair, ntop=0)


def test_params_are_the_schema_enums_and_phases():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX and P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert (caffe.TRAIN, caffe.TEST) == (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)
    with pytest.raises(AttributeError):
        P.NoSuchLayer.X


def test_a_netspec_net_builds_in_sfport():
    text = str(named_net())
    model = caffe_files.CaffeModel.from_net(_net(text), None)
    net = Net(model, phase="train")
    assert [gl.name for gl in net.graph.layers] == ["conv1", "pool1", "relu1", "ip", "loss"]
    assert net.graph.inputs == {"data": (2, 1, 8, 8), "label": (2,)}


def test_layer_type_list_is_the_sorted_registry():
    types = caffe.layer_type_list()
    assert types == sorted(types)
    assert set(types) == set(converters.registered_types()) | set(datalayers.DATA_TYPES)
    assert {"Data", "Convolution", "InnerProduct", "Python", "Input", "MarginInnerProduct"} <= set(types)


def test_draw_under_pycaffe_names(tmp_path):
    pydot = pytest.importorskip("pydot")
    net = named_net()
    assert isinstance(caffe.draw.get_pydot_graph(net, "LR"), pydot.Dot)
    dot = caffe.draw.draw_net(net, "TB", ext="dot").decode()
    assert "rankdir=TB" in dot and "conv1" in dot and "Convolution" in dot
    caffe.draw.draw_net_to_file(net, str(tmp_path / "n.dot"), "LR")
    assert "rankdir=LR" in (tmp_path / "n.dot").read_text()


SCRIPT = """
import json, sys
import caffe
import caffe.draw
from caffe import layers as L
from caffe.proto import caffe_pb2
import sfport
n = caffe.NetSpec()
n.data = L.Input(shape=dict(dim=[1, 3, 4, 4]))
n.conv = L.Convolution(n.data, num_output=2, kernel_size=3)
print(json.dumps({"argv": sys.argv, "name": __name__, "is_sfport": caffe is sfport,
                  "draw": caffe.draw is sfport.draw, "test": caffe.TEST, "pb2": caffe_pb2.TEST,
                  "layers": [l.name for l in n.to_proto().layer]}))
"""


def _run(args, tmp_path, env=None):
    return subprocess.run([sys.executable, "-m", "sfport.pycaffe", *args], cwd=tmp_path, capture_output=True,
                          text=True, env=env)


def test_an_unchanged_pycaffe_script_runs_on_sfport(tmp_path):
    script = tmp_path / "classify.py"
    script.write_text(SCRIPT)
    r = _run([str(script), "a", "--b"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"argv": [str(script), "a", "--b"], "name": "__main__", "is_sfport": True, "draw": True,
                   "test": 1, "pb2": 1, "layers": ["data", "conv"]}


def test_a_real_pycaffe_is_not_shadowed_unless_asked(tmp_path):
    real = tmp_path / "site"
    (real / "caffe").mkdir(parents=True)
    (real / "caffe" / "__init__.py").write_text("REAL = True\n")
    script = tmp_path / "s.py"
    script.write_text("import caffe\nprint(getattr(caffe, 'REAL', False), hasattr(caffe, 'NetSpec'))\n")
    import os
    env = {**os.environ, "PYTHONPATH": str(real) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = _run([str(script)], tmp_path, env)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "a real pycaffe is importable" in lines[0] and "--shadow" in lines[0], r.stderr
    r = _run(["--shadow", str(script)], tmp_path, env)
    assert r.returncode == 0 and r.stdout.split() == ["False", "True"], r.stderr


def test_runner_errors_and_modules_not_ported(tmp_path):
    r = _run([str(tmp_path / "none.py")], tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"sfport: error: {tmp_path / 'none.py'}: no such script"
    assert _run([], tmp_path).returncode == 2 and _run(["--help"], tmp_path).returncode == 0
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""
        try:
            import caffe.coord_map_not_there
        except ImportError as e:
            print(type(e).__name__, e.name)
    """))
    r = _run([str(script)], tmp_path)
    assert r.returncode == 0 and r.stdout.split() == ["ModuleNotFoundError", "caffe.coord_map_not_there"], r.stderr


# --- coord_map.py ---

def _conv_pool_deconv(ks=3, stride=1, pad=0, pool=2, dks=4, dstride=2, dpad=0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 40, 40]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool)
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(num_output=2, kernel_size=dks, stride=dstride,
                                                              pad=dpad))
    return n


def _expected(ks, stride, pad, pool, dks, dstride, dpad):
    """The map deconv -> data composed by hand: a window layer takes output i to input i * s + (k - 1) / 2 - p
    (scale 1/s, shift (p - (k - 1) / 2) / s); the deconvolution the inverse (scale s, shift (k - 1) / 2 - p).
    Walking back from deconv composes deconv, pool, conv; the result is then inverted."""
    maps = [(dstride, (dks - 1) / 2 - dpad), (1 / pool, (0 - (pool - 1) / 2) / pool),
            (1 / stride, (pad - (ks - 1) / 2) / stride)]
    a, b = 1.0, 0.0
    for sa, sb in maps:
        a, b = a * sa, a * sb + b
    return 1 / a, -b / a


@pytest.mark.parametrize("geometry", [(3, 1, 0, 2, 4, 2, 0), (3, 1, 0, 4, 8, 4, 0), (5, 1, 2, 2, 4, 2, 1),
                                      (3, 2, 1, 2, 4, 4, 0), (7, 1, 3, 3, 6, 3, 2)])
def test_coord_map_composes_window_layers(geometry):
    from sfport.pycaffe.coord_map import coord_map_from_to
    n = _conv_pool_deconv(*geometry)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    want_a, want_b = _expected(*geometry)
    assert ax == 1 and np.allclose(a, want_a) and np.allclose(b, want_b), (a, b, want_a, want_b)
    n.relu = L.ReLU(n.deconv)                       # pointwise layers pass coordinates unchanged
    assert np.allclose(coord_map_from_to(n.relu, n.data)[2], b)


def test_crop_aligns_and_builds_in_sfport():
    """crop() of an upsampled map to its input: scale 1, offset -b; the net with the Crop builds and the cropped
    blob has the data's spatial size."""
    from sfport.pycaffe.coord_map import coord_map_from_to, crop
    n = _conv_pool_deconv(ks=3, pad=0, pool=2, dks=4, dstride=2, dpad=0)
    n.crop = crop(n.deconv, n.data)
    proto = n.to_proto()
    layer = proto.layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["deconv", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [0]
    _, a, b = coord_map_from_to(n.crop, n.data)
    assert np.all(np.asarray(a) == 1) and np.all(np.asarray(b) == 0)
    shapes = Net(caffe_files.CaffeModel.from_net(proto, None)).graph
    assert shapes.layers[-1].top_shapes[0] == (1, 2, 40, 40)


def test_coord_map_refusals():
    from sfport.pycaffe.coord_map import coord_map_from_to, crop
    n = _conv_pool_deconv()
    n.ip = L.InnerProduct(n.deconv, num_output=3)
    with pytest.raises(RuntimeError, match="Could not compute map"):
        coord_map_from_to(n.ip, n.data)
    with pytest.raises(AssertionError, match="scale mismatch"):   # pooled 3x, upsampled 2x
        m = _conv_pool_deconv(pool=3, dks=4, dstride=2)
        crop(m.deconv, m.data)
    with pytest.raises(AssertionError, match="negative offset"):
        m = _conv_pool_deconv(dpad=10)
        crop(m.deconv, m.data)
    legacy = caffe.NetSpec()
    legacy.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    legacy.conv = L.Convolution(legacy.data, num_output=1, kernel_h=3, kernel_w=3)
    with pytest.raises(AssertionError, match="legacy _h/_w"):
        coord_map_from_to(legacy.conv, legacy.data)


# --- Timer, init_log / log, set_random_seed ---

def test_timer_counts_whole_milliseconds_as_benchmark_cpp(capsys):
    import time
    t = caffe.Timer()
    assert t.ms == 0.0 and "Timer has never been run before reading time." in capsys.readouterr().err
    t.start()
    time.sleep(0.03)
    t.start()                       # already running: the first start stays
    ms = t.ms                       # reading a running timer stops it
    assert ms == int(ms) and 30 <= ms < 1000 and not t.running
    time.sleep(0.02)
    assert t.ms == ms               # stopped: the same reading
    t.stop()
    assert t.ms == ms


def test_log_lines_are_glog_lines_and_init_log_filters(capsys):
    import re
    caffe.init_log()
    caffe.log("hello from a script")
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ _caffe\.cpp:68\] hello from a script", line), line
    caffe.init_log(1)
    caffe.log("not shown")
    assert capsys.readouterr().err == ""
    caffe.init_log(0)


def test_set_random_seed_repeats_what_fillers_draw():
    text = str(named_net())

    def weights():
        return Net(caffe_files.CaffeModel.from_net(_net(text), None), phase="train").params["conv1"][0].detach()

    caffe.set_random_seed(7)
    a = weights()
    caffe.set_random_seed(7)
    b = weights()
    caffe.set_random_seed(8)
    c = weights()
    assert bool((a == b).all()) and not bool((a == c).all()) and float(a.abs().sum()) > 0
