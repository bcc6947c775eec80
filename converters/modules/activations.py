"""The torch side of :mod:`sfport.converters.activations`: one small module per element-wise formula."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import NoBlobs, set_fields


class ReLU(NoBlobs):
    """Caffe ReLULayer: max(x, 0) + negative_slope * min(x, 0)."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        return F.relu(x) if self.slope == 0 else F.leaky_relu(x, self.slope)

    def forward_(self, x):
        """In place on ``x`` (the optimized net's, where nothing else reads x)."""
        return F.relu_(x) if self.slope == 0 else F.leaky_relu_(x, self.slope)


class ELU(NoBlobs):
    """Caffe ELULayer: x for x > 0, alpha * (exp(x) - 1) otherwise."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return torch.where(x > 0, x, self.alpha * (torch.exp(x) - 1))


class Sigmoid(NoBlobs):
    def forward(self, x):
        return torch.sigmoid(x)


class TanH(NoBlobs):
    def forward(self, x):
        return torch.tanh(x)


class AbsVal(NoBlobs):
    def forward(self, x):
        return torch.abs(x)


class Power(NoBlobs):
    """Caffe PowerLayer: (shift + scale * x) ^ power."""

    def __init__(self, power: float, scale: float, shift: float):
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x):
        y = x * self.scale + self.shift if (self.scale != 1 or self.shift != 0) else x
        return y if self.power == 1 else torch.pow(y, self.power)


class Exp(NoBlobs):
    """Caffe ExpLayer: base ^ (shift + scale * x), base e when base is -1."""

    def __init__(self, log_base: float, scale: float, shift: float):
        super().__init__()
        self.log_base, self.scale, self.shift = log_base, scale, shift

    def forward(self, x):
        return torch.exp(x * (self.scale * self.log_base) + self.shift * self.log_base)


class Log(NoBlobs):
    """Caffe LogLayer: log_base(shift + scale * x), natural log when base is -1."""

    def __init__(self, log_base: float, scale: float, shift: float):
        super().__init__()
        self.log_base, self.scale, self.shift = log_base, scale, shift

    def forward(self, x):
        return torch.log(x * self.scale + self.shift) / self.log_base


class BNLL(NoBlobs):
    """Caffe BNLLLayer: log(1 + exp(x)) in its stable form."""

    def forward(self, x):
        return torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))


class Threshold(NoBlobs):
    """Caffe ThresholdLayer: 1 where x > threshold, else 0."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


class Dropout(NoBlobs):
    """Caffe DropoutLayer: identity at test time; when training, x * mask / (1 - ratio). With py-faster-rcnn's
    ``scale_train: false`` (caffe-fast-rcnn dropout_layer.cpp Forward_cpu) the training output is x * mask and
    the test output x * (1 / scale_), where ``scale_ = 1. / (1. - threshold_)`` is a float and the factor
    ``1. / scale_`` is rounded to float by caffe_scal. With caffe-segnet's ``sample_weights_test`` (Bayesian
    SegNet's Monte Carlo dropout; its dropout_layer.cpp Forward_cpu: ``phase_ == TRAIN || sample_weights_test``)
    masks are drawn at test time too."""

    def __init__(self, ratio: float, scale_train: bool = True, sample_test: bool = False):
        super().__init__()
        self.ratio = ratio
        self.scale_train = scale_train
        self.sample_test = sample_test
        scale = np.float32(1.0 / (1.0 - float(np.float32(ratio))))
        self.test_factor = float(np.float32(1.0 / float(scale)))

    def forward(self, x):
        if (self.training or self.sample_test) and self.ratio > 0:
            keep = (torch.rand_like(x) >= self.ratio).to(x.dtype)
            return x * keep / (1.0 - self.ratio) if self.scale_train else x * keep
        if not self.training and not self.scale_train:
            return x * self.test_factor
        return x


class Clip(NoBlobs):
    """Caffe ClipLayer (clip_layer.cpp). Forward_cpu: ``std::max(min, std::min(x, max))`` - so min when
    min > max, and min for NaN (both comparisons are false). Backward_cpu: ``top_diff * (x >= min && x <= max)``,
    the gradient passes at both bounds inclusive (torch.clamp's own gradient agrees only sometimes), so the
    module selects x itself exactly there and a constant elsewhere."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        with torch.no_grad():   # Caffe's value: std::min(x, max) = (max < x) ? max : x; std::max(min, v) likewise
            v = torch.where(x > self.hi, torch.full_like(x, self.hi), x)
            v = torch.where(v > self.lo, v, torch.full_like(x, self.lo))
        return torch.where((x >= self.lo) & (x <= self.hi), x, v)


class Swish(NoBlobs):
    """Caffe SwishLayer (swish_layer.cpp): x * sigmoid(beta x). Its Backward_cpu,
    ``top_diff * (beta y + sigmoid(beta x) (1 - beta y))``, is the true derivative, so autograd gives it."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x * torch.sigmoid(x if self.beta == 1 else x * self.beta)


class ReLU6(NoBlobs):
    """ReLU6 of the MobileNet forks (e.g. MobileNet-YOLO's relu6_layer.cpp): Forward_cpu
    ``min(max(x, 0), 6)``; Backward_cpu ``top_diff * (x > 0) * (x < 6)``, zero at both bounds, which is
    F.hardtanh's gradient. NaN stays NaN forward (as std::max / std::min give) and gets no gradient."""

    def forward(self, x):
        with torch.no_grad():
            v = F.relu6(x)
        return torch.where((x > 0) & (x < 6), x, v)


class PReLU(nn.Module):
    """Caffe PReLULayer: one slope per channel (axis 1), or one for all with channel_shared."""

    def __init__(self, channels: int, shared: bool):
        super().__init__()
        set_fields(self, {"weight": nn.Parameter(torch.full((() if shared else (channels,)), 0.25))},
                   caffe_blobs=["weight"], shared=shared)

    def forward(self, x):
        if x.dim() >= 2:
            return F.prelu(x, self.weight.reshape(1) if self.shared else self.weight)
        return torch.where(x > 0, x, x * self.weight)
