"""`sfport inspect` shows what Caffe would log: the layers of a NetState (--phase/--stage/--level), each top's
shape (Caffe's "Top shape" lines), parameter shapes in their own column, Caffe's inserted Split layers folded
into their producers unless --splits, and rows of a bounded width.

The expected numbers are written here from Caffe's formulas and rules, not from sfport's output:
convolution (H + 2p - k) / s + 1 (floor), pooling ceil((H + 2p - k) / s) + 1 (pooling_layer.cpp), inner
product C*H*W inputs; Net::FilterNet / StateMeetsRule for which layers run (net.cpp)."""
import json

import pytest
from click.testing import CliRunner

from sfport.netdef import inspection
from sfport.cli import cli
from sfport.netdef.netstate import NetState
# Only the tests that ask for the `shared` fixture need the shared data (conftest skips them without it).
DET1 = "fixtures/mtcnn/det1.caffemodel"
LENET_WEIGHTS = "fixtures/lenet/lenet_iter_10000.caffemodel"
MAX_ROW = 200   # the widest a table row may get


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def table_lines(stdout: str) -> list[str]:
    """The table: the lines between the header line and the 'total:' line."""
    lines = stdout.splitlines()
    end = next(i for i, l in enumerate(lines) if l.startswith("total: "))
    return lines[1:end]


def row(stdout: str, name: str) -> str:
    return next(l for l in table_lines(stdout)[1:] if l.split()[1] == name)


def conv(name, bottom, n, k, s=1, p=0):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} }} }}\n')


def pool(name, bottom, k, s):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            f'pooling_param {{ pool: MAX kernel_size: {k} stride: {s} }} }}\n')


def ip(name, bottom, n):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
            f'inner_product_param {{ num_output: {n} }} }}\n')


def lenet_train_test(transform: str = "scale: 0.00390625") -> str:
    """Caffe's examples/mnist/lenet_train_test.prototxt (fillers left out)."""
    data = ('layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: {phase} }} '
            'transform_param {{ {transform} }} data_param {{ source: "{src}" batch_size: {batch} backend: LMDB }} }}\n')
    return ('name: "LeNet"\n'
            + data.format(phase="TRAIN", transform=transform, src="mnist_train_lmdb", batch=64)
            + data.format(phase="TEST", transform=transform, src="mnist_test_lmdb", batch=100)
            + conv("conv1", "data", 20, 5) + pool("pool1", "conv1", 2, 2)
            + conv("conv2", "pool1", 50, 5) + pool("pool2", "conv2", 2, 2)
            + ip("ip1", "pool2", 500)
            + 'layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }\n'
            + ip("ip2", "ip1", 10)
            + 'layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" '
              'include { phase: TEST } }\n'
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }\n')


def lenet_expected(n: int) -> dict:
    """LeNet's top shapes for a batch of n 1x28x28 images, from Caffe's formulas."""
    c1 = (28 - 5) // 1 + 1          # 24
    p1 = -(-(c1 - 2) // 2) + 1      # ceil(22 / 2) + 1 = 12
    c2 = (p1 - 5) // 1 + 1          # 8
    p2 = -(-(c2 - 2) // 2) + 1      # 4
    return {"mnist": [[n, 1, 28, 28], [n]], "conv1": [[n, 20, c1, c1]], "pool1": [[n, 20, p1, p1]],
            "conv2": [[n, 50, c2, c2]], "pool2": [[n, 50, p2, p2]], "ip1": [[n, 500]], "relu1": [[n, 500]],
            "ip2": [[n, 10]], "loss": [[]], "accuracy": [[]]}


LENET_PARAMS = {"conv1": [[20, 1, 5, 5], [20]], "conv2": [[50, 20, 5, 5], [50]],
                "ip1": [[500, 50 * 4 * 4], [500]], "ip2": [[10, 500], [10]]}


def caffe_top_shape(shape) -> str:
    """Caffe's blob shape_string() in "Top shape: ..." lines: the axes, then the count in parentheses."""
    count = 1
    for d in shape:
        count *= d
    return "".join(f"{d} " for d in shape) + f"({count})"


@pytest.fixture
def lenet(tmp_path):
    p = tmp_path / "lenet_train_test.prototxt"
    # crop_size and force_gray state the image shape: Caffe's Data layer gives batch x 1 x 28 x 28
    p.write_text(lenet_train_test("scale: 0.00390625 crop_size: 28 force_gray: true"))
    return p


@pytest.mark.parametrize("phase,batch", [("TRAIN", 64), ("TEST", 100)])
def test_lenet_top_shapes_from_caffe_formulas(lenet, phase, batch):
    r = run("inspect", lenet, "--phase", phase, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["state"] == {"phase": phase, "level": 0, "stages": [], "stored": False}
    expected = lenet_expected(batch)
    names = [l["name"] for l in doc["layers"]]
    assert names == (["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2"]
                     + (["accuracy"] if phase == "TEST" else []) + ["loss"])
    for layer in doc["layers"]:
        assert layer["top_shapes"] == expected[layer["name"]], layer["name"]
        if layer["name"] in LENET_PARAMS:
            assert layer["param_shapes"] == LENET_PARAMS[layer["name"]] and layer["param_shapes_inferred"]
    assert doc["totals"]["params"] == 520 + 25_050 + 400_500 + 5_010
    # the table: Caffe's "Top shape" text per top, parameter shapes in their own column
    t = run("inspect", lenet, "--phase", phase)
    assert t.exit_code == 0
    header = table_lines(t.stdout)[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == ["#", "name", "type", "bottoms -> tops", "top shapes",
                                                        "param shapes", "params"]
    assert caffe_top_shape([batch, 20, 24, 24]) in row(t.stdout, "conv1")
    assert f"{caffe_top_shape([batch, 1, 28, 28])}, {caffe_top_shape([batch])}" in row(t.stdout, "mnist")
    assert "(1)" in row(t.stdout, "loss") and "[500,800] [500] *" in row(t.stdout, "ip1")


def test_lenet_train_net_without_a_shape_says_which_input_and_how(tmp_path):
    p = tmp_path / "lenet_train_test.prototxt"
    p.write_text(lenet_train_test())   # Caffe's own: batch_size only, the image size comes from the LMDB
    r = run("inspect", p, "--phase", "TRAIN")
    assert r.exit_code == 0, r.output
    assert "?" in row(r.stdout, "conv1")
    notes = [l for l in r.stdout.splitlines() if l.startswith("top shapes unknown")]
    assert len(notes) == 1 and "'data'" in notes[0] and "--shape data=64,C,H,W" in notes[0], notes
    assert "'label'" not in notes[0]   # the label takes its batch from the data
    # once the shape is given, the train net's tops are known
    given = json.loads(run("inspect", p, "--phase", "TRAIN", "--shape", "64,1,28,28", "--json").stdout)
    expected = lenet_expected(64)
    assert {l["name"]: l["top_shapes"] for l in given["layers"]} == {k: v for k, v in expected.items()
                                                                     if k != "accuracy"}
    assert given["notes"] == [] and given["unknown_inputs"] == []


def test_lenet_stored_caffemodel_with_a_shape(shared):
    r = run("inspect", shared / LENET_WEIGHTS, "--shape", "64,1,28,28", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["state"]["phase"] == "TRAIN" and doc["state"]["stored"]   # Caffe stored its TRAIN net
    expected = lenet_expected(64)
    for layer in doc["layers"]:
        assert layer["top_shapes"] == expected[layer["name"]]
        if layer["name"] in LENET_PARAMS:   # read from the file, not inferred
            assert layer["param_shapes"] == LENET_PARAMS[layer["name"]] and not layer["param_shapes_inferred"]


def test_pooling_rounds_up_convolution_down(tmp_path):
    p = tmp_path / "round.prototxt"
    p.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 13 dim: 13 } } }\n'
                 + conv("c", "x", 8, 3, s=2, p=1)       # (13 + 2 - 3) / 2 + 1 = 7
                 + pool("p", "c", 2, 2)                 # ceil((7 - 2) / 2) + 1 = 4 (floor would give 3)
                 + pool("q", "p", 3, 2))                # ceil((4 - 3) / 2) + 1 = 2
    doc = json.loads(run("inspect", p, "--json").stdout)
    assert [l["top_shapes"] for l in doc["layers"]] == [[[2, 3, 13, 13]], [[2, 8, 7, 7]], [[2, 8, 4, 4]],
                                                         [[2, 8, 2, 2]]]
    # --shape overrides what an Input layer states, as pycaffe's reshape would
    doc = json.loads(run("inspect", p, "--shape", "x=1,3,9,9", "--json").stdout)
    assert doc["layers"][1]["top_shapes"] == [[1, 8, 5, 5]]        # (9 + 2 - 3) / 2 + 1


RULES_NET = """name: "rules"
layer { name: "data_train" type: "Input" top: "data" include { phase: TRAIN }
        input_param { shape { dim: 8 dim: 4 } } }
layer { name: "data_test" type: "Input" top: "data" include { phase: TEST }
        input_param { shape { dim: 2 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "train_only" type: "ReLU" bottom: "fc" top: "fc" exclude { phase: TEST } }
layer { name: "test_only" type: "Sigmoid" bottom: "fc" top: "sig" include { phase: TEST } }
layer { name: "on_train_set" type: "TanH" bottom: "fc" top: "t" include { phase: TEST stage: "test-on-train" } }
layer { name: "two_stages" type: "TanH" bottom: "fc" top: "t2" include { stage: "a" stage: "b" } }
layer { name: "either" type: "AbsVal" bottom: "fc" top: "e" include { stage: "a" } include { phase: TRAIN } }
layer { name: "not_deploy" type: "Power" bottom: "fc" top: "pw" include { not_stage: "deploy" } }
layer { name: "level1" type: "Exp" bottom: "fc" top: "ex" include { min_level: 1 } }
layer { name: "upto0" type: "Exp" bottom: "fc" top: "ey" include { max_level: 0 } }
"""


def names(p, *args):
    r = run("inspect", p, *args, "--json")
    assert r.exit_code == 0, r.output
    return [l["name"] for l in json.loads(r.stdout)["layers"]]


@pytest.mark.parametrize("args,expected", [
    # FilterNet: no include rule and no exclude met, or any include rule met; StateMeetsRule: phase,
    # min_level/max_level, every stage present, no not_stage present
    ((), ["data_test", "fc", "test_only", "not_deploy", "upto0"]),
    (("--phase", "TRAIN"), ["data_train", "fc", "train_only", "either", "not_deploy", "upto0"]),
    (("--stage", "test-on-train"), ["data_test", "fc", "test_only", "on_train_set", "not_deploy", "upto0"]),
    (("--stage", "a"), ["data_test", "fc", "test_only", "either", "not_deploy", "upto0"]),
    (("--stage", "a", "--stage", "b"), ["data_test", "fc", "test_only", "two_stages", "either", "not_deploy",
                                        "upto0"]),
    (("--stage", "deploy"), ["data_test", "fc", "test_only", "upto0"]),
    (("--level", "1"), ["data_test", "fc", "test_only", "not_deploy", "level1"]),
    (("--phase", "TRAIN", "--level", "1", "--stage", "deploy"), ["data_train", "fc", "train_only", "either",
                                                                 "level1"]),
])
def test_phase_stage_level_rules(tmp_path, args, expected):
    p = tmp_path / "rules.prototxt"
    p.write_text(RULES_NET)
    assert names(p, *args) == expected


def test_state_in_json_and_python_api(tmp_path):
    p = tmp_path / "rules.prototxt"
    p.write_text(RULES_NET)
    doc = json.loads(run("inspect", p, "--phase", "train", "--stage", "a", "--level", "2", "--json").stdout)
    assert doc["state"] == {"phase": "TRAIN", "level": 2, "stages": ["a"], "stored": False}
    fc = next(l for l in doc["layers"] if l["name"] == "fc")
    assert fc["top_shapes"] == [[8, 3]] and fc["param_shapes"] == [[3, 4], [3]]   # the TRAIN input: batch 8
    shown = inspection.inspect(str(p), state=NetState.of("TEST", 0, ["test-on-train"]), input_shapes=(5, 4))
    assert [r.name for r in shown.rows] == ["data_test", "fc", "test_only", "on_train_set", "not_deploy", "upto0"]
    assert shown.rows[1].top_shapes == [(5, 3)]
    assert inspection.inspect(str(p), state="TRAIN").rows[0].name == "data_train"
    # the file's own state stages count, as Net::Net adds the stages to those of the NetParameter
    q = tmp_path / "staged.prototxt"
    q.write_text('state { stage: "a" stage: "b" }\n' + RULES_NET)
    assert "two_stages" in names(q)


def test_include_and_exclude_together_is_one_line(tmp_path):
    p = tmp_path / "both.prototxt"
    p.write_text('layer { name: "x" type: "Input" top: "x" include { phase: TEST } exclude { phase: TRAIN } '
                 'input_param { shape { dim: 1 } } }\n')
    r = run("inspect", p)
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and "include rules or exclude rules" in r.stderr


def test_shape_for_no_input_is_one_line(tmp_path, lenet):
    r = run("inspect", lenet, "--shape", "pixels=1,1,28,28")
    assert r.exit_code == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("sfport: error: ") and "'pixels', which is not an input" in r.stderr


def test_det1_caffemodel_folds_caffe_splits(shared):
    det1 = shared / DET1
    r = run("inspect", det1)
    assert r.exit_code == 0, r.output
    rows = table_lines(r.stdout)[1:]
    assert not any("_split" in l for l in rows)
    # the consumers read the producers' blobs: conv4-1 and label1 (Caffe's net had conv4-1_conv4-1_0_split_0, ...)
    assert "conv4-1,label1 -> loss1" in row(r.stdout, "loss1")
    assert "conv3 -> conv4-2" in row(r.stdout, "conv4-2")
    assert "3 Split layers Caffe inserted folded" in r.stdout and "18 layers" in r.stdout
    assert "TRAIN (the net Caffe stored" in r.stdout.splitlines()[0]
    # HDF5 tops name data sets: both need a shape; one line says so and how to give them
    notes = [l for l in r.stdout.splitlines() if l.startswith("top shapes unknown")]
    assert len(notes) == 1 and "--shape label12face=" in notes[0] and "--shape data12face=" in notes[0]

    s = run("inspect", det1, "--splits")
    split_rows = [l for l in table_lines(s.stdout)[1:] if l.split()[2] == "Split"]
    assert [l.split()[1] for l in split_rows] == ["label1_slicer_label_0_split", "conv3_PReLU3_0_split",
                                                  "conv4-1_conv4-1_0_split"]
    assert "conv3_PReLU3_0_split_1 -> conv4-2" in row(s.stdout, "conv4-2")
    assert all(len(l) <= MAX_ROW for l in table_lines(s.stdout))

    doc = json.loads(run("inspect", det1, "--json").stdout)
    assert len(doc["layers"]) == 15 and doc["totals"]["splits_folded"] == 3 and doc["totals"]["layers"] == 18
    full = json.loads(run("inspect", det1, "--splits", "--json").stdout)
    assert len(full["layers"]) == 18 and sum(l["inserted_split"] for l in full["layers"]) == 3


def test_det1_caffemodel_shapes_once_given(shared):
    det1 = shared / DET1
    # 12Net on 12x12 crops: conv 3x3 -> 10, pool 2/2 -> ceil(8/2)+1 = 5, conv 3x3 -> 3, conv 3x3 -> 1
    doc = json.loads(run("inspect", det1, "--shape", "label12face=64,6", "--shape", "data12face=64,3,12,12",
                         "--json").stdout)
    tops = {l["name"]: l["top_shapes"] for l in doc["layers"]}
    assert tops["conv1"] == [[64, 10, 10, 10]] and tops["pool1"] == [[64, 10, 5, 5]]
    assert tops["conv2"] == [[64, 16, 3, 3]] and tops["conv3"] == [[64, 32, 1, 1]]
    assert tops["conv4-1"] == [[64, 2, 1, 1]] and tops["conv4-2"] == [[64, 4, 1, 1]]
    assert tops["slicer_label"] == [[64, 1], [64, 4], [64, 1]]   # slice_point 1, 5 of the 6 label columns


def test_stored_net_state_asked_is_a_note(shared):
    det1 = shared / DET1
    r = run("inspect", det1, "--phase", "TEST")
    assert r.exit_code == 0
    assert any(l.startswith("the net Caffe stored is already filtered (in TRAIN)") for l in r.stdout.splitlines())
    assert "already filtered" not in "".join(l for l in run("inspect", det1).stdout.splitlines()
                                             if not l.startswith(str(det1)))


def test_long_connection_lists_are_cut_with_a_count(tmp_path):
    n = 40
    lines = ['layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }']
    lines += [f'layer {{ name: "branch_with_a_long_name_{k:02d}" type: "ReLU" bottom: "x" '
              f'top: "branch_with_a_long_name_{k:02d}" }}' for k in range(n)]
    lines.append('layer { name: "cat" type: "Concat" '
                 + " ".join(f'bottom: "branch_with_a_long_name_{k:02d}"' for k in range(n)) + ' top: "cat" }')
    lines.append('layer { name: "slice" type: "Slice" bottom: "cat" '
                 + " ".join(f'top: "piece_{k:02d}"' for k in range(n)) + ' }')
    p = tmp_path / "wide.prototxt"
    p.write_text("\n".join(lines) + "\n")
    r = run("inspect", p)
    assert r.exit_code == 0, r.output
    assert all(len(l) <= MAX_ROW for l in table_lines(r.stdout)), max(map(len, table_lines(r.stdout)))
    cat = row(r.stdout, "cat")
    assert "branch_with_a_long_name_00," in cat and "... (+" in cat and "-> cat" in cat
    assert "1 80 4 4 (1280)" in cat
    assert "... (+" in row(r.stdout, "slice")
    doc = json.loads(run("inspect", p, "--json").stdout)   # the JSON keeps every name
    assert len(doc["layers"][-2]["bottoms"]) == n and len(doc["layers"][-1]["top_shapes"]) == n


@pytest.mark.parametrize("args", [(), ("--phase", "TRAIN"), ("--splits", "--json")],
                         ids=["default", "train", "splits-json"])
def test_every_shared_net_is_ok_or_one_clean_line(shared, args):
    """Every .prototxt and .caffemodel under the shared folder (fixtures, upstream, golden)."""
    nets = sorted(p for p in shared.rglob("*") if p.suffix in (".prototxt", ".caffemodel"))
    assert nets, "no shared nets found"
    outcome = {"ok": 0, "error": 0}
    for path in nets:
        r = run("inspect", path, *args)
        assert r.exception is None or isinstance(r.exception, SystemExit), (path, r.exception)
        assert "Traceback" not in r.output, path
        if r.exit_code == 0:
            outcome["ok"] += 1
            if "--json" in args:
                json.loads(r.stdout)
            elif " solver, lr_policy " in r.stdout.split("\n", 1)[0]:   # inspect SOLVER: its summary
                assert "effective batch: " in r.stdout, path
            else:
                assert all(len(l) <= MAX_ROW for l in table_lines(r.stdout)), path
            continue
        assert r.exit_code == 2, (path, r.output)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"sfport: error: {path}"), (path, r.stderr)
        assert r.stdout == ""
        outcome["error"] += 1
    # the SSD nets (fields of the SSD fork the schema lacks) and the solvers whose net path is relative to
    # another folder (upstream's code/...) are the one-line errors; every other file is shown
    assert outcome["error"] <= 14 and outcome["ok"] >= len(nets) - 14, outcome


def test_inspect_reads_a_prototxt_named_pt(tmp_path):
    # py-faster-rcnn names its test nets faster_rcnn_test.pt: protobuf text, read as the prototxt it is (conv
    # (9 + 2 - 3) / 2 + 1 = 5 by (8 + 2 - 3) / 2 + 1 = 4; inner product 4 * 5 * 4 = 80 inputs)
    p = tmp_path / "rpn_test.pt"
    p.write_text('name: "t"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 9 dim: 8 }\n'
                 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                 'convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }\n'
                 'layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }\n')
    assert inspection.file_kind(p) == inspection.CAFFE
    r = run("inspect", p, "--json")
    assert r.exit_code == 0, r.output
    rows = {l["name"]: l for l in json.loads(r.output)["layers"]}
    assert rows["conv1"]["top_shapes"] == [[1, 4, 5, 4]]
    assert rows["fc"]["param_shapes"] == [[5, 80], [5]]
