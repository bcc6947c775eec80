"""MobileNet-SSD's own train and test prototxts (../shared/fixtures/ssd) train end to end: a tiny VOC-style set made
by `sfport create-annoset`, AnnotatedData batches, MultiBoxLoss with its backward, the TEST net's DetectionEvaluate
and the fork's detection test, whose mAP is the `Test net output` line Caffe's parse_log.py puts in its table."""
import re

import numpy as np
import pytest
from click.testing import CliRunner

import sfport
from sfport.cli import cli
from sfport.formats import caffe_files

from conftest import FIXTURES
from test_annotated_data import _create, _voc
from test_detection_eval import parse_log_test_table

pytest.importorskip("lmdb")
SSD = FIXTURES / "ssd"


def _prototxt(name, db, batch, folder):
    net = caffe_files.read_prototxt(SSD / name).net
    for layer in net.layer:
        if layer.HasField("data_param"):
            layer.data_param.source = str(db)
            layer.data_param.batch_size = batch
        if layer.annotated_data_param.HasField("label_map_file"):
            layer.annotated_data_param.label_map_file = str(folder / "labelmap.prototxt")
    path = folder / name
    caffe_files.write_prototxt(path, net)
    return path


@pytest.fixture(scope="module")
def ssd_run(tmp_path_factory):
    folder = _voc(tmp_path_factory.mktemp("ssd"))
    r = _create(folder, folder / "db", "--encode-type", "jpg")
    assert r.exit_code == 0, r.output
    train = _prototxt("MobileNetSSD_train.prototxt", folder / "db", 2, folder)
    test = _prototxt("MobileNetSSD_test.prototxt", folder / "db", 3, folder)
    (folder / "solver.prototxt").write_text(
        f'train_net: "{train}"\ntest_net: "{test}"\ntest_iter: 1\ntest_interval: 2\ntest_initialization: true\n'
        'base_lr: 0.0005\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.00005\nmax_iter: 2\ndisplay: 1\n'
        f'snapshot: 0\nsnapshot_prefix: "{folder}/ssd"\nrandom_seed: 3\nsolver_mode: CPU\n'
        'eval_type: "detection"\nap_version: "11point"\n')
    r = CliRunner().invoke(cli, ["train", str(folder / "solver.prototxt"), "--workers", "0"], catch_exceptions=False)
    assert r.exit_code == 0, r.output[-3000:]
    return folder, r.stderr


def test_mobilenet_ssd_trains_on_a_converted_set(ssd_run):
    folder, log = ssd_run
    losses = [float(v) for v in re.findall(r"Train net output #0: mbox_loss = (\S+)", log)]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(v > 0 for v in losses)
    # the same run stopped before its first update: the fillers' weights (random_seed 3), which two updates moved
    r = CliRunner().invoke(cli, ["train", str(folder / "solver.prototxt"), "--workers", "0", "--max-iter", "0"])
    assert r.exit_code == 0, r.output[-3000:]
    start = sfport.read_caffemodel(folder / "ssd_iter_0.caffemodel").params
    final = sfport.read_caffemodel(folder / "ssd_iter_2.caffemodel").params
    for layer in ("conv0", "conv11_mbox_loc", "conv17_2_mbox_conf"):
        assert np.isfinite(final[layer][0]).all()
        assert 0 < np.abs(final[layer][0] - start[layer][0]).max() < 1, layer


def test_the_detection_test_is_logged_and_parsed(ssd_run):
    """Two tests (iterations 0 and 2): the fork's TestDetection lines, one mAP each, read by parse_log.py's
    test table."""
    _, log = ssd_run
    maps = [float(v) for v in re.findall(r"Test net output #0: detection_eval = (\S+)", log)]
    assert len(maps) == 2 and all(0.0 <= v <= 1.0 for v in maps)
    rows = parse_log_test_table(log)
    assert [r["NumIters"] for r in rows][:1] == [0.0] and rows[0]["detection_eval"] == maps[0]
