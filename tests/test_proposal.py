"""Region proposals (converters/proposal.py) against their authors' code and OpenCV 4:

- py-faster-rcnn's Python ProposalLayer against the layer itself (lib/rpn/proposal_layer.py run as written on
  stored inputs: tests/data/proposal/py_*.npz, made by make_reference.py there) and against OpenCV 4's Proposal;
- the C++ Proposal type against the oracle fork's pycaffe (stored: cpp_*.npz; and live, in a subprocess, when the
  oracle is installed);
- how ties are taken, the ONNX and TorchScript forms, the built-in Python layer's dispatch (nothing the file names
  is imported) and one-line errors for bad input.

Tolerance: sfport's metric, max|ours - ref| <= 1e-5 * max(1, max|ref|). The rows kept and their scores are exact;
box corners may differ in the last bit of an exp (numpy's SIMD float32 exp and glibc's expf are not always
correctly rounded; sfport rounds exp from double)."""
import importlib.util
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

import sfport
from sfport import converters
from sfport.cli import cli
from sfport.converters import proposal
from sfport.converters.ssd import libstdcxx_sort
from sfport.errors import CaffeFileError
from sfport.netdef import shapes
from sfport.protos import caffe_pb2

DATA = Path(__file__).parent / "data" / "proposal"
_spec = importlib.util.spec_from_file_location("proposal_reference", DATA / "make_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
ORACLE = os.environ.get("SFPORT_ORACLE_PYTHON", "/tmp/oracle/venv/bin/python")


def py_layer(param_str="'feat_stride': 16", tops=("rois", "roi_scores"), module=proposal.PY_MODULE,
             layer=proposal.PY_LAYER):
    lp = caffe_pb2.LayerParameter(name="proposal", type="Python", bottom=["scores", "deltas", "im_info"],
                                  top=list(tops))
    lp.python_param.module, lp.python_param.layer, lp.python_param.param_str = module, layer, param_str
    return lp


def cpp_layer(param: str, tops=("rois", "roi_scores")):
    lp = text_format.Parse(f"name: 'proposal' type: 'Proposal' proposal_param {{ {param} }}",
                           caffe_pb2.LayerParameter())
    lp.bottom.extend(["scores", "deltas", "im_info"])
    lp.top.extend(tops)
    return lp


def run(layer, *arrays):
    module = converters.get_for(layer).build(layer, [a.shape for a in arrays]).eval()
    out = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def close(ours, ref):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours.astype(np.float64) - ref).max(initial=0)) <= 1e-5 * max(1.0, float(np.abs(ref).max(initial=0)))


def cases(prefix):
    return sorted(p.name for p in DATA.glob(f"{prefix}_*.npz"))


# ------------------------------------------------------------------------------------------- stored references

@pytest.mark.parametrize("name", cases("py"))
def test_python_layer_is_py_faster_rcnns(name):
    """The same rois, in the same order, with the same scores as proposal_layer.py (cfg.TEST: 6000 before the
    NMS, 300 after, IoU 0.7, RPN_MIN_SIZE 16 times im_info's scale), param_str's forms included."""
    case = np.load(DATA / name)
    rois, scores = run(py_layer(str(case["param_str"])), *reference.inputs(case))
    assert np.array_equal(scores, case["roi_scores"])
    assert close(rois, case["rois"])


@pytest.mark.parametrize("name", cases("cpp"))
def test_cpp_proposal_is_the_oracle_forks(name):
    """The oracle's proposal_layer.cpp: its anchors, zero scores for boxes below min_size, sort_box's order of
    equal scores (cpp_batch_ties: scores in eighths, two images), nms_cpu."""
    case = np.load(DATA / name)
    rois, scores = run(cpp_layer(str(case["proposal_param"])), *reference.inputs(case))
    assert np.array_equal(scores, case["roi_scores"])
    assert close(rois, case["rois"])


@pytest.mark.skipif(not Path(ORACLE).exists(), reason=f"the oracle pycaffe ({ORACLE}) is not installed")
@pytest.mark.parametrize("param,n,a,size,info,std,seed,distinct", [
    ("ratio: 0.5 ratio: 1 ratio: 2 scale: 64 scale: 128 scale: 256 pre_nms_topn: 300 post_nms_topn: 50 "
     "nms_thresh: 0.6", 1, 9, (9, 13), [144, 208, 1], 0.5, 21, True),
    ("ratio: 1 ratio: 3 scale: 32 scale: 96 min_size: 24 feat_stride: 8", 2, 4, (10, 7), [80, 56, 3], 0.4, 22, False),
    ("ratio: 0.7 scale: 200 base_size: 10 nms_thresh: 0.3 post_nms_topn: 7", 1, 1, (5, 6), [80, 96, 1], 0.2, 23,
     True),
])
def test_cpp_proposal_against_the_live_oracle(tmp_path, param, n, a, size, info, std, seed, distinct):
    """The C++ type against the oracle's pycaffe in a subprocess (a failed CHECK there aborts only it)."""
    rng = np.random.default_rng(seed)
    scores, deltas = reference._random_case(rng, n, a, *size, std, distinct, None if distinct else 8)
    im_info = np.array([info], dtype=np.float32)
    shapes = {"scores": scores.shape, "deltas": deltas.shape, "im_info": im_info.shape}
    text = "".join(f'input: "{k}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n' for k, s in shapes.items())
    text += text_format.MessageToString(caffe_pb2.NetParameter(layer=[cpp_layer(param)]))
    (tmp_path / "p.prototxt").write_text(text)
    np.savez(tmp_path / "in.npz", scores=scores, deltas=deltas, im_info=im_info)
    subprocess.run([ORACLE, "-c", reference._ORACLE, str(tmp_path / "p.prototxt"), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz")], check=True, capture_output=True)
    ref = np.load(tmp_path / "out.npz")
    rois, roi_scores = run(cpp_layer(param), scores, deltas, im_info)
    assert np.array_equal(roi_scores, ref["roi_scores"])
    assert close(rois, ref["rois"])


def test_sort_box_is_the_cpp_quicksort():
    """sort_box's partition computed at once against the .cpp's loops transcribed (proposal_layer.cpp sort_box),
    on scores with many ties and every num_top."""
    def transcribed(values, num_top):
        rows = [[float(v), i] for i, v in enumerate(values)]

        def sort_box(start, end):
            pivot, left, right = rows[start][0], start + 1, end
            while left <= right:
                while left <= end and rows[left][0] >= pivot:
                    left += 1
                while right > start and rows[right][0] <= pivot:
                    right -= 1
                if left <= right:
                    rows[left], rows[right] = rows[right], rows[left]
                    left, right = left + 1, right - 1
            if right > start:
                rows[start], rows[right] = rows[right], rows[start]
            if start < right - 1:
                sort_box(start, right - 1)
            if right + 1 < num_top and right + 1 < end:
                sort_box(right + 1, end)
        sort_box(0, len(rows) - 1)
        return [i for _, i in rows]

    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 50))
        values = (rng.integers(0, int(rng.integers(1, 6)), n) if rng.random() < 0.7 else rng.random(n))
        values = values.astype(np.float32)
        top = int(rng.integers(1, n + 3))
        assert list(proposal.sort_box(values, top)) == transcribed(values, top)


# ------------------------------------------------------------------------------------------------ OpenCV 4

def opencv_proposal(layer, scores, deltas, im_info, tmp_path):
    """OpenCV's output for the layer as verify gives it to OpenCV (its for_opencv form), its first top."""
    lp = caffe_pb2.LayerParameter()
    lp.CopyFrom(layer)
    converters.get_for(lp).for_opencv(lp)
    net = caffe_pb2.NetParameter(layer=[lp])
    for name, x in (("scores", scores), ("deltas", deltas), ("im_info", im_info)):
        net.input.append(name)
        net.input_shape.add(dim=list(x.shape))
    (tmp_path / "cv.prototxt").write_text(text_format.MessageToString(net))
    cvnet = cv2.dnn.readNetFromCaffe(str(tmp_path / "cv.prototxt"))
    for name, x in (("scores", scores), ("deltas", deltas), ("im_info", im_info)):
        cvnet.setInput(x, name)
    return cvnet.forward("proposal")


@pytest.mark.parametrize("name", cases("py"))
def test_opencv_proposal_is_the_python_layer_without_its_size_test(name, tmp_path):
    """OpenCV 4's Proposal (the Python layer given to it as type Proposal) has no size test (its min_size is
    read and unused) and always gives post_nms_topn rows: dropping its boxes narrower or lower than
    RPN_MIN_SIZE * im_info[2], its rows are ours (py_scale_filter: 159 of 300 dropped)."""
    case = np.load(DATA / name)
    scores, deltas, im_info = reference.inputs(case)
    rois, = run(py_layer(str(case["param_str"]), tops=("rois",)), scores, deltas, im_info)
    ref = opencv_proposal(py_layer(str(case["param_str"]), tops=("rois",)), scores, deltas, im_info, tmp_path)
    least = 16 * im_info[0, 2]
    small = (ref[:, 3] - ref[:, 1] + 1 < least) | (ref[:, 4] - ref[:, 2] + 1 < least)
    kept = ref[~small]
    assert len(ref) == 300 and len(kept) <= len(rois)
    assert close(rois[:len(kept)], kept)


def test_opencv_orders_equal_scores_by_std_sort(tmp_path):
    """Scores in sixteenths, so that most rows tie. Both sides run the NMS in descending score, ties in ascending
    anchor order (OpenCV: std::stable_sort; sfport: the order a stable sort gives, which onnxruntime's TopK and
    NonMaxSuppression share); OpenCV 4's Proposal then sorts its rows by score with std::sort (libstdc++'s
    introsort, which moves equal scores): its rows are ours put through that sort."""
    rng = np.random.default_rng(1)
    a, h, w = 9, 20, 24
    fg = (np.round(rng.random((1, a, h, w)) * 16) / 16 * 0.9 + 0.05).astype(np.float32)
    scores = np.concatenate([1 - fg, fg], axis=1)
    deltas = (rng.standard_normal((1, 4 * a, h, w)) * 0.05).astype(np.float32)
    im_info = np.array([[h * 16, w * 16, 1]], dtype=np.float32)
    rois, roi_scores = run(py_layer(), scores, deltas, im_info)
    ref = opencv_proposal(py_layer(), scores, deltas, im_info, tmp_path)
    pairs = [(float(s), i) for i, s in enumerate(roi_scores.ravel())]
    libstdcxx_sort(pairs, lambda x, y: x[0] > y[0])
    assert len(set(roi_scores.ravel())) < len(roi_scores) // 10          # ties everywhere
    assert not close(rois, ref)                                           # in another order ...
    assert close(rois[[i for _, i in pairs]], ref)                        # ... std::sort's


# ------------------------------------------------------------------------------------------------ export

@pytest.mark.parametrize("which", ["py", "cpp"])
def test_onnx_form_is_the_layer(which):
    """The ONNX graph (shifted anchors, decoding, clip and size test as in eager; TopK; NonMaxSuppression on
    [x1, y1, x2 + 1, y2 + 1]; gathers) exported at one size gives eager's rows exactly on onnxruntime at another
    size and at batch 2 (each image its own im_info row for the Python layer)."""
    case = np.load(DATA / ("py_vgg16_416x512.npz" if which == "py" else "cpp_pixel_scales.npz"))
    layer = py_layer() if which == "py" else cpp_layer(str(case["proposal_param"]))
    x = reference.inputs(case)
    module = converters.get_for(layer).build(layer, [v.shape for v in x]).eval()
    buf = io.BytesIO()
    dyn = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(map(torch.from_numpy, x)), buf, dynamo=False, opset_version=18,
                          input_names=["scores", "deltas", "im_info"], output_names=["rois", "roi_scores"],
                          dynamic_axes={"scores": dyn, "deltas": dyn, "im_info": {0: "n"}, "rois": {0: "r"},
                                        "roi_scores": {0: "r"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    other = reference.inputs(np.load(DATA / ("py_small_map.npz" if which == "py" else "cpp_topn.npz")))
    other = other if which == "py" else other[:2] + (x[2],)
    batch = (np.concatenate([x[0], x[0][:, :, ::-1]]), np.concatenate([x[1], x[1] * 0.5]),
             np.concatenate([x[2], x[2] * np.float32([0.75, 1, 1])]))
    for inputs in (x, other, batch):
        want = [t.numpy() for t in module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs))]
        got = sess.run(None, dict(zip(["scores", "deltas", "im_info"], (np.ascontiguousarray(v) for v in inputs))))
        for w, g in zip(want, got):
            assert w.shape == g.shape and np.array_equal(w, g)


def test_torchscript_form_keeps_the_loops():
    """Traced at one size, the saved module (the NMS and the per-image loop scripted inside) gives eager's rows at
    another size and batch."""
    case = np.load(DATA / "py_vgg16_416x512.npz")
    x = tuple(map(torch.from_numpy, reference.inputs(case)))
    module = converters.get_for(py_layer()).build(py_layer(), [v.shape for v in x]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, x, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        loaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    small = tuple(map(torch.from_numpy, reference.inputs(np.load(DATA / "py_small_map.npz"))))
    for inputs in (small, tuple(torch.cat([v, v]) for v in x)):
        for w, g in zip(module(*inputs), loaded(*inputs)):
            assert torch.equal(w, g)


# ------------------------------------------------------------------------------------------ the Python layer

def test_param_str_is_read_as_yaml_reads_it():
    yaml = pytest.importorskip("yaml")
    for text in ["'feat_stride': 16", "'feat_stride': 16\n'scales': !!python/tuple [8, 16, 32]",
                 "{'feat_stride': 8, 'scales': [2, 4]}", "feat_stride: 32\nscales: [4.5, 9]"]:
        want = yaml.load(text, Loader=yaml.FullLoader)
        assert proposal.parse_param_str(text) == {k: list(v) if isinstance(v, tuple) else v for k, v in want.items()}


NET = """
layer { name: "in" type: "Input" top: "scores" top: "deltas" top: "im_info"
        input_param { shape { dim: 1 dim: 18 dim: 6 dim: 8 } shape { dim: 1 dim: 36 dim: 6 dim: 8 }
                      shape { dim: 1 dim: 3 } } }
layer { name: "proposal" type: "Python" bottom: "scores" bottom: "deltas" bottom: "im_info" top: "rois"
        python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }
"""


def test_built_in_without_importing_the_named_module(tmp_path, monkeypatch):
    """`sfport convert` runs py-faster-rcnn's ProposalLayer without --python-layers, and the module the file names
    is never imported (one that would fail is on the path); pycaffe's Net runs the same built-in layer."""
    (tmp_path / "rpn").mkdir()
    (tmp_path / "rpn" / "__init__.py").write_text("")
    (tmp_path / "rpn" / "proposal_layer.py").write_text("raise SystemExit('imported the user module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.prototxt").write_text(NET)
    r = CliRunner().invoke(cli, ["convert", "p.prototxt", "-o", "p.pt"])
    assert r.exit_code == 0, r.output
    assert "rpn.proposal_layer" not in sys.modules
    net = sfport.Net(str(tmp_path / "p.prototxt"), sfport.TEST)
    case = np.load(DATA / "py_small_map.npz")
    s, d, info = reference.inputs(case)
    ref = run(py_layer(tops=("rois",)), s[:, :, :6, :8], d[:, :, :6, :8], np.float32([[96, 128, 1]]))[0]
    net.blobs["scores"].data[...] = s[:, :, :6, :8]
    net.blobs["deltas"].data[...] = d[:, :, :6, :8]
    net.blobs["im_info"].data[...] = [[96, 128, 1]]
    net.forward()
    assert np.array_equal(net.blobs["rois"].data, ref)
    assert "rpn.proposal_layer" not in sys.modules


def test_other_python_layers_are_still_refused():
    with pytest.raises(converters.UnknownLayerType, match="rpn.proposal_layer.ProposalLayer"):
        converters.get_for(py_layer(module="rpn.anchor_target_layer", layer="AnchorTargetLayer"))
    assert converters.find_for(py_layer(module="rpn.proposal_layer", layer="Other")) is None
    assert "Python" not in converters.registered_types()


def test_python_layer_keeps_the_contract():
    """As tests/test_converter_contract.py asks of a type: its shapes (proposal_layer.py's setup: 1 x 5 and
    1 x 1 x 1 x 1; forward reshapes), no blobs, a module whose forward gives its tops."""
    c = converters.get_for(py_layer())
    bottoms = [(1, 18, 3, 4), (1, 36, 3, 4), (1, 3)]
    assert c.top_shapes(py_layer(), bottoms) == [(1, 5), (1, 1, 1, 1)] and c.param_shapes(py_layer(), bottoms) == []
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    assert shapes.infer(net)[1].tops == [(1, 5)]
    module = c.build(py_layer(), bottoms)
    rois, scores = module(torch.rand(bottoms[0]), torch.rand(bottoms[1]), torch.tensor([[48.0, 64.0, 1.0]]))
    assert rois.shape[1] == 5 and scores.shape == (rois.shape[0], 1) and not list(module.parameters())


@pytest.mark.parametrize("layer,bottoms,said", [
    (py_layer("'scales': [8]"), None, "must give 'feat_stride'"),
    (py_layer("'feat_stride': 16\n'ratios': [1]"), None, "ratios, which py-faster-rcnn's ProposalLayer does not"),
    (py_layer("'feat_stride': __import__('os').system('false')"), None, "is not a number"),
    (py_layer("'feat_stride': 16\n'scales': []"), None, "list of positive numbers"),
    (py_layer("feat_stride 16"), None, "is not 'key: value'"),
    (caffe_pb2.LayerParameter(name="proposal", type="Python", bottom=["scores", "deltas"], top=["rois"],
                              python_param=py_layer().python_param), [(1, 18, 3, 4), (1, 36, 3, 4)],
     "takes 3 bottoms"),
    (py_layer(), [(1, 16, 3, 4), (1, 36, 3, 4), (1, 3)], "must be N x 18 x H x W"),
    (py_layer(), [(1, 18, 3, 4), (1, 36, 3, 5), (1, 3)], "(4 deltas of 9 anchors)"),
    (py_layer(), [(1, 18, 3, 4), (1, 36, 3, 4), (1, 2)], "a row of 3 values per image"),
    (cpp_layer("scale: 8"), [(1, 2, 3, 4), (1, 4, 3, 4), (1, 3)], "at least one ratio and one scale"),
    (cpp_layer("ratio: 1 scale: 8 post_nms_topn: 0"), [(1, 2, 3, 4), (1, 4, 3, 4), (1, 3)], "post_nms_topn"),
])
def test_bad_input_is_one_line_naming_the_layer(layer, bottoms, said):
    bottoms = bottoms or [(1, 18, 3, 4), (1, 36, 3, 4), (1, 3)]
    with pytest.raises(CaffeFileError) as e:
        converters.get_for(layer).top_shapes(layer, bottoms)
    msg = str(e.value)
    assert said in msg and msg.startswith("layer 'proposal' (") and "\n" not in msg, msg
