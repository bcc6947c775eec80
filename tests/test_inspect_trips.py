"""Issue 33, `sfport inspect`: every file sfport reads or writes is shown as what it is (a converted .pt, ONNX and
TorchScript exports, a training snapshot in either of Caffe's forms), names are never cut off a terminal (--wide on
one), a solver whose net file is not found from here is still shown, and definitions Caffe refuses exit 2.

Each test runs the command as the user would, on the shared fixtures or on what it writes into tmp_path. The
numbers are Caffe's: a convolution's parameters are out * in * k * k + out (det1's conv1: 10 * 3 * 3 * 3 + 10 = 280),
the MTCNN 12-net has 6,632 of them (the sum over its layers, as `inspect det1.caffemodel` lists them)."""
import json
import os
import pty
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sfport.cli import cli
from conftest import FIXTURES, ROOT, UPSTREAM

DET1 = FIXTURES / "mtcnn" / "det1.caffemodel"
DET1_DEF = FIXTURES / "mtcnn" / "det1.prototxt"
MOBILEFACENET = FIXTURES / "mobilefacenet_insightface" / "mxnet2caffe_mobilefacenet.prototxt"
LENET_NET = ROOT / "tests" / "nets" / "lenet_train_test.prototxt"
SPHEREFACE_SOLVER = UPSTREAM / "sphereface" / "train" / "code" / "sphereface_solver.prototxt"
DET1_PARAMS = "6,632"   # 280 + 10 + 1,456 + 16 + 4,640 + 32 + 66 + 132


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    r = run(*args)
    assert r.exit_code == 0, r.output
    return r.stdout


def refused(path, *args) -> str:
    """The one line of a refused input: exit status 2, no traceback, nothing on stdout."""
    r = run("inspect", path, *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    line, = r.stderr.splitlines()
    assert line.startswith(f"sfport: error: {path}: "), line
    return line


def row(stdout: str, name: str) -> str:
    """The table row of the layer ``name`` (or of the index ``name``)."""
    return next(l for l in stdout.splitlines() if len(l.split()) > 1 and name in l.split()[:2])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """det1 converted by `sfport convert` into each of its formats but caffemodel."""
    out = tmp_path_factory.mktemp("converted")
    files = {"pt": out / "det1.pt", "onnx": out / "det1.onnx", "torchscript": out / "det1.torchscript.pt"}
    for fmt, path in files.items():
        r = run("convert", DET1, "-p", DET1_DEF, "-o", path, "--format", fmt)
        assert r.exit_code == 0 and path.exists(), r.output
    return files


# -- item 3: every file sfport writes --------------------------------------------------------------------------------

def test_converted_pt_shows_its_net_and_state_dict(converted):
    text = ok("inspect", converted["pt"])
    first = text.splitlines()[0]
    assert first.startswith(f"{converted['pt']}: sfport converted net") and "inputs data 1,3,12,12" in first
    assert "net 'PNet'" in first
    conv1 = row(text, "conv1")   # the state_dict's shapes, not inferred ones (no '*')
    assert "data -> conv1" in conv1 and "1 10 10 10 (1000)" in conv1 and "[10,3,3,3] [10]" in conv1
    assert conv1.endswith(" 280") and "*" not in conv1
    assert "[4,32,1,1] [4]" in row(text, "conv4-2") and row(text, "conv4-2").endswith(" 132")
    assert f"total: 11 layers, 8 with blobs, {DET1_PARAMS} parameters (its state_dict: 13 tensors)" in text
    # the same count as the caffemodel it came from
    assert f"{DET1_PARAMS} parameters" in ok("inspect", DET1, "-p", DET1_DEF)
    doc = json.loads(ok("inspect", converted["pt"], "--json"))
    assert doc["state_dict"]["layers.conv1.weight"] == [10, 3, 3, 3] and len(doc["state_dict"]) == 13
    assert doc["saved_input_shapes"] == {"data": [1, 3, 12, 12]} and doc["totals"]["params"] == 6632
    # a shape given replaces the saved one
    bigger = ok("inspect", converted["pt"], "--shape", "2,3,24,24")
    assert "2 10 22 22 (9680)" in row(bigger, "conv1")


def test_bad_pt_files_are_one_line(converted, tmp_path):
    import torch

    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "x": torch.zeros(2)}, other)
    assert "not an sfport converted net (.pt made by `sfport convert`)" in refused(other)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(converted["pt"].read_bytes()[:300])
    line = refused(truncated)
    assert "truncated or corrupt file?" not in line and ("zip" in line or "sfport converted net" in line)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02}q\x00.")   # a pickle, not torch.save's zip archive
    assert "not the zip archive torch.save writes" in refused(legacy)


def test_onnx_and_torchscript_exports(converted):
    text = ok("inspect", converted["onnx"])
    lines = text.splitlines()
    assert lines[0].startswith(f"{converted['onnx']}: ONNX model") and "opset ai.onnx 18" in lines[0]
    assert "  input  data  [batch,3,data_height,data_width]" in lines
    assert "  output prob1  [batch,2,prob1_height,prob1_width]" in lines
    assert f"total: 10 nodes (Conv 5, MaxPool 1, PRelu 3, Softmax 1), 13 initializers, {DET1_PARAMS} values" in lines
    doc = json.loads(ok("inspect", converted["onnx"], "--json"))
    assert doc["kind"] == "onnx" and [v["name"] for v in doc["outputs"]] == ["conv4-2", "prob1"]

    bad = converted["onnx"].parent / "bad.onnx"
    bad.write_bytes(DET1.read_bytes()[:4000])   # a protobuf, but no ONNX model
    line = refused(bad)
    assert "not a valid ONNX model" in line or "holds no ONNX graph" in line

    ts = ok("inspect", converted["torchscript"])
    assert ts.startswith(f"{converted['torchscript']}: TorchScript module (torch.jit.save's archive")
    assert json.loads(ok("inspect", converted["torchscript"], "--json"))["kind"] == "torchscript"


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_training_snapshots(tmp_path, monkeypatch, fmt):
    """What `sfport train` writes: the model and the solver state, in Caffe's binary or HDF5 form."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{LENET_NET}"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 2\ndisplay: 1\n'
        f'snapshot_prefix: "snap/lenet"\nsnapshot_format: {fmt}\nsolver_mode: CPU\n')
    r = subprocess.run([sys.executable, "-m", "sfport", "train", "solver.prototxt", "--synthetic-data", "--shape",
                        "1,28,28", "--workers", "0"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    h5 = ".h5" if fmt == "HDF5" else ""
    model, state = tmp_path / f"snap/lenet_iter_2.caffemodel{h5}", tmp_path / f"snap/lenet_iter_2.solverstate{h5}"
    text = ok("inspect", state)
    assert text.startswith(f"{state}: solver state at iteration 2, lr step 0, learned net "
                           f"'snap/lenet_iter_2.caffemodel{h5}' (with sfport's resume record")
    assert "  history   0  [20,1,5,5]" in text and "  history   4  [500,800]" in text
    assert "total: 8 history blobs, 431,080 values" in text   # LeNet's 431,080 parameters, one history each
    weights = ok("inspect", model)
    assert "[500,800] [500]" in row(weights, "ip1") and row(weights, "ip1").endswith(" 400,500")
    assert "431,080 parameters" in weights
    if fmt == "HDF5":
        assert weights.startswith(f"{model}: Caffe HDF5 weights")
        merged = ok("inspect", model, "-p", LENET_NET)   # with its definition: the net and its weights
        assert "weights copied into 4 layers" in merged and "431,080 parameters" in merged


# -- item 10: names are never cut off a terminal ----------------------------------------------------------------------

LONG = "dconv_23_conv_sep_batchnorm_scale"


def test_names_whole_into_a_file_or_pipe():
    text = ok("inspect", MOBILEFACENET)   # CliRunner's output is no terminal
    r = row(text, LONG)
    assert "dconv_23_conv_sep_batchnorm -> dconv_23_conv_sep_batchnorm" in r
    assert "res_3_block0_conv_proj_batchnorm,dconv_23_conv_proj_batchnorm -> _plus0" in row(text, "_plus0")
    piped = subprocess.run([sys.executable, "-m", "sfport", "inspect", str(MOBILEFACENET)], capture_output=True,
                           text=True, timeout=300)
    assert piped.returncode == 0 and piped.stdout == text
    assert not any(l.split()[1].endswith("...") for l in text.splitlines()[1:] if len(l.split()) > 1)


def _on_a_terminal(*args) -> str:
    main, child = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "sfport", *map(str, args)], stdout=child, stderr=child,
                         stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:   # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert p.wait(timeout=300) == 0, out.decode()[-2000:]
    return out.decode().replace("\r\n", "\n")


def test_on_a_terminal_names_are_cut_unless_wide():
    cut = _on_a_terminal("inspect", MOBILEFACENET)
    line = row(cut, "11")   # the index column: the name itself is cut here
    assert line.split()[1] == "dconv_23_conv_sep_batchnorm_s..." and "dconv_23_co... -> dconv_23_co..." in line
    assert "res_3_block0_conv_proj_batch...,... (+1) -> _plus0" in row(cut, "31")
    wide = _on_a_terminal("inspect", MOBILEFACENET, "--wide")
    assert "dconv_23_conv_sep_batchnorm -> dconv_23_conv_sep_batchnorm" in row(wide, LONG)
    assert wide.replace("\n", "") == ok("inspect", MOBILEFACENET).replace("\n", "")   # as into a file
    help_text = ok("inspect", "--help")
    assert "--wide" in help_text and "sfport inspect mobilefacenet.prototxt --wide" in help_text


# -- item 11: a solver whose net is not found from here -------------------------------------------------------------

def test_solver_with_its_net_elsewhere_is_shown(tmp_path, monkeypatch):
    """The upstream solver names its net relative to the folder caffe ran in (train/): from elsewhere its settings
    and schedule are shown, and which file was not found where; exit 0, the solver itself being fine."""
    monkeypatch.chdir(tmp_path)
    r = run("inspect", SPHEREFACE_SOLVER)
    assert r.exit_code == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == f"{SPHEREFACE_SOLVER}: SGD solver, lr_policy multistep, max_iter 28000, solver_mode GPU"
    assert "  base_lr              0.1" in lines and "  stepvalue            16000, 24000, 28000" in lines
    assert [l for l in lines if l.startswith("  train    ")] == [
        "  train    not found: net 'code/sphereface_model.prototxt' not found in the current directory "
        f"{tmp_path} nor in the solver's folder {SPHEREFACE_SOLVER.parent} (relative paths are taken from the "
        "current directory if they exist there, else from the solver's folder; Caffe opens it from the directory "
        "caffe is run in)"]
    assert "          0  0.1" in lines and "      16000  0.01" in lines and "      24000  0.001" in lines
    assert any(l.startswith("effective batch: unknown (the net file was not found)") for l in lines)
    doc = json.loads(ok("inspect", SPHEREFACE_SOLVER, "--json"))
    assert doc["nets"][0]["found"] is False and doc["nets"][0]["path"] == "code/sphereface_model.prototxt"
    assert [p[0] for p in doc["lr_schedule"]["points"]] == [0, 16000, 24000]
    # from the folder caffe ran in, the net is found as before
    monkeypatch.chdir(SPHEREFACE_SOLVER.parent.parent)
    found = ok("inspect", "code/sphereface_solver.prototxt")
    assert "effective batch: 256 (batch_size)" in found and "not found" not in found


# -- item 17: definitions Caffe refuses -------------------------------------------------------------------------------

INPUT = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
CONV = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        'convolution_param { num_output: 4 kernel_size: 3 %s } }\n')
REFUSED = {
    "stride 0": (INPUT + CONV % "stride: 0",
                 "layer 'conv1' (Convolution): stride [0, 0] must be nonzero (Filter dimensions, stride and "
                 "dilation must be positive)"),
    "dilation 0": (INPUT + CONV % "dilation: 0",
                   "layer 'conv1' (Convolution): dilation [0, 0] must be nonzero"),
    "ImageData batch_size 0": (
        'layer { name: "data" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
        'batch_size: 0 new_height: 8 new_width: 8 } }\n' + CONV % "",
        "layer 'data' (ImageData): batch_size must be positive, not 0 (Caffe's CHECK_GT(batch_size, 0): Positive "
        "batch size required)"),
    "Eltwise SUM of different shapes": (
        INPUT + 'layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "b" top: "sum" '
        'eltwise_param { operation: SUM } }\n',
        "layer 'sum' (Eltwise): bottom 'b' [1, 4, 8, 8] must have the shape of 'data' [1, 3, 8, 8]"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_definitions_caffe_refuses_exit_2(tmp_path, case):
    text, says = REFUSED[case]
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    assert says in refused(path)
    assert says in refused(path, "--json")


def test_imagedata_batch_size_0_refused_in_train_phase_too(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(REFUSED["ImageData batch_size 0"][0])
    assert "batch_size must be positive, not 0" in refused(path, "--phase", "TRAIN", "--shape", "data=1,3,8,8")
    path.write_text(REFUSED["ImageData batch_size 0"][0].replace("batch_size: 0", "batch_size: 2"))
    assert "2 4 6 6 (288)" in row(ok("inspect", path, "--shape", "data=2,3,8,8"), "conv1")


# a Data layer whose database is not here: the shape of 'data' is not known
UNKNOWN_INPUT = 'layer { name: "db" type: "Data" top: "data" data_param { source: "absent_lmdb" batch_size: 1 } }\n'


@pytest.mark.parametrize("param, says", [
    ("stride: 0", "layer 'conv1' (Convolution): stride [0] must be nonzero"),
    ("stride_h: 0 stride_w: 2", "layer 'conv1' (Convolution): stride [0, 2] must be nonzero"),
    ("dilation: 0", "layer 'conv1' (Convolution): dilation [0] must be nonzero"),
])
def test_a_convolution_caffe_refuses_is_refused_with_its_input_shape_unknown(tmp_path, param, says):
    """Without an input shape no top shape is inferred, but the CHECKs on the layer's own values still hold."""
    path = tmp_path / "net.prototxt"
    path.write_text(UNKNOWN_INPUT + CONV % param)
    assert says in refused(path)
    path.write_text(UNKNOWN_INPUT + CONV % "stride: 2")   # the same net, valid: shown, shapes unknown
    assert "conv1" in ok("inspect", path)
