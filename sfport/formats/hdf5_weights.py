"""Caffe's HDF5 weights (net.cpp Net::ToHDF5 / Net::CopyTrainedLayersFromHDF5, what ``snapshot_format: HDF5`` and
pycaffe's ``save_hdf5`` write): a group ``data`` with one group per layer, each holding its parameter blobs as
float32 datasets named by their index ``0``, ``1``, ... (a blob shared with an earlier layer is stored only under
its owner). Needs h5py (``pip install sfport[hdf5]``)."""
from __future__ import annotations

import os

import numpy as np

from sfport.errors import CaffeFileError
from sfport.formats import caffe_files, disk
from sfport.protos import caffe_pb2


def _h5py(path):
    try:
        import h5py
    except ImportError:
        raise CaffeFileError(os.fspath(path), "Caffe's HDF5 weights need h5py: pip install 'sfport[hdf5]'") from None
    return h5py


def _write_staged(path, fill) -> None:
    """``fill(h5py.File)`` into a temporary file beside ``path`` (:class:`sfport.formats.disk.Staged`), renamed to
    ``path`` when whole; removed on any failure."""
    h5py = _h5py(path)
    staged = disk.Staged(path, "HDF5 file")
    try:
        with h5py.File(staged.tmp, "w") as f:
            fill(f)
        disk.write_files({path: staged})
    except BaseException:
        staged.discard()
        raise


def write(path, layers: list[tuple[str, dict]]) -> None:
    """``layers``: (layer name, {blob index: array}) in the net's order, every layer (an empty group for a layer
    without blobs, as Caffe writes). Written under a temporary name, then renamed."""
    def fill(f):
        data = f.create_group("data")
        for name, blobs in layers:
            group = data.require_group(name)
            for j, array in blobs.items():
                group.create_dataset(str(j), data=np.asarray(array, dtype=np.float32))
    _write_staged(path, fill)


def read(path) -> dict[str, dict[int, np.ndarray]]:
    """{layer name: {blob index: array}} of an HDF5 weights file; a file that is not one is a one-line error."""
    h5py = _h5py(path)
    disk.check_readable_file(path)
    try:
        with h5py.File(os.fspath(path), "r") as f:
            if "data" not in f or not isinstance(f["data"], h5py.Group):
                raise CaffeFileError(os.fspath(path), "has no group 'data': not Caffe's HDF5 weights")
            out = {}
            for name, group in f["data"].items():
                if not isinstance(group, h5py.Group):
                    raise CaffeFileError(os.fspath(path), f"data/{name} is not a group of blobs")
                blobs = {}
                for key, ds in group.items():
                    if not key.isdigit() or not isinstance(ds, h5py.Dataset):
                        raise CaffeFileError(os.fspath(path), f"data/{name}/{key} is not a blob named by its index")
                    blobs[int(key)] = np.asarray(ds[()], dtype=np.float32)
                out[name] = blobs
            return out
    except OSError as e:
        raise CaffeFileError(os.fspath(path), f"cannot be read as HDF5: {e}") from None


def write_model(path, model: caffe_files.CaffeModel) -> None:
    """A caffemodel's weights as Caffe's HDF5 weights (every layer with blobs; what ``snapshot_format: HDF5``
    writes for the model)."""
    write(path, [(name, dict(enumerate(model.blob_arrays(i)))) for name, i in model.weight_layers().items()])


def read_model(path) -> caffe_files.CaffeModel:
    """Caffe's HDF5 weights as a :class:`caffe_files.CaffeModel` of named layers with their blobs (what
    Net::CopyTrainedLayersFromHDF5 matches by layer name)."""
    stored = read(path)
    net = caffe_pb2.NetParameter()
    for name in stored:
        net.layer.add(name=name)
    model = caffe_files.CaffeModel.from_net(net, os.fspath(path))
    for i, (name, blobs) in enumerate(stored.items()):
        if sorted(blobs) != list(range(len(blobs))):
            raise CaffeFileError(os.fspath(path), f"data/{name}: blobs {sorted(blobs)} are not numbered 0..{len(blobs) - 1}")
        model.set_blob_arrays(i, [blobs[j] for j in range(len(blobs))])
    return model


def write_solverstate(path, st) -> None:
    """sgd_solver.cpp SnapshotSolverStateToHDF5 of a :class:`caffe_files.SolverStateFile`: ``iter``,
    ``learned_net``, ``current_step`` and a group ``history`` of one dataset per history blob, by index (sfport's
    resume record, when there is one, as a byte dataset ``sfport_resume`` that Caffe does not read); written under a
    temporary name, then renamed."""
    def fill(f):
        f.create_dataset("iter", data=np.int32(st.state.iter))
        f.create_dataset("learned_net", data=st.state.learned_net)
        f.create_dataset("current_step", data=np.int32(st.state.current_step))
        group = f.create_group("history")
        for j, array in enumerate(st.history):
            group.create_dataset(str(j), data=np.asarray(array, dtype=np.float32))
        if st.resume is not None:
            f.create_dataset("sfport_resume", data=np.frombuffer(st.resume, dtype=np.uint8))
    _write_staged(path, fill)


def read_solverstate(path) -> caffe_files.SolverStateFile:
    """An HDF5 solver state (RestoreSolverStateFromHDF5) as a :class:`caffe_files.SolverStateFile`."""
    h5py = _h5py(path)
    disk.check_readable_file(path)
    where = os.fspath(path)
    try:
        with h5py.File(where, "r") as f:
            for key in ("iter", "current_step", "history"):
                if key not in f:
                    raise CaffeFileError(where, f"has no '{key}': not Caffe's HDF5 solver state")
            learned = f["learned_net"][()] if "learned_net" in f else b""
            learned = learned.decode() if isinstance(learned, bytes) else str(learned)
            group = f["history"]
            for j in range(len(group)):
                if str(j) not in group or not isinstance(group[str(j)], h5py.Dataset):
                    raise CaffeFileError(where, f"history/{j} is missing or not a dataset")
            history = [np.asarray(group[str(j)][()], dtype=np.float32) for j in range(len(group))]
            resume = None
            if isinstance(f.get("sfport_resume"), h5py.Dataset):
                resume = np.asarray(f["sfport_resume"][()], dtype=np.uint8).tobytes()
            state = caffe_pb2.SolverState(iter=int(f["iter"][()]), learned_net=learned,
                                          current_step=int(f["current_step"][()]))
            return caffe_files.SolverStateFile(where, state, history, resume)
    except (OSError, KeyError, ValueError) as e:
        raise CaffeFileError(where, f"cannot be read as Caffe's HDF5 solver state: {e}") from None
