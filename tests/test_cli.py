"""`sfport inspect` and bad input on the command line: one line on stderr, exit status 2, no traceback.
Acceptance 5: 200 truncations of det1.caffemodel and 200 random byte edits of sphereface_deploy.prototxt."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from sfport.cli import cli
from conftest import FIXTURES

DET1 = FIXTURES / "mtcnn/det1.caffemodel"
DEPLOY20 = FIXTURES / "sphereface_prototxt/wy1iu/sphereface_deploy.prototxt"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_bad_input(result, path_fragment, what):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sfport: error: ") and path_fragment in lines[0] and what in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_inspect_caffemodel_with_deploy():
    r = run("inspect", DET1, "--prototxt", FIXTURES / "mtcnn/det1.prototxt")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    conv2 = next(l for l in lines if l.split()[1:2] == ["conv2"])
    assert "pool1 -> conv2" in conv2 and "[16,10,3,3] [16]" in conv2 and conv2.endswith("1,456")
    assert "total: 11 layers, 8 with blobs, 6,632 parameters" in r.stdout
    assert "upgraded: deploy header input/input_dim -> Input layer 'input' with tops ['data']" in r.stdout
    assert "weights copied into 8 layers" in r.stdout


def test_inspect_json_caffemodel_alone():
    r = run("inspect", FIXTURES / "mobilefacenet_insightface/mxnet2caffe_mobilefacenet.caffemodel", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    layers = {l["name"]: l for l in doc["layers"]}
    assert layers["conv_1_batchnorm"]["blob_shapes"] == [[64], [64], [1]]
    assert layers["conv_2_dw_conv2d"]["blob_shapes"] == [[64, 1, 3, 3]]
    # total parameter count, summed independently from protobuf's own decoding of the file
    from sfport.protos import caffe_pb2
    ref = caffe_pb2.NetParameter.FromString(
        (FIXTURES / "mobilefacenet_insightface/mxnet2caffe_mobilefacenet.caffemodel").read_bytes())
    assert doc["totals"]["params"] == sum(len(b.data) for l in ref.layer for b in l.blobs)
    assert doc["totals"]["weights_present"] is True and doc["upgrades"] == []


def test_inspect_prototxt_alone_infers_shapes():
    r = run("inspect", DEPLOY20, "--json")
    doc = json.loads(r.stdout)
    fc5 = next(l for l in doc["layers"] if l["name"] == "fc5")
    # fc5 of SphereFace-20 (sphereface_deploy.prototxt): 512 outputs of the 512 x 7 x 6 = 21504 values of res4
    assert fc5["blob_shapes"] == [[512, 512 * 7 * 6], [512]] and fc5["shapes_inferred"]
    assert doc["totals"]["params"] == 22_670_656 and doc["totals"]["weights_present"] is False


def test_inspect_without_arguments_shows_builtin_sphereface20():
    r = run("inspect")
    assert r.exit_code == 0
    assert "SpherefaceNet-20" in r.stdout and "22,670,656 parameters" in r.stdout


def test_solver_whose_net_is_not_found_is_still_shown(tmp_path, monkeypatch):
    """inspect SOLVER (tests/test_inspect_solver.py) away from the folder the solver's net path is relative to: the
    solver is shown, its net line says what was not found where (issue 33, item 11), exit 0."""
    monkeypatch.chdir(tmp_path)
    r = run("inspect", FIXTURES.parent / "upstream/sphereface/train/code/sphereface_solver.prototxt")
    assert r.exit_code == 0 and "  train    not found: net 'code/sphereface_model.prototxt' not found in the " \
        f"current directory {tmp_path}" in r.stdout


@pytest.mark.parametrize("case", ["empty", "truncated", "random", "prototxt_as_caffemodel", "caffemodel_as_prototxt",
                                  "syntax", "unknown_field", "shape_mismatch", "missing"])
def test_bad_input_cases(case, tmp_path):
    model = tmp_path / "m.caffemodel"
    args = ["inspect", model]
    what = ""
    if case == "empty":
        model.write_bytes(b"")
        what = "empty file"
    elif case == "truncated":
        model.write_bytes(DET1.read_bytes()[:20000])
        what = "truncated or corrupt"
    elif case == "random":
        model.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
        what = "not a valid binary"
    elif case == "prototxt_as_caffemodel":
        model.write_bytes((FIXTURES / "mtcnn/det1.prototxt").read_bytes())
        args += ["--prototxt", FIXTURES / "mtcnn/det1.prototxt"]
        what = "is a text prototxt, but a binary .caffemodel"
    elif case == "caffemodel_as_prototxt":
        args = ["inspect", DET1, "--prototxt", DET1]
        model = DET1
        what = "is a binary protobuf (a .caffemodel?)"
    elif case == "syntax":
        model = tmp_path / "s.prototxt"
        model.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU" }\n}\n')
        args = ["inspect", model]
        what = ":5:1: syntax error"
    elif case == "unknown_field":
        model = tmp_path / "u.prototxt"
        model.write_text('name: "x"\nlayer { name: "a" type: "ReLU" bottm: "d" }\n')
        args = ["inspect", model]
        what = ':2:32: syntax error: Message type "caffe.LayerParameter" has no field named "bottm"'
    elif case == "shape_mismatch":
        deploy = tmp_path / "d.prototxt"
        deploy.write_text((FIXTURES / "mtcnn/det1.prototxt").read_text().replace("kernel_size: 3", "kernel_size: 2", 1))
        args = ["inspect", DET1, "--prototxt", deploy]
        model = DET1
        what = "blob 0: weights have shape [10, 3, 3, 3], the net needs [10, 3, 2, 2]"
    else:
        what = "no such file"
    assert_bad_input(run(*args), str(model), what)


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "empty.caffemodel"
    bad.write_bytes(b"")
    r = run("--debug", "inspect", bad)
    assert r.exit_code != 0 and r.exception is not None and "empty file" in str(r.exception)


def _check_robust(path):
    """One file of the robustness runs: parses (exit 0), or exits 2 with one line and no traceback."""
    r = run("inspect", path)
    if r.exit_code == 0:
        return "ok"
    assert r.exit_code == 2, (path, r.output, r.exception)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sfport: error: {path}"), r.stderr
    assert "Traceback" not in r.output
    return "error"


def test_robustness_200_truncations_of_det1(tmp_path):
    data = DET1.read_bytes()
    offsets = np.linspace(0, len(data) - 1, 200).astype(int)
    outcomes = {"ok": 0, "error": 0}
    for k, off in enumerate(offsets):
        p = tmp_path / f"t{k:03d}.caffemodel"
        p.write_bytes(data[:off])
        outcomes[_check_robust(p)] += 1
    assert outcomes["error"] >= 190, outcomes  # all but truncations at layer boundaries are corrupt


def test_robustness_200_random_edits_of_sphereface_deploy(tmp_path):
    data = bytearray(DEPLOY20.read_bytes())
    rng = np.random.default_rng(20240601)
    outcomes = {"ok": 0, "error": 0}
    for k in range(200):
        edited = bytearray(data)
        for pos in rng.integers(0, len(data), rng.integers(1, 4)):
            edited[pos] = int(rng.integers(0, 256))
        p = tmp_path / f"e{k:03d}.prototxt"
        p.write_bytes(bytes(edited))
        outcomes[_check_robust(p)] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes


def test_real_console_script_one_line_exit_2(tmp_path):
    """The installed entry point, in a fresh process: same contract as in-process."""
    bad = tmp_path / "trunc.caffemodel"
    bad.write_bytes(DET1.read_bytes()[:777])
    p = subprocess.run([sys.executable, "-m", "sfport", "inspect", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"sfport: error: {bad}: not a valid binary")
    ok = subprocess.run([sys.executable, "-m", "sfport", "inspect", str(DET1)], capture_output=True, text=True)
    assert ok.returncode == 0 and "total: 18 layers, 8 with blobs, 6,632 parameters" in ok.stdout


def test_inspect_solverstate():
    path = FIXTURES.parent / "golden/solver/runs/multistep/final_iter_12.solverstate"
    r = run("inspect", path, "--json")
    doc = json.loads(r.stdout)
    assert (doc["iter"], doc["current_step"]) == (12, 2)
    assert doc["history_shapes"][:2] == [[8, 3, 3, 3], [8]] and len(doc["history_shapes"]) == 16


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    p = tmp_path / "bom.prototxt"
    p.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "mtcnn/det1.prototxt").read_bytes().replace(b"\n", b"\r\n"))
    r = run("inspect", p)
    assert r.exit_code == 0 and "total: 11 layers, 8 with blobs, 6,632 parameters" in r.stdout


def test_unknown_fields_from_another_fork_are_reported(tmp_path):
    """A BVLC-master Swish layer stores swish_param = 147 {beta (float) = 1}: our schema reads 147 as the
    SphereFace fork's MarginInnerProductParameter, whose field 1 is a varint, so the float lands in the
    unknown fields - and inspect says so instead of silently showing a margin layer."""
    from sfport.protos import caffe_pb2
    import struct
    layer = caffe_pb2.LayerParameter(name="swish1", type="Swish", bottom=["x"], top=["y"])
    raw = layer.SerializeToString() + bytes([0x9a, 0x09, 5, 0x0d]) + struct.pack("<f", 1.0)
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="input", type="Input", top=["x"]).input_param.shape.add(dim=[1, 4])
    path = tmp_path / "swish.caffemodel"
    path.write_bytes(net.SerializeToString() + b"\xa2\x06" + bytes([len(raw)]) + raw)
    r = run("inspect", path, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["unknown_fields"] == [
        "layer 'swish1'.margin_inner_product_param: unknown field number 1"]


def test_unknown_layer_type_is_one_line_exit_2(tmp_path):
    p = tmp_path / "odd.prototxt"
    p.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
                 'layer { name: "odd" type: "FancyLayer" bottom: "data" top: "t" }\n')
    w = tmp_path / "odd.caffemodel"
    from sfport.formats import caffe_files
    caffe_files.write_caffemodel(w, caffe_files.read_prototxt(p))
    r = run("convert", w, "-p", p, "-o", tmp_path / "odd.pt")
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"sfport: error: {p}: layer 'odd' has type 'FancyLayer'"), r.stderr
    assert "@sfport.converters.register('FancyLayer')" in r.stderr and not (tmp_path / "odd.pt").exists()


def test_sfport_net_is_the_pycaffe_like_api():
    import sfport
    net = sfport.TorchNet(str(FIXTURES / "mtcnn/det1.prototxt"), str(DET1), phase="test")
    out = net.forward(data=np.zeros((1, 3, 12, 12), np.float32))
    assert set(out) == {"conv4-2", "prob1"} and [p.shape for p in net.params["conv1"]] == [(10, 3, 3, 3), (10,)]
