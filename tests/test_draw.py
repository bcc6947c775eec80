"""`sfport draw` against the graph Caffe's python/caffe/draw.py builds, its rules written out here from its source
(get_pydot_graph, get_layer_label, choose_color_by_layertype, get_edge_label) and checked on the DOT text that
pydot parses back; the formats through Graphviz; the errors of a missing extra, a missing `dot`, a bad output."""
import shutil
import sys

import pytest
from click.testing import CliRunner

from sfport.cli import cli
from tests.conftest import FIXTURES

pydot = pytest.importorskip("pydot")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # pydot's parser on new pyparsing

NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN } data_param { batch_size: 64 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST } data_param { batch_size: 100 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
"""


def _dot(tmp_path, *args, net=NET):
    (tmp_path / "n.prototxt").write_text(net)
    out = tmp_path / "n.dot"
    r = CliRunner().invoke(cli, ["draw", str(tmp_path / "n.prototxt"), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    (graph,) = pydot.graph_from_dot_data(out.read_text())
    nodes = {n.get_name().strip('"'): n.get_attributes() for n in graph.get_nodes() if n.get_name() != "node"}
    edges = [(e.get_source().strip('"'), e.get_destination().strip('"'), e.get_attributes().get("label"))
             for e in graph.get_edges()]
    return graph, nodes, edges


def test_labels_colours_and_edges_are_draw_pys(tmp_path):
    graph, nodes, edges = _dot(tmp_path, "--phase", "TEST")
    assert graph.get_name().strip('"') == "tiny" and graph.get_rankdir() == "LR"
    nl = r"\n"   # rankdir LR: the label's parts separated by DOT newlines
    conv = f"conv1{nl}(Convolution){nl}kernel size: 5{nl}stride: 2{nl}pad: 1"
    pool = f"pool1{nl}(Pooling AVE){nl}kernel size: 3{nl}stride: 2{nl}pad: 0"
    ip, relu, data = f"ip1{nl}(InnerProduct)", f"relu1{nl}(ReLU)", f"data{nl}(Data)"
    loss, acc = f"loss{nl}(SoftmaxWithLoss)", f"acc{nl}(Accuracy)"
    colours = {conv: "#FF5050", pool: "#FF9900", ip: "#CC33FF", relu: "#90EE90", data: "#6495ED",
               loss: "#6495ED", acc: "#6495ED"}
    for label, colour in colours.items():
        assert nodes[label] == {"shape": "record", "fillcolor": f'"{colour}"', "style": "filled"}, label
    # blobs some layer reads: grey octagons; blobs only written (the outputs): plain nodes
    for blob in ("data", "label", "conv1", "pool1", "ip1"):
        assert nodes[blob] == {"shape": "octagon", "fillcolor": '"#E0E0E0"', "style": "filled"}, blob
    assert nodes["loss"] == {} and nodes["acc"] == {}
    assert len(nodes) == 7 + 7
    # one edge from each bottom to its layer (no label), one from the layer to each top (num_output / batch)
    assert sorted(edges) == sorted([
        (data, "data", '"Batch 100"'), (data, "label", '"Batch 100"'),
        ("data", conv, '""'), (conv, "conv1", "20"),
        ("conv1", relu, '""'), (relu, "conv1", '""'),
        ("conv1", pool, '""'), (pool, "pool1", '""'),
        ("pool1", ip, '""'), (ip, "ip1", "10"),
        ("ip1", loss, '""'), ("label", loss, '""'), (loss, "loss", '""'),
        ("ip1", acc, '""'), ("label", acc, '""'), (acc, "acc", '""')])


def test_phase_selects_layers_and_all_draws_both_data_layers(tmp_path):
    _, nodes, edges = _dot(tmp_path, "--phase", "TRAIN")
    assert "acc\\n(Accuracy)" not in nodes and "acc" not in nodes
    assert ("data\\n(Data)", "data", '"Batch 64"') in edges
    # ALL (draw_net.py's default): every layer; the two data layers share the key 'data_Data', the last wins
    _, nodes, edges = _dot(tmp_path)
    assert "acc\\n(Accuracy)" in nodes
    assert ("data\\n(Data)", "data", '"Batch 100"') in edges and ("data\\n(Data)", "data", '"Batch 64"') in edges


def test_vertical_rankdir_separates_by_spaces_and_lr_mult(tmp_path):
    graph, nodes, _ = _dot(tmp_path, "--rankdir", "TB", "--display-lrm", "--phase", "TEST")
    assert graph.get_rankdir() == "TB"
    assert "conv1 (Convolution) kernel size: 5 stride: 2 pad: 1 lr mult: 1.0, 2.0" in nodes
    assert "ip1 (InnerProduct) lr mult: 1.0, 1.0" in nodes   # no param specs: draw.py's 1.0 defaults


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("ext,magic", [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<?xml"), ("pdf", b"%PDF-")])
def test_formats_through_graphviz(shared, tmp_path, ext, magic):
    out = tmp_path / f"ssd.{ext}"
    r = CliRunner().invoke(cli, ["draw", str(FIXTURES / "ssd" / "MobileNetSSD_train.prototxt"), str(out),
                                 "--phase", "TRAIN"])
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert data.startswith(magic)
    if ext == "svg":   # the SSD train net's layers are all there: its 'mbox_loss' and the first conv
        text = data.decode()
        assert "mbox_loss" in text and "conv0" in text
    assert [p.name for p in tmp_path.iterdir()] == [out.name]   # no temporary left


def test_caffemodel_is_drawn_from_its_stored_net(shared, tmp_path):
    """det1's stored net (MTCNN, a caffemodel with its HDF5 training layers): every layer, drawn from the file."""
    out = tmp_path / "det1.dot"
    r = CliRunner().invoke(cli, ["draw", str(FIXTURES / "mtcnn" / "det1.caffemodel"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    (graph,) = pydot.graph_from_dot_data(out.read_text())
    names = {n.get_name().strip('"').split("\\n")[0] for n in graph.get_nodes()}
    assert {"conv1", "PReLU1", "pool1", "conv4-1", "conv4-2"} <= names


def test_errors(tmp_path, monkeypatch):
    (tmp_path / "n.prototxt").write_text(NET)
    net = str(tmp_path / "n.prototxt")
    run = CliRunner().invoke
    r = run(cli, ["draw", net, str(tmp_path / "n.txt")])
    assert r.exit_code == 2 and "a drawing is written as .png, .svg, .pdf, .dot, not '.txt'" in r.stderr
    r = run(cli, ["draw", net])
    assert r.exit_code == 2 and "give the drawing's file" in r.stderr
    r = run(cli, ["draw", net, "-o", str(tmp_path / "x.png"), "--stage", "deploy"])
    assert r.exit_code == 2 and "--phase TRAIN or TEST" in r.stderr
    r = run(cli, ["draw", str(tmp_path / "none.prototxt"), str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "none.prototxt" in r.stderr and "Traceback" not in r.output
    (tmp_path / "bad.prototxt").write_text("layer { name: 'a' type: 'ReLU' bottom: 'x' top: 'x' \n")
    r = run(cli, ["draw", str(tmp_path / "bad.prototxt"), str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "bad.prototxt" in r.stderr
    assert not (tmp_path / "x.png").exists()
    # Graphviz's dot missing: one line saying what to install, nothing written
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    r = run(cli, ["draw", net, str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "apt install graphviz" in r.stderr, r.output
    assert not (tmp_path / "x.png").exists()
    # pydot missing
    monkeypatch.setitem(sys.modules, "pydot", None)
    r = run(cli, ["draw", net, str(tmp_path / "x.dot")])
    assert r.exit_code == 2 and "pip install 'sfport[draw]'" in r.stderr
    assert not (tmp_path / "x.dot").exists()
