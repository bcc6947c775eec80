"""The inference-optimized net (sfport.netdef.optimize, Net(..., optimize=True)): the same values at every blob it still
computes as the unoptimized net (itself checked against OpenCV and Caffe elsewhere) and as OpenCV's Caffe
importer running the original net; what folds and what must not."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport.formats import caffe_files
from sfport.netdef import weight_match
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2

from netcases import layer

SHARED = Path(os.environ.get("SFPORT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIX = SHARED / "fixtures"


def _net(body: str, shape, seed=0, transform=None) -> caffe_files.CaffeModel:
    text = f'name: "t" layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ ' \
           f'{" ".join(f"dim: {d}" for d in shape)} }} }} }} ' + body
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    m = weight_match.with_random_weights(caffe_files.CaffeModel.from_net(net, None), seed=seed)
    if transform:
        transform(m)
    return m


def _compare(m, shape, seed=1):
    """(original Net, optimized Net, worst relative error over the blobs the optimized net still computes,
    number of blobs compared)."""
    a, b = Net(m), Net(m, optimize=True)
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    a.forward(data=x)
    b.forward(data=x)
    worst, n = 0.0, 0
    for u, t in b.original_blobs().items():
        ref = a.unique_blobs[u].detach().double()
        err = float((t.detach().double() - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        worst, n = max(worst, err), n + 1
    for name in a.outputs:   # the outputs are always among them
        assert name in b.outputs
        np.testing.assert_allclose(b.blobs[name].detach().numpy(), a.blobs[name].detach().numpy(),
                                   atol=1e-5 * max(1.0, float(a.blobs[name].abs().max())))
    return a, b, worst, n


CONV = 'convolution_param { num_output: 6 kernel_size: 3 pad: 1 bias_term: false }'
BN = 'batch_norm_param { eps: 0.001 }'
SCALE = 'scale_param { bias_term: true }'


def test_conv_bn_scale_in_place_folds_into_the_convolution():
    body = (layer("conv", "Convolution", ["data"], ["conv"], CONV) + layer("bn", "BatchNorm", ["conv"], ["conv"], BN)
            + layer("sc", "Scale", ["conv"], ["conv"], SCALE) + layer("relu", "ReLU", ["conv"], ["conv"]))
    a, b, worst, n = _compare(_net(body, (2, 3, 9, 7)), (2, 3, 9, 7))
    assert [gl.type for gl in b.graph.layers] == ["Convolution", "ReLU"]
    assert b.module.channels_last_from == 16      # dense convolutions: NCHW below batch 16
    assert b.optimization.folded == [("conv", ["bn", "sc"])]
    assert worst < 1e-6 and n == 3      # data, the folded conv (= sc's top), relu
    assert b.definition.layer[1].convolution_param.bias_term


def test_dense_convolutions_take_nhwc_from_batch_16_with_the_same_values():
    body = layer("conv", "Convolution", ["data"], ["conv"], CONV) + layer("relu", "ReLU", ["conv"], ["conv"])
    m = _net(body, (2, 3, 9, 7))
    a, b = Net(m), Net(m, optimize=True)
    data = next(iter(b.graph.inputs))
    for n in (2, 15, 16, 33):
        x = np.random.default_rng(n).uniform(-1, 1, (n, 3, 9, 7)).astype(np.float32)
        want = a.forward(data=x)["conv"].detach().numpy()
        got = b.forward(data=x)["conv"]
        assert b.unique_blobs[data].is_contiguous(memory_format=torch.channels_last) == (n >= 16)
        assert b.unique_blobs[data].is_contiguous() == (n < 16)
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))


def test_fold_computes_caffe_batchnorm_with_its_scale_factor():
    """y = gamma * (conv - mean_sum/s) / sqrt(var_sum/s + eps) + beta, written out in numpy (s = 0: statistics 0)."""
    for s in (0.5, 0.0):
        def set_factor(m, s=s):
            i = [l.name for l in m.net.layer].index("bn")
            mean, var, _ = m.blob_arrays(i)
            m.set_blob_arrays(i, [mean, np.abs(var) + 0.1, np.array([s], np.float32)])
        body = (layer("conv", "Convolution", ["data"], ["conv"], CONV) +
                layer("bn", "BatchNorm", ["conv"], ["bn"], BN) + layer("sc", "Scale", ["bn"], ["sc"], SCALE))
        m = _net(body, (1, 2, 5, 5), transform=set_factor)
        b = Net(m, optimize=True)
        x = np.random.default_rng(3).uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32)
        got = b.forward(data=x)["sc"].detach().double().numpy()
        names = [l.name for l in m.net.layer]
        w = m.blob_arrays(names.index("conv"))[0].astype(np.float64)
        mean, var, f = (v.astype(np.float64) for v in m.blob_arrays(names.index("bn")))
        gamma, beta = (v.astype(np.float64) for v in m.blob_arrays(names.index("sc")))
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        conv = np.zeros((1, 6, 5, 5))
        for o in range(6):
            for i in range(5):
                for j in range(5):
                    conv[0, o, i, j] = (xp[0, :, i:i + 3, j:j + 3] * w[o]).sum()
        factor = 0.0 if f[0] == 0 else 1 / f[0]
        want = (gamma[None, :, None, None] * (conv - (mean * factor)[None, :, None, None])
                / np.sqrt((var * factor)[None, :, None, None] + 0.001) + beta[None, :, None, None])
        assert [gl.type for gl in b.graph.layers] == ["Convolution"]
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1, np.abs(want).max()))


@pytest.mark.parametrize("head, shape", [
    (layer("h", "Deconvolution", ["data"], ["h"], "convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 "
                                                  "group: 2 }"), (2, 4, 5, 6)),
    (layer("h", "Convolution", ["data"], ["h"], "convolution_param { num_output: 8 kernel_size: 3 group: 4 }"),
     (2, 8, 7, 7)),
    (layer("h", "InnerProduct", ["data"], ["h"], "inner_product_param { num_output: 5 }"), (3, 2, 4, 3)),
    (layer("h", "InnerProduct", ["data"], ["h"], "inner_product_param { num_output: 5 transpose: true "
                                                 "bias_term: false }"), (3, 7)),
])
def test_every_head_folds_exactly(head, shape):
    body = head + layer("bn", "BatchNorm", ["h"], ["h"], BN) + layer("sc", "Scale", ["h"], ["h"], SCALE) + \
        layer("bias", "Bias", ["h"], ["h"])
    a, b, worst, n = _compare(_net(body, shape), shape)
    assert len(b.graph.layers) == 1 and worst < 1e-6


def test_a_chain_after_anything_else_becomes_one_scale():
    body = (layer("pool", "Pooling", ["data"], ["pool"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("bn", "BatchNorm", ["pool"], ["bn"], BN) + layer("sc", "Scale", ["bn"], ["sc"], SCALE))
    a, b, worst, n = _compare(_net(body, (2, 3, 8, 6)), (2, 3, 8, 6))
    assert [gl.type for gl in b.graph.layers] == ["Pooling", "Scale"] and worst < 1e-6


@pytest.mark.parametrize("body, kept", [
    # the convolution's top also feeds another layer: the BatchNorm cannot fold into it
    (layer("conv", "Convolution", ["data"], ["conv"], CONV) + layer("bn", "BatchNorm", ["conv"], ["bn"], BN) +
     layer("sum", "Eltwise", ["conv", "bn"], ["sum"]), ["Convolution", "BatchNorm", "Eltwise"]),
    # batch statistics even at test time
    (layer("conv", "Convolution", ["data"], ["conv"], CONV) +
     layer("bn", "BatchNorm", ["conv"], ["conv"], "batch_norm_param { use_global_stats: false }"),
     ["Convolution", "BatchNorm"]),
    # a scale over two axes, and a scale by a second bottom
    (layer("conv", "Convolution", ["data"], ["conv"], CONV) +
     layer("sc", "Scale", ["conv"], ["sc"], "scale_param { num_axes: 2 }") +
     layer("sc2", "Scale", ["sc", "sc"], ["sc2"]), ["Convolution", "Scale", "Scale"]),
    # InnerProduct over axis 2: its outputs are not the channels the BatchNorm normalizes
    (layer("ip", "InnerProduct", ["data"], ["ip"], "inner_product_param { num_output: 3 axis: 2 }") +
     layer("bn", "BatchNorm", ["ip"], ["ip"], BN), ["InnerProduct", "BatchNorm"]),
    # a shared weight: folding would change the other layer's
    (layer("c1", "Convolution", ["data"], ["c1"], 'param { name: "w" } ' + CONV) +
     layer("bn", "BatchNorm", ["c1"], ["c1"], BN) +
     layer("c2", "Convolution", ["data"], ["c2"], 'param { name: "w" } ' + CONV) +
     layer("sum", "Eltwise", ["c1", "c2"], ["sum"]), ["Convolution", "BatchNorm", "Convolution", "Eltwise"]),
])
def test_what_must_not_fold_is_kept(body, kept):
    shape = (2, 3, 6, 5)
    a, b, worst, n = _compare(_net(body, shape), shape)
    assert [gl.type for gl in b.graph.layers] == kept and worst < 1e-6


def test_identities_and_silence_are_dropped_and_their_readers_rewired():
    body = (layer("ip", "InnerProduct", ["data"], ["ip"], "inner_product_param { num_output: 6 }")
            + layer("drop", "Dropout", ["ip"], ["drop"]) + layer("split", "Split", ["drop"], ["s1", "s2"])
            + layer("relu", "ReLU", ["s1"], ["r"]) + layer("tanh", "TanH", ["s2"], ["t"])
            + layer("sum", "Eltwise", ["r", "t"], ["sum"]) + layer("d2", "Dropout", ["sum"], ["sum"])
            + layer("ip2", "InnerProduct", ["sum"], ["ip2"], "inner_product_param { num_output: 2 }")
            + layer("sil", "Silence", ["ip"], []))
    a, b, worst, n = _compare(_net(body, (4, 3, 2, 2)), (4, 3, 2, 2))
    assert [gl.type for gl in b.graph.layers] == ["InnerProduct", "ReLU", "TanH", "Eltwise", "InnerProduct"]
    assert sorted(b.optimization.dropped) == ["d2", "drop", "sil", "split"] and worst == 0.0


def test_a_dropout_that_scales_at_test_time_is_kept():
    """py-faster-rcnn's ``scale_train: false`` Dropout multiplies by 1 / scale_ at test time (caffe-fast-rcnn
    dropout_layer.cpp Forward_cpu): no identity, so the optimized net keeps it (a plain Dropout still goes) and
    computes exactly what the unoptimized net does."""
    body = (layer("ip", "InnerProduct", ["data"], ["ip"], "inner_product_param { num_output: 6 }")
            + layer("drop", "Dropout", ["ip"], ["drop"], "dropout_param { dropout_ratio: 0.3 scale_train: false }")
            + layer("relu", "ReLU", ["drop"], ["r"]) + layer("d2", "Dropout", ["r"], ["r"])
            + layer("ip2", "InnerProduct", ["r"], ["ip2"], "inner_product_param { num_output: 2 }"))
    a, b, worst, n = _compare(_net(body, (4, 3, 2, 2)), (4, 3, 2, 2))
    assert [gl.type for gl in b.graph.layers] == ["InnerProduct", "Dropout", "ReLU", "InnerProduct"]
    assert b.optimization.dropped == ["d2"] and worst == 0.0
    np.testing.assert_array_equal(b.blobs["ip2"].detach().numpy(), a.blobs["ip2"].detach().numpy())
    ip, drop = a.blobs["ip"].detach().numpy(), a.unique_blobs[a.graph.final["drop"]].detach().numpy()
    assert not np.array_equal(ip, drop)    # it did scale
    np.testing.assert_allclose(drop, ip * 0.7, rtol=1e-6)


def test_a_train_phase_net_keeps_what_behaves_otherwise_in_training():
    """TRAIN: BatchNorm uses the batch's statistics and Dropout drops; they stay, the Scale still folds."""
    body = (layer("conv", "Convolution", ["data"], ["conv"], CONV) + layer("sc", "Scale", ["conv"], ["conv"], SCALE)
            + layer("bn", "BatchNorm", ["conv"], ["conv"]) + layer("drop", "Dropout", ["conv"], ["conv"]))
    b = Net(_net(body, (2, 3, 5, 5)), phase="train", optimize=True)
    assert [gl.type for gl in b.graph.layers] == ["Convolution", "BatchNorm", "Dropout"]
    assert b.module.training


def test_the_optimized_net_saves_and_reloads_as_a_caffe_net(tmp_path):
    body = (layer("conv", "Convolution", ["data"], ["conv"], CONV) + layer("bn", "BatchNorm", ["conv"], ["conv"], BN)
            + layer("sc", "Scale", ["conv"], ["conv"], SCALE))
    b = Net(_net(body, (1, 3, 6, 6)), optimize=True)
    b.save_caffemodel(tmp_path / "o.caffemodel")
    b.save(tmp_path / "o.pt")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32)
    want = b.forward(data=x)["conv"].detach().numpy()
    for f in ("o.caffemodel", "o.pt"):
        again = Net(str(tmp_path / f))
        assert [gl.type for gl in again.graph.layers] == ["Convolution"]
        np.testing.assert_array_equal(again.forward(data=x)["conv"].detach().numpy(), want)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sfport", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("weights, proto, extra", [
    ("mobilefacenet_insightface/mxnet2caffe_mobilefacenet.caffemodel",
     "mobilefacenet_insightface/mxnet2caffe_mobilefacenet.prototxt", []),
    ("ultraface/slim-320.caffemodel", "ultraface/slim-320.prototxt", []),
    ("mtcnn/det3.caffemodel", "mtcnn/det3.prototxt", []),
    ("mtcnn/det1.caffemodel", "mtcnn/det1.prototxt", ["--shape", "1,3,48,60"]),
    ("lenet/lenet_iter_10000.caffemodel", "lenet/lenet.prototxt", []),
])
def test_fixture_models_pass_verify_optimize_against_opencv(weights, proto, extra):
    r = _cli("verify", FIX / weights, "-p", FIX / proto, "--optimize", *extra)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert r.stdout.startswith("optimized: ") and "passed:" in r.stdout


def test_mobilefacenet_folds_every_batchnorm():
    mfn = FIX / "mobilefacenet_insightface"
    b = Net(str(mfn / "mxnet2caffe_mobilefacenet.prototxt"), str(mfn / "mxnet2caffe_mobilefacenet.caffemodel"),
            optimize=True)
    types = [gl.type for gl in b.graph.layers]
    assert "BatchNorm" not in types and "Scale" not in types
    assert sum(len(f) for _, f in b.optimization.folded) == 100
    # grouped convolutions: the optimized net takes its input as channels_last, with the same values
    assert b.module.channels_last_from == 0
    a = Net(str(mfn / "mxnet2caffe_mobilefacenet.prototxt"), str(mfn / "mxnet2caffe_mobilefacenet.caffemodel"))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    want = a.forward(data=x)["fc1"].detach().numpy()
    got = b.forward(data=x)["fc1"]
    assert b.unique_blobs[next(iter(b.graph.inputs))].is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "caffemodel"])
def test_convert_optimize_writes_checked_exports(tmp_path, fmt):
    mfn = FIX / "mobilefacenet_insightface"
    out = tmp_path / f"m.{fmt}"
    r = _cli("convert", mfn / "mxnet2caffe_mobilefacenet.caffemodel", "-p", mfn / "mxnet2caffe_mobilefacenet.prototxt",
             "--optimize", "--format", fmt, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "optimized: 100 layers folded into 50" in r.stderr and out.is_file()
    if fmt == "caffemodel":
        again = caffe_files.read_caffemodel(out)
        assert not [l for l in again.net.layer if l.type in ("BatchNorm", "Scale")]
    else:
        assert "checked against the eager net" in r.stdout


@pytest.mark.parametrize("weights, proto", [
    ("mtcnn/det1.caffemodel", "mtcnn/det1.prototxt"),
    ("mtcnn/det4.caffemodel", "mtcnn/det4.prototxt"),
    ("ultraface/slim-320.caffemodel", "ultraface/slim-320.prototxt"),
    ("lenet/lenet_iter_10000.caffemodel", "lenet/lenet.prototxt"),
])
def test_every_fixture_models_optimized_onnx_export_passes_its_check(tmp_path, weights, proto):
    r = _cli("convert", FIX / weights, "-p", FIX / proto, "--optimize", "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("optimized: ") and "checked against the eager net: ONNX" in r.stdout


def test_the_runners_dense_convolutions_take_their_weights_reordered_once():
    # Runner's own optimized net (what --backend torch and eval's eager path run) of dense convolutions: each one,
    # the first layer's of 3 channels too, runs oneDNN's convolution on a weight reordered once; the same values as the
    # plain net at batches below and above the NHWC switch, a changed weight reordered again, and never kept in
    # a copy or an export
    import copy
    from sfport.runtime.backend import Runner
    conv = lambda n: f"convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 }}"   # noqa: E731
    body = (layer("c1", "Convolution", ["data"], ["c1"], conv(32)) + layer("r1", "PReLU", ["c1"], ["c1"])
            + layer("c2", "Convolution", ["c1"], ["c2"], conv(32)) + layer("r2", "PReLU", ["c2"], ["c2"])
            + layer("c3", "Convolution", ["c2"], ["c3"], conv(32)) + layer("sum", "Eltwise", ["c1", "c3"], ["s"]))
    m = _net(body, (1, 3, 12, 10))
    plain = Net(m)
    runner = Runner(Net(m), ["s"], backend="torch")
    mods = {gl.name: runner.net.module.module_of(gl.name) for gl in runner.net.graph.layers}
    assert [k for k, v in mods.items() if getattr(v, "prepacked", False)] == ["c1", "c2", "c3"]
    for n in (1, 4, 16, 20):
        x = np.random.default_rng(n).uniform(-1, 1, (n, 3, 12, 10)).astype(np.float32)
        want = plain.forward(data=x)["s"].detach().numpy()
        np.testing.assert_allclose(runner(x)["s"], want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))
    assert mods["c2"]._packed is not None
    with torch.no_grad():   # a changed weight (a torch op: its version moves) is reordered again
        for net in (plain, runner.net):
            net.module.module_of("c3").weight.mul_(-2)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 3, 12, 10)).astype(np.float32)
    want = plain.forward(data=x)["s"].detach().numpy()
    np.testing.assert_allclose(runner(x)["s"], want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))
    assert "_packed" not in copy.deepcopy(mods["c2"]).__dict__
    from sfport.runtime import export
    data, worst = export.onnx_bytes(runner.net)   # the export form takes F.conv2d, checked against the net
    assert worst <= 1e-5


def test_a_net_with_grouped_convolutions_is_not_prepacked():
    from sfport.runtime.backend import Runner, prepack_convolutions
    body = (layer("c1", "Convolution", ["data"], ["c1"], "convolution_param { num_output: 32 kernel_size: 3 }")
            + layer("dw", "Convolution", ["c1"], ["dw"], "convolution_param { num_output: 32 kernel_size: 3 group: 32 }")
            + layer("c2", "Convolution", ["dw"], ["c2"], "convolution_param { num_output: 32 kernel_size: 1 }"))
    runner = Runner(Net(_net(body, (1, 3, 12, 10))), ["c2"], backend="torch")
    assert prepack_convolutions(runner.net) == 0
    assert not any(getattr(m, "prepacked", False) for m in runner.net.module.modules())
