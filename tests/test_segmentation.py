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
    # as `sfport convert --shape` loads it: data layers inputs (of the first size), sinks dropped
    net = Net(str(p), str(w), inference=True, input_shapes=(1, 3) + tuple(sizes[0]))
    data, r = export.onnx_export(net, sizes=[sizes[1]])
    assert r.dynamic_size and r.worst <= TOL, r.summary()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = next(iter(net.inputs))
    errors = {}
    for n, (h, wd) in [(1, sizes[0]), (2, sizes[1]), (1, sizes[1])]:
        eager = Net(str(p), str(w), input_shapes={name: (n, 3, h, wd)}, inference=True)
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

def _v1(name, type_, bottom, top, params="", extra=""):
    return (f'layers {{\n  bottom: "{bottom}"\n  top: "{top}"\n  name: "{name}"\n  type: {type_}\n{extra}'
            + (f"  {params}\n" if params else "") + "}\n")


def deeplab_largefov(size: int, labels: int = 21, root: str = "/data/VOC2012", exp: str = "voc12",
                     test_set: str = "val", features: str = "features", thin: int = THIN) -> str:
    """DeepLab v1 LargeFOV's test net as published (config/DeepLab-LargeFOV/test.prototxt of
    TheLegendAli/DeepLab-Context, f6d04455), filled in as its run_pascal.sh fills the template (${NUM_LABELS},
    ${EXP}, ${DATA_ROOT}, ${TEST_SET}, ${FEATURE_DIR}), crop_size ``size`` for its 513: Caffe's V1 format with
    DeepLab's names (the published file is not copied here). An IMAGE_SEG_DATA layer (has_label: false, three
    mean_values, crop_size), VGG16 with 3x3 poolings (stride 2, 2, 2, 1, 1, pad 1), conv5 with ``hole: 2``, a 3x3
    AVE pool5a, fc6 3x3 with ``hole: 12`` (1024), fc7 1x1, DROPOUTs, fc8, INTERP zoom_factor 8 and the MAT_WRITE
    of fc8_interp, ``strict_dim: false`` on the fc layers. Widths divided by ``thin`` as the other nets here."""
    text = (f'name: "deeplab_largefov"\n\nlayers {{\n  name: "data"\n  type: IMAGE_SEG_DATA\n  top: "data"\n'
            f'  top: "label"\n  image_data_param {{\n    root_folder: "{root}"\n    source: "{exp}/list/{test_set}.txt"\n'
            f'    batch_size: 1\n    has_label: false\n  }}\n  transform_param {{\n    mean_value: 104.008\n'
            f'    mean_value: 116.669\n    mean_value: 122.675\n    crop_size: {size}\n    mirror: false\n  }}\n'
            f'  include: {{ phase: TEST }}\n}}\n')
    bottom = "data"
    for stage, (reps, n) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], 1):
        for r in range(1, reps + 1):
            name = f"conv{stage}_{r}"
            geometry = "pad: 2 hole: 2" if stage == 5 else "pad: 1"
            text += _v1(name, "CONVOLUTION", bottom, name,
                        f"convolution_param {{ num_output: {n // thin} {geometry} kernel_size: 3 }}")
            text += _v1(f"relu{stage}_{r}", "RELU", name, name)
            bottom = name
        text += _v1(f"pool{stage}", "POOLING", bottom, f"pool{stage}",
                    f"pooling_param {{ pool: MAX kernel_size: 3 stride: {2 if stage <= 3 else 1} pad: 1 }}")
        bottom = f"pool{stage}"
    text += _v1("pool5a", "POOLING", "pool5", "pool5a", "pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 }")
    fc = "  strict_dim: false\n"
    text += _v1("fc6", "CONVOLUTION", "pool5a", "fc6", f"convolution_param {{ num_output: {1024 // thin} pad: 12 "
                "hole: 12 kernel_size: 3 }", fc)
    for k in (6, 7):
        text += _v1(f"relu{k}", "RELU", f"fc{k}", f"fc{k}")
        text += _v1(f"drop{k}", "DROPOUT", f"fc{k}", f"fc{k}", "dropout_param { dropout_ratio: 0.5 }")
        if k == 6:
            text += _v1("fc7", "CONVOLUTION", "fc6", "fc7",
                        f"convolution_param {{ num_output: {1024 // thin} kernel_size: 1 }}", fc)
    text += _v1(f"fc8_{exp}", "CONVOLUTION", "fc7", f"fc8_{exp}",
                f"convolution_param {{ num_output: {labels} kernel_size: 1 }}", fc)
    text += _v1("fc8_interp", "INTERP", f"fc8_{exp}", "fc8_interp", "interp_param { zoom_factor: 8 }")
    return text + (f'layers {{\n  name: "fc8_mat"\n  type: MAT_WRITE\n  bottom: "fc8_interp"\n  mat_write_param {{\n'
                   f'    prefix: "{features}/{test_set}/fc8/"\n    source: "{exp}/list/{test_set}_id.txt"\n'
                   f'    strip: 0\n    period: 1\n  }}\n  include: {{ phase: TEST }}\n}}\n')


def _zoomed(n: int) -> int:
    for _ in range(3):
        n = -(-(n - 1) // 2) + 1
    return 8 * (n - 1) + 1


# DeepLab's crop_size is square: two odd sizes of its 8 k + 1 form (its 513)
DEEPLAB_SIZES = [65, 81]


def test_deeplab_largefov_verifies_against_opencv_and_exports_at_two_sizes(tmp_path):
    """DeepLab v1 LargeFOV as published (V1 layers, IMAGE_SEG_DATA, ``hole``, INTERP, MAT_WRITE): its data layer
    is the input at crop_size, MAT_WRITE a sink the deploy form drops; dilation 2 in conv5, 12 in fc6, 3x3
    stride-1 poolings, Interp with zoom_factor 8."""
    p, w = tmp_path / "test.prototxt", tmp_path / "deeplab_largefov.caffemodel"
    p.write_text(deeplab_largefov(DEEPLAB_SIZES[0]))
    m = caffe_files.read_prototxt(p)
    types = [layer.type for layer in m.net.layer]
    assert types[:2] == ["ImageSegData", "Convolution"] and types[-2:] == ["Interp", "MatWrite"]
    assert [list(layer.convolution_param.dilation) for layer in m.net.layer if layer.name in ("conv5_1", "fc6")] \
        == [[2], [12]]
    caffe_files.write_caffemodel(w, with_random_weights(m, seed=3))
    sizes = [(s, s) for s in DEEPLAB_SIZES]
    for (h, wd), v in zip(sizes, _verify_opencv(p, w, sizes)):
        assert v.checks[-1].name == "fc8_interp"
        # three 3x3 stride-2 pad-1 poolings (Caffe's ceil: n -> ceil((n - 1) / 2) + 1), zoomed 8 times:
        # 8 (n - 1) + 1 (interp_layer.cpp)
        assert v.checks[-1].shape == [1, 21, _zoomed(h), _zoomed(wd)]
    _export_checked(p, w, sizes)


# ---- SegNet ----------------------------------------------------------------------------------------------------

def _layer(name, type_, bottoms, tops, params=""):
    b = "".join(f' bottom: "{x}"' for x in bottoms)
    t = "".join(f' top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}"{b}{t} {params} }}\n'


SEGNET_BN = ('bn_param {\n\tbn_mode: INFERENCE\n\tscale_filler {\n\t  type: "constant"\n\t  value: 1\n\t}\n'
             '\tshift_filler {\n\t  type: "constant"\n\t  value: 0.001\n\t}\n }')


def segnet_basic(channels: int = 8, classes: int = 11) -> str:
    """SegNet-Basic's inference net as published (Models/segnet_basic_inference.prototxt of
    alexgkendall/SegNet-Tutorial, 7004d437), with ``channels`` instead of 64 (the file is CC BY-NC and not
    copied here): caffe-segnet's DenseImageData data layer (its source a path of the authors' machine, no size:
    the images set it), LRN, four encoder stages of 7x7 convolution, caffe-segnet's two-blob BN (``bn_mode:
    INFERENCE``, scale_filler / shift_filler, tab-indented as published), ReLU and MAX pooling with its mask top,
    four decoder stages of Upsample with that mask, convolution and BN, a 1x1 classifier and a CAFFE-engine
    Softmax."""
    conv = f"convolution_param {{ num_output: {channels} kernel_size: 7 pad: 3 }}"
    affine = SEGNET_BN
    text = ('name: "segnet"\nlayer {\n  name: "data"\n  type: "DenseImageData"\n  top: "data"\n  top: "label"\n'
            '  dense_image_data_param {\n    source: "/SegNet/CamVid/test.txt"\t# Change this to the absolute path '
            'to your data file\n    batch_size: 1\n  }\n}\n')
    text += _layer("norm", "LRN", ["data"], ["norm"], "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    x = "norm"
    for k in range(1, 5):
        text += _layer(f"conv{k}", "Convolution", [x], [f"conv{k}"], conv)
        text += _layer(f"conv{k}_bn", "BN", [f"conv{k}"], [f"conv{k}"], affine)
        text += _layer(f"relu{k}", "ReLU", [f"conv{k}"], [f"conv{k}"])
        text += _layer(f"pool{k}", "Pooling", [f"conv{k}"], [f"pool{k}", f"pool{k}_mask"],
                       "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        x = f"pool{k}"
    for k in range(4, 0, -1):
        pad = " pad_out_h: true" if k == 4 else ""
        text += _layer(f"upsample{k}", "Upsample", [x, f"pool{k}_mask"], [f"upsample{k}"],
                       f"upsample_param {{ scale: 2{pad} }}")
        text += _layer(f"conv_decode{k}", "Convolution", [f"upsample{k}"], [f"conv_decode{k}"], conv)
        text += _layer(f"conv_decode{k}_bn", "BN", [f"conv_decode{k}"], [f"conv_decode{k}"], affine)
        x = f"conv_decode{k}"
    text += _layer("conv_classifier", "Convolution", [x], ["conv_classifier"],
                   f"convolution_param {{ num_output: {classes} kernel_size: 1 }}")
    return text + _layer("prob", "Softmax", ["conv_classifier"], ["prob"], "softmax_param {engine: CAFFE}")


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


def _segnet_files(tmp_path):
    """The published SegNet-Basic syntax as its file, with random weights (two blobs per caffe-segnet BN)."""
    p, w = tmp_path / "segnet_basic_inference.prototxt", tmp_path / "segnet.caffemodel"
    p.write_text(segnet_basic())
    sized = caffe_files.read_prototxt(p)   # the weights' shapes do not depend on the image size: state one
    sized.net.layer[0].dense_image_data_param.new_height, sized.net.layer[0].dense_image_data_param.new_width = 72, 64
    caffe_files.write_caffemodel(w, with_random_weights(sized, seed=3))
    return p, w


def test_segnet_published_syntax_reads():
    net = text_format.Parse(segnet_basic(), caffe_pb2.NetParameter())
    bn = [layer for layer in net.layer if layer.type == "BN"]
    assert len(bn) == 8 and all(b.bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE for b in bn)
    assert net.layer[0].type == "DenseImageData" and net.layer[0].dense_image_data_param.batch_size == 1


@pytest.mark.skipif(not Path(ORACLE).exists(), reason=f"the oracle pycaffe ({ORACLE}) is not installed")
@pytest.mark.parametrize("size", SEGNET_SIZES)
def test_segnet_basic_verifies_against_the_oracle_pycaffe(tmp_path, size):
    """The oracle (brocolli-caffe) runs caffe-segnet's INFERENCE BN as the Scale with bias it is
    (BNConverter.for_reference) and the mask Upsample as its MaxUnPool."""
    p, w = _segnet_files(tmp_path)
    net = Net(str(p), str(w), inference=True, input_shapes=(1, 3) + size)
    ref_p, ref_w = tmp_path / "ref.prototxt", tmp_path / "ref.caffemodel"
    caffe_files.write_prototxt(ref_p, _as_max_unpool(verify.reference_definition(net), net))
    caffe_files.write_caffemodel(ref_w, verify.reference_weights(net))
    x = verify.make_input((1, 3) + size, "random", seed=0)   # what verify.run feeds the first input
    ref = verify.caffe_reference(str(ref_p), str(ref_w), {"data": x}, python=ORACLE)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for name, value in ref.items():
        np.save(ref_dir / f"{name}.npy", value)
    v = verify.run(str(w), str(p), str(ref_dir), shape=(1, 3) + size)
    print(f"SegNet-Basic {size} against the oracle, error by depth:", _by_depth(v.checks))
    names = [c.name for c in v.checks]
    assert {"pool4_mask", "upsample4", "upsample1", "prob"} <= set(names), names
    assert v.passed and v.worst.rel_err <= TOL, verify.format_table(v.checks)
    # the masks are not all-equal placeholders: the unpooled maps hold values at 1 in 4 places
    up = ref["upsample1"]
    assert 0.2 < np.count_nonzero(up) / up.size <= 0.25


def test_segnet_basic_exports_at_two_sizes(tmp_path):
    p, w = _segnet_files(tmp_path)
    _, want = _export_checked(p, w, SEGNET_SIZES)
    assert want[0].shape == (1, 11) + SEGNET_SIZES[1]
