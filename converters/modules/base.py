"""The torch side's base: what every family's modules share."""
from __future__ import annotations

from torch import nn


def set_fields(module: nn.Module, params: dict | None = None, **plain) -> None:
    """Give a module being built its parameters (name -> nn.Parameter) and its plain attributes (never a tensor or
    a module) at once, as its own assignments would. nn.Module.__setattr__ checks each name against the module's
    parameters, buffers and submodules (a few microseconds each: a third of building a net of a few hundred
    layers); here the parameters go into the registry that register_parameter fills, the rest into the
    instance."""
    if params:
        module._parameters.update(params)
    module.__dict__.update(plain)


class NoBlobs(nn.Module):
    """Base of the modules of parameter-free layers."""
    caffe_blobs: tuple = ()
