"""pycaffe's Net, Blob, Python layers and SGDSolver (issue 29) against formulas written out here, OpenCV's Caffe
reader (the LeNet fixture) and sfport's own trainer (the same SGD update)."""
import os

import h5py
import numpy as np
import pytest

import sfport as caffe
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files

from conftest import FIXTURES, HAVE_SHARED, NO_SHARED

LENET = FIXTURES / "lenet"


def _write(path, text):
    path.write_text(text)
    return str(path)


IP_NET = """name: 'ip' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.5 }
                        bias_filler { type: 'uniform' min: -1 max: 1 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_blobs_exist_from_construction_and_share_memory_with_forward(tmp_path):
    net = caffe.Net(_write(tmp_path / "n.prototxt", IP_NET), caffe.TEST)
    assert list(net.blobs) == ["data", "ip", "prob"]
    assert [net.blobs[b].shape for b in net.blobs] == [(4, 3, 2, 2), (4, 5), (4, 5)]
    assert (net.blobs["data"].num, net.blobs["data"].channels, net.blobs["ip"].height) == (4, 3, 1)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    prob_view = net.blobs["prob"].data            # taken before any forward
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    net.blobs["data"].data[...] = x                # written through numpy, read by the forward
    out = net.forward()
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    ref = _softmax(x.reshape(4, -1).astype(np.float64) @ w.T.astype(np.float64) + b)
    assert np.abs(prob_view - ref).max() < 1e-6
    assert np.shares_memory(out["prob"], net.blobs["prob"].data)
    # inputs by keyword, a second forward into the same memory
    y = -x
    net.forward(data=y)
    assert np.abs(prob_view - _softmax(y.reshape(4, -1) @ w.T + b)).max() < 1e-6


def test_forward_and_backward_between_layers_and_param_diffs(tmp_path):
    net = caffe.Net(_write(tmp_path / "n.prototxt", IP_NET), caffe.TRAIN)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    net.blobs["data"].data[...] = x
    got = net.forward(end="ip")
    assert set(got) == {"ip"}
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    assert np.abs(got["ip"] - (x.reshape(4, -1) @ w.T + b)).max() < 1e-5
    g = rng.standard_normal((4, 5)).astype(np.float32)
    net.blobs["ip"].diff[...] = g
    diffs = net.backward(start="ip")
    assert set(diffs) == {"data"}
    assert np.abs(diffs["data"].reshape(4, -1) - g @ w).max() < 1e-5
    assert np.abs(net.params["ip"][0].diff - g.T @ x.reshape(4, -1)).max() < 1e-5
    assert np.abs(net.params["ip"][1].diff - g.sum(0)).max() < 1e-5
    net.backward(start="ip")                       # param diffs accumulate, as Caffe's do
    assert np.abs(net.params["ip"][1].diff - 2 * g.sum(0)).max() < 1e-5
    net.clear_param_diffs()
    assert not net.params["ip"][0].diff.any()


SPLIT_NET = """name: 'split'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'a' type: 'InnerProduct' bottom: 'data' top: 'a' inner_product_param { num_output: 4
        weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'b' type: 'InnerProduct' bottom: 'data' top: 'b' inner_product_param { num_output: 4
        weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'sum' type: 'Eltwise' bottom: 'a' bottom: 'b' top: 'sum' loss_weight: 1 }
"""


def test_inserted_splits_are_layers_and_sum_the_gradients(tmp_path):
    """insert_splits.cpp: 'data' read twice gets a Split layer; backward sums both readers' diffs (a loss top,
    so loss_weight 1 is in its diff)."""
    net = caffe.Net(_write(tmp_path / "n.prototxt", SPLIT_NET + "force_backward: true\n"), caffe.TRAIN)
    assert net._layer_names == ["data", "data_data_0_split", "a", "b", "sum"]
    assert net.bottom_names["a"] == ["data_data_0_split_0"] and net.bottom_names["b"] == ["data_data_0_split_1"]
    assert net.layers[1].type == "Split"
    assert net.blob_loss_weights["sum"] == 1 and np.all(net.blobs["sum"].diff == 1)
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    net.backward()
    wa, wb = net.params["a"][0].data, net.params["b"][0].data
    ref = np.ones((2, 4)) @ (wa + wb)
    assert np.abs(net.blobs["data"].diff - ref).max() < 1e-5


def test_need_backward_without_force_backward(tmp_path):
    """net.cpp Net::Init: without force_backward the data gets no diff, the parameters still do."""
    net = caffe.Net(_write(tmp_path / "n.prototxt", SPLIT_NET), caffe.TRAIN)
    net.blobs["data"].data[...] = 1
    net.forward()
    net.backward()
    assert not net.blobs["data"].diff.any()
    assert np.abs(net.params["a"][0].diff - 2).max() < 1e-6   # d sum / d W = 1 * x summed over the batch


def test_levels_stages_and_weights_arguments(tmp_path):
    path = _write(tmp_path / "n.prototxt", IP_NET)
    net = caffe.Net(path, caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    for other in (caffe.Net(path, str(tmp_path / "w.caffemodel"), caffe.TEST),
                  caffe.Net(path, caffe.TEST, weights=str(tmp_path / "w.caffemodel")),
                  caffe.Net(path, "test", weights=str(tmp_path / "w.caffemodel"))):
        assert np.array_equal(other.params["ip"][0].data, net.params["ip"][0].data)


def test_save_writes_a_caffemodel_and_net_surgery(tmp_path):
    """Net surgery as the pycaffe examples do it: copy params between nets, save, read back with sfport's reader
    and into a third net."""
    path = _write(tmp_path / "n.prototxt", IP_NET)
    a, b = caffe.Net(path, caffe.TEST), caffe.Net(path, caffe.TEST)
    b.params["ip"][0].data[...] = 2 * a.params["ip"][0].data
    b.params["ip"][1].data[...] = 0.5
    b.save(str(tmp_path / "surgery.caffemodel"))
    model = caffe_files.read_caffemodel(tmp_path / "surgery.caffemodel")
    stored = model.params
    assert np.array_equal(stored["ip"][0], 2 * a.params["ip"][0].data)
    assert [ly.phase for ly in model.net.layer] == [caffe.TEST] * 3
    c = caffe.Net(path, caffe.TEST, weights=str(tmp_path / "surgery.caffemodel"))
    assert np.all(c.params["ip"][1].data == 0.5)
    bad = _write(tmp_path / "bad.prototxt", IP_NET.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(CaffeFileError, match="surgery.caffemodel.*ip"):
        caffe.Net(bad, caffe.TEST, weights=str(tmp_path / "surgery.caffemodel"))


def test_hdf5_weights_are_caffes_layout(tmp_path):
    path = _write(tmp_path / "n.prototxt", IP_NET)
    net = caffe.Net(path, caffe.TEST)
    net.save_hdf5(str(tmp_path / "w.h5"))
    with h5py.File(tmp_path / "w.h5", "r") as f:   # Net::ToHDF5: data/<layer>/<index>, a group per layer
        assert sorted(f["data"]) == ["data", "ip", "prob"]
        assert np.array_equal(f["data/ip/0"][()], net.params["ip"][0].data)
    other = caffe.Net(path, caffe.TEST)
    other.copy_from(str(tmp_path / "w.h5"))
    assert np.array_equal(other.params["ip"][1].data, net.params["ip"][1].data)


def test_memory_data_layer_and_set_input_arrays(tmp_path):
    path = _write(tmp_path / "m.prototxt", """layer { name: 'm' type: 'MemoryData' top: 'data' top: 'label'
      memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
      layer { name: 'p' type: 'Power' bottom: 'data' top: 'sq' power_param { power: 2 } }""")
    net = caffe.Net(path, caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.arange(4, dtype=np.float32))
    for k in (0, 1, 0):   # batches in turn, wrapping around
        net.forward()
        assert np.array_equal(net.blobs["sq"].data, data[2 * k:2 * k + 2] ** 2)
        assert np.array_equal(net.blobs["label"].data, [2 * k, 2 * k + 1])
    with pytest.raises(RuntimeError, match="multiple of batch size"):
        net.set_input_arrays(data[:3].copy(), np.zeros(3, np.float32))


@pytest.mark.skipif(not HAVE_SHARED, reason=NO_SHARED)
def test_lenet_fixture_against_opencv():
    """The usual classification script on the real LeNet: reshape the data blob, write it, forward; the
    probabilities agree with OpenCV's Caffe importer."""
    cv2 = pytest.importorskip("cv2")
    net = caffe.Net(str(LENET / "lenet.prototxt"), str(LENET / "lenet_iter_10000.caffemodel"), caffe.TEST)
    x = np.random.default_rng(3).random((3, 1, 28, 28)).astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    prob = net.forward()["prob"].copy()
    ref_net = cv2.dnn.readNetFromCaffe(str(LENET / "lenet.prototxt"), str(LENET / "lenet_iter_10000.caffemodel"))
    ref_net.setInput(x)
    ref = ref_net.forward("prob").reshape(prob.shape)
    assert prob.shape == (3, 10)
    assert np.abs(prob - ref).max() <= 1e-5
    # feature extraction by blob name
    assert net.blobs["ip1"].data.shape == (3, 500)


# -- Python layers ------------------------------------------------------------------------------------------
PYLAYERS = '''
import numpy as np
import caffe


class EuclideanLoss(caffe.Layer):
    """Caffe's examples/pycaffe/layers/pyloss.py, as users write it."""
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class Scale(caffe.Layer):
    def setup(self, bottom, top):
        self.k = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.k * top[0].diff
'''


def _regression_net(loss: str, batch: int = 8) -> str:
    return f"""name: 'reg'
layer {{ name: 'data' type: 'HDF5Data' top: 'x' top: 'y' hdf5_data_param {{ source: 'list.txt' batch_size: {batch} }} }}
layer {{ name: 'fc' type: 'InnerProduct' bottom: 'x' top: 'fc' inner_product_param {{ num_output: 2
        weight_filler {{ type: 'gaussian' std: 0.3 }} bias_filler {{ type: 'constant' value: 0.1 }} }} }}
layer {{ name: 'twice' type: 'Python' bottom: 'fc' top: 'twice'
        python_param {{ module: 'pylayers' layer: 'Scale' param_str: '2' }} }}
{loss}
"""


PY_LOSS = """layer { name: 'loss' type: 'Python' bottom: 'twice' bottom: 'y' top: 'loss' loss_weight: 1
        python_param { module: 'pylayers' layer: 'EuclideanLoss' } }"""
BUILTIN_LOSS = "layer { name: 'loss' type: 'EuclideanLoss' bottom: 'twice' bottom: 'y' top: 'loss' }"
SOLVER = """net: 'net.prototxt' base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: 'step' gamma: 0.5
stepsize: 3 max_iter: 6 display: 0 snapshot_after_train: false snapshot_prefix: 'snap' random_seed: 5"""


@pytest.fixture
def regression(tmp_path, monkeypatch):
    """A folder with an HDF5 regression set, its list, and the Python layers' module importable."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 3)).astype(np.float32)
    y = (x @ rng.standard_normal((3, 2)) + 0.3).astype(np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    (tmp_path / "list.txt").write_text("d.h5\n")
    (tmp_path / "pylayers.py").write_text(PYLAYERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from sfport.pycaffe import importer
    importer.install(shadow=True)
    return tmp_path


def test_python_layers_forward_backward_against_the_builtin_loss(regression):
    """A Python loss (pyloss.py) and a Python layer with param_str give the values and gradients of Caffe's own
    EuclideanLoss on the same net."""
    _write(regression / "py.prototxt", _regression_net(PY_LOSS))
    _write(regression / "builtin.prototxt", _regression_net(BUILTIN_LOSS))
    py = caffe.Net("py.prototxt", caffe.TRAIN)
    ref = caffe.Net("builtin.prototxt", caffe.TRAIN)
    ref.share_with(py)
    assert type(py.layers[2]).__name__ == "Scale" and py.layers[2].param_str == "2"
    assert py.layers[2].phase == caffe.TRAIN
    lp, lr = py.forward_backward(), ref.forward_backward()
    x, y = py.blobs["x"].data, py.blobs["y"].data
    w, b = py.params["fc"][0].data, py.params["fc"][1].data
    pred = 2 * (x @ w.T + b)
    assert abs(lp - ((pred - y) ** 2).sum() / 8 / 2) < 1e-5 and abs(lp - lr) < 1e-5
    assert np.abs(py.params["fc"][0].diff - ref.params["fc"][0].diff).max() < 1e-5
    assert np.abs(py.params["fc"][0].diff - 2 * ((pred - y) / 8).T @ x).max() < 1e-5


def test_python_loss_layer_trains_as_the_builtin_one(regression):
    """LeNet-style learning from Python: solver.step with a Python loss follows the built-in loss's run step for
    step (the same SGD update), and solver.net.blobs shows the last batch."""
    _write(regression / "net.prototxt", _regression_net(PY_LOSS))
    _write(regression / "solver.prototxt", SOLVER)
    py = caffe.SGDSolver("solver.prototxt")
    _write(regression / "net.prototxt", _regression_net(BUILTIN_LOSS))
    ref = caffe.SGDSolver("solver.prototxt")
    for name in ("fc",):
        for a, b in zip(ref.net.params[name], py.net.params[name]):
            a.data[...] = b.data
    py.step(6)
    ref.step(6)
    assert py.iter == ref.iter == 6
    for a, b in zip(py.net.params["fc"], ref.net.params["fc"]):
        assert np.abs(a.data - b.data).max() < 1e-5
    assert py.net.blobs["x"].data.shape == (8, 3)


def test_solver_matches_sfport_train_and_resumes(regression):
    """The pycaffe solver's update is sfport train's: the same net, data and solver give the same weights; a
    snapshot and restore continue the run exactly (Caffe's files)."""
    from sfport.solver.config import Options
    from sfport.solver.loop import Solver as TrainSolver
    from sfport.report.progress import CaffeLog

    _write(regression / "net.prototxt", _regression_net(BUILTIN_LOSS).replace(
        "layer { name: 'twice' type: 'Python' bottom: 'fc' top: 'twice'\n"
        "        python_param { module: 'pylayers' layer: 'Scale' param_str: '2' } }",
        "layer { name: 'twice' type: 'Power' bottom: 'fc' top: 'twice' power_param { scale: 2 } }"))
    _write(regression / "solver.prototxt", SOLVER)
    mine = caffe.SGDSolver("solver.prototxt")
    init = str(regression / "init.caffemodel")
    mine.net.save(init)
    train = TrainSolver("solver.prototxt", Options(weights=[init], progress=False), log=CaffeLog(enabled=False))
    mine.step(6)
    train.step(6)
    theirs = train.net.params["fc"]
    for a, b in zip(mine.net.params["fc"], theirs):
        assert np.abs(a.data - b.detach().numpy()).max() < 1e-5
    # snapshot at 3, restore into a fresh solver, 3 more: the uninterrupted run's weights. A .solverstate does
    # not hold the data position (Caffe's readers start again), so here one batch is the whole set.
    _write(regression / "net.prototxt", (regression / "net.prototxt").read_text().replace("batch_size: 8",
                                                                                        "batch_size: 32"))
    whole = caffe.SGDSolver("solver.prototxt")
    whole.net.copy_from(init)
    whole.step(6)
    first = caffe.SGDSolver("solver.prototxt")
    first.net.copy_from(init)
    first.step(3)
    model = first.snapshot()
    assert model == "snap_iter_3.caffemodel" and os.path.isfile("snap_iter_3.solverstate")
    second = caffe.SGDSolver("solver.prototxt")
    second.restore("snap_iter_3.solverstate")
    assert second.iter == 3
    second.step(3)
    for a, b in zip(second.net.params["fc"], whole.net.params["fc"]):
        assert np.abs(a.data - b.data).max() < 1e-6


def test_apply_update_and_callbacks(regression):
    _write(regression / "net.prototxt", _regression_net(BUILTIN_LOSS))
    _write(regression / "solver.prototxt", SOLVER)
    s = caffe.get_solver("solver.prototxt")
    seen = []
    s.add_callback(lambda: seen.append(("start", s.iter)), lambda: seen.append(("ready", s.iter)))
    w = s.net.params["fc"][0]
    w.data[...] = 1
    w.diff[...] = 2
    s.apply_update()   # lr 0.05, decay 0.001: h = 0.05 * (2 + 0.001 * 1); w -= h
    assert np.abs(w.data - (1 - 0.05 * (2 + 0.001))).max() < 1e-7
    assert s.iter == 0
    s.step(2)
    assert seen == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]
    assert abs(s.lr - 0.05) < 1e-9
    adam = caffe.AdamSolver("solver.prototxt")   # the class decides the rule (_caffe.cpp), not the file's type
    assert adam.type == "Adam"
    w = adam.net.params["fc"][0]
    w.data[...] = 1
    w.diff[...] = 2
    adam.apply_update()   # t = 1: m = 0.1 g, v = 0.001 g^2, correction sqrt(0.001) / 0.1: w -= lr * g / |g|
    g = 2 + 0.001 * 1
    m, v = (1 - 0.9) * g, (1 - 0.999) * g * g
    assert np.abs(w.data - (1 - 0.05 * (np.sqrt(1 - 0.999) / (1 - 0.9)) * m / (np.sqrt(v) + 1e-8))).max() < 1e-6


def test_python_layer_exceptions_and_missing_modules(regression):
    _write(regression / "bad.prototxt", _regression_net(PY_LOSS).replace("module: 'pylayers' layer: 'Scale'",
                                                                         "module: 'pylayers' layer: 'Nope'"))
    with pytest.raises(CaffeFileError, match="bad.prototxt.*twice.*no layer class 'Nope'"):
        caffe.Net("bad.prototxt", caffe.TRAIN)
    _write(regression / "raises.prototxt", _regression_net(PY_LOSS).replace("param_str: '2'", "param_str: 'x'"))
    with pytest.raises(ValueError):   # the layer's own exception, as pycaffe raises it
        caffe.Net("raises.prototxt", caffe.TRAIN)


@pytest.mark.skipif(not HAVE_SHARED, reason=NO_SHARED)
def test_the_readme_script_runs_unchanged(tmp_path):
    """README 'From pycaffe': the ported script, run by `python -m sfport.pycaffe` on the LeNet fixture (its
    solver's net a DummyData LeNet made with NetSpec); its numbers against OpenCV and the saved file."""
    import re
    import subprocess
    import sys
    from conftest import ROOT, lenet_solver
    text = (ROOT / "README.md").read_text()
    script = re.search(r"### From pycaffe.*?```python\n(.*?)```", text, re.S).group(1)
    script += "np.save('prob.npy', prob); np.save('feat.npy', feat)\n"
    (tmp_path / "script.py").write_text(script)
    for f in ("lenet.prototxt", "lenet_iter_10000.caffemodel"):
        os.symlink(LENET / f, tmp_path / f)
    n = caffe.NetSpec()
    n.data, n.label = caffe.layers.DummyData(shape=[dict(dim=[8, 1, 28, 28]), dict(dim=[8])],
                                             data_filler=dict(type="uniform"), ntop=2)
    deploy = caffe_files.read_prototxt(LENET / "lenet.prototxt").net
    proto = n.to_proto()
    for layer in deploy.layer[1:]:
        if layer.type != "Softmax":
            proto.layer.add().CopyFrom(layer)
    proto.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["ip2", "label"], top=["loss"])
    (tmp_path / "lenet_train.prototxt").write_text(str(proto))
    (tmp_path / "lenet_solver.prototxt").write_text(
        lenet_solver("lenet_train.prototxt", "snap").replace("test_iter: 100\ntest_interval: 500\n", ""))
    r = subprocess.run([sys.executable, "-m", "sfport.pycaffe", "script.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "snap_iter_10.caffemodel").is_file() and (tmp_path / "snap_iter_10.solverstate").is_file()
    half = caffe_files.read_caffemodel(tmp_path / "lenet_half.caffemodel").params["ip2"][0]
    orig = caffe_files.read_caffemodel(LENET / "lenet_iter_10000.caffemodel").params["ip2"][0]
    assert np.array_equal(half, orig * np.float32(0.5))
    prob = np.load(tmp_path / "prob.npy")
    assert prob.shape == (1, 10) and abs(prob.sum() - 1) < 1e-5


def test_gpu_mode(tmp_path):
    """set_mode_gpu: each layer computes on CUDA and the blobs stay host memory, the numbers the CPU's (within
    float reordering); without CUDA it is one clear error and the mode stays CPU."""
    import torch
    path = _write(tmp_path / "n.prototxt", SPLIT_NET + "force_backward: true\n")
    net = caffe.Net(path, caffe.TRAIN)
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    net.backward()
    cpu = {k: (b.data.copy(), b.diff.copy()) for k, b in net.blobs.items()}
    grads = [p.diff.copy() for p in net.params["a"]]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            caffe.set_mode_gpu()
        from sfport.pycaffe import common
        assert common.device().type == "cpu"
        return
    try:
        caffe.set_mode_gpu()
        caffe.set_device(0)
        net.clear_param_diffs()
        net.forward()
        net.backward()
    finally:
        caffe.set_mode_cpu()
    for k, (data, diff) in cpu.items():
        assert np.abs(net.blobs[k].data - data).max() < 1e-5 and np.abs(net.blobs[k].diff - diff).max() < 1e-5
    for p, g in zip(net.params["a"], grads):
        assert np.abs(p.diff - g).max() < 1e-5
