"""pycaffe's ``caffe.Net`` (net.cpp Net, _caffe.cpp, pycaffe.py): the layers of one NetState, Caffe's inserted
splits included, each with its blobs from construction; ``forward`` / ``backward`` layer by layer between any two
layers, on blobs whose ``data`` and ``diff`` numpy arrays share memory with what the layers read and write.

Built as Net::Init builds it: the definition read (and upgraded), filtered by the state (Net::FilterNet), split
(InsertSplits), then layer by layer: bottoms found, tops made (in place when a top names the bottom at its index),
each layer's SetUp, shared parameters (``param { name }``) given their owner's blobs, loss weights written into
the loss tops' diffs, and which layers and bottoms need backward (Net::Init's walk, ``force_backward`` last).
sfport's torch handle of a net (tensors, export, the optimized form) is :class:`sfport.runtime.net.Net`.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files, forkschema, hdf5_weights
from sfport.formats.caffe_files import as_text
from sfport.netdef import datalayers, netstate
from sfport.netdef.graph import loss_weights
from sfport.netdef.netstate import NetState
from sfport.netdef.weight_match import Target, match_weights
from sfport.netdef.wiring import Wiring, insert_splits
from sfport.protos import caffe_pb2
from sfport.pycaffe import layer as kinds
from sfport.pycaffe.blob import Blob


def _phase_arg(args: tuple, phase, weights):
    """pycaffe's two constructors: ``Net(file, phase, level=, stages=, weights=)`` and the deprecated
    ``Net(file, weights_file, phase)``."""
    args = list(args)
    if args and isinstance(args[0], (str, os.PathLike)) and not str(args[0]).lower() in ("train", "test"):
        if weights is not None:
            raise TypeError("weights given twice (positionally and as weights=)")
        weights = args.pop(0)
    if args:
        if phase is not None:
            raise TypeError("phase given twice")
        phase = args.pop(0)
    if args:
        raise TypeError(f"Net() takes a file, a phase and optionally weights; {len(args)} more arguments given")
    if phase is None:
        raise TypeError("Net() needs a phase (caffe.TRAIN or caffe.TEST)")
    return phase, weights


class Net:
    """``caffe.Net(network_file, phase, level=0, stages=None, weights=None)`` or ``caffe.Net(network_file,
    weights_file, phase)``: pycaffe's Net (``phase`` may also be 'train' / 'test')."""

    def __init__(self, network_file, *args, phase=None, level: int | None = None, stages=None, weights=None,
                 proto=None):
        phase, weights = _phase_arg(args, phase, weights)
        if proto is not None:   # sfport's: a fork's caffe.proto merged with the schema (sfport --proto)
            forkschema.use(proto)
        model = network_file if isinstance(network_file, caffe_files.CaffeModel) else \
            caffe_files.read_net(network_file)
        self._path = model.path
        state = NetState.of(phase, level, stages or ())
        self.phase = state.phase
        net = netstate.without_rules(model.net) if netstate.stored_phase(model.net) is not None and \
            model.kind == caffe_files.BINARY else netstate.filter_net(model.net, state, self._path)
        net = insert_splits(net)
        self._definition = net
        self.name = net.name
        try:
            self._init(net)
        except CaffeFileError as e:
            if e.path is None:
                e.path = self._path
                e.args = (str(e),)
            raise
        self._callbacks = {k: [] for k in ("before_forward", "after_forward", "before_backward", "after_backward")}
        if weights is not None:
            self.copy_from(weights)

    # -- Net::Init ---------------------------------------------------------------------------------------------
    def _init(self, net) -> None:
        wiring = Wiring()
        self._blob_names: list[str] = []
        self._blobs: list[Blob] = []
        self._blob_loss_weights: list[float] = []
        self._layer_names: list[str] = []
        self._kinds: list = []
        self._bottom_ids: list[list[int]] = []
        self._top_ids: list[list[int]] = []
        self._inputs: list[int] = []
        current: dict[str, int] = {}
        owners: dict[str, Blob] = {}
        self._param_specs: list = []
        for layer in net.layer:
            if not layer.HasField("phase"):
                layer.phase = self.phase
            wiring.add(layer)   # Caffe's checks: unknown bottoms, tops produced by multiple sources
            kind = kinds.make(layer, self.phase)
            bottom_ids = [current[b] for b in layer.bottom]
            top_ids = []
            for j, t in enumerate(layer.top):
                if j < len(layer.bottom) and layer.bottom[j] == t:   # in place: the bottom's blob
                    top_ids.append(current[t])
                    continue
                current[t] = len(self._blobs)
                top_ids.append(len(self._blobs))
                self._blob_names.append(t)
                self._blobs.append(Blob())
                self._blob_loss_weights.append(0.0)
                if datalayers.is_input(layer):
                    self._inputs.append(top_ids[-1])
            bottom = [self._blobs[i] for i in bottom_ids]
            top = [self._blobs[i] for i in top_ids]
            shared = {j: owners[spec.name] for j, spec in enumerate(layer.param) if spec.name and spec.name in owners}
            kind.setup(bottom, top, shared=shared, generator=None)
            for j, spec in enumerate(layer.param):   # AppendParam: the first layer naming a parameter owns it
                if spec.name and spec.name not in owners and j < len(kind.blobs):
                    owners[spec.name] = kind.blobs[j]
            for j, w in enumerate(loss_weights(layer, self._path)):   # Layer::SetLossWeights
                if w:
                    top[j].grad.fill_(w)
                    self._blob_loss_weights[top_ids[j]] = w
            self._layer_names.append(layer.name)
            self._kinds.append(kind)
            self._bottom_ids.append(bottom_ids)
            self._top_ids.append(top_ids)
        available: set[str] = set()   # net.cpp: AppendBottom erases a blob, AppendTop inserts it
        for layer in net.layer:
            available.difference_update(layer.bottom)
            available.update(layer.top)
        self._outputs = [current[n] for n in sorted(available)]   # std::set<string>: by name
        self._need_backward(net)

    def _need_backward(self, net) -> None:
        """net.cpp Net::Init: which layers run backward and which bottoms get a diff. A layer needs backward
        when a bottom does or a parameter learns (lr_mult != 0); then the walk from the top drops what
        contributes to no loss; ``force_backward`` turns every layer on (and every bottom its layer allows)."""
        blob_need = [False] * len(self._blobs)
        self._layer_need: list[bool] = []
        self._bottom_need: list[list[bool]] = []
        for li, layer in enumerate(net.layer):
            kind = self._kinds[li]
            bottoms = []
            need = False
            for j, b in enumerate(self._bottom_ids[li]):
                down = blob_need[b]
                if len(layer.propagate_down):
                    down = down and layer.propagate_down[j]
                bottoms.append(down)
                need |= down
            specs = layer.param
            for j, blob in enumerate(kind.blobs):
                learns = not (j < len(specs) and specs[j].HasField("lr_mult") and specs[j].lr_mult == 0)
                if blob._param is not None and isinstance(kind, kinds.Computed):
                    blob._param.requires_grad_(learns)   # Layer::set_param_propagate_down
                need |= learns and kind.param_need_backward()[j]
            for t in self._top_ids[li]:
                blob_need[t] = need
            self._layer_need.append(need)
            self._bottom_need.append(bottoms)
        under_loss, skip = set(), set()
        for li in reversed(range(len(net.layer))):
            contributes, skip_down = False, True
            for t in self._top_ids[li]:
                if self._blob_loss_weights[t] or t in under_loss:
                    contributes = True
                if t not in skip:
                    skip_down = False
                if contributes and not skip_down:
                    break
            if self._layer_need[li] and skip_down:
                self._layer_need[li] = False
                self._bottom_need[li] = [False] * len(self._bottom_need[li])
            if not contributes:
                self._layer_need[li] = False
            for j, b in enumerate(self._bottom_ids[li]):
                if contributes:
                    under_loss.add(b)
                else:
                    self._bottom_need[li][j] = False
                if not self._bottom_need[li][j]:
                    skip.add(b)
        if net.force_backward:
            for li, kind in enumerate(self._kinds):
                self._layer_need[li] = True
                allow = getattr(kind, "allow_force_backward", lambda j: True)
                self._bottom_need[li] = [down or allow(j) for j, down in enumerate(self._bottom_need[li])]
                for blob in kind.blobs:
                    if blob._param is not None and isinstance(kind, kinds.Computed):
                        blob._param.requires_grad_(True)

    # -- pycaffe.py's properties -------------------------------------------------------------------------------
    @property
    def blobs(self) -> "OrderedDict[str, Blob]":
        return OrderedDict(zip(self._blob_names, self._blobs))

    @property
    def blob_loss_weights(self) -> "OrderedDict[str, float]":
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def layers(self) -> list:
        """Each layer: ``type``, ``blobs``, ``phase`` (a Python layer is the user's object itself)."""
        return [getattr(k, "layer", k) for k in self._kinds]

    @property
    def layer_dict(self) -> "OrderedDict":
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def params(self) -> "OrderedDict[str, list]":
        return OrderedDict((name, k.blobs) for name, k in zip(self._layer_names, self._kinds) if len(k.blobs))

    @property
    def inputs(self) -> list[str]:
        return [self._blob_names[i] for i in self._inputs]

    @property
    def outputs(self) -> list[str]:
        return [self._blob_names[i] for i in self._outputs]

    @property
    def top_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((n, [self._blob_names[i] for i in ids]) for n, ids in zip(self._layer_names, self._top_ids))

    @property
    def bottom_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((n, [self._blob_names[i] for i in ids])
                           for n, ids in zip(self._layer_names, self._bottom_ids))

    def _layer_index(self, name: str) -> int:
        return list(self._layer_names).index(name)

    # -- running -----------------------------------------------------------------------------------------------
    def _forward(self, start: int, end: int) -> float:
        """Net::ForwardFromTo: layers ``start`` .. ``end`` (inclusive); returns their loss (each weighted top's
        data against its diff, as Layer::Forward sums it)."""
        loss = 0.0
        for i in range(start, end + 1):
            for cb in self._callbacks["before_forward"]:
                cb(i)
            bottom = [self._blobs[b] for b in self._bottom_ids[i]]
            top = [self._blobs[t] for t in self._top_ids[i]]
            kind = self._kinds[i]
            if isinstance(kind, kinds.Computed):
                kind.forward(bottom, top, list(self._bottom_need[i]) if self._layer_need[i] else None)
            else:
                kind.forward(bottom, top)
            for t in self._top_ids[i]:
                if self._blob_loss_weights[t]:
                    blob = self._blobs[t]
                    loss += float(np.dot(blob.data.reshape(-1).astype(np.float32), blob.diff.reshape(-1)))
            for cb in self._callbacks["after_forward"]:
                cb(i)
        return loss

    def _backward(self, start: int, end: int) -> None:
        """Net::BackwardFromTo: layers ``start`` down to ``end`` that need backward."""
        for i in range(start, end - 1, -1):
            for cb in self._callbacks["before_backward"]:
                cb(i)
            if self._layer_need[i]:
                self._kinds[i].backward([self._blobs[t] for t in self._top_ids[i]], list(self._bottom_need[i]),
                                        [self._blobs[b] for b in self._bottom_ids[i]])
            for cb in self._callbacks["after_backward"]:
                cb(i)

    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """pycaffe.py _Net_forward: inputs given by name are written into their blobs; layers ``start`` to ``end``
        run; returns {name: data array} of the outputs (``end``'s tops) and of ``blobs``."""
        blobs = list(blobs or [])
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self._kinds) - 1
            outputs = set(self.outputs + blobs)
        self._write_named(kwargs, self.inputs, "data", "Input blob arguments do not match net inputs.",
                          "Input is not batch sized")
        self._forward(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict:
        """pycaffe.py _Net_backward: diffs of the outputs given by name are written; layers ``start`` down to
        ``end`` run backward; returns {name: diff array} of the inputs (``end``'s bottoms) and of ``diffs``."""
        diffs = list(diffs or [])
        start_ind = self._layer_index(start) if start is not None else len(self._kinds) - 1
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        self._write_named(kwargs, self.outputs, "diff", "Top diff arguments do not match net outputs.",
                          "Diff is not batch sized")
        self._backward(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def _write_named(self, arrays: dict, names: list, field: str, mismatch: str, unbatched: str) -> None:
        """pycaffe.py's keyword arrays into the blobs' ``data`` (inputs) or ``diff`` (outputs): exactly the blobs
        ``names``, each of the blob's batch size."""
        if not arrays:
            return
        if set(arrays) != set(names):
            raise Exception(mismatch)
        for name, value in arrays.items():
            if np.shape(value)[0] != self.blobs[name].shape[0]:
                raise Exception(unbatched)
            getattr(self.blobs[name], field)[...] = value

    def forward_backward(self) -> float:
        """Net::ForwardBackward: the whole net forward, then backward; the loss."""
        loss = self._forward(0, len(self._kinds) - 1)
        self._backward(len(self._kinds) - 1, 0)
        return loss

    def _batch(self, arrays: dict):
        """pycaffe.py _Net_batch: the arrays in batches of the net's batch size, the last padded with zeros."""
        num = len(next(iter(arrays.values())))
        batch = next(iter(self.blobs.values())).shape[0]
        for b in range(num // batch):
            yield {name: a[b * batch:(b + 1) * batch] for name, a in arrays.items()}
        rest = num % batch
        if rest:
            yield {name: np.concatenate([a[-rest:], np.zeros((batch - rest,) + a.shape[1:])])
                   for name, a in arrays.items()}

    def forward_all(self, blobs=None, **kwargs) -> dict:
        """pycaffe.py _Net_forward_all: forward in batches; the outputs (and ``blobs``) of every sample."""
        outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        outs = {k: np.asarray(v) for k, v in outs.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
        return {k: v[:-pad] for k, v in outs.items()} if pad else outs

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs) -> tuple[dict, dict]:
        """pycaffe.py _Net_forward_backward_all: forward and backward in batches."""
        from itertools import zip_longest
        outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        grads = {d: [] for d in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs})
        backward_batches = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs})
        for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(value.copy())
        outs = {k: np.asarray(v) for k, v in outs.items()}
        grads = {k: np.asarray(v) for k, v in grads.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
        if pad:
            outs = {k: v[:-pad] for k, v in outs.items()}
            grads = {k: v[:-pad] for k, v in grads.items()}
        return outs, grads

    def reshape(self) -> None:
        """Net::Reshape: every layer's Reshape in order (the tops follow the bottoms' shapes)."""
        for i, kind in enumerate(self._kinds):
            kind.reshape([self._blobs[b] for b in self._bottom_ids[i]], [self._blobs[t] for t in self._top_ids[i]])

    def clear_param_diffs(self) -> None:
        """Net::ClearParamDiffs: every learnable blob's diff to zero."""
        for blobs in self.params.values():
            for blob in blobs:
                blob.grad.zero_()

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """pycaffe.py / _caffe.cpp Net_SetInputArrays: the arrays the first layer, a MemoryData layer, serves
        (C-contiguous float32, 4-d, of its channels, height and width; labels one per sample; a multiple of its
        batch size)."""
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        layer = self._kinds[0] if self._kinds else None
        if not isinstance(layer, kinds.Memory):
            raise RuntimeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        p = layer.layer_param.memory_data_param
        for name, arr, (c, h, w) in (("data array", data, (p.channels, p.height, p.width)),
                                     ("labels array", labels, (1, 1, 1))):
            if not arr.flags["C_CONTIGUOUS"]:
                raise RuntimeError(f"{name} must be C contiguous")
            if arr.ndim != 4:
                raise RuntimeError(f"{name} must be 4-d")
            if arr.dtype != np.float32:
                raise RuntimeError(f"{name} must be float32")
            for what, got, want in (("number of channels", arr.shape[1], c), ("height", arr.shape[2], h),
                                    ("width", arr.shape[3], w)):
                if got != want:
                    raise RuntimeError(f"{name} has wrong {what}")
        if data.shape[0] != labels.shape[0]:
            raise RuntimeError("data and labels must have the same first dimension")
        if data.shape[0] % p.batch_size != 0:
            raise RuntimeError("first dimensions of input arrays must be a multiple of batch size")
        layer.reset(data, labels)

    # -- callbacks (net.hpp Net::Callback) ---------------------------------------------------------------------
    def before_forward(self, fn) -> None:
        self._callbacks["before_forward"].append(fn)

    def after_forward(self, fn) -> None:
        self._callbacks["after_forward"].append(fn)

    def before_backward(self, fn) -> None:
        self._callbacks["before_backward"].append(fn)

    def after_backward(self, fn) -> None:
        self._callbacks["after_backward"].append(fn)

    # -- weights -----------------------------------------------------------------------------------------------
    def copy_from(self, path) -> None:
        """Net::CopyTrainedLayersFrom: a caffemodel's (or Caffe's HDF5 weights', ``.h5``) layers into the layers
        of the same name; their blob counts and shapes must agree (else the one-line error naming the file);
        layers of the file the net does not have are ignored."""
        if str(path).endswith(".h5"):
            return self.load_hdf5(path)
        weights = path if isinstance(path, caffe_files.CaffeModel) else caffe_files.read_caffemodel(path)
        targets = [Target(n, k.type if hasattr(k, "type") else "", [b.shape for b in k.blobs])
                   for n, k in zip(self._layer_names, self._kinds)]
        chosen, _ = match_weights(targets, weights, self._path)
        for name, kind in zip(self._layer_names, self._kinds):
            if name in chosen:
                for blob, array in zip(kind.blobs, weights.blob_arrays(chosen[name])):
                    blob.data[...] = np.asarray(array, dtype=np.float32).reshape(blob.shape)

    def share_with(self, other: "Net") -> None:
        """Net::ShareTrainedLayersWith: every layer of ``other`` whose name this net has lends it its parameters'
        data (the diffs stay each net's own)."""
        mine = dict(zip(self._layer_names, self._kinds))
        for name, kind in zip(other._layer_names, other._kinds):
            target = mine.get(name)
            if target is None:
                continue
            if len(target.blobs) != len(kind.blobs):
                raise ValueError(f"Incompatible number of blobs for layer {name}")
            for j, (dst, src) in enumerate(zip(target.blobs, kind.blobs)):
                if dst.shape != src.shape:
                    raise ValueError(f"Cannot share param {j} weights from layer '{name}'; shape mismatch. Source "
                                     f"param shape is {list(src.shape)}; target param shape is {list(dst.shape)}")
                dst.share_data(src)

    def to_proto(self, write_diff: bool = False) -> caffe_files.CaffeModel:
        """Net::ToProto: the net's layers (its phase on each, the inserted splits) with their blobs."""
        net = caffe_pb2.NetParameter(name=self._definition.name)
        for layer in self._definition.layer:
            net.layer.add().CopyFrom(layer)
        model = caffe_files.CaffeModel.from_net(net, None)
        for i, kind in enumerate(self._kinds):
            if len(kind.blobs):
                model.set_blob_arrays(i, [b.data.copy() for b in kind.blobs])
        return model

    def save(self, path) -> None:
        """_caffe.cpp Net_Save: the weights as a binary caffemodel (the net without diffs), written atomically."""
        caffe_files.write_caffemodel(path, self.to_proto())

    def save_hdf5(self, path) -> None:
        """Net::ToHDF5: Caffe's HDF5 weights (group ``data/<layer>/<blob index>``; a shared blob under its owner)."""
        hdf5_weights.write(path, [(n, {j: b.data for j, b in blobs.items()}) for n, blobs in self._owned_blobs()])

    def load_hdf5(self, path) -> None:
        """Net::CopyTrainedLayersFromHDF5: the layers of an HDF5 weights file into the layers of the same name."""
        stored = hdf5_weights.read(path)
        index = {n: k for n, k in zip(self._layer_names, self._kinds)}
        for name, arrays in stored.items():
            kind = index.get(name)
            if kind is None:
                continue
            if len(arrays) > len(kind.blobs):
                raise CaffeFileError(os.fspath(path), f"incompatible number of blobs for layer '{as_text(name)}': "
                                                      f"{len(arrays)} stored, the layer has {len(kind.blobs)}")
            for j, blob in enumerate(kind.blobs):
                if j not in arrays:
                    continue
                if tuple(arrays[j].shape) != tuple(blob.shape):
                    raise CaffeFileError(os.fspath(path), f"layer '{as_text(name)}' blob {j}: stored shape "
                                                          f"{list(arrays[j].shape)}, the layer's {list(blob.shape)}")
                blob.data[...] = arrays[j]

    def _owned_blobs(self) -> list[tuple[str, dict]]:
        """(name, {blob index: Blob}) of every layer, a shared blob under its owner only (Net::ToHDF5)."""
        seen, out = set(), []
        for n, k in zip(self._layer_names, self._kinds):
            mine = {}
            for j, b in enumerate(k.blobs):
                key = id(b._param) if b._param is not None else id(b)
                if key not in seen:
                    mine[j] = b
                seen.add(key)
            out.append((n, mine))
        return out
