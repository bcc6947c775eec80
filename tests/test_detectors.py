"""The two-stage detectors of ../shared/fixtures/detectors (py-faster-rcnn's VGG16 and ZF, py-R-FCN's ResNet-50
test nets, read as published) end to end with seeded random weights: `sfport verify` against OpenCV 4 passes blob
by blob, and the ONNX export runs on onnxruntime at two input sizes and batches 1 and 2, checked against eager.

Inputs: data uniform(-1, 1) at 400 x 400 and im_info ``[400, 400, 1]`` (what verify and export make for a
Proposal's im_info). At the prototxts' own 224 x 224 py-faster-rcnn's layer keeps fewer than 300 rois and
OpenCV's Proposal always gives 300 rows (tests/test_verify.py); at 400 x 400 both keep 300.

The RPN heads are scaled into a trained RPN's range (``HEADS``): random weights give VGG16's and ZF's RPN
scores within 0.5 +- 0.07, where equal scores are frequent and OpenCV's last std::sort reorders them
(tests/test_proposal.py), and R-FCN's deltas up to 3.7 (boxes 40 times their anchor), where most boxes clip below
RPN_MIN_SIZE, which py-faster-rcnn drops and OpenCV keeps, and a box corner carries the deltas' float error times
the box size. Measured without the scaling (same weights otherwise): VGG16 two rows swapped (equal scores), R-FCN
64 of 300 rows OpenCV's too-small boxes; ZF passes.
"""
import numpy as np
import onnx
import pytest

from sfport.formats import caffe_files
from sfport.netdef import weight_match
from sfport.runtime import export, verify
from sfport.runtime.net import load_net
from tests.conftest import FIXTURES

NETS = ["faster_rcnn_vgg16_voc_test", "faster_rcnn_zf_voc_test", "rfcn_resnet50_voc_test"]
# rpn_cls_score's and rpn_bbox_pred's blobs multiplied by
HEADS = {"faster_rcnn_vgg16_voc_test": (10.0, 0.1), "faster_rcnn_zf_voc_test": (10.0, 0.1),
         "rfcn_resnet50_voc_test": (1.0, 0.1)}
SIZE, SECOND = (400, 400), (477, 445)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            m = weight_match.with_random_weights(caffe_files.read_prototxt(FIXTURES / "detectors" / f"{name}.prototxt"),
                                                 seed=0)
            for i, layer in enumerate(m.net.layer):
                k = {"rpn_cls_score": HEADS[name][0], "rpn_bbox_pred": HEADS[name][1]}.get(layer.name)
                if k is not None:
                    m.set_blob_arrays(i, [a * np.float32(k) for a in m.blob_arrays(i)])
            made[name] = tmp_path_factory.mktemp("detectors") / f"{name}.caffemodel"
            caffe_files.write_caffemodel(made[name], m)
        return made[name]
    return get


@pytest.mark.parametrize("name", NETS)
def test_detector_verifies_against_opencv(name, weights):
    v = verify.run(str(weights(name)), str(FIXTURES / "detectors" / f"{name}.prototxt"),
                   shape={"data": (1, 3) + SIZE})
    assert v.passed, verify.format_table(v.failed)
    assert v.inputs["im_info"]["source"] == "made for layer 'proposal'"
    rois = next(c for c in v.checks if c.name == "proposal")
    assert rois.shape == [300, 5] and rois.max_ref == SIZE[1] - 1
    assert v.checks[-1].shape[0] == 300          # the heads score every roi


@pytest.mark.parametrize("name", NETS)
def test_detector_exports_to_onnx(name, weights, tmp_path):
    """The whole net, Proposal included (TopK, NonMaxSuppression, gathers), one ONNX graph with a dynamic batch,
    height and width: checked on onnxruntime at 400 x 400 (batch 1 and 2) and 477 x 445 (batch 2), the Proposal's
    bottoms as onnxruntime computes them fed to eager's (export's check of a discrete layer)."""
    net = load_net(str(weights(name)), str(FIXTURES / "detectors" / f"{name}.prototxt"), {"data": (1, 3) + SIZE})
    out = tmp_path / f"{name}.onnx"
    result = export.save(net, str(out), "onnx", sizes=[SECOND])
    assert result.dynamic_size and result.worst <= 1e-5
    assert [label for label, _ in result.checked] == ["1x3x400x400, 1x3", "2x3x400x400, 2x3", "2x3x477x445, 2x3"]
    assert any("rpn_cls_prob_reshape, rpn_bbox_pred" in n for n in result.notes)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == net.outputs      # the probes are the check's, not the file's
    assert {"TopK", "NonMaxSuppression"} <= {n.op_type for n in model.graph.node}
