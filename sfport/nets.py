"""SphereFace network definitions built in code (SPEC.md section 7), so sfport has a default net to work on.

``sphereface_deploy(20)`` is layer for layer the authors' ``sphereface_deploy.prototxt`` after Caffe's upgrade of
its deploy header (an ``Input`` layer named ``input``): four stages of 64/128/256/512 channels, each a 3x3
stride-2 conv (xavier, bias lr_mult 2 decay_mult 0) + PReLU followed by residual units of two 3x3 convs
(gaussian 0.01, bias frozen: lr_mult 0 decay_mult 0) + PReLU joined by an Eltwise SUM, then fc5.
"""
from __future__ import annotations

from sfport.protos import caffe_pb2

UNITS = {4: (0, 0, 0, 0), 10: (0, 1, 2, 0), 20: (1, 2, 4, 1), 36: (2, 4, 8, 2), 64: (3, 7, 16, 3)}
CHANNELS = (64, 128, 256, 512)


def _conv(net, name, bottom, num_output, stride, first: bool):
    layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
    layer.param.add(lr_mult=1, decay_mult=1)
    layer.param.add(lr_mult=2 if first else 0, decay_mult=0)
    p = layer.convolution_param
    p.num_output = num_output
    p.kernel_size.append(3)
    p.stride.append(stride)
    p.pad.append(1)
    if first:
        p.weight_filler.type = "xavier"
    else:
        p.weight_filler.type = "gaussian"
        p.weight_filler.std = 0.01
    p.bias_filler.type = "constant"
    p.bias_filler.value = 0
    relu = net.layer.add(name="relu" + name[len("conv"):], type="PReLU", bottom=[name], top=[name])
    return relu


def sphereface_deploy(depth: int = 20, height: int = 112, width: int = 96, feature_dim: int = 512):
    """The SphereFace-``depth`` deploy net (depth 4, 10, 20, 36 or 64) as a NetParameter."""
    if depth not in UNITS:
        raise ValueError(f"SphereFace depth must be one of {sorted(UNITS)}, not {depth}")
    net = caffe_pb2.NetParameter(name=f"SpherefaceNet-{depth}")
    inp = net.layer.add(name="input", type="Input", top=["data"])
    inp.input_param.shape.add(dim=[1, 3, height, width])
    bottom = "data"
    for stage, (units, channels) in enumerate(zip(UNITS[depth], CHANNELS), start=1):
        first = f"conv{stage}_1"
        _conv(net, first, bottom, channels, 2, True)
        bottom = first
        for u in range(units):
            a, b = f"conv{stage}_{2 * u + 2}", f"conv{stage}_{2 * u + 3}"
            _conv(net, a, bottom, channels, 1, False)
            _conv(net, b, a, channels, 1, False)
            res = net.layer.add(name=f"res{stage}_{2 * u + 3}", type="Eltwise", bottom=[bottom, b],
                                top=[f"res{stage}_{2 * u + 3}"])
            res.eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
            bottom = res.top[0]
    fc5 = net.layer.add(name="fc5", type="InnerProduct", bottom=[bottom], top=["fc5"])
    fc5.param.add(lr_mult=1, decay_mult=1)
    fc5.param.add(lr_mult=2, decay_mult=0)
    fc5.inner_product_param.num_output = feature_dim
    fc5.inner_product_param.weight_filler.type = "xavier"
    fc5.inner_product_param.bias_filler.type = "constant"
    fc5.inner_product_param.bias_filler.value = 0
    return net
