"""`sfport time` (sfport.solver.timing): Caffe's `caffe time`. The lines are checked against regexes written from the
stream statements of BVLC caffe tools/caffe.cpp time(); the accounting (per-layer sums within the passes, the
averages of the total), the number of iterations actually run (a counting layer), and the gradients the
layer-by-layer backward accumulates (against plain autograd of the same loss) are checked too. No assertion is
about speed."""
import json
import re

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sfport import converters
from sfport.solver import timing
from sfport.cli import cli
from sfport.converters import base as converters_base
from sfport.runtime.net import Net

from conftest import FIXTURES, ROOT

LENET = ROOT / "tests" / "nets" / "lenet_train_test.prototxt"
DET1 = FIXTURES / "mtcnn" / "det1.prototxt"
DET1_WEIGHTS = FIXTURES / "mtcnn" / "det1.caffemodel"

# The layers of the definitions, written out from the prototxts (Caffe's upgrade turns det1's `input:` header
# into an Input layer named "input", first: upgrade_proto.cpp UpgradeNetInput).
LENET_TRAIN = ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
LENET_TEST = ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob", "accuracy", "loss"]
DET1_LAYERS = [("input", "Input"), ("conv1", "Convolution"), ("PReLU1", "PReLU"), ("pool1", "Pooling"),
               ("conv2", "Convolution"), ("PReLU2", "PReLU"), ("conv3", "Convolution"), ("PReLU3", "PReLU"),
               ("conv4-1", "Convolution"), ("conv4-2", "Convolution"), ("prob1", "Softmax")]

# C++ `ostream << double` with the default precision 6 (printf %g): at most 6 significant digits.
NUM = r"(-?\d+(?:\.\d+)?(?:e[-+]\d+)?)"


def _digits(text: str) -> int:
    return len(text.split("e")[0].replace("-", "").replace(".", "").lstrip("0"))


def parse_caffe_time(stdout: str, iterations: int, backward: bool = True) -> dict:
    """The benchmark part of `caffe time`'s output, line by line as caffe.cpp time() streams it:
    'Performing Forward', 'Initial loss: ' << initial_loss, 'Performing Backward', '*** Benchmark begins ***',
    'Testing for ' << N << ' iterations.', per iteration 'Iteration: ' << j + 1 << ' forward-backward time: ' << ms
    << ' ms.', 'Average time per layer: ', per layer setw(10) << name << '\\tforward: ' << ms << ' ms.' (and
    '\\tbackward: '), 'Average Forward pass: ', 'Average Backward pass: ', 'Average Forward-Backward: ',
    'Total Time: ' (each << ms << ' ms.'), '*** Benchmark ends ***'."""
    lines = stdout.splitlines()
    start = lines.index("Performing Forward")
    lines = lines[start:]
    out = {"numbers": []}

    def take(pattern: str):
        line = lines.pop(0)
        m = re.fullmatch(pattern, line)
        assert m, f"{line!r} does not match {pattern!r}"
        out["numbers"] += [g for g in m.groups() if g is not None and re.fullmatch(NUM, g)]
        return m

    take(r"Performing Forward")
    out["initial_loss"] = float(take(r"Initial loss: " + NUM).group(1))
    if backward:
        take(r"Performing Backward")
    take(r"\*\*\* Benchmark begins \*\*\*")
    take(rf"Testing for {iterations} iterations\.")
    kind = "forward-backward" if backward else "forward"
    out["iteration_ms"] = []
    for k in range(1, iterations + 1):
        out["iteration_ms"].append(float(take(rf"Iteration: {k} {kind} time: {NUM} ms\.").group(1)))
    take(r"Average time per layer: ")      # the trailing space is Caffe's
    out["layers"], out["forward"], out["backward"] = [], {}, {}
    while not lines[0].startswith("Average Forward pass: "):
        m = take(r"(.*)\tforward: " + NUM + r" ms\.")
        padded = m.group(1)
        name = padded.lstrip(" ")
        assert padded == name.rjust(10), f"{padded!r} is not std::setw(10) of {name!r}"
        out["layers"].append(name)
        out["forward"][name] = float(m.group(2))
        if backward:
            out["backward"][name] = float(take(re.escape(padded) + r"\tbackward: " + NUM + r" ms\.").group(1))
    out["forward_ms"] = float(take(r"Average Forward pass: " + NUM + r" ms\.").group(1))
    if backward:
        out["backward_ms"] = float(take(r"Average Backward pass: " + NUM + r" ms\.").group(1))
        out["forward_backward_ms"] = float(take(r"Average Forward-Backward: " + NUM + r" ms\.").group(1))
    out["total_ms"] = float(take(r"Total Time: " + NUM + r" ms\.").group(1))
    take(r"\*\*\* Benchmark ends \*\*\*")
    assert lines == [], f"lines after the benchmark: {lines}"
    assert all(_digits(n) <= 6 for n in out["numbers"]), out["numbers"]
    return out


def check_accounting(t: dict, iterations: int, backward: bool = True, factor: float = 4.0) -> None:
    """The per-layer times are subintervals of their pass, the passes of the iteration, the iterations of the
    total: sums cannot exceed what holds them (up to the 6 printed digits), and the layers are most of it."""
    rounding = 1 + 2e-5
    fwd = sum(t["forward"].values())
    assert t["forward_ms"] / factor <= fwd <= t["forward_ms"] * rounding + 1e-9
    assert sum(t["iteration_ms"]) <= t["total_ms"] * rounding
    if backward:
        bwd = sum(t["backward"].values())
        assert t["backward_ms"] / factor <= bwd <= t["backward_ms"] * rounding + 1e-9
        assert t["forward_backward_ms"] == pytest.approx(t["total_ms"] / iterations, rel=2e-5)
        assert t["forward_ms"] + t["backward_ms"] <= t["forward_backward_ms"] * rounding
    assert all(v >= 0 for v in [*t["forward"].values(), *t["backward"].values()])


def invoke(*args):
    return CliRunner().invoke(cli, ["time", *map(str, args)])


def test_lenet_train_lines_and_accounting():
    r = invoke(LENET, "--shape", "64,1,28,28", "--iterations", 3)
    assert r.exit_code == 0, r.output
    t = parse_caffe_time(r.stdout, 3)
    assert t["layers"] == LENET_TRAIN          # Caffe's time() default phase is TRAIN: the TEST layers are not run
    check_accounting(t, 3)
    # SoftmaxWithLoss of 10 classes on small random scores: close to ln(10)
    assert 1.5 < t["initial_loss"] < 3.5
    head = r.stdout.splitlines()[:3]
    assert head[0] == "Use CPU." and head[1].startswith("weights: the fillers'")
    assert head[2] == ("inputs (seeded random, no file read): data [64,1,28,28] uniform in [-1, 1); "
                       "digit [64] integers in [0, 10)")


def test_lenet_test_phase_without_backward():
    r = invoke(LENET, "--shape", "8,1,28,28", "--iterations", 2, "--phase", "TEST", "--no-backward")
    assert r.exit_code == 0, r.output
    t = parse_caffe_time(r.stdout, 2, backward=False)
    assert t["layers"] == LENET_TEST
    check_accounting(t, 2, backward=False)
    assert "backward" not in r.stdout


def test_det1_json_and_lines(shared):
    r = invoke(DET1, "--weights", DET1_WEIGHTS, "--iterations", 4, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"iterations", "layers", "forward_ms", "backward_ms", "forward_backward_ms", "total_ms"} <= set(doc)
    assert doc["iterations"] == 4
    assert [(l["name"], l["type"]) for l in doc["layers"]] == DET1_LAYERS
    assert all(set(l) == {"name", "type", "forward_ms", "backward_ms"} for l in doc["layers"])
    assert doc["forward_backward_ms"] == pytest.approx(doc["total_ms"] / 4, rel=1e-12)
    assert sum(l["forward_ms"] for l in doc["layers"]) <= doc["forward_ms"]
    assert sum(l["backward_ms"] for l in doc["layers"]) <= doc["backward_ms"]
    assert doc["forward_ms"] + doc["backward_ms"] <= doc["forward_backward_ms"]
    assert doc["initial_loss"] == 0      # no loss layer: Caffe's Forward(&loss) gives 0
    assert any("weights: copied into 8 layers from" in n for n in doc["notes"])

    r = invoke(DET1, "--iterations", 2)
    assert r.exit_code == 0, r.output
    t = parse_caffe_time(r.stdout, 2)
    assert t["layers"] == [n for n, _ in DET1_LAYERS] and t["initial_loss"] == 0
    check_accounting(t, 2, factor=8.0)   # a 12x12 net: the layers take microseconds, the bookkeeping is visible


class _Counter(nn.Module):
    """Passes its bottom through, counting forward calls and the gradients that come back through it."""
    caffe_blobs = ()
    forwards = 0
    backwards = 0

    def forward(self, x):
        type(self).forwards += 1
        y = x * 1.0
        if y.requires_grad:
            y.register_hook(self._back)
        return y

    @classmethod
    def _back(cls, g):
        cls.backwards += 1


@pytest.fixture
def counter_type(monkeypatch):
    class CounterConverter(converters.SameShape):
        def build(self, layer, bottom_shapes):
            return _Counter()

    inst = CounterConverter()
    monkeypatch.setitem(converters_base._REGISTRY, "TimeCounter", inst)
    monkeypatch.setattr(_Counter, "forwards", 0)
    monkeypatch.setattr(_Counter, "backwards", 0)
    return _Counter


SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 10 dim: 10 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "count" type: "TimeCounter" bottom: "c1" top: "counted" }
layer { name: "fc" type: "InnerProduct" bottom: "counted" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc2" type: "InnerProduct" bottom: "c1" top: "fc2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
"""
SMALL_LAYERS = ["data", "c1", "r1", "count", "fc", "fc2"]


@pytest.mark.parametrize("iterations", [1, 5])
def test_iterations_really_run(tmp_path, counter_type, iterations):
    p = tmp_path / "small.prototxt"
    p.write_text(SMALL)
    r = invoke(p, "--iterations", iterations)
    assert r.exit_code == 0, r.output
    t = parse_caffe_time(r.stdout, iterations)
    assert t["layers"] == SMALL_LAYERS      # the in-place ReLU is a layer of its own
    check_accounting(t, iterations, factor=8.0)
    # one untimed warm-up forward and backward (caffe.cpp: "Performing Forward" / "Performing Backward"), then N
    assert counter_type.forwards == iterations + 1 and counter_type.backwards == iterations + 1

    counter_type.forwards = counter_type.backwards = 0
    r = invoke(p, "--iterations", iterations, "--no-backward")
    assert r.exit_code == 0, r.output
    assert counter_type.forwards == iterations + 1 and counter_type.backwards == 0


def test_backward_accumulates_the_gradient_of_the_loss():
    """The layer-by-layer backward gives each parameter the gradient of the net's loss: after N iterations plus
    the warm-up, N + 1 times what one ordinary autograd backward of the same forward gives."""
    net = Net(str(LENET), phase="train", input_shapes=(4, 1, 28, 28), inference=False, seed=1)
    inputs, _ = timing.random_inputs(net, seed=0)
    ref = Net(str(LENET), phase="train", input_shapes=(4, 1, 28, 28), inference=False, seed=1)
    ref.forward_backward(**{net.graph.caffe_name[u]: t for u, t in inputs.items()})
    timing.time_net(net, iterations=2)
    for layer, params in ref.params.items():
        for p_ref, p in zip(params, net.params[layer]):
            torch.testing.assert_close(p.grad, 3 * p_ref.grad, rtol=1e-4, atol=1e-6)


def test_a_net_without_loss_is_backpropagated_from_ones(tmp_path, counter_type):
    """No loss layer: the outputs' diffs start at ones, i.e. the gradient of the sum of the outputs (both: the
    ReLU's top feeds two layers, whose diffs add up in it)."""
    p = tmp_path / "small.prototxt"
    p.write_text(SMALL)
    net = Net(str(p), phase="train", inference=False, seed=3)
    ref = Net(str(p), phase="train", inference=False, seed=3)
    inputs, notes = timing.random_inputs(net, seed=0)
    assert notes == ["data [2,3,10,10] uniform in [-1, 1)"]
    ref.forward(**inputs)
    (ref.blobs["fc"].sum() + ref.blobs["fc2"].sum()).backward()
    report = timing.time_net(net, iterations=1)
    assert report.initial_loss == 0 and [l.name for l in report.layers] == SMALL_LAYERS
    for layer, params in ref.params.items():
        for p_ref, p_ in zip(params, net.params[layer]):
            torch.testing.assert_close(p_.grad, 2 * p_ref.grad, rtol=1e-4, atol=1e-6)
    lines = timing.report_lines(report)
    parse_caffe_time("\n".join(lines), 1)
    assert lines[0].startswith("inputs (seeded random, no file read): data [2,3,10,10]")


def test_time_net_needs_an_iteration():
    net = Net(str(LENET), phase="train", input_shapes=(2, 1, 28, 28), inference=False)
    with pytest.raises(ValueError, match="at least 1"):
        timing.time_net(net, iterations=0)


def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sfport: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert r.stdout == ""


def test_bad_input(tmp_path):
    _one_line_error(invoke(tmp_path / "missing.prototxt"), "missing.prototxt", "no such file")
    _one_line_error(invoke(LENET, "--shape", "2,1,28,28", "--iterations", 0), "--iterations")
    # a Data layer reads a data set: its shape comes from --shape
    _one_line_error(invoke(LENET), "'data'", "--shape")
    if not torch.cuda.is_available():
        _one_line_error(invoke(LENET, "--shape", "2,1,28,28", "--gpu", 0), "--gpu", "no CUDA device 0")
    _one_line_error(invoke(LENET, "--shape", "2,1,28,28", "--weights", tmp_path / "none.caffemodel"),
                    "none.caffemodel")
