"""pycaffe's ``Blob`` and ``BlobVec`` (_caffe.cpp, blob.cpp): an N-d float32 array with its gradient, ``data`` and
``diff`` as numpy arrays that share memory with what the net's layers read and write.

A blob's values live in torch tensors on the CPU (``torch.from_numpy`` / ``Tensor.numpy`` share memory), so an
array taken from ``blob.data`` before a forward shows the values the forward wrote, as in pycaffe. A learnable
blob's data is its layer's ``nn.Parameter`` and its diff that parameter's ``.grad``: the layer's module computes
with the values written through numpy, and the solver updates the very memory numpy shows.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _count(shape) -> int:
    return math.prod(int(d) for d in shape)


class Blob:
    """blob.hpp Blob<float>: ``shape``, ``count``, ``num``/``channels``/``height``/``width`` (LegacyShape),
    ``reshape(*shape)``, ``data`` and ``diff`` (numpy views)."""

    def __init__(self, *shape: int):
        self._param: nn.Parameter | None = None
        self._capacity = 0
        self._data_buf = self._diff_buf = torch.zeros(0)
        self._data = self._diff = torch.zeros(0)
        self.reshape(*shape)

    @classmethod
    def of_param(cls, param: nn.Parameter) -> "Blob":
        """The blob of a layer's parameter: its data is the parameter, its diff the parameter's ``.grad`` (made
        here, zeros, and kept: gradients are added into it)."""
        blob = cls.__new__(cls)
        blob._param = param
        if param.grad is None or param.grad.shape != param.shape:
            param.grad = torch.zeros_like(param.detach())
        blob._data, blob._diff = param, param.grad
        blob._capacity = param.numel()
        return blob

    # -- shape -----------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return _count(self._data.shape)

    def _legacy(self, index: int) -> int:
        """Blob::LegacyShape: at most 4 axes; an axis past the blob's is 1."""
        axes = self._data.dim()
        if axes > 4:
            raise ValueError(f"cannot use legacy accessors on a blob of {axes} axes (shape {list(self.shape)}); "
                             f"use shape instead")
        return 1 if index >= axes else int(self._data.shape[index])

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape: int, **kwargs) -> None:
        """Blob::Reshape: the memory is kept while the new count fits what was allocated (the values stay, read
        in the new shape); a larger blob gets new memory, zeros (SyncedMemory's first use)."""
        if kwargs:
            raise TypeError("Blob.reshape takes no kwargs")
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"a blob's dimensions are >= 0, not {list(shape)}")
        n = _count(shape)
        if n > np.iinfo(np.int32).max:
            raise ValueError(f"blob size exceeds INT_MAX: {list(shape)}")
        if self._param is not None:   # a learnable blob: the parameter itself takes the new shape
            if n != self._param.numel():
                self._param.data = torch.zeros(shape, dtype=self._param.dtype)
                self._param.grad = torch.zeros(shape, dtype=self._param.dtype)
            else:
                self._param.data = self._param.data.reshape(shape)
                self._param.grad = self._param.grad.reshape(shape)
            self._diff = self._param.grad
            return
        if n > self._capacity:
            self._capacity = n
            self._data_buf, self._diff_buf = torch.zeros(n), torch.zeros(n)
        self._data = self._data_buf[:n].view(shape)
        self._diff = self._diff_buf[:n].view(shape)

    # -- values ----------------------------------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        return self._data.detach().numpy()

    @property
    def diff(self) -> np.ndarray:
        if self._param is not None:
            self._diff = self._param.grad
        return self._diff.numpy()

    @property
    def tensor(self) -> torch.Tensor:
        """The values as a tensor sharing their memory (what layers read)."""
        return self._data.detach()

    @property
    def grad(self) -> torch.Tensor:
        if self._param is not None:
            self._diff = self._param.grad
        return self._diff

    def set_data(self, values: torch.Tensor) -> None:
        """A layer's output into this blob: reshaped to it (Layer::Reshape), then copied into its memory."""
        values = values.detach()
        if tuple(values.shape) != self.shape:
            self.reshape(*values.shape)
        if values.data_ptr() == self._data.data_ptr() and values.stride() == self._data.stride():
            return
        self._data.detach().copy_(values)

    def set_diff(self, values: torch.Tensor | None) -> None:
        """A gradient into this blob's diff (zeros for None); the blob keeps its shape."""
        if values is None:
            self.grad.zero_()
        else:
            self.grad.copy_(values.detach().reshape(self.shape))

    def share_data(self, other: "Blob") -> None:
        """Blob::ShareData: this blob's data is ``other``'s memory from now on (its diff stays its own)."""
        if other.count != self.count:
            raise ValueError(f"cannot share data of {other.count} values with a blob of {self.count}")
        if self._param is not None:
            self._param.data = other._data.detach()
        else:
            self._data = other._data.detach()
            self._data_buf = self._data.reshape(-1)
            self._capacity = self.count

    def __repr__(self) -> str:
        return f"<Blob shape={list(self.shape)}>"


class BlobVec(list):
    """_caffe.cpp's BlobVec (a layer's ``blobs``): a list of :class:`Blob` with ``add_blob(*shape)``."""

    def add_blob(self, *shape: int, **kwargs) -> None:
        if kwargs:
            raise TypeError("BlobVec.add_blob takes no kwargs")
        self.append(Blob.of_param(nn.Parameter(torch.zeros([int(d) for d in shape]), requires_grad=False)))
