"""The commands' built-in default (the SphereFace-20 deploy net with its fillers' weights: `sfport verify` and
`sfport convert` without a model) and small contracts of the library a Caffe user meets first: what a Net
without weights reports, `python -m sfport.netdef.builtin --help`, write_prototxt / write_solver."""
import os
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

from sfport.formats import caffe_files
from sfport.netdef import builtin
from sfport.cli import cli
from sfport.runtime.net import Net, load_net
from sfport.protos import caffe_pb2

from conftest import ROOT


def _sf20_layer_names():
    return [l.name for l in builtin.sphereface_deploy(20).layer if l.type != "Input"]


def test_verify_without_a_model_checks_the_builtin_sphereface20_against_opencv():
    r = CliRunner().invoke(cli, ["verify"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("built-in:sphereface_deploy(20): the SphereFace-20 deploy net, weights from its "
                               "fillers (seed 0)")
    rows = [ln.split() for ln in lines[2:-1]]
    # one row per layer of the deploy net (OpenCV names its outputs by layer), in the net's order
    assert [r_[0] for r_ in rows] == _sf20_layer_names()
    for name, shape, max_ref, err, rel, cos, ok in rows:
        assert ok == "ok" and float(rel) <= 1e-5 and float(rel) == pytest.approx(
            float(err) / max(1.0, float(max_ref)), rel=2e-3, abs=1e-12)
        assert float(cos) > 0.999999
    assert rows[-1][:2] == ["fc5", "1x512"]
    assert re.fullmatch(r"passed: 49 blobs within 1e-05; worst '\w+' \(rel err [0-9.e-]+, cosine [0-9.]+\)",
                        lines[-1])


def test_verify_without_a_model_uses_the_seed_for_weights_and_input():
    a = CliRunner().invoke(cli, ["verify", "--json", "--seed", "0"])
    b = CliRunner().invoke(cli, ["verify", "--json", "--seed", "3"])
    assert a.exit_code == 0 and b.exit_code == 0
    import json
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["model"] == builtin.BUILT_IN and ja["passed"] and jb["passed"]
    assert ja["blobs"][-1]["max_ref"] != jb["blobs"][-1]["max_ref"]


def test_convert_without_a_model_writes_a_checked_sphereface20_onnx(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["convert"])
    assert r.exit_code == 0, r.output
    assert "weights from its fillers (seed 0)" in r.output
    assert re.search(r"^wrote sphereface20\.onnx: onnx, inputs \{'data': \(1, 3, 112, 96\)\}, outputs \['fc5'\]; "
                     r"checked against the eager net: .*max relative error [0-9.e-]+$", r.stdout, re.M)
    assert "layers without weights" not in r.output   # the header says where the weights come from
    # the file, run on onnxruntime, is the built-in net with the same filler seed
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 112, 96)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "sphereface20.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"data": x})[0]
    net = load_net(None, seed=0)
    with torch.no_grad():
        want = net.forward(data=torch.from_numpy(x))["fc5"].numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    other = load_net(None, seed=1)
    assert not torch.equal(other.params["fc5"][0], net.params["fc5"][0])


def test_convert_with_only_a_prototxt_asks_for_the_model(tmp_path):
    p = tmp_path / "d.prototxt"
    caffe_files.write_prototxt(p, builtin.sphereface_deploy(4))
    r = CliRunner().invoke(cli, ["convert", "-p", str(p)])
    assert r.exit_code == 2 and "give the MODEL" in r.output and not list(tmp_path.glob("*.onnx"))


def test_a_net_without_weights_reports_it(tmp_path):
    p = tmp_path / "d.prototxt"
    caffe_files.write_prototxt(p, builtin.sphereface_deploy(4))
    net = Net(str(p))
    rep = net.report
    assert rep is not None and rep.no_weights and not net.has_weights and rep.copied == []
    assert rep.layers_without_weights == list(net.params) and len(rep.layers_without_weights) == 9
    # the fillers the deploy net states (sfport.netdef.builtin: xavier + constant 0 conv/fc, PReLU's default 0.25)
    assert rep.filled["conv1_1"] == ["xavier", "constant 0"] and rep.filled["relu1_1"] == ["constant 0.25"]
    assert rep.lines() == ["No weights given: all 9 layers with parameters initialised by their fillers"]
    assert rep.as_dict()["no_weights"] is True
    # a converted .pt holds every parameter: its report says all were copied
    net.save(tmp_path / "n.pt")
    again = Net(str(tmp_path / "n.pt"))
    assert again.has_weights and again.report.copied == list(again.params) and not again.report.no_weights
    assert again.report.layers_without_weights == []


def test_python_m_sfport_nets_help_prints_usage_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "sfport.netdef.builtin", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0 and p.stdout.startswith("usage: python -m sfport.netdef.builtin")
    assert list(tmp_path.iterdir()) == []
    p = subprocess.run([sys.executable, "-m", "sfport.netdef.builtin", "out"], cwd=tmp_path, capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0
    written = sorted(f.name for f in (tmp_path / "out").iterdir())
    assert written == sorted(builtin.project_prototxts()) and p.stdout.count("wrote ") == len(written)


def test_write_prototxt_refuses_a_solver_and_write_solver_round_trips(tmp_path):
    sp = caffe_pb2.SolverParameter()
    text_format.Merge('net: "m.prototxt" base_lr: 0.1 lr_policy: "multistep" stepvalue: 16000 stepvalue: 24000 '
                      'gamma: 0.1 max_iter: 28000 momentum: 0.9', sp)
    with pytest.raises(TypeError, match="not a SolverParameter; write_solver writes a SolverParameter"):
        caffe_files.write_prototxt(tmp_path / "x.prototxt", sp)
    assert not (tmp_path / "x.prototxt").exists()
    with pytest.raises(TypeError, match="write_solver writes a SolverParameter, not a NetParameter"):
        caffe_files.write_solver(tmp_path / "s.prototxt", caffe_pb2.NetParameter())
    caffe_files.write_solver(tmp_path / "s.prototxt", sp)
    back = caffe_files.read_solver(tmp_path / "s.prototxt")
    assert back.param == sp and list(back.param.stepvalue) == [16000, 24000]
