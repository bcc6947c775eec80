"""ROIPooling, PSROIPooling and SmoothL1Loss (converters/roi.py) against the forks: each tests/data/roi/*.npz holds
one layer, its inputs, its top and the diffs of its bottoms for a given top diff, computed by the forks' own code
(py-faster-rcnn's caffe-fast-rcnn and R-FCN's caffe-rfcn kernels compiled for the CPU, and the SSD-derived oracle
fork's pycaffe for its SmoothL1Loss; how: tests/data/roi/README.md). sfport's converter, built from the same layer
text, must give the same top and diffs within 1e-5 * max(1, max |reference|); so must sfport's pycaffe Net running
the layer in an Input-fed net, and the ONNX exports on onnxruntime (ROIPooling as MaxRoiPool, PSROIPooling in
standard operators) at the reference's inputs. Then bad parameters and bottoms: a CaffeFileError of one line
naming the layer."""
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.errors import CaffeFileError
from sfport.formats import caffe_files
from sfport.netdef import shapes
from sfport.protos import caffe_pb2
from sfport.pycaffe.net import Net
from sfport.runtime import export
from sfport.runtime.net import Net as RuntimeNet

DATA = Path(__file__).resolve().parent / "data" / "roi"
CASES = sorted(p.stem for p in DATA.glob("*.npz"))
POOLING = [c for c in CASES if not c.startswith("sl1_")]
SMOOTH_L1 = [c for c in CASES if c.startswith("sl1_")]


def _load(name: str):
    with np.load(DATA / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    layer = text_format.Parse(str(arrays.pop("layer")), caffe_pb2.LayerParameter())
    return layer, arrays


def _close(ours, ref, what: str) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"
    return err


def test_the_reference_covers_the_configurations():
    """Every configuration make_reference.py lists has its file (a lost file would silently drop a case)."""
    assert CASES == sorted([
        "roi_vgg16_7x7", "roi_zf_6x6", "roi_2x3_scale1", "roi_3x3_scale_1_13", "roi_4x2_ties",
        "roi_2x2_large_bins_ties",
        "psroi_g3_scale16", "psroi_g7_scale16", "psroi_g2_scale1", "psroi_g1_scale_1_13", "psroi_g7_scale_1_13",
        "sl1_bbox_sigma1", "sl1_rpn_sigma3", "sl1_weights_sigma1", "sl1_rpn_weights_sigma3", "sl1_weights_sigma_0_7",
        "sl1_ssd", "sl1_ssd_loss_weight"])
    assert sum(p.stat().st_size for p in DATA.glob("*.npz")) < 500_000


@pytest.mark.parametrize("name", CASES)
def test_converter_matches_the_fork(name):
    """The converter's module: its top, and its gradients against the reference's top diff (a loss's
    loss_weight), are the fork's top and bottom diffs; a loss's weights get no gradient, as in Caffe."""
    layer, a = _load(name)
    xs = [torch.tensor(a[b], requires_grad=True) for b in layer.bottom]
    c = converters.get(layer.type)
    module = c.build(layer, [tuple(x.shape) for x in xs])
    top = module(*xs)
    assert [tuple(top.shape)] == c.top_shapes(layer, [tuple(x.shape) for x in xs])
    _close(top.detach().numpy(), a["top"], "top")
    grads = torch.autograd.grad(top, xs, torch.tensor(a["top_diff"]), allow_unused=True)
    for b, x, g in zip(layer.bottom, xs, grads):
        if f"{b}_diff" in a:
            _close(g.numpy(), a[f"{b}_diff"], f"{b} diff")
        else:
            assert g is None or not g.any(), b   # the rois, the weights: no gradient


def _input_net(layer, a, force_backward: bool) -> Net:
    net = caffe_pb2.NetParameter(name="roi_case", force_backward=force_backward)
    inp = net.layer.add(name="in", type="Input", top=list(layer.bottom))
    for b in layer.bottom:
        inp.input_param.shape.add(dim=list(a[b].shape))
    net.layer.add().CopyFrom(layer)
    return Net(caffe_files.CaffeModel.from_net(net, None), phase="train")


@pytest.mark.parametrize("name", POOLING)
def test_pycaffe_net_matches_the_fork(name):
    """The layer in sfport's pycaffe Net (Input, the layer; force_backward): forward, the top diff written,
    backward, the feature map's diff."""
    layer, a = _load(name)
    n = _input_net(layer, a, force_backward=True)
    for b in layer.bottom:
        n.blobs[b].data[...] = a[b]
    _close(n.forward()[layer.top[0]], a["top"], "top")
    n.blobs[layer.top[0]].diff[...] = a["top_diff"]
    n.backward()
    _close(n.blobs["data"].diff, a["data_diff"], "data diff")


@pytest.mark.parametrize("name", SMOOTH_L1)
def test_pycaffe_net_loss_matches_the_fork(name):
    """The loss in sfport's pycaffe Net: the loss, and after backward the predictions' diff (the loss_weight
    applied by the Net). Not the targets' diff: both forks' SmoothL1LossLayer::AllowForceBackward lets
    force_backward reach the targets, sfport's pycaffe Net keeps LossLayer's rule (no diff for bottom 1)."""
    layer, a = _load(name)
    n = _input_net(layer, a, force_backward=True)
    for b in layer.bottom:
        n.blobs[b].data[...] = a[b]
    _close(n.forward()[layer.top[0]], a["top"], "loss")
    n.backward()
    _close(n.blobs["pred"].diff, a["pred_diff"], "pred diff")


# ------------------------------------------------------------------------------------------ export

def _onnx_session(module, example):
    buf = io.BytesIO()
    axes = {"data": {0: "n", 2: "h", 3: "w"}, "rois": {0: "r"}, "top": {0: "r"}}
    with converters.export_form(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buf, dynamo=False, opset_version=export.ONNX_OPSET,
                          input_names=["data", "rois"], output_names=["top"], dynamic_axes=axes)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]), ops


@pytest.mark.parametrize("name", POOLING)
def test_onnx_export_matches_eager_and_the_fork(name):
    """Exported once at a small size (1 image, a 5 x 6 map, 3 rois), run on onnxruntime at the reference's sizes
    and inputs: the eager module's top, and the fork's."""
    layer, a = _load(name)
    xs = [torch.tensor(a[b]) for b in layer.bottom]
    module = converters.get(layer.type).build(layer, [tuple(x.shape) for x in xs])
    small = (xs[0][:1, :, :5, :6].contiguous(), torch.cat([torch.zeros(3, 1), xs[1][:3, 1:]], 1))
    sess, ops = _onnx_session(module, small)
    standard = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}
    assert ops <= standard
    assert ("MaxRoiPool" in ops) == (layer.type == "ROIPooling")
    got = sess.run(["top"], {"data": a["data"], "rois": a["rois"]})[0]
    with torch.no_grad():
        _close(got, module(*xs).numpy(), "onnx vs eager")
    _close(got, a["top"], "onnx vs the fork")


def test_torchscript_exports_psroi_pooling_and_refuses_roi_pooling(tmp_path):
    """PSROIPooling's graph traces (checked by sfport.export at two sizes); ROIPooling has no TorchScript form
    and says so in one line naming the layer, while its ONNX export is checked on onnxruntime."""
    text = """name: "t"
        layer { name: "in" type: "Input" top: "data" top: "rois"
                input_param { shape { dim: 2 dim: 18 dim: 9 dim: 11 } shape { dim: 4 dim: 5 } } }
        layer { name: "psroi" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "ps"
                psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 3 } }"""
    path = tmp_path / "ps.prototxt"
    path.write_text(text)
    ts = export.torchscript_export(RuntimeNet(str(path)))[1]
    assert ts.worst <= 1e-5 and ts.dynamic_size
    path.write_text(text + """
        layer { name: "roi_pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool"
                roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.0625 } }""")
    net = RuntimeNet(str(path))
    r = export.onnx_export(net)[1]
    assert r.worst <= 1e-5 and r.dynamic_size
    with pytest.raises(CaffeFileError) as e:
        export.torchscript_export(net)
    assert "layer 'roi_pool' (ROIPooling) has no TorchScript form" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ shapes and roles

def test_shapes_and_roles():
    net = text_format.Parse("""
        layer { name: "in" type: "Input" top: "conv5" top: "rois" top: "t" top: "w"
                input_param { shape { dim: 1 dim: 512 dim: 38 dim: 50 } shape { dim: 300 dim: 5 }
                              shape { dim: 300 dim: 84 } shape { dim: 300 dim: 84 } } }
        layer { name: "roi_pool5" type: "ROIPooling" bottom: "conv5" bottom: "rois" top: "pool5"
                roi_pooling_param { pooled_w: 7 pooled_h: 7 spatial_scale: 0.0625 } }
        layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "t" bottom: "t" bottom: "w" bottom: "w"
                top: "loss_bbox" }""", caffe_pb2.NetParameter())
    found = {net.layer[ls.index].name: ls for ls in shapes.infer(net, caffe_pb2.TRAIN)}
    assert found["roi_pool5"].tops == [(300, 512, 7, 7)] and found["roi_pool5"].params == []
    assert found["loss_bbox"].tops == [()]
    assert converters.is_loss("SmoothL1Loss") and converters.is_training_only("SmoothL1Loss")
    assert not converters.is_loss("ROIPooling") and not converters.is_training_only("PSROIPooling")


# ------------------------------------------------------------------------------------------ bad input

def _net(layer_text: str, *bottom_shapes):
    names = ["data", "rois", "w1", "w2", "w3"][:len(bottom_shapes)]
    shapes_text = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in bottom_shapes)
    tops = " ".join(f'top: "{n}"' for n in names)
    bottoms = " ".join(f'bottom: "{n}"' for n in names)
    return text_format.Parse(f"""
        layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes_text} }} }}
        layer {{ name: "the_layer" {bottoms} top: "out" {layer_text} }}""", caffe_pb2.NetParameter())


ROI = 'type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.5 }'
PSROI = 'type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 2 }'


@pytest.mark.parametrize("layer_text, bottom_shapes, says", [
    ('type: "ROIPooling" roi_pooling_param { pooled_w: 2 }', [(1, 3, 8, 8), (4, 5)],
     "pooled_h and pooled_w must be > 0"),
    ('type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 0 }', [(1, 3, 8, 8), (4, 5)], "must be > 0"),
    (ROI, [(1, 3, 8, 8), (4, 4)], "must be R x 5 rois"),
    (ROI, [(1, 3, 8, 8), (20,)], "must be R x 5 rois"),
    (ROI, [(3, 8, 8), (4, 5)], "must be N x C x H x W"),
    (ROI, [(1, 3, 8, 8)], "takes 2 bottoms"),
    (PSROI, [(1, 6, 8, 8), (4, 5)], "input channel number does not match layer parameters"),
    (PSROI, [(1, 8, 8, 8), (4, 6)], "must be R x 5 rois"),
    ('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 }', [(1, 8, 8, 8), (4, 5)],
     "must set group_size"),
    ('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.5 output_dim: 0 group_size: 2 }',
     [(1, 0, 8, 8), (4, 5)], "must be > 0"),
    ('type: "SmoothL1Loss"', [(4, 8), (4, 8), (4, 8)], "takes 2 bottoms (predictions, targets) or 4"),
    ('type: "SmoothL1Loss"', [(4, 8), (4, 9)], "must have the shape of"),
    ('type: "SmoothL1Loss"', [(4, 8), (5, 8)], "must have the shape of"),
    ('type: "SmoothL1Loss"', [(4, 8), (4, 8), (4, 8), (3, 8)], "must have the shape of"),
    ('type: "SmoothL1Loss"', [(1, 2, 3, 4, 5), (1, 2, 3, 4, 5)], "1 to 4 axes"),
])
def test_bad_parameters_and_bottoms_name_the_layer(layer_text, bottom_shapes, says):
    with pytest.raises(CaffeFileError) as e:
        shapes.infer(_net(layer_text, *bottom_shapes), filtered=True)
    assert "layer 'the_layer' (" in str(e.value) and says in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("layer_text, channels", [(ROI, 3), (PSROI, 8)])
@pytest.mark.parametrize("index", [2.0, -1.0])
def test_a_batch_index_outside_the_batch_names_the_layer(layer_text, channels, index):
    """Forward_cpu's CHECK_GE(roi_batch_ind, 0) / CHECK_LT(roi_batch_ind, batch_size) (the kernels read outside
    the blob)."""
    layer = _net(layer_text, (2, channels, 8, 8), (2, 5)).layer[1]
    module = converters.get(layer.type).build(layer, [(2, channels, 8, 8), (2, 5)])
    rois = torch.tensor([[0, 1, 1, 5, 5], [index, 1, 1, 5, 5]])
    with pytest.raises(CaffeFileError) as e:
        module(torch.rand(2, channels, 8, 8), rois)
    assert f"layer 'the_layer' ({layer.type})" in str(e.value) and f"batch index {int(index)}" in str(e.value)
