"""Caffe's legacy-format upgrades (caffe/util/upgrade_proto.cpp), ported rule for rule.

``upgrade_net`` applies, in Caffe's order, the steps of ``UpgradeNetAsNeeded``: V0 -> V1 (padding layers folded
into the next conv/pool), data-layer transformation fields -> ``transform_param``, V1 ``layers`` -> ``layer``
(enum types to strings, ``blobs_lr``/``weight_decay`` to ``param``), deploy ``input``/``input_dim``/
``input_shape`` -> an ``Input`` layer, and BatchNorm's three param specs -> lr_mult 0. Each applied step adds
one line to the returned list. ``upgrade_solver`` is ``UpgradeSolverAsNeeded``.
"""
from __future__ import annotations

from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V1LayerParameter.LayerType -> LayerParameter.type (UpgradeV1LayerType)
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    # DeepLab v1's types, under the names DeepLab v2 gives them (its upgrade_proto.cpp UpgradeV1LayerType)
    "IMAGE_SEG_DATA": "ImageSegData", "SEG_ACCURACY": "SegAccuracy", "INTERP": "Interp", "PADDING": "Padding",
    "MAT_WRITE": "MatWrite", "MAT_READ": "MatRead", "DENSE_CRF": "DenseCRF",
}

# V0 layer type strings -> V1 enum names (UpgradeV0LayerType)
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V0 field -> {V0 type: (V1 sub-message, field there)}; "add" fields are repeated in V1 (UpgradeV0LayerParameter)
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"), "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"), "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"), "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}
# V0 fields that go to transform_param whatever the layer type
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}

# V1 sub-messages copied as they are to the new LayerParameter (UpgradeV1LayerParameter)
_V1_COPIED = [
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param",
    "data_param", "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param",
    "hdf5_output_param", "hinge_loss_param", "image_data_param", "infogain_loss_param", "inner_product_param",
    "lrn_param", "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param", "window_data_param",
    "transform_param", "loss_param", "interp_param", "mat_write_param", "seg_accuracy_param", "softmaxloss_param",
    "padding_param",
]


def _set(msg, name: str, value) -> None:
    target = getattr(msg, name)
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if fd.is_repeated:
        target.append(value)
    elif fd.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(msg, name, value)


def _upgrade_v0_padding(net, path) -> None:
    """UpgradeV0PaddingLayers: drop 'padding' layers, moving their pad into the conv/pool they feed."""
    old = list(net.layers)
    del net.layers[:]
    last_top = {name: -1 for name in net.input}
    for i, conn in enumerate(old):
        v0 = conn.layer
        if v0.type != "padding":
            net.layers.add().CopyFrom(conn)
        for j, bottom in enumerate(conn.bottom):
            if bottom not in last_top:
                raise CaffeFileError(path, f"V0 net: unknown blob input '{bottom}' to layer {i}")
            src_idx = last_top[bottom]
            if src_idx == -1:
                continue
            src = old[src_idx]
            if src.layer.type == "padding":
                if v0.type not in ("conv", "pool") or len(conn.bottom) != 1 or len(src.bottom) != 1 \
                        or len(src.top) != 1:
                    raise CaffeFileError(path, f"V0 net: padding layer '{src.layer.name}' must feed a single "
                                               f"conv or pool layer with one input")
                net.layers[-1].layer.pad = src.layer.pad
                net.layers[-1].bottom[j] = src.bottom[0]
        for top in conn.top:
            last_top[top] = i


def _upgrade_v0_layer(conn, problems: list[str]):
    """UpgradeV0LayerParameter: one V0 layer (inside a V1 connection) -> a V1 layer."""
    out = V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return out
    v0 = conn.layer
    t = v0.type
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if t not in V0_TYPES:  # upgrade_proto.cpp UpgradeV0LayerType: LOG(FATAL) << "Unknown layer name: " << type
            raise ValueError(f"V0 layer '{v0.name}': unknown V0 layer type '{t}' (not one of Caffe's V0 types: "
                             f"conv, pool, innerproduct, ...)")
        else:
            out.type = V1.LayerType.Value(V0_TYPES[t])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for name, by_type in _V0_FIELDS.items():
        if not v0.HasField(name):
            continue
        if t not in by_type:
            problems.append(f"unknown parameter {name} for layer type {t}")
            continue
        sub, fname = by_type[t]
        value = getattr(v0, name)
        if fname is None:
            getattr(out, sub).CopyFrom(value)
        else:
            _set(getattr(out, sub), fname, value)
    for name, fname in _V0_TRANSFORM.items():
        if v0.HasField(name):
            setattr(out.transform_param, fname, getattr(v0, name))
    return out


def _upgrade_v0_net(net, path) -> list[str]:
    problems: list[str] = []
    _upgrade_v0_padding(net, path)
    old = list(net.layers)
    del net.layers[:]
    for conn in old:
        net.layers.add().CopyFrom(_upgrade_v0_layer(conn, problems))
    return problems


def _upgrade_data_transform(net) -> int:
    """UpgradeNetDataTransformation: scale/mean_file/crop_size/mirror of V1 data layers -> transform_param."""
    moved = 0
    kinds = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param",
             V1.IMAGE_SEG_DATA: "image_data_param"}
    for layer in net.layers:
        sub_name = kinds.get(layer.type)
        if sub_name is None or not layer.HasField(sub_name):
            continue
        sub = getattr(layer, sub_name)
        for f in ("scale", "mean_file", "crop_size", "mirror"):
            if sub.HasField(f):
                setattr(layer.transform_param, f, getattr(sub, f))
                sub.ClearField(f)
                moved += 1
    return moved


def _upgrade_v1_layer(v1, problems: list[str]):
    """UpgradeV1LayerParameter: a V1 layer -> a LayerParameter."""
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[V1.LayerType.Name(v1.type)]
    layer.blobs.extend(v1.blobs)

    def param(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param(i).share_mode = mode  # STRICT/PERMISSIVE have the same numbers in both enums
    for i, lr in enumerate(v1.blobs_lr):
        param(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_COPIED:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    if v1.HasField("strict_dim") and not v1.strict_dim:
        problems.append(f"layer '{v1.name}': DeepLab's strict_dim: false is not kept (its weights must have the "
                        f"layer's blob shapes, as Caffe's Blob::ShapeEquals)")
    if v1.HasField("layer"):
        problems.append(f"layer '{v1.name}' still has a V0 layer; ignored")
    return layer


def _upgrade_input(net) -> str:
    """UpgradeNetInput: deploy header fields -> an 'Input' layer named 'input' placed first."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    note = f"deploy header input fields {list(net.input)} removed (no shapes: legacy caffemodel)"
    if has_shape or has_dim:
        if has_dim and len(net.input_dim) != 4 * len(net.input):
            raise ValueError(f"{len(net.input)} inputs need {4 * len(net.input)} input_dim values, "
                             f"found {len(net.input_dim)}")
        if has_shape and len(net.input_shape) < len(net.input):
            raise ValueError(f"{len(net.input)} inputs but {len(net.input_shape)} input_shape entries")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        rest = list(net.layer)
        del net.layer[:]
        net.layer.add().CopyFrom(layer)
        net.layer.extend(rest)
        note = ("deploy header input/" + ("input_shape" if has_shape else "input_dim") +
                f" -> Input layer 'input' with tops {list(net.input)}")
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return note


def _upgrade_hole(net, path) -> int:
    """DeepLab v1's ``hole`` / ``hole_h`` + ``hole_w`` (its conv_layer.cpp ConvolutionLayer::LayerSetUp: one or the
    other, the effective kernel ``k + (k - 1)(hole - 1)``) is the dilation BVLC added later: written as
    ``dilation``, so that every reader of the net (OpenCV included) sees it."""
    moved = 0
    for layer in net.layer:
        if not layer.HasField("convolution_param"):
            continue
        p = layer.convolution_param
        has = [p.HasField(f) for f in ("hole", "hole_h", "hole_w")]
        if not any(has):
            continue
        if has != [True, False, False] and has != [False, True, True]:
            raise CaffeFileError(path, f"layer '{layer.name}': hole is hole OR hole_h and hole_w are required")
        hole = [p.hole] if has[0] else [p.hole_h, p.hole_w]
        if len(p.dilation) and list(p.dilation) != hole and set(hole) != {1}:
            raise CaffeFileError(path, f"layer '{layer.name}': DeepLab's hole {hole} and dilation "
                                       f"{list(p.dilation)} disagree")
        if set(hole) != {1} and not len(p.dilation):
            p.dilation.extend(hole if len(set(hole)) > 1 else hole[:1])
        for f in ("hole", "hole_h", "hole_w"):
            p.ClearField(f)
        moved += 1
    return moved


def upgrade_net(net, path=None) -> list[str]:
    """Bring a NetParameter to the current format in place (UpgradeNetAsNeeded); return what was done."""
    notes: list[str] = []
    if any(layer.HasField("layer") for layer in net.layers):
        try:
            problems = _upgrade_v0_net(net, path)
        except ValueError as e:
            raise CaffeFileError(path, str(e)) from None
        notes.append("V0LayerParameter -> V1LayerParameter" + (f" (problems: {'; '.join(problems)})"
                                                              if problems else ""))
    moved = _upgrade_data_transform(net)
    if moved:
        notes.append(f"data layer transformation fields -> transform_param ({moved} fields)")
    if len(net.layers):
        problems = []
        if len(net.layer):  # upgrade_proto.cpp UpgradeV1Net: LOG(FATAL), whatever the layers are
            raise CaffeFileError(path, f"Refusing to upgrade inconsistent NetParameter input; the definition includes "
                                       f"both 'layer' (layer '{net.layer[0].name}') and V1 'layers' (layer "
                                       f"'{net.layers[0].name}') fields: the 'layers' field is deprecated, write "
                                       f"every layer as 'layer'")
        upgraded = [_upgrade_v1_layer(v1, problems) for v1 in net.layers]
        n = len(upgraded)
        del net.layers[:]
        del net.layer[:]
        net.layer.extend(upgraded)
        notes.append(f"V1LayerParameter 'layers' -> LayerParameter 'layer' ({n} layers: enum types to names, "
                     "blobs_lr/weight_decay to param lr_mult/decay_mult)"
                     + (f" (problems: {'; '.join(problems)})" if problems else ""))
    holes = _upgrade_hole(net, path)
    if holes:
        notes.append(f"DeepLab's convolution hole -> dilation ({holes} layers)")
    if len(net.input):
        try:
            notes.append(_upgrade_input(net))
        except ValueError as e:
            raise CaffeFileError(path, f"deploy header: {e}") from None
    bn = [layer for layer in net.layer if layer.type == "BatchNorm" and len(layer.param) == 3]
    if bn:
        for layer in bn:
            for p in layer.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0
        notes.append(f"BatchNorm param specs -> lr_mult 0, decay_mult 0 ({len(bn)} layers)")
    return notes


_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def upgrade_solver(solver) -> list[str]:
    """UpgradeSolverAsNeeded: the deprecated ``solver_type`` enum -> the ``type`` string."""
    if not solver.HasField("solver_type"):
        return []
    if solver.HasField("type"):
        raise ValueError("old solver_type field (enum) and new type field (string) cannot both be specified")
    name = caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)
    solver.type = _SOLVER_TYPES[name]
    solver.ClearField("solver_type")
    return [f"solver_type: {name} -> type: \"{solver.type}\""]
