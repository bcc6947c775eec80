"""The SSD fork's DetectionEvaluate layer and its detection test (Solver::TestDetection, the mAP):

- the layer's rows against the fork's own (a CPU pycaffe of brocolli-caffe 9.0.2; tests/data/detection_eval,
  made by make_reference.py there): difficult boxes evaluated or not, a background label of -1 and one in the
  middle, a strict threshold, tied scores past libstdc++'s insertion-sort cut, and pixel boxes from a
  name_size_file over three forwards;
- the three average precisions against VOC's formulas written out here (float64, straightforward numpy; the
  fork's 11-point AP compares a float recall with the double ``j / 10.``, which the formula takes in);
- the detection test over HDF5 batches against the fork's log lines for each ap_version, and its log read the
  way Caffe's tools/extra/parse_log.py reads a log (its regular expressions, its test table)."""
import io
import json
import re

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.protos import caffe_pb2
from sfport.report.progress import CaffeLog
from sfport.runtime.net import Net
from sfport.solver import curves
from sfport.solver.config import Options
from sfport.solver.detection_map import DetectionScores, average_precision
from sfport.solver.evaluate import Evaluation, build_test_net, run_test_nets
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data" / "detection_eval"
LAYER = np.load(DATA / "layer.npz")
SOLVER = np.load(DATA / "solver.npz")
TYPE = "DetectionEvaluate"
GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ ([\w.]+):(\d+)\] (.*)$")


def _layer(param: str, n: int, g: int):
    layer = text_format.Parse(f'name: "ev" bottom: "det" bottom: "gt" top: "ev" '
                              f'detection_evaluate_param {{ {param} }}', caffe_pb2.LayerParameter())
    layer.type = TYPE
    return layer, [(1, 1, n, 7), (1, 1, g, 8)]


# ---------------------------------------------------------------------------------------------------------
# the layer against the fork
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [str(c) for c in LAYER["cases"]])
def test_rows_equal_the_fork(case, tmp_path):
    sizes = tmp_path / "name_size.txt"
    sizes.write_text(str(LAYER["name_sizes"]))
    param = str(LAYER[f"{case}/param"]).replace("{sizes}", str(sizes))
    c = converters.get(TYPE)
    module = None
    for k in range(int(LAYER[f"{case}/forwards"])):
        det, gt, ref = LAYER[f"{case}/det{k}"], LAYER[f"{case}/gt{k}"], LAYER[f"{case}/top{k}"]
        layer, shapes = _layer(param, len(det), len(gt))
        assert c.top_shapes(layer, shapes) == [(1, 1, len(ref), 5)]
        if module is None:         # one module for every forward: the name_size_file position runs on
            module = c.build(layer, shapes)
        out = module(torch.from_numpy(det).reshape(shapes[0]), torch.from_numpy(gt).reshape(shapes[1]))
        assert tuple(out.shape) == (1, 1, len(ref), 5)
        got = out.reshape(-1, 5).numpy()
        assert np.array_equal(got, ref), (case, k, np.argwhere(got != ref)[:5])
        assert (ref[:, 3] == 1).any() and (ref[:, 4] == 1).any(), "the reference has true and false positives"


def test_the_references_cover_the_quirks():
    """What the references hold: difficult detections left out (tp = fp = 0), rows left as zeros, detections
    without ground truth, and ties among the scores past 16 detections of one label."""
    nd = LAYER["no_difficult/top0"]
    det_rows = nd[nd[:, 0] >= 0]
    assert ((det_rows[:, 3] == 0) & (det_rows[:, 4] == 0) & (det_rows[:, 2] != 0)).any()
    assert (LAYER["basic/top0"][-1] == 0).all()
    ties = LAYER["ties/top0"][1:]
    assert len(ties) > 16 and len(np.unique(ties[:, 2])) < len(ties) // 4


def test_bad_bottoms_and_parameters_are_one_line():
    c = converters.get(TYPE)
    layer, shapes = _layer("num_classes: 3", 4, 2)
    for bad, match in [([(1, 1, 4, 6), shapes[1]], r"the detections 'det' \[1, 1, 4, 6\] must be 1 x 1 x rows x 7"),
                       ([shapes[0], (2, 1, 2, 8)], r"the ground truth 'gt' \[2, 1, 2, 8\] must be 1 x 1 x rows x 8"),
                       ([(1, 1, 1, 4, 7), shapes[1]], "must be 1 x 1 x rows x 7")]:
        with pytest.raises(CaffeFileError, match=match) as e:
            c.top_shapes(layer, bad)
        assert "\n" not in str(e.value) and "layer 'ev' (DetectionEvaluate)" in str(e.value)
    for param, match in [("background_label_id: 0", "Must provide num_classes"),
                         ("num_classes: 3 overlap_threshold: 0", "overlap_threshold 0 must be positive"),
                         ("num_classes: 3 background_label_id: 3", "background_label_id 3 must be -1 or one of"),
                         ("num_classes: 3 name_size_file: '/no/such/file'", "no such file")]:
        with pytest.raises(CaffeFileError, match=match):
            c.top_shapes(_layer(param, 4, 2)[0], shapes)
    module = c.build(layer, shapes)
    det = torch.tensor([[0, 0, 0.5, 0, 0, 1, 1]], dtype=torch.float32).reshape(1, 1, 1, 7)
    with pytest.raises(CaffeFileError, match="Found background label 0 in the detection results"):
        module(det, torch.zeros(1, 1, 1, 8))


def test_name_size_file_reads_as_istream_does(tmp_path):
    from sfport.converters.detection_eval import read_name_sizes
    f = tmp_path / "sizes.txt"
    f.write_bytes(b"a 10 20\n  b\t+3 4\nc 5 x6\nd 7 8\n")
    assert read_name_sizes(str(f)) == [(10, 20), (3, 4)]       # the loop stops at the first unreadable triple
    layer, shapes = _layer(f"num_classes: 2 name_size_file: '{f}' resize_param {{ height: 300 width: 300 }}", 1, 1)
    with pytest.raises(CaffeFileError, match="resize_param"):
        converters.get(TYPE).top_shapes(layer, shapes)


def test_a_deploy_form_drops_the_layer():
    assert converters.is_training_only(TYPE) and converters.label_bottoms(TYPE) == (1,)


# ---------------------------------------------------------------------------------------------------------
# average precision against VOC's formulas
# ---------------------------------------------------------------------------------------------------------

def voc_curve(scores, tp, num_pos):
    """Precision and recall in float64 after a stable sort by descending score."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    t = np.cumsum(np.asarray(tp)[order])
    f = np.cumsum(1 - np.asarray(tp)[order])
    return t / (t + f), t / num_pos


def voc07_ap(scores, tp, num_pos):
    """VOC2007's devkit: the mean over recall 0, 0.1, ..., 1 of the best precision at a recall at least that.
    The fork keeps recall as a float and compares it with the double ``j / 10.``: 7 of 10 found is a float
    0.69999999 < 0.7, so the recall is rounded to float32 here too."""
    prec, rec = voc_curve(scores, tp, num_pos)
    rec = rec.astype(np.float32).astype(np.float64)
    return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.arange(11) / 10]))


def voc12_ap(scores, tp, num_pos):
    """VOC2010+'s devkit: the area under the precision envelope (precision made monotone from the right)."""
    prec, rec = voc_curve(scores, tp, num_pos)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def natural_ap(scores, tp, num_pos):
    """The natural integral: each detection's precision times the recall it adds."""
    prec, rec = voc_curve(scores, tp, num_pos)
    return float(np.sum(prec * np.diff(np.concatenate([[0.0], rec]))))


FORMULAS = {"11point": voc07_ap, "MaxIntegral": voc12_ap, "Integral": natural_ap}


@pytest.mark.parametrize("version", list(FORMULAS))
def test_average_precision_equals_the_voc_formulas(version):
    rng = np.random.default_rng(7)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        tp = (rng.uniform(size=n) < rng.uniform(0.1, 0.9)).astype(int)
        scores = np.round(rng.uniform(size=n), int(rng.integers(1, 4))).astype(np.float32)   # ties too
        num_pos = int(tp.sum() + rng.integers(0 if tp.sum() else 1, 8))
        ours = average_precision(scores, tp, 1 - tp, num_pos, version)
        assert ours == pytest.approx(FORMULAS[version](scores, tp, num_pos), abs=1e-6), (version, trial)
    assert average_precision([], [], [], 3, version) == 0.0
    assert average_precision([0.5, 0.4], [1, 0], [0, 1], 0, version) == 0.0
    assert average_precision([0.5, 0.4], [1, 1], [0, 0], 2, version) == pytest.approx(1.0)
    assert average_precision([0.5, 0.4], [0, 0], [1, 1], 2, version) == 0.0


def test_bad_ap_version_and_flags():
    with pytest.raises(CaffeFileError, match="Unknown ap_version: VOC"):
        average_precision([0.5], [1], [0], 1, "VOC")
    with pytest.raises(CaffeFileError, match="complements"):
        average_precision([0.5], [1], [1], 1, "Integral")


def test_accumulation_skips_difficult_rows_and_sums_positives():
    acc = DetectionScores()
    rows = np.array([[-1, 1, 2, -1, -1], [-1, 2, 1, -1, -1], [0, 1, 0.9, 1, 0], [0, 1, 0.8, 0, 0],
                     [0, 1, 0.7, 0, 1], [0, 0, 0, 0, 0]], np.float32)
    acc.add(0, rows)
    acc.add(0, rows)
    (res,) = acc.results("Integral")
    assert acc.num_pos[0] == {1: 4, 2: 2}
    assert res.per_label[1] == (2, None)            # no detection of label 2: warned, 0 in the mean
    scores = [0.9, 0.7, 0.9, 0.7]
    assert res.aps[1] == pytest.approx(natural_ap(scores, [1, 0, 1, 0], 4), abs=1e-7)
    assert res.mean_ap == pytest.approx(res.aps[1] / 2, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# the detection test against the fork's log
# ---------------------------------------------------------------------------------------------------------

def _test_net(h5list) -> caffe_pb2.NetParameter:
    evals = "\n".join(f'layer {{ name: "{n}" type: "{TYPE}" bottom: "det" bottom: "gt" top: "{n}" '
                      f'detection_evaluate_param {{ {p} }} }}' for n, p in json.loads(str(SOLVER["eval_layers"])))
    return text_format.Parse(f'''name: "test"
layer {{ name: "data" type: "HDF5Data" top: "det" top: "gt" hdf5_data_param {{ source: "{h5list}" batch_size: 1 }} }}
{evals}''', caffe_pb2.NetParameter())


def _run_detection_test(tmp_path, ev: Evaluation, tests: int = 1) -> str:
    h5py = pytest.importorskip("h5py")
    h5 = tmp_path / "batches.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("det", data=SOLVER["det"])
        f.create_dataset("gt", data=SOLVER["gt"])
    (tmp_path / "h5list.txt").write_text(f"{h5}\n")
    train = text_format.Parse('name: "train" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 '
                              'dim: 2 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p" '
                              'inner_product_param { num_output: 1 } }', caffe_pb2.NetParameter())
    train_net = Net(caffe_files.CaffeModel.from_net(train), phase=caffe_pb2.TRAIN, inference=False)
    stream = io.StringIO()
    log = CaffeLog(stream)
    opts = Options(workers=0)
    test = build_test_net(_test_net(tmp_path / "h5list.txt"), 0, train_net, opts, tmp_path, 0, torch.device("cpu"),
                          CaffeLog(enabled=False))
    sp = caffe_pb2.SolverParameter(test_iter=[int(SOLVER["test_iter"])])
    stream.write("I1207 04:51:49.841390 29596 solver.cpp:282] Solving train\n")   # parse_log's start time
    for t in range(tests):        # the batches wrap around: every test sees the same four
        run_test_nets([test], sp, 100 * t, torch.device("cpu"), log, ev)
    return stream.getvalue()


def _messages(text: str) -> list[str]:
    return [f"{m.group(1)} {m.group(4)}" for line in text.splitlines() if (m := GLOG.match(line))
            and m.group(2) == "solver.cpp" and not m.group(4).startswith("Solving")]


@pytest.mark.parametrize("version", ["11point", "MaxIntegral", "Integral"])
def test_detection_test_logs_the_forks_lines(version, tmp_path):
    """The same lines as the fork's Solver::TestDetection (Optimization Done. is the end of its Solve)."""
    ref = [str(s) for s in SOLVER[f"log/{version}"] if str(s) != "I Optimization Done."]
    assert any("Test net output #1: eval_b = " in s for s in ref) and any(s.startswith("W Missing") for s in ref)
    assert _messages(_run_detection_test(tmp_path, Evaluation("detection", version))) == ref


def test_per_class_lines(tmp_path):
    """show_per_class_result (the weiliu89 ssd branch): ``class<label>: <AP>`` for each class with detections,
    before its output's line; the output is their mean over every class (0 for one never detected)."""
    lines = _messages(_run_detection_test(tmp_path, Evaluation("detection", "MaxIntegral", True)))
    ref = [str(s) for s in SOLVER["log/MaxIntegral"] if str(s) != "I Optimization Done."]
    assert [s for s in lines if not s.startswith("I class")] == ref
    first = lines[1:lines.index(next(s for s in lines if "output #0" in s))]
    per_class = [s for s in first if s.startswith("I class")]
    assert [s.split(":")[0] for s in per_class] == ["I class1", "I class2", "I class3", "I class4"]
    aps = [float(s.split(": ")[1]) for s in per_class]
    mean = float(next(s for s in lines if "output #0" in s).split(" = ")[1])
    assert mean == pytest.approx(sum(aps) / 5, rel=1e-5)


def test_an_output_that_is_not_detection_rows_is_one_line(tmp_path, monkeypatch):
    net = _test_net(tmp_path / "h5list.txt")
    net.layer.add(name="extra", type="Power", bottom=["det"], top=["extra"])       # 1 x 1 x 48 x 7
    monkeypatch.setattr(__import__(__name__), "_test_net", lambda _: net)
    with pytest.raises(CaffeFileError, match="the output 'extra' is not detection rows") as e:
        _run_detection_test(tmp_path, Evaluation("detection", "Integral"))
    assert "\n" not in str(e.value)


def test_the_settings_are_read_where_the_schema_has_them():
    """A schema with the fork's fields (eval_type, ap_version, show_per_class_result) gives them; sfport's
    schema of today has none of them: the BVLC classification test."""
    fields = {"eval_type": "detection", "ap_version": "11point", "show_per_class_result": True}
    sp = type("SP", (), dict(fields, DESCRIPTOR=type("D", (), {"fields_by_name": fields})))()
    assert Evaluation.of(sp) == Evaluation("detection", "11point", True)
    assert Evaluation.of(caffe_pb2.SolverParameter()) == Evaluation("classification", "Integral", False)


def test_unknown_eval_type_and_ap_version(tmp_path):
    with pytest.raises(CaffeFileError, match="Unknown evaluation type: segmentation"):
        run_test_nets([], caffe_pb2.SolverParameter(), 0, torch.device("cpu"), CaffeLog(enabled=False),
                      Evaluation("segmentation"))
    with pytest.raises(CaffeFileError, match="Unknown ap_version: VOC"):
        run_test_nets([], caffe_pb2.SolverParameter(), 0, torch.device("cpu"), CaffeLog(enabled=False),
                      Evaluation("detection", "VOC"))
    assert Evaluation.of(caffe_pb2.SolverParameter()).eval_type == "classification"


# tools/extra/parse_log.py (BVLC): its regular expressions and its table rows, as it builds them
REGEX_ITERATION = re.compile(r'Iteration (\d+)')
REGEX_TEST_OUTPUT = re.compile(r'Test net output #(\d+): (\S+) = ([\.\deE+-]+)')


def parse_log_test_table(text: str) -> list[dict]:
    """parse_log.py's test_dict_list: lines up to the first 'Solving' line skipped (get_start_time reads them),
    the iteration from the last 'Iteration N', one row per iteration with a column per test output (the first
    row is pushed when the next iteration's starts, a later one when it has as many columns as the first; a
    row still open at the end is dropped, as parse_log.py drops it)."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "Solving" in line)
    iteration, rows, row = -1, [], None
    for line in lines[start + 1:]:
        if m := REGEX_ITERATION.search(line):
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        if m := REGEX_TEST_OUTPUT.search(line):
            if not row or row["NumIters"] != iteration:
                if row:
                    rows.append(row)
                row = {"NumIters": iteration}
            row[m.group(2)] = float(m.group(3))
        if row and len(rows) >= 1 and len(row) == len(rows[0]):
            rows.append(row)
            row = None
    return rows


def test_parse_log_reads_the_map(tmp_path):
    """Caffe's parse_log.py puts each output's mAP in its test table (and sfport's curves read it too)."""
    text = _run_detection_test(tmp_path, Evaluation("detection", "11point"), tests=3)
    ref = {m.group(1): float(m.group(2)) for s in SOLVER["log/11point"]
           if (m := re.search(r"output #\d: (\S+) = (\S+)", str(s)))}
    assert parse_log_test_table(text) == [{"NumIters": float(it), **ref} for it in (0, 100, 200)]
    c = curves.parse_log(text)
    for name, value in ref.items():
        assert c.test[(0, name)] == [(it, value) for it in (0, 100, 200)]
