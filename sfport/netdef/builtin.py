"""SphereFace network definitions built in code (the SphereFace paper's 4/10/20/36/64-layer residual nets, as
wy1iu/sphereface's prototxts write them), so sfport has a default net to work on.

``sphereface_deploy(20)`` is layer for layer the authors' ``sphereface_deploy.prototxt`` after Caffe's upgrade of
its deploy header (an ``Input`` layer named ``input``): four stages of 64/128/256/512 channels, each a 3x3
stride-2 conv (xavier, bias lr_mult 2 decay_mult 0) + PReLU followed by residual units of two 3x3 convs
(gaussian 0.01, bias frozen: lr_mult 0 decay_mult 0) + PReLU joined by an Eltwise SUM, then fc5.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sfport.formats.caffe_files import CaffeModel, net_to_text
from sfport.formats.disk import atomic_write
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


# ------------------------------------------------------------------------------------------------------------
# training nets and solvers: the authors' files (wy1iu/sphereface train/code, wy1iu/sphereface-plus), with depth
# and width as parameters
# ------------------------------------------------------------------------------------------------------------

MARGIN_TYPES = {1: "SINGLE", 2: "DOUBLE", 3: "TRIPLE", 4: "QUADRUPLE"}
# SphereFace+ as shipped: m -> (lambda gamma, MarginInnerProduct iteration, InterClass alpha, solver settings)
SFPLUS = {
    1: dict(gamma=0.12, iteration=0, alpha=5.3, base_lr=0.05, lr_gamma=0.2, stepvalue=(7000, 11000),
            max_iter=11000, display=20, name="SpherefacePlusSingle"),
    2: dict(gamma=0.11, iteration=0, alpha=6.0, base_lr=0.1, lr_gamma=0.1, stepvalue=(5000,), max_iter=8000,
            display=50, name="SpherefacePlusDouble"),
    3: dict(gamma=0.11, iteration=0, alpha=2.3, base_lr=0.1, lr_gamma=0.1, stepvalue=(4000, 9000), max_iter=12000,
            display=20, name="SpherefacePlusTriple"),
    4: dict(gamma=0.12, iteration=2000, alpha=10.0, base_lr=0.01, lr_gamma=0.1, stepvalue=(4000, 6000),
            max_iter=8000, display=10, name="SpherefacePlus"),
}


def sphereface_train(depth: int = 20, m: int = 4, num_classes: int = 10572,
                     source: str = "data/CASIA-WebFace-112X96.txt", root_folder: str = "", batch_size: int = 256, lambda_gamma: float = 0.12, iteration: int = 0,
                     interclass_alpha: float | None = None, channels=CHANNELS, feature_dim: int = 512,
                     mirror: bool = True, shuffle: bool = True, name: str | None = None,
                     new_size: tuple[int, int] | None = None):
    """The SphereFace-``depth`` TRAIN net: ImageData (mean 127.5, scale 1/128, mirror, shuffle), the deploy body,
    fc6 MarginInnerProduct with margin ``m`` (base 1000, ``lambda_gamma``, power 1, lambda_min 5, ``iteration``)
    and SoftmaxWithLoss; with ``interclass_alpha`` the SphereFace+ wiring (fc6_w shared with an AMONG InterClass,
    iteration 16000, alpha_start_iter 16001). ``channels`` narrows the net (tests, toy runs)."""
    deploy = sphereface_deploy(depth, feature_dim=feature_dim)
    if tuple(channels) != CHANNELS:
        for layer in deploy.layer:
            if layer.type == "Convolution":
                stage = int(layer.name[len("conv")]) - 1
                layer.convolution_param.num_output = channels[stage]
    net = caffe_pb2.NetParameter(name=name or f"SpherefaceNet-{depth}")
    data = net.layer.add(name="data", type="ImageData", top=["data", "label"])
    tp = data.transform_param
    tp.mean_value.extend([127.5, 127.5, 127.5])
    tp.scale = 0.0078125
    tp.mirror = mirror
    ip = data.image_data_param
    ip.source = source
    ip.batch_size = batch_size
    ip.shuffle = shuffle
    if root_folder:
        ip.root_folder = root_folder
    if new_size:
        ip.new_height, ip.new_width = new_size
    for layer in deploy.layer[1:]:
        net.layer.add().CopyFrom(layer)
    fc6 = net.layer.add(name="fc6", type="MarginInnerProduct", bottom=["fc5", "label"], top=["fc6", "lambda"])
    spec = fc6.param.add(lr_mult=1, decay_mult=1)
    if interclass_alpha is not None:
        spec.name = "fc6_w"
    p = fc6.margin_inner_product_param
    p.num_output = num_classes
    p.type = getattr(caffe_pb2.MarginInnerProductParameter, MARGIN_TYPES[m])
    p.weight_filler.type = "xavier"
    p.base, p.gamma, p.power, p.lambda_min, p.iteration = 1000, lambda_gamma, 1, 5, iteration
    if interclass_alpha is not None:
        ic = net.layer.add(name="inter_class_dist_output", type="InterClass", bottom=["fc5", "label"],
                           top=["maximize_inter_class_dist"])
        ic.param.add(name="fc6_w", lr_mult=1, decay_mult=1)
        q = ic.inter_class_param
        q.num_output = num_classes
        q.type = caffe_pb2.InterClassParameter.AMONG
        q.iteration, q.alpha_start_iter, q.alpha_start_value = 16000, 16001, interclass_alpha
    net.layer.add(name="softmax_loss", type="SoftmaxWithLoss", bottom=["fc6", "label"], top=["softmax_loss"])
    return net


def sfplus_train(m: int = 4, depth: int = 20, **kw):
    """SphereFace+ with margin m as shipped (``sfplus_model`` for m = 4, ``m_single/double/triple_model``)."""
    s = SFPLUS[m]
    kw.setdefault("name", f"{s['name']}-{depth}")
    return sphereface_train(depth, m, lambda_gamma=s["gamma"], iteration=s["iteration"],
                            interclass_alpha=s["alpha"], **kw)


def solver(net: str, base_lr: float, lr_gamma: float, stepvalue, max_iter: int, display: int, snapshot_prefix: str,
           snapshot: int = 0, iter_size: int = 1, layer_wise_reduce: bool | None = None):
    """A multistep SGD solver (momentum 0.9, weight_decay 5e-4) as the authors' solver files."""
    sp = caffe_pb2.SolverParameter(net=net, base_lr=base_lr, lr_policy="multistep", gamma=lr_gamma,
                                   stepvalue=list(stepvalue), max_iter=max_iter, display=display, momentum=0.9,
                                   weight_decay=0.0005, snapshot_prefix=snapshot_prefix,
                                   solver_mode=caffe_pb2.SolverParameter.GPU)
    if snapshot:
        sp.snapshot = snapshot
    if iter_size != 1:
        sp.iter_size = iter_size
    if layer_wise_reduce is not None:
        sp.layer_wise_reduce = layer_wise_reduce
    return sp


def project_prototxts() -> dict[str, object]:
    """The files of ``prototxt/``: file name -> NetParameter or SolverParameter."""
    out = {"sphereface20_train.prototxt": sphereface_train(20),
           "sphereface20_deploy.prototxt": sphereface_deploy(20),
           "sphereface20_solver.prototxt": solver("sphereface20_train.prototxt", 0.1, 0.1, (16000, 24000, 28000),
                                                   28000, 100, "result/sphereface20")}
    for m, s in SFPLUS.items():
        out[f"sfplus_m{m}_train.prototxt"] = sfplus_train(m)
        out[f"sfplus_m{m}_solver.prototxt"] = solver(f"sfplus_m{m}_train.prototxt", s["base_lr"], s["lr_gamma"],
                                                     s["stepvalue"], s["max_iter"], s["display"],
                                                     f"result/sfplus_m{m}", snapshot=500, layer_wise_reduce=False)
    return out


HEADER = ("# Written by sfport (python -m sfport.netdef.builtin prototxt/): {what}.\n"
          "# Data paths are relative; override them with `sfport train --data-root DIR --source LIST`.\n")


def write_project_prototxts(directory) -> list[str]:
    """Write the nets and solvers of ``prototxt/`` into ``directory`` (each atomically)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, msg in project_prototxts().items():
        what = "solver" if name.endswith("_solver.prototxt") else "net"
        atomic_write(d / name, (HEADER.format(what=what + " " + name[:-len(".prototxt")]) + net_to_text(msg)).encode())
        written.append(str(d / name))
    return written


BUILT_IN = "built-in:sphereface_deploy(20)"


def builtin_model() -> CaffeModel:
    """The commands' built-in default net (``sfport inspect``, ``verify``, ``convert`` without a model): the
    SphereFace-20 deploy net, without weights."""
    return CaffeModel.from_net(sphereface_deploy(20), BUILT_IN)


def main(argv=None) -> int:
    """``python -m sfport.netdef.builtin [DIR]``: write the project's nets and solvers (``prototxt/``) into DIR."""
    parser = argparse.ArgumentParser(prog="python -m sfport.netdef.builtin",
                                     description="Write the project's nets and solvers (prototxt/) into DIRECTORY.")
    parser.add_argument("directory", nargs="?", default="prototxt", help="where to write them (default: prototxt)")
    args = parser.parse_args(argv)
    for path in write_project_prototxts(args.directory):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
