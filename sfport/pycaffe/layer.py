"""The layers of pycaffe's Net (layer.hpp's SetUp / Reshape / Forward / Backward on blobs), and ``caffe.Layer``,
the base class of Python layers (python_layer.hpp).

Every layer of a :class:`sfport.pycaffe.net.Net` is one of these kinds, each with ``setup(bottom, top)``,
``reshape(bottom, top)``, ``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)`` on lists of
:class:`sfport.pycaffe.blob.Blob`:

- :class:`Computed`: a layer a converter computes (sfport's layer library): its module runs on the bottoms'
  tensors; backward differentiates what the forward recorded (torch's autograd), writing the bottoms' diffs and
  adding into the parameters' diffs, as each Caffe layer's Backward_cpu does;
- :class:`Inputs`, :class:`Dummy`, :class:`Memory`, :class:`DataSet`: the data layers (input_layer.cpp,
  dummy_data_layer.cpp, memory_data_layer.cpp, and the data-set readers of :mod:`sfport.data`);
- a Python layer: the user's :class:`Layer` subclass itself, driven by :class:`PythonDriver`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from sfport import converters
from sfport.converters import fillers
from sfport.data.feed import Feeder
from sfport.errors import CaffeFileError
from sfport.formats.caffe_files import as_text
from sfport.netdef import datalayers, shapes
from sfport.netdef.wiring import about_layer
from sfport.protos import caffe_pb2
from sfport.pycaffe import common
from sfport.pycaffe.blob import Blob, BlobVec
from sfport.solver.config import Options
from sfport.report.progress import CaffeLog


class Layer:
    """``caffe.Layer``: subclass it, name the subclass in a prototxt's ``python_param { module layer }``, and
    Caffe's Net calls ``setup(bottom, top)`` once, then ``reshape(bottom, top)`` and ``forward(bottom, top)`` per
    forward and ``backward(top, propagate_down, bottom)`` per backward (python_layer.hpp). ``bottom`` and ``top``
    are lists of blobs (``.data``, ``.diff``, ``.reshape``); ``self.blobs`` the layer's own learnable blobs
    (``add_blob(*shape)``), ``self.param_str`` the prototxt's string, ``self.phase`` the net's phase."""

    def __init__(self, param=None):
        self.layer_param = param
        self.blobs = BlobVec()
        self.param_str = ""
        self.phase = caffe_pb2.TEST

    @property
    def type(self) -> str:
        return datalayers.PYTHON

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class _Kind:
    """What every kind of layer has: its parameter, type, blobs and phase; by default it learns nothing and
    passes nothing back."""

    def __init__(self, param, phase: int):
        self.layer_param = param
        self.type = param.type
        self.phase = phase
        self.blobs = BlobVec()

    def backward(self, top, propagate_down, bottom) -> None:
        pass

    def param_need_backward(self) -> list[bool]:
        return [False] * len(self.blobs)


class Computed(_Kind):
    """A layer computed by its converter's module. The module is built for the bottoms' shapes (built again,
    keeping the same parameters, when they change: Caffe's Reshape); the parameters' blobs are the module's
    ``nn.Parameter`` objects."""

    def __init__(self, param, phase: int):
        super().__init__(param, phase)
        self.converter = converters.get_for(param)
        self.module = None
        self.built_for: tuple | None = None
        self.record = None   # (inputs, outputs) of the last forward that autograd recorded

    def setup(self, bottom, top, shared: dict | None = None, generator=None) -> None:
        """LayerSetUp: the module for these bottoms, its parameters filled by the layer's fillers (a parameter
        shared by ``param { name }`` is the owner's blob, ``shared``: {index: Blob})."""
        self._build([b.shape for b in bottom])
        for j, name in enumerate(self.module.caffe_blobs):
            if shared and j in shared:
                owner = shared[j]
                if tuple(owner.shape) != tuple(getattr(self.module, name).shape):
                    raise CaffeFileError(None, about_layer(self.layer_param, f"shares parameter {j} but its shape "
                                                                             f"{list(getattr(self.module, name).shape)}"
                                                                             f" differs from the owner's "
                                                                             f"{list(owner.shape)}"))
                setattr(self.module, name, owner._param)
                self.blobs.append(owner)
            else:
                self.blobs.append(Blob.of_param(getattr(self.module, name)))
        for j, spec in enumerate(self.converter.fillers(self.layer_param)):
            if spec is not None and j < len(self.blobs) and not (shared and j in shared):
                try:
                    fillers.fill(self.blobs[j]._param.data, spec, generator)
                except ValueError as e:
                    raise CaffeFileError(None, about_layer(self.layer_param, str(e))) from None
        self.reshape(bottom, top)

    def _build(self, bottom_shapes: list) -> None:
        shapes_ = tuple(tuple(s) for s in bottom_shapes)
        if shapes_ == self.built_for:
            return
        shapes.layer_shapes(self.layer_param, list(shapes_))   # the layer's CHECKs, as one line naming it
        try:
            module = self.converter.build(self.layer_param, list(shapes_))
        except ValueError as e:
            raise CaffeFileError(None, about_layer(self.layer_param, str(e))) from None
        if self.module is not None:   # the same parameters in the module built for the new shapes
            for name in module.caffe_blobs:
                setattr(module, name, getattr(self.module, name))
        module.train(self.phase == caffe_pb2.TRAIN)
        self.module, self.built_for, self.record = module, shapes_, None

    def reshape(self, bottom, top) -> None:
        """Layer::Reshape: the tops take the shapes this layer gives its bottoms (the converter's, else those of a
        run on zeros)."""
        self._build([b.shape for b in bottom])
        tops, _ = shapes.layer_shapes(self.layer_param, [b.shape for b in bottom])
        if any(t is None for t in tops):
            with torch.no_grad():
                out = self._run([torch.zeros(b.shape) for b in bottom])
            tops = [tuple(o.shape) for o in out]
        for blob, shape in zip(top, tops):
            if tuple(blob.shape) != tuple(shape):
                blob.reshape(*shape)

    def _run(self, xs: list) -> tuple:
        out = self.module(*xs)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)

    def forward(self, bottom, top, grad_bottoms: list[bool] | None = None) -> None:
        """Forward_cpu. ``grad_bottoms`` (per bottom, whether its gradient will be asked for; None: no backward
        will be) makes autograd record the computation for :meth:`backward`."""
        self._build([b.shape for b in bottom])
        device = common.device()   # GPU mode: the module and the bottoms go to the GPU, the tops come back
        if device.type != "cpu":
            self.module.to(device)
        try:
            if grad_bottoms is None:
                self.record = None
                with torch.no_grad():
                    out = self._run([b.tensor.to(device) for b in bottom])
            else:
                xs = [b.tensor.to(device, copy=True).requires_grad_(g) for b, g in zip(bottom, grad_bottoms)]
                with torch.enable_grad():
                    out = self._run(xs)
                self.record = (xs, out)
        finally:
            if device.type != "cpu":
                self.module.to("cpu")   # the blobs' memory (numpy views) is the CPU's
        for blob, t in zip(top, out):
            blob.set_data(t.clone() if any(t.detach().data_ptr() == b.tensor.data_ptr() for b in top) else t)

    def backward(self, top, propagate_down, bottom) -> None:
        """Backward_cpu: each bottom asked for gets d(tops)/d(bottom) against the tops' diffs (written, as
        Caffe's layers write a bottom diff), each learnable parameter the same added into its diff."""
        record = self.record
        if record is None or [tuple(x.shape) for x in record[0]] != [tuple(b.shape) for b in bottom]:
            self.forward(bottom, top, list(propagate_down))   # no forward recorded: from the bottoms as they are
            record = self.record
        xs, out = record
        params = [b._param for b in self.blobs if b._param is not None and b._param.requires_grad]
        wanted = [x for x, down in zip(xs, propagate_down) if down and x.requires_grad]
        pairs = [(o, t.grad) for o, t in zip(out, top) if o.requires_grad]
        if pairs and (wanted or params):
            try:
                grads = torch.autograd.grad([o for o, _ in pairs], wanted + params,
                                            [g.to(o.device) for o, g in pairs], allow_unused=True)
            except RuntimeError:   # the parameters changed in place since the forward: from the bottoms again
                self.forward(bottom, top, list(propagate_down))
                return self.backward(top, propagate_down, bottom)
        else:
            grads = [None] * (len(wanted) + len(params))
        k = 0
        for b, x, down in zip(bottom, xs, propagate_down):
            if down and x.requires_grad:
                b.set_diff(grads[k])
                k += 1
        with torch.no_grad():
            for p, g in zip(params, grads[k:]):
                if g is not None:
                    p.grad.add_(g.to(p.grad.device))

    def param_need_backward(self) -> list[bool]:
        return [b._param.requires_grad for b in self.blobs]

    def allow_force_backward(self, index: int) -> bool:
        """Layer::AllowForceBackward: a loss layer's labels (and a layer's label bottoms) take no gradient."""
        return index not in self.converter.label_bottoms and not (self.converter.loss and index == 1)


class Inputs(_Kind):
    """input_layer.cpp: the tops have the stated shapes; forward leaves what was written into them."""

    def setup(self, bottom, top, **_) -> None:
        stated = datalayers.stated_tops(self.layer_param)
        for blob, shape in zip(top, stated):
            if shape is not None:
                blob.reshape(*shape)

    def reshape(self, bottom, top) -> None:
        pass

    def forward(self, bottom, top, grad_bottoms=None) -> None:
        pass


class Dummy(Inputs):
    """dummy_data_layer.cpp: the stated shapes, filled by the data fillers (one filler for all tops, none:
    constant 0); a constant filler fills once at setup, any other at every forward."""

    def setup(self, bottom, top, generator=None, **_) -> None:
        super().setup(bottom, top)
        p = self.layer_param.dummy_data_param
        specs = list(p.data_filler) or [fillers.constant(0.0)]
        if len(specs) == 1:
            specs = specs * len(top)
        if len(specs) != len(top):
            raise CaffeFileError(None, about_layer(self.layer_param, f"{len(specs)} data_filler for {len(top)} tops "
                                                                     f"(give one, or one per top)"))
        self.fillers = specs
        self.generator = generator
        for blob, spec in zip(top, specs):
            fillers.fill(blob.tensor, spec, generator)

    def forward(self, bottom, top, grad_bottoms=None) -> None:
        for blob, spec in zip(top, self.fillers):
            if spec.type != "constant":
                fillers.fill(blob.tensor, spec, self.generator)


class Memory(Inputs):
    """memory_data_layer.cpp: batches of the arrays given by ``Net.set_input_arrays`` (MemoryDataLayer::Reset),
    in turn, wrapping around."""

    def setup(self, bottom, top, **_) -> None:
        super().setup(bottom, top)
        self.arrays = None
        self.pos = 0

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        p = self.layer_param.memory_data_param
        self.arrays = (data, labels)
        self.pos = 0
        self.batch = p.batch_size

    def forward(self, bottom, top, grad_bottoms=None) -> None:
        if self.arrays is None:
            raise RuntimeError(f"MemoryDataLayer '{as_text(self.layer_param.name)}' needs to be initialized by "
                               f"calling Reset (net.set_input_arrays)")
        data, labels = self.arrays
        n = self.batch
        top[0].set_data(torch.from_numpy(data[self.pos:self.pos + n]))
        if len(top) > 1:
            top[1].set_data(torch.from_numpy(labels[self.pos:self.pos + n].reshape(-1)))
        self.pos = (self.pos + n) % len(data)


class DataSet(Inputs):
    """A data layer that reads a data set (Data, ImageData, HDF5Data): batches in Caffe's order from sfport's
    readers (:class:`sfport.data.feed.Feeder`), whose paths are read as Caffe reads them (from the working
    directory)."""

    def setup(self, bottom, top, seed: int = 0, **_) -> None:
        net = caffe_pb2.NetParameter()
        net.layer.add().CopyFrom(self.layer_param)
        quiet = CaffeLog(enabled=False)
        self.feeder = Feeder(net, self.phase, Options(), Path.cwd(), seed, 1, 0, 1, quiet)
        self.feeder.start(0)
        for blob, name in zip(top, self.layer_param.top):
            if name in self.feeder.inputs:
                blob.reshape(*self.feeder.inputs[name])

    def forward(self, bottom, top, grad_bottoms=None) -> None:
        batch = self.feeder.next()
        for blob, name in zip(top, self.layer_param.top):
            if name in batch:
                blob.set_data(batch[name].float())


class PythonDriver:
    """python_layer.hpp PythonLayer around the user's :class:`Layer` (``layer``): ``param_str`` and ``phase`` set
    before ``setup``; Layer::Forward's Reshape before each forward."""

    def __init__(self, param, phase: int):
        p = param.python_param
        try:
            module = importlib.import_module(p.module)
        except ImportError as e:
            raise CaffeFileError(None, about_layer(param, f"cannot import the module '{p.module}' named by its "
                                                          f"python_param: {e}")) from None
        cls = getattr(module, p.layer, None)
        if cls is None:
            raise CaffeFileError(None, about_layer(param, f"the module '{p.module}' has no layer class "
                                                          f"'{p.layer}'"))
        self.layer = cls(param)
        if not hasattr(self.layer, "blobs"):
            self.layer.blobs = BlobVec()
        self.layer.param_str = p.param_str
        self.layer.phase = phase
        self.layer_param = param

    def setup(self, bottom, top, **_) -> None:
        self.layer.setup(bottom, top)
        self.layer.reshape(bottom, top)

    def reshape(self, bottom, top) -> None:
        self.layer.reshape(bottom, top)

    def forward(self, bottom, top, grad_bottoms=None) -> None:
        self.layer.reshape(bottom, top)
        self.layer.forward(bottom, top)

    def backward(self, top, propagate_down, bottom) -> None:
        self.layer.backward(top, list(propagate_down), bottom)

    @property
    def blobs(self):
        return self.layer.blobs

    def param_need_backward(self) -> list[bool]:
        return [True] * len(self.layer.blobs)

    def allow_force_backward(self, index: int) -> bool:
        return True


def make(param, phase: int):
    """The kind of layer ``param`` is."""
    if datalayers.is_python(param) and converters.python_builtin(param) is None:
        return PythonDriver(param, phase)
    spec = datalayers.spec_of(param)
    if spec is None:
        return Computed(param, phase)
    if spec.param == "dummy_data_param":
        return Dummy(param, phase)
    if spec.param == "memory_data_param":
        return Memory(param, phase)
    if spec.reader is not None:
        return DataSet(param, phase)
    if spec.shaped:
        return Inputs(param, phase)
    raise CaffeFileError(None, about_layer(param, "sfport's pycaffe Net cannot read this data layer"))
