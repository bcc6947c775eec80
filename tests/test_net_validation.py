"""Issue 14: one validation pass over a net definition (Caffe's CHECKs of Net::Init, InsertSplits, LayerSetUp and
Reshape, in exact integers) before anything is allocated, used by every command; weights checked with
Blob::ShapeEquals before the net's blobs exist. Each case: one line naming the file and the layer, exit 2, and
nothing written."""
import math

import numpy as np
import pytest
import torch

from badinput import assert_bad_input, files_under, run
from conftest import FIXTURES
from sfport.formats import caffe_files
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net

HEAD = ('name: "t"\nlayer { name: "data" type: "Input" top: "data" '
        'input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }\n')


def conv(extra, name="c", bottom="data", top=None):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" '
            f'convolution_param {{ {extra} }} }}\n')


CASES = {
    # (definition after HEAD, layer named, what the line says)
    "kernel_0": (conv("num_output: 4 kernel_size: 0"), "layer 'c' (Convolution)", "kernel [0, 0] must be nonzero"),
    "num_output_0": (conv("num_output: 0 kernel_size: 3"), "layer 'c' (Convolution)", "num_output must be positive"),
    "ip_num_output_0": ('layer { name: "f" type: "InnerProduct" bottom: "data" top: "f" '
                        'inner_product_param { num_output: 0 } }\n', "layer 'f' (InnerProduct)",
                        "parameter blob 0 would have the shape [0, 432]"),
    "dilation_0": (conv("num_output: 4 kernel_size: 3 dilation: 0"), "layer 'c'", "dilation [0, 0] must be nonzero"),
    "stride_0": (conv("num_output: 4 kernel_size: 3 stride: 0"), "layer 'c'", "stride [0, 0] must be nonzero"),
    "group": (conv("num_output: 4 kernel_size: 3 group: 2"), "layer 'c'", "group 2 must divide"),
    "kernel_per_axis": (conv("num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3"), "layer 'c'",
                        "kernel_size must be specified once, or once per spatial dimension"),
    "kernel_past_input": (conv("num_output: 4 kernel_size: 15"), "layer 'c'",
                          "top 'c' would have the shape [1, 4, -2, -2]"),
    "pool_kernel_huge": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                         'pooling_param { pool: MAX kernel_size: 2147483647 } }\n', "layer 'p' (Pooling)",
                         "negative dimension in blob shape"),
    "pool_stride_0": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                      'pooling_param { pool: MAX kernel_size: 2 stride: 0 } }\n', "layer 'p'",
                      "stride [0, 0] must be nonzero"),
    "top_twice": ('layer { name: "r" type: "ReLU" bottom: "data" top: "a" top: "a" }\n', "layer 'r' (ReLU)",
                  "top blob 'a' is listed twice"),
    "multiple_sources": ('layer { name: "a" type: "TanH" bottom: "data" top: "a" }\n'
                         'layer { name: "b" type: "Sigmoid" bottom: "data" top: "a" }\n', "layer 'b' (Sigmoid)",
                         "top blob 'a' is produced by multiple sources"),
    "in_place_on_shared": ('layer { name: "a" type: "TanH" bottom: "data" top: "a" }\n'
                           'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n', "layer 'r' (ReLU)",
                           "works in place on 'data', which 1 other bottom(s) also read"),
    "in_place_at_other_index": ('layer { name: "s" type: "Slice" bottom: "data" top: "x" top: "data" '
                                'slice_param { axis: 1 slice_point: 1 } }\n', "layer 's' (Slice)",
                                "top blob 'data' is produced by multiple sources"),
    "missing_bottom": ('layer { name: "a" type: "TanH" bottom: "nothing" top: "a" }\n', "layer 'a' (TanH)",
                       "unknown bottom blob 'nothing' (bottom index 0)"),
    "unknown_type": ('layer { name: "a" type: "NoSuchType" bottom: "data" top: "a" }\n', "layer 'a'",
                     "has type 'NoSuchType', which sfport has no converter for"),
    "eltwise_prod_coeff": ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" '
                           'eltwise_param { operation: PROD coeff: 1 coeff: 2 } }\n', "layer 'e' (Eltwise)",
                           "only takes coefficients for summation"),
    "eltwise_shapes": (conv("num_output: 4 kernel_size: 1") +
                       'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "c" top: "e" }\n',
                       "layer 'e' (Eltwise)", "bottom 'c' [1, 4, 12, 12] must have the shape of 'data'"),
    "data_as_label": ('layer { name: "f" type: "InnerProduct" bottom: "data" top: "f" '
                      'inner_product_param { num_output: 10 } }\n'
                      'layer { name: "l" type: "SoftmaxWithLoss" bottom: "f" bottom: "data" top: "l" }\n',
                      "layer 'l' (SoftmaxWithLoss)", "number of labels must match number of predictions"),
    "count_over_int_max": ('layer { name: "f" type: "InnerProduct" bottom: "data" top: "f" '
                           'inner_product_param { num_output: 2000000000 } }\n', "layer 'f'",
                           "864,000,000,000 elements: blob size exceeds INT_MAX"),
    "axis_out_of_range": ('layer { name: "s" type: "Softmax" bottom: "data" top: "s" softmax_param { axis: 7 } }\n',
                          "layer 's' (Softmax)", "axis 7 is out of range for a 4-D bottom"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inspect_refuses_what_caffe_refuses(case, tmp_path):
    body, layer, what = CASES[case]
    p = tmp_path / f"{case}.prototxt"
    p.write_text(HEAD + body)
    line = assert_bad_input(run("inspect", p), p, what)
    assert layer in line


@pytest.mark.parametrize("case", ["kernel_0", "top_twice", "in_place_on_shared", "kernel_past_input"])
def test_convert_refuses_and_writes_nothing(case, tmp_path):
    body, layer, what = CASES[case]
    p = tmp_path / "d.prototxt"
    p.write_text(HEAD + body)
    out = tmp_path / "out"
    out.mkdir()
    assert_bad_input(run("convert", FIXTURES / "mtcnn/det1.caffemodel", "-p", p, "-o", out / "n.pt"), p, what)
    assert files_under(out) == set()


def test_negative_input_dim(tmp_path):
    p = tmp_path / "neg.prototxt"
    p.write_text('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: -12\ninput_dim: 12\n'
                 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    assert_bad_input(run("inspect", p), p, "top 'data' would have the shape [1, 3, -12, 12]")
    assert_bad_input(run("convert", p, "-o", tmp_path / "x.pt"), p, "negative dimension")
    assert not (tmp_path / "x.pt").exists()


def test_shape_option_with_a_kernel_larger_than_the_input(tmp_path):
    """`convert --shape 1,3,4,4` on det1 (conv2 needs 3x3 of a 1x1 map): one line, no .pt written."""
    out = tmp_path / "det1.pt"
    line = assert_bad_input(run("convert", FIXTURES / "mtcnn/det1.caffemodel", "-p", FIXTURES / "mtcnn/det1.prototxt",
                                "--shape", "1,3,4,4", "-o", out), "det1.prototxt", "layer 'conv2' (Convolution)")
    assert "[1, 16, -1, -1]" in line and not out.exists()


def test_bad_shape_option_is_one_line():
    r = run("inspect", "--shape", "1,3,-4,4")
    assert_bad_input(r, "1,3,-4,4", "is not a list of positive sizes")


# ---- exact Caffe arithmetic where Caffe accepts the net ------------------------------------------------------

def _conv_net(tmp_path, extra, size, phase_train=False):
    p = tmp_path / "c.prototxt"
    p.write_text(f'name: "t"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 '
                 f'dim: {size} dim: {size} }} }} }}\n' + conv(f"num_output: 2 {extra} weight_filler {{ type: "
                                                              f'"gaussian" std: 1 }}'))
    return Net(str(p), phase="train" if phase_train else "test", seed=0)


def _caffe_conv(x, w, b, stride, pad, kernel):
    """ConvolutionLayer's im2col_cpu loops written out: output size (H + 2p - k) / s + 1 in C++ integers (toward
    zero), taps outside the input read 0."""
    h = x.shape[-1]
    num = h + 2 * pad - kernel
    out = int(num / stride) + 1  # C++ truncation
    y = np.zeros((w.shape[0], out, out))
    for o in range(w.shape[0]):
        for i in range(out):
            for j in range(out):
                acc = float(b[o])
                for a in range(kernel):
                    for c in range(kernel):
                        r, q = i * stride - pad + a, j * stride - pad + c
                        if 0 <= r < h and 0 <= q < h:
                            acc += float(w[o, 0, a, c]) * float(x[0, 0, r, q])
                y[o, i, j] = acc
    return y


@pytest.mark.parametrize("extra,size,kernel,stride,pad", [
    ("kernel_size: 3 stride: 2147483647", 5, 3, 2147483647, 0),   # a stride past the only window: 1x1
    ("kernel_size: 5 stride: 2", 4, 5, 2, 0),                     # the window overhangs by 1 < stride: Caffe gives 1
    ("kernel_size: 3 stride: 1000 pad: 1", 7, 3, 1000, 1),
])
def test_conv_output_and_backward_as_caffe(tmp_path, extra, size, kernel, stride, pad):
    net = _conv_net(tmp_path, extra, size, phase_train=True)
    x = np.random.default_rng(0).standard_normal((1, 1, size, size)).astype(np.float32)
    w, b = (p.detach().numpy() for p in net.params["c"])
    ref = _caffe_conv(x, w, b, stride, pad, kernel)
    xt = torch.tensor(x, requires_grad=True)
    y = net.module(data=xt)["c"]
    assert tuple(y.shape) == (1, 2) + ref.shape[1:] == tuple(net.graph.layers[0].top_shapes[0])
    assert np.abs(y.detach().numpy()[0] - ref).max() < 1e-5
    y.sum().backward()   # stride 2^31-1 crashed PyTorch's backward with SIGFPE before
    # d(sum y)/dx: each output position's window of weights, summed over outputs (inside the input)
    gref = np.zeros((size, size))
    for o in range(2):
        for i in range(ref.shape[1]):
            for j in range(ref.shape[2]):
                for a in range(kernel):
                    for c in range(kernel):
                        r, q = i * stride - pad + a, j * stride - pad + c
                        if 0 <= r < size and 0 <= q < size:
                            gref[r, q] += w[o, 0, a, c]
    assert np.abs(xt.grad.numpy()[0, 0] - gref).max() < 1e-5


# ---- weights: Blob::ShapeEquals on every load path, before allocation -------------------------------------

def _det1_with_conv1_blob(tmp_path, shape):
    m = caffe_files.read_caffemodel(FIXTURES / "mtcnn/det1.caffemodel")
    i = next(i for i, l in enumerate(m.net.layer) if l.name == "conv1")
    arrays = m.blob_arrays(i)
    arrays[0] = np.ascontiguousarray(arrays[0]).reshape(shape)
    m.set_blob_arrays(i, arrays)
    out = tmp_path / "w.caffemodel"
    caffe_files.write_caffemodel(out, m)
    return out


def test_weights_of_the_right_count_but_the_wrong_shape(tmp_path):
    """conv1's [10,3,3,3] stored as [10,27,1,1]: Caffe's CopyTrainedLayersFrom refuses; so do convert, inspect
    -p and the library, naming both shapes."""
    w = _det1_with_conv1_blob(tmp_path, (10, 27, 1, 1))
    deploy = FIXTURES / "mtcnn/det1.prototxt"
    what = "layer 'conv1' (Convolution) blob 0: weights have shape [10, 27, 1, 1], the net needs [10, 3, 3, 3]"
    assert_bad_input(run("convert", w, "-p", deploy, "-o", tmp_path / "o.pt"), w, what)
    assert_bad_input(run("inspect", w, "--prototxt", deploy), w, what)
    assert_bad_input(run("convert", w, "-o", tmp_path / "o.pt", "--shape", "data12face=1,3,12,12"), w,
                     "[10, 27, 1, 1]")   # its own stored net
    assert not (tmp_path / "o.pt").exists()
    with pytest.raises(CaffeFileError, match=r"\[10, 27, 1, 1\]"):
        Net(str(deploy), weights=str(w))


def test_transposed_inner_product_weights(tmp_path):
    """InnerProduct with transpose: true stores (K, N); a (N, K) blob does not fit (K != N)."""
    p = tmp_path / "ip.prototxt"
    p.write_text('name: "t"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 6 } } }\n'
                 'layer { name: "f" type: "InnerProduct" bottom: "data" top: "f" inner_product_param { num_output: 4 '
                 'transpose: true } }\n')
    plain = tmp_path / "plain.prototxt"
    plain.write_text(p.read_text().replace("transpose: true ", ""))
    w = tmp_path / "plain.caffemodel"
    Net(str(plain), seed=0).save_caffemodel(w)   # (4, 6)
    assert_bad_input(run("convert", w, "-p", p, "-o", tmp_path / "o.pt"), w, "weights have shape [4, 6], the net "
                                                                             "needs [6, 4]")


def test_weights_that_match_no_layer(tmp_path):
    lenet = FIXTURES / "lenet/lenet.prototxt"
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(lenet.read_text().replace('name: "conv', 'name: "kconv').replace('name: "ip', 'name: "kip'))
    assert_bad_input(run("convert", FIXTURES / "lenet/lenet_iter_10000.caffemodel", "-p", renamed, "-o",
                         tmp_path / "o.pt"), "lenet_iter_10000.caffemodel", "no layer of the weights matches")
    assert not (tmp_path / "o.pt").exists()


def test_a_definition_without_weights_is_not_converted(tmp_path):
    assert_bad_input(run("convert", FIXTURES / "mtcnn/det1.prototxt", "-o", tmp_path / "o.pt"), "det1.prototxt",
                     "has no weights")
    assert not (tmp_path / "o.pt").exists()


def test_weights_are_checked_before_the_net_is_allocated(tmp_path):
    """An InnerProduct of (2^31 - 1) // 432 = 4,971,026 outputs on 432 inputs (a blob just under INT_MAX, 8.6 GB
    of float32) with a weights file holding [10, 432]: the "does not fit" error comes before any allocation."""
    n = (2 ** 31 - 1) // 432
    p = tmp_path / "big.prototxt"
    p.write_text(HEAD + f'layer {{ name: "f" type: "InnerProduct" bottom: "data" top: "f" '
                        f'inner_product_param {{ num_output: {n} }} }}\n')
    small = tmp_path / "small.prototxt"
    small.write_text(p.read_text().replace(str(n), "10"))
    w = tmp_path / "small.caffemodel"
    Net(str(small), seed=0).save_caffemodel(w)
    assert math.prod((n, 432)) * 4 > 8e9
    assert_bad_input(run("convert", w, "-p", p, "-o", tmp_path / "o.pt"), w,
                     f"weights have shape [10, 432], the net needs [{n}, 432]")


def test_unimportable_converter_module(tmp_path, monkeypatch):
    from sfport.converters import base
    monkeypatch.setattr(base, "_PLUGINS_LOADED", False)
    r = run("inspect", FIXTURES / "mtcnn/det1.prototxt", env={"SFPORT_CONVERTERS": "no_such_module_xyz"})
    assert_bad_input(r, "$SFPORT_CONVERTERS", "cannot import the converter module 'no_such_module_xyz'")
    monkeypatch.setattr(base, "_PLUGINS_LOADED", False)


def test_output_checks(tmp_path):
    det1 = FIXTURES / "mtcnn/det1.caffemodel"
    (tmp_path / "afile").write_text("x")
    assert_bad_input(run("convert", det1, "-o", tmp_path), str(tmp_path), "output is a folder")
    assert_bad_input(run("convert", det1, "-o", tmp_path / "afile" / "o.pt"), "afile", "is not a folder")
    assert_bad_input(run("upgrade", det1, tmp_path / "afile" / "o.caffemodel"), "afile", "is not a folder")
    assert_bad_input(run("deploy", FIXTURES / "mtcnn/det1.prototxt", "-o", tmp_path), str(tmp_path),
                     "output is a folder")
    assert files_under(tmp_path) == {"afile"}
