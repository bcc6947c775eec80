"""Feeding a net during training: micro-batches from its ImageData, Data (LMDB / LevelDB), HDF5Data, the SSD
fork's AnnotatedData or the segmentation forks' DenseImageData / ImageSegData layer (a DataLoader over the
deterministic streams of sfport.data.imagedata, sfport.data.db, sfport.data.hdf5data, sfport.data.annotated and
sfport.data.segdata), or synthetic images and labels for benchmarks."""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch

from sfport.data.imagedata import INT32_MAX, ImageDataset, MicroBatches, check, loader
from sfport.data.db import DP, DatumDataset
from sfport.data.hdf5data import HDF5Dataset, collate_tops
from sfport.data.annotated import AnnotatedDataset, collate_for
from sfport.data import segdata
from sfport import converters as conv_registry
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2
from sfport.netdef.netstate import NetState
from sfport.netdef import datalayers
from sfport.netdef.datalayers import data_layers, data_set_tops
from sfport.solver.config import Options
from sfport.report.progress import CaffeLog


def default_workers(reader) -> int:
    """The DataLoader workers of a data layer's reader (``datalayers`` SPECS' reader) when --workers is not given.
    HDF5Data's rows are in memory already: a worker only adds the copy between processes (the golden tiny net,
    batch 8, 2 cores: 449 iterations/s in the main process, 296 with 2 workers; bench/bench_vs_caffe.py). The readers
    that decode images take one worker per core, up to 16 (bench/bench_loader.py)."""
    return 0 if reader == datalayers.HDF5 else min(16, os.cpu_count() or 2)


class Feeder:
    """Micro-batches for one net: from its ImageData layer (a DataLoader over the deterministic stream) or
    synthetic (random images, uniform labels) for benchmarks."""

    def __init__(self, net_param, state, opts: Options, base: Path | None, seed: int, world: int, rank: int,
                 iter_size: int, log: CaffeLog, net_path: str | None = None):
        """``net_path``: the file of ``net_param`` (the net prototxt, or the solver that holds it), named by the
        errors about its data layer that name no other file."""
        self.net_path = net_path
        self._bad_seen: set = set()   # the bad list lines / records skipped (--skip-bad-images), each once
        self._last: list[int] = []    # stream positions of the last micro-batch
        self._reshaped = None         # (file, where, C x H x W) when the last batch is not of the set-up size
        try:
            self._setup(net_param, state, opts, base, seed, world, rank, iter_size, log)
        except CaffeFileError as e:
            if e.path is not None or net_path is None:
                raise
            raise CaffeFileError(net_path, e.message) from None

    def _setup(self, net_param, state, opts: Options, base: Path | None, seed: int, world: int, rank: int,
               iter_size: int, log: CaffeLog):
        state = NetState.of(state)
        phase = state.phase
        layers = data_layers(net_param, state)
        self.inputs: dict[str, tuple] = {}
        self.layer = None
        self.dataset = None
        self.synthetic = opts.synthetic_data
        self.world, self.rank, self.iter_size, self.opts = world, rank, iter_size, opts
        self.seed = seed
        if len(layers) != 1 or len(layers[0].top) < 1:
            raise CaffeFileError(None, f"sfport needs one data layer in the {'TRAIN' if phase == 0 else 'TEST'}"
                                       f" net, found {len(layers)}")
        layer = layers[0]
        spec = datalayers.spec_of(layer)
        if opts.source and phase == opts.source_phase and spec.reader is not None:   # --source
            layer = type(layer)()
            layer.CopyFrom(layers[0])
            datalayers.params_of(layer).source = opts.source
        self.layer = layer
        self.workers = opts.workers   # None: chosen below, by what the data layer reads
        self.collate = None
        if spec.reader is not None:
            self.batch = datalayers.params_of(layer).batch_size
        elif datalayers.is_input(layer) and opts.synthetic_data:
            shape = tuple(layer.input_param.shape[0].dim) if len(layer.input_param.shape) else ()
            self.batch = shape[0] if shape else 1
        else:
            raise CaffeFileError(None, f"data layer '{layer.name}' is {layer.type}: sfport reads ImageData "
                                       f"lists, Data (LMDB / LevelDB), AnnotatedData, HDF5Data, DenseImageData and "
                                       f"ImageSegData (or --synthetic-data)")
        if self.workers is None:
            self.workers = default_workers(spec.reader)
        if self.batch <= 0:   # image_data_layer.cpp, data_layer.cpp, hdf5_data_layer.cpp: CHECK_GT(batch_size, 0)
            raise CaffeFileError(None, f"layer '{layer.name}' ({layer.type}): batch_size must be positive, not "
                                       f"{self.batch}")
        if self.synthetic and not spec.synthetic:
            raise CaffeFileError(None, f"data layer '{layer.name}' is {layer.type}: --synthetic-data makes "
                                       f"images for ImageData, Data and Input layers")
        self.data_top, self.label_top = layer.top[0], (layer.top[1] if len(layer.top) > 1 else None)
        label_shape = (self.batch,)
        if self.synthetic:
            p = layer.image_data_param
            tp = layer.transform_param
            h = tp.crop_size or p.new_height
            w = tp.crop_size or p.new_width
            chw = (3 if p.is_color else 1, h, w) if (h and w) else opts.data_shape
            if datalayers.is_input(layer) and len(layer.input_param.shape):
                chw = tuple(layer.input_param.shape[0].dim[1:])
            if not chw:
                raise CaffeFileError(None, f"data layer '{layer.name}': --synthetic-data needs the image size: "
                                           f"--shape C,H,W (--shape 3,112,96 for SphereFace's 112x96 faces), or "
                                           f"new_height/new_width or crop_size in the prototxt")
            self.chw = tuple(chw)
        elif spec.reader == datalayers.DB:   # data_layer.cpp, db_lmdb.cpp / db_leveldb.cpp
            self.dataset = DatumDataset.from_layer(layer, train=(phase == caffe_pb2.TRAIN), seed=seed,
                                                   base_dir=base, skip_bad=opts.skip_bad_images)
            backend = "lmdb" if layer.data_param.backend == DP.LMDB else "leveldb"
            log(f"Opened {backend} {self.dataset.records.path}", f"db_{backend}.cpp:22")
            if layer.data_param.backend == DP.LEVELDB and self.workers:
                self.workers = 0   # a LevelDB is opened by one process at a time: read it in this one
            self.chw = tuple(data_set_tops(layer, self.dataset.first_shape())[0][1:])
            if tuple(self.dataset.shape()) != self.chw:
                raise CaffeFileError(self.dataset.records.path, f"the first record gives {list(self.dataset.shape())}"
                                                                f", not {list(self.chw)}")
            log(f"output data size: {self.batch},{','.join(str(d) for d in self.chw)}", "data_layer.cpp:41")
        elif spec.reader == datalayers.ANNO:   # the SSD fork's annotated_data_layer.cpp
            self.dataset = AnnotatedDataset.from_layer(layer, train=(phase == caffe_pb2.TRAIN), seed=seed,
                                                       base_dir=base, skip_bad=opts.skip_bad_images)
            backend = "lmdb" if layer.data_param.backend == DP.LMDB else "leveldb"
            log(f"Opened {backend} {self.dataset.records.path}", f"db_{backend}.cpp:22")
            if layer.data_param.backend == DP.LEVELDB and self.workers:
                self.workers = 0
            chw, boxes = self.dataset.first()
            tops = data_set_tops(layer, chw, boxes)
            self.chw = tuple(tops[0][1:])
            first = tuple(self.dataset.shape())   # FIT_SMALL_SIZE: each sample its own size (batches of one)
            if first != self.chw and self.dataset.fixed_size:
                raise CaffeFileError(self.dataset.records.path, f"the first record gives {list(first)}, not "
                                                                f"{list(self.chw)}")
            log(f"output data size: {self.batch},{','.join(str(d) for d in self.chw)}",
                "annotated_data_layer.cpp:61")
            label_shape = tops[1] if len(tops) > 1 else label_shape   # 1 x 1 x boxes x 8: each batch its own
            self.collate = collate_for(self.dataset)
        elif spec.reader == datalayers.HDF5:   # hdf5_data_layer.cpp
            log(f"Loading list of HDF5 filenames from: {layer.hdf5_data_param.source}", "hdf5_data_layer.cpp:81")
            self.dataset = HDF5Dataset.from_layer(layer, seed=seed, base_dir=base)
            log(f"Number of HDF5 files: {len(self.dataset.files)}", "hdf5_data_layer.cpp:94")
            self.collate = collate_tops
            for t, shape in zip(layer.top, data_set_tops(layer, self.dataset.top_shapes())):
                self.inputs[t] = shape
            self.chw = tuple(self.inputs[layer.top[0]][1:])
        elif spec.reader in datalayers.SEG_READERS:   # dense_image_data_layer.cpp, image_seg_data_layer.cpp
            self._setup_seg(layer, spec, phase, opts, base, seed, log)
        else:   # datalayers.LIST: image_data_layer.cpp
            self.dataset = ImageDataset.from_layer(layer, train=(phase == caffe_pb2.TRAIN), seed=seed,
                                                   data_root=opts.data_root, base_dir=base,
                                                   skip_bad=opts.skip_bad_images)
            log(f"A total of {len(self.dataset)} images.", "image_data_layer.cpp:63")
            self.chw = self.dataset.shape()
            log(f"output data size: {self.batch},{','.join(str(d) for d in self.chw)}", "image_data_layer.cpp:90")
        if spec.reader not in (datalayers.HDF5,) + datalayers.SEG_READERS or self.synthetic:
            self.inputs[self.data_top] = (self.batch,) + tuple(self.chw)
            if self.label_top:
                self.inputs[self.label_top] = label_shape
        for top, shape in self.inputs.items():   # blob.cpp Blob::Reshape: CHECK_LE(count_, INT_MAX)
            count = math.prod(int(d) for d in shape)
            if count > INT32_MAX:
                raise CaffeFileError(None, f"layer '{layer.name}' ({layer.type}): the top '{top}' of "
                                           f"{' x '.join(str(d) for d in shape)} is {count} values, more than a "
                                           f"Caffe blob holds (INT_MAX)")
        self.num_classes: int | None = None   # labels of synthetic data; set once the net is built
        self._it = None

    def _setup_seg(self, layer, spec, phase: int, opts: Options, base: Path | None, seed: int, log: CaffeLog):
        """The segmentation forks' layers: the list read, the first image read, every top shaped by it
        (DataLayerSetUp), with the forks' log lines."""
        dense = spec.reader == datalayers.DENSE
        where = "dense_image_data_layer.cpp" if dense else "image_seg_data_layer.cpp"
        log(f"Opening file {datalayers.params_of(layer).source}", f"{where}:{41 if dense else 45}")
        self.dataset = segdata.SegDataset.from_layer(layer, train=(phase == caffe_pb2.TRAIN), seed=seed,
                                                     data_root=opts.data_root, base_dir=base,
                                                     skip_bad=opts.skip_bad_images)
        log(f"A total of {len(self.dataset)} {'examples' if dense else 'images'}.", f"{where}:{56 if dense else 67}")
        tops = data_set_tops(layer, self.dataset.first)
        self.chw = tuple(tops[0][1:])
        lines = (109,) if dense else (113, 117, 121)
        for name, top, shape, line in zip(("data", "label", "data_dim"), layer.top, tops, lines + (0, 0)):
            self.inputs[top] = shape
            if line:
                log(f"output {name} size: {','.join(str(d) for d in shape)}", f"{where}:{line}")
        self.collate = segdata.collate_for(self.dataset)

    def start(self, first_update: int, stop_update: int | None = None, pin: bool = False):
        if self.synthetic:
            self._next_synthetic = first_update * self.iter_size
            return
        sampler = MicroBatches(self.batch, self.world, self.rank, self.iter_size, first_update, stop_update)
        if self.collate is not None:
            self._it = iter(loader(self.dataset, sampler, self.workers, pin, self.collate))
        else:
            self._it = iter(loader(self.dataset, sampler, self.workers, pin))

    def next(self) -> dict[str, torch.Tensor]:
        if self.synthetic:  # made on the training device: no host-to-device copy in benchmarks
            dev = torch.device(self.opts.device)
            g = torch.Generator(device=dev).manual_seed(self.seed * 1000003 + self._next_synthetic * 31 + self.rank)
            self._next_synthetic += 1
            x = torch.randn((self.batch,) + tuple(self.chw), generator=g, device=dev)
            out = {self.data_top: x}
            if self.label_top:
                out[self.label_top] = torch.randint(0, max(self.num_classes or 1, 1), (self.batch,), generator=g,
                                                    device=dev).float()
            return out
        if self.collate is collate_tops:
            rows, self._last, error = next(self._it)
            if error is not None:
                raise CaffeFileError(*error)
            return dict(zip(self.layer.top, rows))
        while True:
            batch = check(next(self._it))
            x, y, positions, bad = batch[:4]
            if bad:
                self._count_bad(positions, x is None)
            if x is not None:
                break
        self._last = positions
        self._reshaped = None
        if tuple(x.shape[1:]) != tuple(self.chw):
            self._reshaped = self.dataset.describe(positions[0]) + (tuple(x.shape[1:]),)
        out = {self.data_top: x}
        if self.label_top:
            out[self.label_top] = y
        for top, value in zip(self.layer.top[2:], batch[5] if len(batch) > 5 else ()):   # ImageSegData's data_dim
            out[top] = value
        return out

    @property
    def bad(self) -> int:
        """How many list lines (records) were skipped as unreadable (--skip-bad-images), each counted once."""
        return len(self._bad_seen)

    def _count_bad(self, positions: list[int], none_good: bool) -> None:
        """The micro-batch of MicroBatches is ``range(g*B, (g+1)*B)``: its skipped items are those not among the
        good ``positions`` (all of them when ``none_good``)."""
        g = positions[0] // self.batch
        skipped = set(range(g * self.batch, (g + 1) * self.batch)) - (set() if none_good else set(positions))
        self._bad_seen.update(self.dataset.describe(p) for p in skipped)

    @contextlib.contextmanager
    def blame(self):
        """Around a forward of the batch just read: a layer's complaint about its data (a ValueError: a label
        outside the classes of the loss, ...) is one line naming the data and the batch; so is a batch of another
        size than the one the net was set up for (the first image's) that the net cannot take (Caffe reshapes
        the net to each batch, and a layer that cannot take the new size fails its CHECK)."""
        try:
            yield
        except ValueError as e:
            if self.dataset is None or not self._last:
                raise
            path, _ = self.dataset.describe(self._last[0])
            where = ", ".join(self.dataset.describe(p)[1] for p in self._last[:3])
            more = f" and {len(self._last) - 3} more" if len(self._last) > 3 else ""
            raise CaffeFileError(path, f"the batch of {where}{more}: {_first_line(e)}") from None
        except RuntimeError as e:
            if self._reshaped is None:
                raise
            path, where, shape = self._reshaped
            raise CaffeFileError(path, f"{where} is {'x'.join(map(str, shape))}, the net was set up for "
                                       f"{'x'.join(map(str, self.chw))} (its first image) and cannot take it: "
                                       f"{_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def num_classes(net) -> int | None:
    """The classes of the first layer whose converter says how many it scores (``class_count``: the scores of a
    SoftmaxWithLoss or Accuracy, a MarginInnerProduct's logits): the labels of synthetic data."""
    for gl in net.graph.layers:
        count = conv_registry.get_for(gl.param).class_count(gl)
        if count is not None:
            return count
    return None
