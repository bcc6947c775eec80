"""Exports at any size: TorchScript and ONNX made once, at the net's own size, run at other sizes and give what the
eager net built at each of those sizes (from the same files) gives; nets that only run at their size are exported
at it and say so; an export that would crop or bake a size is refused. Pooling, the layer whose output size Caffe
rounds its own way, is checked at odd sizes against Caffe's loops written out in numpy (pooling_layer.cpp)."""
import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sfport.formats import caffe_files
from sfport.runtime import export, verify
from sfport.netdef import weight_match
from sfport.converters import pooling
from sfport.runtime.net import Net
from sfport.runtime.verify import relative_error

from netcases import layer, prototxt

TOL = 1e-5


def _ort(data_or_path):
    src = str(data_or_path) if not isinstance(data_or_path, bytes) else data_or_path
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def _eager(net, x):
    with torch.no_grad():
        return [t.numpy() for t in net.exportable().eval()(torch.from_numpy(x))]


def _worst(got, want):
    assert [np.shape(g) for g in got] == [np.shape(w) for w in want]
    return max(relative_error(np.asarray(g), w) for g, w in zip(got, want))


# ---- MTCNN P-Net: fully convolutional, ceil-mode max pooling ---------------------------------------------------

def test_pnet_exported_once_runs_at_any_size_as_eager(shared, tmp_path):
    """det1 built at 12x12, exported once to ONNX and once to TorchScript (traced at 12x12), run at 12x12, 97x131
    and 250x250 (batch 1 and 2): each output equals that of the eager net built at that size."""
    p, c = shared / "fixtures/mtcnn/det1.prototxt", shared / "fixtures/mtcnn/det1.caffemodel"
    net = Net(str(p), str(c))
    assert net.inputs == {"data": (1, 3, 12, 12)}
    on, ts = tmp_path / "det1.onnx", tmp_path / "det1.torchscript.pt"
    r_onnx = export.save(net, on, "onnx")
    r_ts = export.save(net, ts, "torchscript")
    for r in (r_onnx, r_ts):
        assert r.dynamic_size and r.static_reason is None and r.worst <= TOL
        assert [label for label, _ in r.checked][:2] == ["1x3x12x12", "2x3x12x12"]  # and a second size
        assert len(r.checked) == 3
    assert r_ts.method == "traced at 1x3x12x12"
    assert r_onnx.axes["data"] == {0: "batch", 2: "data_height", 3: "data_width"}
    dims = onnx.load(on).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "data_height", "data_width"] and dims[1].dim_value == 3

    sess, loaded = _ort(on), torch.jit.load(str(ts))
    assert [o.name for o in sess.get_outputs()] == net.outputs == ["conv4-2", "prob1"]
    errors = {}
    for n, h, w in [(1, 12, 12), (1, 97, 131), (2, 250, 250)]:
        ref_net = Net(str(p), str(c), input_shapes=(n, 3, h, w))  # the independent reference at this size
        x = verify.make_input((n, 3, h, w), "random", seed=h)
        want = _eager(ref_net, x)
        assert want[0].shape == (n, 4, math.ceil((h - 2 - 2) / 2) - 4 + 1, math.ceil((w - 2 - 2) / 2) - 4 + 1)
        got_onnx = sess.run(net.outputs, {"data": x})
        with torch.no_grad():
            got_ts = [t.numpy() for t in loaded(torch.from_numpy(x))]
        errors[(n, h, w)] = (_worst(got_onnx, want), _worst(got_ts, want))
        assert max(errors[(n, h, w)]) <= TOL, errors
    print("P-Net relative error (ONNX, TorchScript) by input size:", errors)


def test_a_trace_that_bakes_the_size_is_refused(shared, monkeypatch):
    """Pooling that reads its output size into Python numbers (as before this module was shape-polymorphic):
    eager is unchanged, but a trace keeps the 12x12 crop; both exports refuse, with one line naming the size."""
    orig = pooling.MaxPool.forward

    def baked(self, x):
        y = orig(self, x)
        return y[..., :int(y.shape[-2]), :int(y.shape[-1])]

    monkeypatch.setattr(pooling.MaxPool, "forward", baked)
    net = Net(str(shared / "fixtures/mtcnn/det1.prototxt"), str(shared / "fixtures/mtcnn/det1.caffemodel"))
    for fn, name in ((export.torchscript_export, "TorchScript (traced at 1x3x12x12) at 2x3x21x21"),
                     (export.onnx_export, "ONNX at 2x3x21x21")):
        with pytest.raises(export.ExportMismatch) as e:
            fn(net)
        assert str(e.value).startswith(name) and "\n" not in str(e.value), str(e.value)
    assert export.torchscript_export(net, dynamic=False)[1].static_reason == "fixed by request"


# ---- nets that only run at their size -------------------------------------------------------------------------

@pytest.mark.parametrize("prototxt_,caffemodel,shape,ip", [
    ("mtcnn/det2.prototxt", "mtcnn/det2.caffemodel", (1, 3, 24, 24), "conv4"),
    ("lenet/lenet.prototxt", "lenet/lenet_iter_10000.caffemodel", (64, 1, 28, 28), "ip1")])
def test_size_specific_net_exports_static_and_says_so(shared, tmp_path, prototxt_, caffemodel, shape, ip):
    p, c = shared / "fixtures" / prototxt_, shared / "fixtures" / caffemodel
    net = Net(str(p), str(c))
    assert tuple(net.inputs["data"]) == shape
    with pytest.raises(Exception):  # the reason: an InnerProduct over the spatial axes fits one size only
        Net(str(p), str(c), input_shapes=shape[:2] + (shape[2] + 8, shape[3] + 8))
    path = tmp_path / "static.onnx"
    r = export.save(net, path, "onnx")
    assert not r.dynamic_size and f"layer '{ip}' (InnerProduct)" in r.static_reason
    assert r.static_reason in r.summary() and "height and width fixed" in r.summary()
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == list(shape[1:])
    x = verify.make_input((2,) + shape[1:], "random", seed=4)
    assert _worst(_ort(path).run(net.outputs, {"data": x}), _eager(net, x)) <= TOL
    data, r = export.torchscript_export(net)
    assert not r.dynamic_size and f"layer '{ip}' (InnerProduct)" in r.static_reason
    assert r.method == f"traced at {'x'.join(map(str, shape))}"
    with pytest.raises(export.ExportMismatch, match="not size-polymorphic"):
        export.onnx_export(net, dynamic=True)


# ---- BatchNorm after ceil-mode pooling; --opset ---------------------------------------------------------------

def _bn_net(tmp_path, pool, shape=(1, 3, 13, 15), name="bnpool"):
    """Input -> Convolution -> Pooling -> BatchNorm -> Scale with random weights; (net, prototxt, caffemodel)."""
    body = (layer("conv", "Convolution", ["data"], ["conv"], "convolution_param { num_output: 4 kernel_size: 3 }")
            + layer("pool", "Pooling", ["conv"], ["pool"], f"pooling_param {{ {pool} }}")
            + layer("bn", "BatchNorm", ["pool"], ["bn"])
            + layer("sc", "Scale", ["bn"], ["sc"], "scale_param { bias_term: true }"))
    p, w = tmp_path / f"{name}.prototxt", tmp_path / f"{name}.caffemodel"
    p.write_text(prototxt(shape, body, name))
    caffe_files.write_caffemodel(w, weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=7))
    return Net(str(p), str(w)), p, w


@pytest.mark.parametrize("pool", ["pool: MAX kernel_size: 3 stride: 2",           # PyTorch's ceil mode
                                  "pool: AVE kernel_size: 3 stride: 2 pad: 2"])   # pad > kernel/2: explicit
def test_batchnorm_after_ceil_pooling_exports_to_onnx(tmp_path, pool):
    """Once 'Unsupported: ONNX export of batch_norm for unknown channel size' (the pooled blob's channels were
    lost to a dynamic slice or product); now exported with dynamic H, W and equal to eager at other sizes."""
    net, p, w = _bn_net(tmp_path, pool)
    data, r = export.onnx_export(net)
    assert r.dynamic_size and r.worst <= TOL
    assert "BatchNormalization" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    sess = _ort(data)
    for h, wd in [(13, 15), (31, 26), (8, 9)]:
        x = verify.make_input((2, 3, h, wd), "random", seed=h)
        err = _worst(sess.run(net.outputs, {"data": x}), _eager(Net(str(p), str(w), input_shapes=(2, 3, h, wd)), x))
        assert err <= TOL, (h, wd, err)


def test_opset_reaches_the_model(tmp_path):
    net, _, _ = _bn_net(tmp_path, "pool: MAX kernel_size: 2 stride: 2")
    for opset in (13, 17):
        path = tmp_path / f"op{opset}.onnx"
        worst = export.write(net, path, "onnx", 1e-5, opset=opset)  # write keeps returning the error
        assert isinstance(worst, float) and worst <= TOL
        m = onnx.load(path)
        assert {o.domain: o.version for o in m.opset_import}[""] == opset
    assert export.save(net, tmp_path / "d.onnx", "onnx").opset == export.ONNX_OPSET == 18
    assert {o.domain: o.version for o in onnx.load(tmp_path / "d.onnx").opset_import}[""] == 18


# ---- pooling at odd sizes against Caffe's loops ---------------------------------------------------------------

def caffe_pool(x, kernel, stride, pad, ave, ceil=True):
    """PoolingLayer::Reshape and Forward_cpu (pooling_layer.cpp), in float64: ceil (or floor) rounding; if either
    pad is nonzero, a last window starting past the input dropped on both axes; MAX over the window clipped to
    the input; AVE summing it and dividing by the window clipped to [-pad, H + pad)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, height, width = x.shape
    rnd = math.ceil if ceil else math.floor
    oh = int(rnd((height + 2 * ph - kh) / sh)) + 1
    ow = int(rnd((width + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (oh - 1) * sh >= height + ph:
            oh -= 1
        if (ow - 1) * sw >= width + pw:
            ow -= 1
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hstart, wstart = i * sh - ph, j * sw - pw
            hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
            pool_size = (hend - hstart) * (wend - wstart)
            hstart, wstart, hend, wend = max(hstart, 0), max(wstart, 0), min(hend, height), min(wend, width)
            window = x[:, :, hstart:hend, wstart:wend]
            assert window.size, "a case with a window outside the input"  # Caffe gives -FLT_MAX or 0/0 there
            y[:, :, i, j] = window.sum(axis=(2, 3)) / pool_size if ave else window.max(axis=(2, 3))
    return y


POOLS = {  # pooling_param: (kernel, stride, pad, ceil)
    "pool: MAX kernel_size: 3 stride: 2": ((3, 3), (2, 2), (0, 0), True),
    "pool: AVE kernel_size: 3 stride: 2": ((3, 3), (2, 2), (0, 0), True),
    "pool: MAX kernel_size: 3 stride: 2 pad: 1": ((3, 3), (2, 2), (1, 1), True),
    "pool: AVE kernel_size: 3 stride: 2 pad: 1": ((3, 3), (2, 2), (1, 1), True),
    "pool: MAX kernel_size: 2 stride: 2 pad: 1": ((2, 2), (2, 2), (1, 1), True),   # last window dropped at odd H
    "pool: AVE kernel_size: 2 stride: 2 pad: 1": ((2, 2), (2, 2), (1, 1), True),
    "pool: AVE kernel_size: 3 stride: 2 pad: 2": ((3, 3), (2, 2), (2, 2), True),   # pad > kernel/2
    "pool: MAX kernel_size: 4 stride: 2 pad: 3": ((4, 4), (2, 2), (3, 3), True),
    "pool: AVE kernel_size: 4 stride: 3 pad: 3": ((4, 4), (3, 3), (3, 3), True),
    "pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_w: 1": ((2, 3), (3, 2), (0, 1), True),
    "pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_w: 1": ((2, 3), (3, 2), (0, 1), True),
    "pool: MAX kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR": ((3, 3), (2, 2), (1, 1), False),
    "pool: AVE kernel_size: 3 stride: 2 pad: 2 round_mode: FLOOR": ((3, 3), (2, 2), (2, 2), False),
}
SIZES = [(9, 11), (7, 8), (12, 5), (16, 13)]


@pytest.mark.parametrize("param", sorted(POOLS))
def test_pooling_at_odd_sizes_matches_caffe_loops_eager_and_traced(param, tmp_path):
    """Eager at each size, and TorchScript and ONNX traced at 9x11 and run at every size, against the loops."""
    kernel, stride, pad, ceil = POOLS[param]
    ave = param.startswith("pool: AVE")
    p = tmp_path / "pool.prototxt"
    p.write_text(prototxt((1, 2) + SIZES[0], layer("t", "Pooling", ["data"], ["t"], f"pooling_param {{ {param} }}")))
    net = Net(str(p))
    ts_bytes, r_ts = export.torchscript_export(net)
    onnx_bytes, r_onnx = export.onnx_export(net)
    assert r_ts.dynamic_size and r_onnx.dynamic_size
    loaded, sess = torch.jit.load(io.BytesIO(ts_bytes)), _ort(onnx_bytes)
    for h, w in SIZES:
        x = verify.make_input((2, 2, h, w), "random", seed=h * w)
        ref = caffe_pool(x.astype(np.float64), kernel, stride, pad, ave, ceil)
        eager = _eager(Net(str(p), input_shapes=(2, 2, h, w)), x)[0]
        assert eager.shape == ref.shape and relative_error(eager, ref) <= 1e-6, (h, w)
        with torch.no_grad():
            traced = loaded(torch.from_numpy(x))[0].numpy()
        for got in (traced, sess.run(None, {"data": x})[0]):
            assert got.shape == ref.shape and relative_error(got, ref) <= TOL, (h, w)


def test_pooling_shape_inference_is_caffes():
    """PoolingLayer::Reshape: with pad_w alone, the last window of the height axis is dropped too."""
    assert pooling.pooled_size(9, 9, (2, 3), (3, 2), (0, 1)) == (3, 5)     # not 4: it would start at row 9
    assert pooling.pooled_size(9, 9, (2, 3), (3, 2), (0, 0)) == (4, 4)     # no pad: kept, as in Caffe
    assert pooling.pooled_size(5, 5, (2, 2), (2, 2), (1, 1)) == (3, 3)     # ceil(5/2)+1 = 4, last starts at 5
    assert pooling.pooled_size(7, 7, (3, 3), (2, 2), (1, 1), ceil=False) == (4, 4)


def test_an_input_that_is_also_an_output_keeps_its_name(tmp_path):
    """A data layer's top nothing reads is one of Caffe's net outputs: the ONNX file takes it as the input named
    'label' and gives it back as the output 'label' (torch.onnx alone renames the input to 'label.1', which no
    caller feeds), and the check on onnxruntime runs."""
    path = tmp_path / "lbl.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 1 dim: 3 '
                    'dim: 8 dim: 8 } shape { dim: 1 } } }\nlayer { name: "conv" type: "Convolution" bottom: "data" '
                    'top: "conv" convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } } }\n')
    net = Net(str(path), weights=None)
    data, result = export.onnx_export(net)
    assert result.worst <= 1e-5
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data", "label"]
    x, label = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32), np.array([3, 5], np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x, "label": label})))
    assert np.array_equal(got["label"], label)
    want = net.forward(data=torch.from_numpy(x), label=torch.from_numpy(label))["conv"].numpy()
    assert np.abs(got["conv"] - want).max() <= 1e-5
