"""The torch side's base: what every family's modules share."""
from __future__ import annotations

from torch import nn


class NoBlobs(nn.Module):
    """Base of the modules of parameter-free layers."""
    caffe_blobs: tuple = ()
