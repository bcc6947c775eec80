"""Small one-layer nets (prototxt bodies after an Input 'data' of the given shape) for the converter tests, and
one layer built straight from its converter with its autograd gradient."""
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.protos import caffe_pb2


def one_layer(type_, extra="", bottoms=((2, 3, 4, 5),), ntop=1, name="t"):
    """(converter, LayerParameter, module) of one layer with bottoms of these shapes."""
    lay = text_format.Parse(extra, caffe_pb2.LayerParameter(name=name, type=type_))
    lay.bottom.extend(f"b{j}" for j in range(len(bottoms)))
    lay.top.extend(f"t{j}" for j in range(ntop))
    c = converters.get(type_)
    return c, lay, c.build(lay, [tuple(b) for b in bottoms])


def input_grad(mod, xs, top_diff, wrt=0, k=0):
    """d(sum(top_k * top_diff))/d(xs[wrt]) by autograd, in float64 (``k``: the top of a layer with several)."""
    xs = [torch.tensor(x, dtype=torch.float64) for x in xs]
    xs[wrt].requires_grad_(True)
    y = mod(*xs)
    y = y[k] if isinstance(y, tuple) else y
    return torch.autograd.grad(y, xs[wrt], torch.tensor(top_diff, dtype=torch.float64))[0].numpy()


def layer(name, type_, bottoms, tops, extra=""):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {extra} }}'


TANH = layer("a", "TanH", ["data"], ["a"])

# Cases where OpenCV 4's Caffe importer implements the layer as Caffe does: compared blob by blob.
OPENCV_CASES = {
    "conv_hw_group": ((2, 6, 11, 9), layer("t", "Convolution", ["data"], ["t"], "convolution_param { num_output: 8 "
                      "kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 group: 2 }")),
    "conv_dilation_nobias": ((2, 4, 11, 9), layer("t", "Convolution", ["data"], ["t"], "convolution_param { "
                             "num_output: 5 kernel_size: 3 pad: 2 dilation: 2 bias_term: false }")),
    "deconv_group": ((2, 4, 5, 6), layer("t", "Deconvolution", ["data"], ["t"], "convolution_param { num_output: 6 "
                     "kernel_size: 4 stride: 2 pad: 1 group: 2 }")),
    "elu": ((2, 3, 5, 4), layer("t", "ELU", ["data"], ["t"], "elu_param { alpha: 0.7 }")),
    "lrn_within": ((2, 3, 6, 5), layer("t", "LRN", ["data"], ["t"], "lrn_param { local_size: 3 alpha: 0.3 "
                   "beta: 0.75 norm_region: WITHIN_CHANNEL }")),
    "lrn_across_k1": ((2, 7, 5, 4), layer("t", "LRN", ["data"], ["t"], "lrn_param { local_size: 5 alpha: 0.3 "
                      "beta: 0.75 }")),
    "pool_ave_pad": ((2, 3, 10, 9), layer("t", "Pooling", ["data"], ["t"], "pooling_param { pool: AVE kernel_size: 3 "
                     "stride: 2 pad: 1 }")),
    "pool_max_pad": ((2, 3, 10, 9), layer("t", "Pooling", ["data"], ["t"], "pooling_param { pool: MAX kernel_size: 3 "
                     "stride: 2 pad: 1 }")),
    "pool_ave_hw": ((1, 2, 7, 12), layer("t", "Pooling", ["data"], ["t"], "pooling_param { pool: AVE kernel_h: 3 "
                    "kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 }")),
    "pool_global_ave": ((2, 3, 5, 7), layer("t", "Pooling", ["data"], ["t"], "pooling_param { pool: AVE "
                        "global_pooling: true }")),
    "pool_global_max": ((2, 3, 5, 7), layer("t", "Pooling", ["data"], ["t"], "pooling_param { pool: MAX "
                        "global_pooling: true }")),
    "tanh": ((2, 3, 4, 4), layer("t", "TanH", ["data"], ["t"])),
    "sigmoid": ((2, 3, 4, 4), layer("t", "Sigmoid", ["data"], ["t"])),
    "absval": ((2, 3, 4, 4), layer("t", "AbsVal", ["data"], ["t"])),
    "power": ((2, 3, 4, 4), layer("t", "Power", ["data"], ["t"], "power_param { power: 2 scale: 0.5 shift: 1 }")),
    "bnll": ((2, 3, 4, 4), layer("t", "BNLL", ["data"], ["t"])),
    "exp": ((2, 3, 4, 4), layer("t", "Exp", ["data"], ["t"], "exp_param { base: 2 scale: 0.5 shift: 0.1 }")),
    "dropout": ((2, 3, 4, 4), layer("t", "Dropout", ["data"], ["t"])),
    "relu_slope": ((2, 3, 4, 4), layer("t", "ReLU", ["data"], ["t"], "relu_param { negative_slope: 0.1 }")),
    "prelu": ((2, 3, 4, 4), layer("t", "PReLU", ["data"], ["t"])),
    "eltwise_sum_coeff": ((2, 3, 4, 4), TANH + layer("t", "Eltwise", ["data", "a"], ["t"],
                          "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }")),
    "eltwise_prod": ((2, 3, 4, 4), TANH + layer("t", "Eltwise", ["data", "a"], ["t"],
                     "eltwise_param { operation: PROD }")),
    "eltwise_max": ((2, 3, 4, 4), TANH + layer("t", "Eltwise", ["data", "a"], ["t"], "eltwise_param { operation: 2 }")),
    "batchnorm_scale": ((2, 3, 4, 4), layer("b", "BatchNorm", ["data"], ["b"]) + layer(
        "t", "Scale", ["b"], ["t"], "scale_param { bias_term: true }")),
    "mvn": ((2, 3, 4, 4), layer("t", "MVN", ["data"], ["t"])),
    "mvn_across": ((2, 3, 4, 4), layer("t", "MVN", ["data"], ["t"], "mvn_param { across_channels: true }")),
    "concat_axis2": ((2, 3, 4, 4), TANH + layer("t", "Concat", ["data", "a"], ["t"], "concat_param { axis: 2 }")),
    "crop": ((2, 3, 9, 8), layer("p", "Pooling", ["data"], ["p"], "pooling_param { pool: MAX kernel_size: 2 "
             "stride: 2 }") + layer("t", "Crop", ["data", "p"], ["t"], "crop_param { axis: 2 offset: 1 offset: 2 }")),
    "permute": ((2, 3, 4, 5), layer("t", "Permute", ["data"], ["t"], "permute_param { order: 0 order: 2 order: 3 "
                "order: 1 }")),
    "flatten": ((2, 3, 4, 5), layer("t", "Flatten", ["data"], ["t"], "flatten_param { axis: 1 end_axis: 2 }")),
    "reshape": ((2, 3, 4, 5), layer("t", "Reshape", ["data"], ["t"], "reshape_param { shape { dim: 0 dim: -1 "
                "dim: 5 } }")),
    "softmax_axis2": ((2, 3, 4, 5), layer("t", "Softmax", ["data"], ["t"], "softmax_param { axis: 2 }")),
    "ip_axis2": ((2, 3, 4, 5), layer("t", "InnerProduct", ["data"], ["t"], "inner_product_param { num_output: 7 "
                 "axis: 2 }")),
    "normalize": ((2, 3, 4, 5), layer("t", "Normalize", ["data"], ["t"], "norm_param { across_spatial: false "
                  "channel_shared: false }")),
    "normalize_across": ((2, 3, 4, 5), layer("t", "Normalize", ["data"], ["t"], "norm_param { across_spatial: true "
                         "channel_shared: true }")),
    "inplace_chain": ((2, 3, 4, 4), layer("c", "Convolution", ["data"], ["c"], "convolution_param { num_output: 4 "
                      "kernel_size: 1 }") + layer("r", "ReLU", ["c"], ["c"]) + layer(
        "s", "Scale", ["c"], ["c"], "scale_param { bias_term: true }")),
}


def prototxt(shape, body, name="case"):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
            f"{body}\n")
