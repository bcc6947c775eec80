"""The segmentation nets end to end: FCN-8s (Crop, Deconvolution), DeepLab-LargeFOV (dilated convolution, Interp)
and SegNet (pooling masks, Upsample with the mask) verify blob by blob against an independent Caffe with random
weights at two input sizes, and export to ONNX checked on onnxruntime at both sizes against the eager net built
at each.

No model file is committed: FCN-8s and DeepLab-LargeFOV are written here layer for layer as their published
prototxts have them (fcn8s, deeplab_largefov: the repositories and commits in their docstrings), and the reference
is OpenCV 4's Caffe importer (its own Crop, Deconvolution, dilated Convolution and Interp). Their channel counts
are divided by ``THIN`` (the classifier's 21 kept) so that random weights stay small and the file runs in seconds:
kernels, pads, strides, dilations, crop offsets and zoom, everything that sets a size or a position, are the
published ones. SegNet-Basic (its prototxt is CC BY-NC) is built here likewise, and the reference is the oracle pycaffe (brocolli-caffe), whose MaxUnPool is
caffe-segnet's mask Upsample with the output size written out (both write ``top[mask[i]] = bottom[i]`` in order).
"""
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

import sfport
from sfport.formats import caffe_files
from sfport.netdef.weight_match import with_random_weights
from sfport.protos import caffe_pb2
from sfport.runtime import export, verify
from sfport.runtime.net import Net

ORACLE = os.environ.get("SFPORT_ORACLE_PYTHON", "/tmp/oracle/venv/bin/python")
TOL = 1e-5
THIN = 16
SIZES = [(64, 64), (96, 80)]


def _thin(net: caffe_pb2.NetParameter, classes: int = 21) -> caffe_pb2.NetParameter:
    for layer in net.layer:
        p = layer.convolution_param
        if layer.type == "Convolution" and p.num_output != classes:
            p.num_output = max(1, p.num_output // THIN)
    return net


def _write(net: caffe_pb2.NetParameter, folder: Path, name: str, seed: int = 3) -> tuple[Path, Path]:
    p, w = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    caffe_files.write_prototxt(p, net)
    caffe_files.write_caffemodel(w, with_random_weights(sfport.CaffeModel.from_net(net), seed=seed))
    return p, w


def _by_depth(checks) -> str:
    return ", ".join(f"{c.name} {c.rel_err:.1e}" for c in checks)


def _verify_opencv(p, w, sizes):
    for h, wd in sizes:
        v = verify.run(str(w), str(p), "opencv", shape=(1, 3, h, wd))
        print(f"{p.stem} {h}x{wd} against OpenCV, error by depth:", _by_depth(v.checks))
        assert v.passed and v.worst.rel_err <= TOL, verify.format_table(v.checks)
        yield v


def _export_checked(p, w, sizes):
    """ONNX made once at the first size (sfport's own check: the second size too), then the file itself run on
    onnxruntime at every size, batch 1 and 2, against the eager net built from the same files at that size."""
    net = Net(str(p), str(w))
    data, r = export.onnx_export(net, sizes=[sizes[1]])
    assert r.dynamic_size and r.worst <= TOL, r.summary()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = next(iter(net.inputs))
    errors = {}
    for n, (h, wd) in [(1, sizes[0]), (2, sizes[1]), (1, sizes[1])]:
        eager = Net(str(p), str(w), input_shapes={name: (n, 3, h, wd)})
        x = verify.make_input((n, 3, h, wd), "random", seed=h + wd + n)
        with torch.no_grad():
            want = [t.numpy() for t in eager.exportable().eval()(torch.from_numpy(x))]
        got = sess.run(net.outputs, {name: x})
        assert [g.shape for g in got] == [v.shape for v in want]
        errors[(n, h, wd)] = max(verify.relative_error(g, v) for g, v in zip(got, want))
    print(f"{p.stem} ONNX on onnxruntime, relative error by input:", errors, r.summary())
    assert max(errors.values()) <= TOL, errors
    return net, want


# ---- FCN-8s ----------------------------------------------------------------------------------------------------

def _conv(name, bottom, n, k, pad=0, dilation=1, stride=1, relu=True, bias=True):
    dil = f" dilation: {dilation}" if dilation != 1 else ""
    out = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param {{ '
           f'num_output: {n} pad: {pad} kernel_size: {k} stride: {stride}{dil}'
           f'{"" if bias else " bias_term: false"} }} }}\n')
    return out + (f'layer {{ name: "relu{name[4:] if name.startswith("conv") else name[2:]}" type: "ReLU" '
                   f'bottom: "{name}" top: "{name}" }}\n' if relu else "")


def _pool(name, bottom, k, stride, pad=0, method="MAX"):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" pooling_param {{ pool: '
            f'{method} kernel_size: {k} stride: {stride} pad: {pad} }} }}\n')


def _input(h: int, w: int) -> str:
    return f'layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {h} dim: {w} }} }} }}\n'


def _vgg16(first_pad: int, pools, dilation5: int = 1) -> str:
    """VGG16's thirteen 3x3 convolutions (first padded ``first_pad``, conv5 dilated ``dilation5``) and its five
    poolings ``pools`` [(kernel, stride, pad)]: the trunk FCN-8s and DeepLab-LargeFOV share."""
    text, bottom = "", "data"
    for stage, (reps, n) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], 1):
        for r in range(1, reps + 1):
            pad = first_pad if (stage, r) == (1, 1) else (dilation5 if stage == 5 else 1)
            text += _conv(f"conv{stage}_{r}", bottom, n, 3, pad, dilation5 if stage == 5 else 1)
            bottom = f"conv{stage}_{r}"
        text += _pool(f"pool{stage}", bottom, *pools[stage - 1])
        bottom = f"pool{stage}"
    return text


def fcn8s(h: int, w: int) -> str:
    """voc-fcn8s/deploy.prototxt of shelhamer/fcn.berkeleyvision.org (c779f6cc), layer for layer: VGG16 with pad
    100, fc6/fc7 as 7x7 / 1x1 convolutions, three 2x / 2x / 8x Deconvolutions (4/4/16, no bias) fused with the
    pool4 and pool3 scores through Crops at offsets 5, 9 and 31 (the published file is not copied here)."""
    crop = ('layer {{ name: "{0}" type: "Crop" bottom: "{1}" bottom: "{2}" top: "{0}" crop_param {{ axis: 2 '
            'offset: {3} }} }}\n')
    deconv = ('layer {{ name: "{0}" type: "Deconvolution" bottom: "{1}" top: "{0}" convolution_param {{ '
              'num_output: 21 bias_term: false kernel_size: {2} stride: {3} }} }}\n')
    fuse = 'layer {{ name: "{0}" type: "Eltwise" bottom: "{1}" bottom: "{2}" top: "{0}" eltwise_param {{ operation: SUM }} }}\n'
    return (f'name: "FCN8s"\n{_input(h, w)}'
            + _vgg16(100, [(2, 2, 0)] * 5) + _conv("fc6", "pool5", 4096, 7) + _conv("fc7", "fc6", 4096, 1)
            + _conv("score_fr", "fc7", 21, 1, relu=False) + deconv.format("upscore2", "score_fr", 4, 2)
            + _conv("score_pool4", "pool4", 21, 1, relu=False)
            + crop.format("score_pool4c", "score_pool4", "upscore2", 5)
            + fuse.format("fuse_pool4", "upscore2", "score_pool4c") + deconv.format("upscore_pool4", "fuse_pool4", 4, 2)
            + _conv("score_pool3", "pool3", 21, 1, relu=False)
            + crop.format("score_pool3c", "score_pool3", "upscore_pool4", 9)
            + fuse.format("fuse_pool3", "upscore_pool4", "score_pool3c") + deconv.format("upscore8", "fuse_pool3", 16, 8)
            + crop.format("score", "upscore8", "data", 31))


def test_fcn8s_verifies_against_opencv_and_exports_at_two_sizes(tmp_path):
    """FCN-8s (pad 100, three Deconvolutions, three Crops): the score is cropped to the data's size at every
    input size."""
    net = _thin(text_format.Parse(fcn8s(*SIZES[0]), caffe_pb2.NetParameter()))
    p, w = _write(net, tmp_path, "fcn8s")
    for (h, wd), v in zip(SIZES, _verify_opencv(p, w, SIZES)):
        names = [c.name for c in v.checks]
        assert {"upscore2", "score_pool4c", "upscore_pool4", "score_pool3c", "upscore8", "score"} <= set(names)
        assert v.checks[-1].name == "score" and v.checks[-1].shape == [1, 21, h, wd]
    _export_checked(p, w, SIZES)


# ---- DeepLab-LargeFOV ------------------------------------------------------------------------------------------

def deeplab_largefov(h: int, w: int, labels: int = 21) -> str:
    """DeepLab v1 LargeFOV's test net (config/DeepLab-LargeFOV/test.prototxt of TheLegendAli/DeepLab-Context,
    f6d04455) in its deploy form and BVLC's names (the fork's ``hole`` is Caffe's ``dilation``: the same taps):
    VGG16 with 3x3 poolings (stride 2, 2, 2, 1, 1, pad 1), conv5 dilated 2, a 3x3 AVE pool5a, fc6 3x3 dilated 12
    (1024), fc7 1x1, fc8 and Interp zoom_factor 8 (the published file is not copied here)."""
    return (f'name: "DeepLab-LargeFOV"\n{_input(h, w)}'
            + _vgg16(1, [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2, dilation5=2) + _pool("pool5a", "pool5", 3, 1, 1, "AVE")
            + _conv("fc6", "pool5a", 1024, 3, 12, 12) + _conv("fc7", "fc6", 1024, 1)
            + _conv("fc8_voc12", "fc7", labels, 1, relu=False)
            + 'layer { name: "fc8_interp" type: "Interp" bottom: "fc8_voc12" top: "fc8_interp" interp_param { '
              'zoom_factor: 8 } }\n')


def _zoomed(n: int) -> int:
    for _ in range(3):
        n = -(-(n - 1) // 2) + 1
    return 8 * (n - 1) + 1


def test_deeplab_largefov_verifies_against_opencv_and_exports_at_two_sizes(tmp_path):
    """DeepLab v1 LargeFOV: dilation 2 in conv5, 12 in fc6, 3x3 stride-1 poolings, Interp with zoom_factor 8."""
    net = _thin(text_format.Parse(deeplab_largefov(*SIZES[0]), caffe_pb2.NetParameter()))
    p, w = _write(net, tmp_path, "deeplab_largefov")
    for (h, wd), v in zip(SIZES, _verify_opencv(p, w, SIZES)):
        assert v.checks[-1].name == "fc8_interp"
        # three 3x3 stride-2 pad-1 poolings (Caffe's ceil: n -> ceil((n - 1) / 2) + 1), zoomed 8 times:
        # 8 (n - 1) + 1 (interp_layer.cpp)
        assert v.checks[-1].shape == [1, 21, _zoomed(h), _zoomed(wd)]
    _export_checked(p, w, SIZES)


# ---- SegNet ----------------------------------------------------------------------------------------------------

def _layer(name, type_, bottoms, tops, params=""):
    b = "".join(f' bottom: "{x}"' for x in bottoms)
    t = "".join(f' top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}"{b}{t} {params} }}\n'


def segnet_basic(h: int, w: int, channels: int = 8, classes: int = 11) -> str:
    """SegNet-Basic's inference net (Models/segnet_basic_inference.prototxt) with ``channels`` instead of 64 and
    caffe-segnet's INFERENCE-mode BN (``scale * x + shift`` per channel) written as Scale with a bias."""
    conv = f"convolution_param {{ num_output: {channels} kernel_size: 7 pad: 3 }}"
    affine = "scale_param { bias_term: true }"
    text = (f'name: "segnet"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 '
            f'dim: 3 dim: {h} dim: {w} }} }} }}\n')
    text += _layer("norm", "LRN", ["data"], ["norm"], "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    x = "norm"
    for k in range(1, 5):
        text += _layer(f"conv{k}", "Convolution", [x], [f"conv{k}"], conv)
        text += _layer(f"conv{k}_bn", "Scale", [f"conv{k}"], [f"conv{k}"], affine)
        text += _layer(f"relu{k}", "ReLU", [f"conv{k}"], [f"conv{k}"])
        text += _layer(f"pool{k}", "Pooling", [f"conv{k}"], [f"pool{k}", f"pool{k}_mask"],
                       "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        x = f"pool{k}"
    for k in range(4, 0, -1):
        pad = " pad_out_h: true" if k == 4 else ""
        text += _layer(f"upsample{k}", "Upsample", [x, f"pool{k}_mask"], [f"upsample{k}"],
                       f"upsample_param {{ scale: 2{pad} }}")
        text += _layer(f"conv_decode{k}", "Convolution", [f"upsample{k}"], [f"conv_decode{k}"], conv)
        text += _layer(f"conv_decode{k}_bn", "Scale", [f"conv_decode{k}"], [f"conv_decode{k}"], affine)
        x = f"conv_decode{k}"
    text += _layer("conv_classifier", "Convolution", [x], ["conv_classifier"],
                   f"convolution_param {{ num_output: {classes} kernel_size: 1 }}")
    return text + _layer("prob", "Softmax", ["conv_classifier"], ["prob"])


def _as_max_unpool(definition: caffe_pb2.NetParameter, net: Net) -> caffe_pb2.NetParameter:
    """The reference's net: each mask Upsample as the oracle's MaxUnPool with the output size sfport inferred
    (the oracle's own Upsample is only the nearest form)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(definition)
    tops = {gl.name: gl.top_shapes[0] for gl in net.graph.layers}
    for layer in out.layer:
        if layer.type == "Upsample" and len(layer.bottom) == 2:
            layer.type = "MaxUnPool"
            layer.ClearField("upsample_param")
            layer.max_unpool_param.dst_h, layer.max_unpool_param.dst_w = tops[layer.name][2:]
    return out


# 72x64 and 88x96: the heights give an odd map after three poolings, which pad_out_h's 2 H - 1 restores
SEGNET_SIZES = [(72, 64), (88, 96)]


@pytest.mark.skipif(not Path(ORACLE).exists(), reason=f"the oracle pycaffe ({ORACLE}) is not installed")
@pytest.mark.parametrize("size", SEGNET_SIZES)
def test_segnet_basic_verifies_against_the_oracle_pycaffe(tmp_path, size):
    text = segnet_basic(*size)
    net_param = text_format.Parse(text, caffe_pb2.NetParameter())
    p, w = _write(net_param, tmp_path, "segnet")
    net = Net(str(p), str(w))
    ref_p, ref_w = tmp_path / "ref.prototxt", tmp_path / "ref.caffemodel"
    caffe_files.write_prototxt(ref_p, _as_max_unpool(verify.reference_definition(net), net))
    caffe_files.write_caffemodel(ref_w, verify.reference_weights(net))
    x = verify.make_input((1, 3) + size, "random", seed=0)   # what verify.run feeds the first input
    ref = verify.caffe_reference(str(ref_p), str(ref_w), {"data": x}, python=ORACLE)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for name, value in ref.items():
        np.save(ref_dir / f"{name}.npy", value)
    v = verify.run(str(w), str(p), str(ref_dir))
    print(f"SegNet-Basic {size} against the oracle, error by depth:", _by_depth(v.checks))
    names = [c.name for c in v.checks]
    assert {"pool4_mask", "upsample4", "upsample1", "prob"} <= set(names), names
    assert v.passed and v.worst.rel_err <= TOL, verify.format_table(v.checks)
    # the masks are not all-equal placeholders: the unpooled maps hold values at 1 in 4 places
    up = ref["upsample1"]
    assert 0.2 < np.count_nonzero(up) / up.size <= 0.25


def test_segnet_basic_exports_at_two_sizes(tmp_path):
    text = segnet_basic(*SEGNET_SIZES[0])
    p, w = _write(text_format.Parse(text, caffe_pb2.NetParameter()), tmp_path, "segnet")
    _, want = _export_checked(p, w, SEGNET_SIZES)
    assert want[0].shape == (1, 11) + SEGNET_SIZES[1]
