"""Caffe's training databases: the Data layer's LMDB / LevelDB of ``caffe.Datum`` records and ``convert_imageset``
that writes such a database from an image list (the HDF5Data layer's files: :mod:`sfport.data.hdf5data`).

Followed from BVLC Caffe: ``util/db_lmdb.cpp`` and ``util/db_leveldb.cpp`` (read-only cursors in key order),
``layers/data_layer.cpp`` (the cursor wraps to the first key at the end; the first record fixes the top shape
through ``DataTransformer::InferBlobShape``), ``data_transformer.cpp`` (``Transform(const Datum&)``: an encoded
datum is decoded by ``DecodeDatumToCVMat`` with ``force_color`` / ``force_gray``, else ``DecodeDatumToCVMatNative``
(unchanged); a raw one is C x H x W uint8 ``data`` or ``float_data``; then the same crop, mirror, mean and scale as
a cv::Mat) and ``tools/convert_imageset.cpp`` with ``util/io.cpp`` (``ReadImageToDatum``,
``CVMatToDatum``, keys ``%08d_<path>``).

Positions follow :mod:`sfport.data.imagedata`: stream position ``pos`` reads record ``pos % n`` in key order, and its random
crop / mirror come from :func:`sfport.data.imagedata.sample_rng` (seed, pos), so micro-batch ``b`` is a pure function of
(source, seed, b) and a database of the images of an ImageData list gives the same batches as the list.
Nothing here unpickles: records are protobuf.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from google.protobuf import message as pb_message
from google.protobuf import unknown_fields

from sfport.data import images
from sfport.data.imagedata import Transform, read_list, resolve, sample_rng
from sfport.errors import CaffeFileError
from sfport.formats.disk import check_output
from sfport.protos import caffe_pb2

DP = caffe_pb2.DataParameter
BACKEND_NAMES = {DP.LEVELDB: "LEVELDB", DP.LMDB: "LMDB"}
_PACKAGES = {DP.LMDB: ("lmdb", "lmdb"), DP.LEVELDB: ("plyvel", "leveldb")}


def backend_of(name: str) -> int:
    """'lmdb' / 'leveldb' (convert_imageset's --backend) -> DataParameter.DB."""
    return {"lmdb": DP.LMDB, "leveldb": DP.LEVELDB}[name.lower()]


def _module(backend: int, who: str):
    module, extra = _PACKAGES[backend]
    try:
        return __import__(module)
    except ImportError:
        raise CaffeFileError(None, f"{who}: data_param.backend {BACKEND_NAMES[backend]} needs the Python package "
                                   f"'{module}' (pip install sfport[{extra}])") from None


def key_text(key: bytes) -> str:
    return key.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------------------
# reading a database
# ---------------------------------------------------------------------------------------------------------------

class Records:
    """A read-only database of one backend: its keys in cursor (sorted byte) order and the value of a key.
    The handle is opened per process (DataLoader workers open their own) and shared within one."""

    _open: dict = {}   # (pid, realpath) -> (backend, handle)
    _inherited: list = []   # LevelDB handles of a parent process: kept, never used nor closed here

    def __init__(self, path: str | os.PathLike, backend: int, who: str):
        self.path, self.backend, self.who = os.fspath(path), backend, who
        _module(backend, who)
        p = Path(self.path)
        if not p.exists():
            raise CaffeFileError(self.path, f"no such {BACKEND_NAMES[backend]} database")
        if not p.is_dir():
            raise CaffeFileError(self.path, f"not a {BACKEND_NAMES[backend]} database (a database is a folder)")
        self.keys = self._read_keys()
        if not self.keys:
            raise CaffeFileError(self.path, f"the {BACKEND_NAMES[backend]} database is empty")

    def __getstate__(self):
        return dict(self.__dict__)

    def _handle(self):
        pid = os.getpid()
        k = (pid, os.path.realpath(self.path))
        if k not in Records._open:
            for old in [o for o in Records._open if o[0] != pid]:   # forked: a DataLoader worker
                backend, handle = Records._open.pop(old)
                if backend == DP.LMDB:   # read-only without locks: this process's copy of the map is dropped
                    handle.close()
                else:
                    Records._inherited.append(handle)
            Records._open[k] = (self.backend, self._do_open())
        return Records._open[k][1]

    def _do_open(self):
        mod = _module(self.backend, self.who)
        try:
            if self.backend == DP.LMDB:   # db_lmdb.cpp: MDB_RDONLY | MDB_NOTLS on the folder
                return mod.open(self.path, readonly=True, lock=False, readahead=False, meminit=False,
                                subdir=True, max_readers=512)
            return mod.DB(self.path, create_if_missing=False)   # db_leveldb.cpp: create_if_missing = false
        except Exception as e:  # noqa: BLE001 - lmdb.Error / plyvel.Error: a missing or corrupt database
            first = (str(e).splitlines() or [type(e).__name__])[0]
            if "LOCK" in first or "lock" in first:
                first += " (a LevelDB is read by one process at a time)"
            raise CaffeFileError(self.path, f"not a readable {BACKEND_NAMES[self.backend]} database: "
                                            f"{first}") from None

    def _read_keys(self) -> list:
        h = self._handle()
        try:
            if self.backend == DP.LMDB:
                with h.begin(buffers=False) as txn:
                    return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
            return [bytes(k) for k in h.iterator(include_value=False)]
        except CaffeFileError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt database
            raise CaffeFileError(self.path, f"corrupt {BACKEND_NAMES[self.backend]} database: "
                                            f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None

    def get(self, key: bytes) -> bytes:
        h = self._handle()
        try:
            if self.backend == DP.LMDB:
                with h.begin(buffers=False) as txn:
                    value = txn.get(key)
            else:
                value = h.get(key)
        except Exception as e:  # noqa: BLE001
            raise CaffeFileError(self.path, f"record '{key_text(key)}': unreadable: "
                                            f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
        if value is None:
            raise CaffeFileError(self.path, f"record '{key_text(key)}' vanished from the database")
        return bytes(value)


def parse_datum(value: bytes, path, key: bytes) -> caffe_pb2.Datum:
    """A record as a caffe.Datum, checked: it parses, has no foreign fields, and its sizes hold together."""
    d = caffe_pb2.Datum()
    where = f"record '{key_text(key)}'"
    try:
        d.ParseFromString(value)
    except pb_message.DecodeError:
        raise CaffeFileError(path, f"{where}: not a caffe.Datum") from None
    if len(unknown_fields.UnknownFieldSet(d)):
        raise CaffeFileError(path, f"{where}: not a caffe.Datum (fields a Datum does not have)")
    return check_datum(d, path, key)


def check_datum(d: caffe_pb2.Datum, path, key: bytes) -> caffe_pb2.Datum:
    """A Datum's sizes hold together: an encoded one has image bytes, a raw one C x H x W values."""
    where = f"record '{key_text(key)}'"
    if d.encoded:
        if not d.data:
            raise CaffeFileError(path, f"{where}: an encoded Datum without image bytes")
    else:
        c, h, w = d.channels, d.height, d.width
        if c <= 0 or h <= 0 or w <= 0:
            raise CaffeFileError(path, f"{where}: a Datum of {c}x{h}x{w} (channels, height, width must be > 0)")
        n = c * h * w
        if len(d.data) != n and not (len(d.data) == 0 and len(d.float_data) == n):
            raise CaffeFileError(path, f"{where}: a {c}x{h}x{w} Datum holds {len(d.data) or len(d.float_data)} "
                                       f"values, not {n}")
    return d


def datum_image(d: caffe_pb2.Datum, force_color: bool, force_gray: bool, path, key: bytes) -> np.ndarray:
    """A Datum as the H x W x C image Caffe's transformer sees (data_transformer.cpp Transform(const Datum&)):
    encoded -> cv::imdecode (colour / gray when forced, else unchanged); raw -> uint8 data or float_data."""
    if d.encoded:
        img = images.decode_image(d.data, path, True if force_color else False if force_gray else None,
                                  where=f"record '{key_text(key)}'")
        if img.dtype != np.uint8:
            raise CaffeFileError(path, f"record '{key_text(key)}': the image is {img.dtype}, Caffe reads 8-bit "
                                       f"images only")
        return img if img.ndim == 3 else img[:, :, None]
    c, h, w = d.channels, d.height, d.width
    if len(d.data):
        chw = np.frombuffer(d.data, np.uint8).reshape(c, h, w)
    else:
        chw = np.asarray(d.float_data, np.float32).reshape(c, h, w)
    return chw.transpose(1, 2, 0)


class RecordStream(torch.utils.data.Dataset):
    """A database as an endless stream: position ``pos`` is the record ``pos % n`` in key order (the Data and
    AnnotatedData layers' readers)."""
    records: Records

    @staticmethod
    def records_of(layer, base_dir=None) -> tuple[Records, Path | None]:
        """The layer's database (``data_param.source``, found from ``base_dir``) and that base folder."""
        p = layer.data_param
        who = f"layer '{layer.name}' ({layer.type})"
        if not p.source:
            raise CaffeFileError(None, f"{who}: data_param.source is not set")
        base = Path(base_dir) if base_dir else None
        return Records(resolve(p.source, base), p.backend, who), base

    def __len__(self) -> int:
        return len(self.records.keys)

    def key_at(self, pos: int) -> bytes:
        return self.records.keys[pos % len(self.records.keys)]

    def describe(self, pos: int) -> tuple[str, str]:
        """(database, "record 'KEY'") of stream position ``pos``: what a message about its sample names."""
        return self.records.path, f"record '{key_text(self.key_at(pos))}'"


class DatumDataset(RecordStream):
    """A Data layer's database as sfport's endless stream: item ``pos`` -> (CHW float32, label, pos, error), the
    record ``pos % n`` in key order, transformed with the draws of (seed, pos). Items are what
    :func:`sfport.data.imagedata.collate` stacks."""

    def __init__(self, records: Records, transform: Transform, seed: int = 0, force_color: bool = False,
                 force_gray: bool = False, skip_bad: bool = False):
        if force_color and force_gray:
            raise CaffeFileError(None, f"{records.who}: cannot set both force_color and force_gray")
        self.records, self.transform, self.seed = records, transform, seed
        self.force_color, self.force_gray, self.skip_bad = force_color, force_gray, skip_bad
        self.list_path = records.path
        self.expected: tuple | None = None

    @classmethod
    def from_layer(cls, layer, train: bool = True, seed: int = 0, base_dir=None,
                   skip_bad: bool = False) -> "DatumDataset":
        records, base = cls.records_of(layer, base_dir)
        tp = layer.transform_param
        return cls(records, Transform.from_layer(layer, train, base), seed, tp.force_color, tp.force_gray,
                   skip_bad)

    def image(self, key: bytes) -> tuple[np.ndarray, int]:
        d = parse_datum(self.records.get(key), self.records.path, key)
        return datum_image(d, self.force_color, self.force_gray, self.records.path, key), int(d.label)

    def first_shape(self) -> tuple:
        """(C, H, W) of the first record, decoded (what InferBlobShape starts from)."""
        img, _ = self.image(self.records.keys[0])
        h, w, c = img.shape
        return (c, h, w)

    def __getitem__(self, pos: int):
        key = self.key_at(pos)
        label = 0
        try:
            img, label = self.image(key)
            try:
                x = self.transform(img, sample_rng(self.seed, pos))
            except ValueError as e:
                raise CaffeFileError(self.records.path, f"record '{key_text(key)}': {e}") from None
            if self.expected is not None and tuple(x.shape) != tuple(self.expected):
                raise CaffeFileError(self.records.path, f"record '{key_text(key)}' gives a {list(x.shape)} "
                                                        f"sample, the first record {list(self.expected)}")
        except CaffeFileError as e:
            return None, label, pos, (e.path, e.message, self.skip_bad)
        return torch.from_numpy(x), label, pos, None

    def shape(self) -> tuple:
        """(C, H, W) of one transformed sample (the first record); later records must give the same."""
        x, _, _, err = self[0]
        if x is None:
            raise CaffeFileError(err[0], err[1])
        self.expected = tuple(x.shape)
        return self.expected


# ---------------------------------------------------------------------------------------------------------------
# convert_imageset
# ---------------------------------------------------------------------------------------------------------------

def _match_ext(filename: str, enc: str) -> bool:
    """io.cpp matchExt."""
    p = filename.rfind(".")
    ext = (filename[p + 1:] if p >= 0 else filename).lower()
    enc = enc.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def image_to_datum(filename: str, label: int, height: int, width: int, is_color: bool, encoding: str):
    """io.cpp ReadImageToDatum: None when the image cannot be read; with an encoding, the file's own bytes when
    nothing changes them, else the image re-encoded; without, the raw C x H x W bytes (CVMatToDatum)."""
    return read_image_to_datum(filename, label, height, width, is_color, encoding)[0]


def read_image_to_datum(filename: str, label: int, height: int, width: int, is_color: bool, encoding: str,
                        min_dim: int = 0, max_dim: int = 0, with_size: bool = False):
    """:func:`image_to_datum` and the image's own (height, width) (the SSD fork's GetImageSize), (None, None) when
    it cannot be read. The SSD fork's io.cpp adds ``min_dim`` / ``max_dim`` (the aspect kept: the smaller side
    scaled up to min_dim, then the larger down to max_dim, by one float factor) and, ``with_size``, records
    channels, height and width of an encoded image too (its EncodeCVMatToDatum and ReadImageToDatum)."""
    import cv2  # noqa: PLC0415
    img = images.read_image_or_none(filename, is_color)
    if img is None:
        return None, None
    size = img.shape[:2]
    if min_dim > 0 or max_dim > 0:   # the SSD fork's ReadImageToCVMat
        small, large = min(size), max(size)
        factor = np.float32(1)
        if min_dim > 0 and small < min_dim:
            factor = np.float32(min_dim) / np.float32(small)
        if max_dim > 0 and int(factor * np.float32(large)) > max_dim:
            factor = np.float32(max_dim) / np.float32(large)
        if factor != 1:
            img = cv2.resize(img, None, fx=float(factor), fy=float(factor))
    elif height > 0 and width > 0:
        img = cv2.resize(img, (width, height))
    d = caffe_pb2.Datum()
    d.label = label
    if img.ndim == 2:
        img = img[:, :, None]
    if encoding:
        if with_size:
            d.height, d.width, d.channels = img.shape
        if (img.shape[2] == 3) == is_color and not height and not width and not min_dim and not max_dim \
                and _match_ext(filename, encoding):
            d.data = Path(filename).read_bytes()   # ReadFileToDatum
        else:
            ok, buf = cv2.imencode("." + encoding, img)
            if not ok:
                raise CaffeFileError(filename, f"OpenCV cannot encode the image as '{encoding}'")
            d.data = buf.tobytes()
        d.encoded = True
        return d, size
    d.height, d.width, d.channels = img.shape
    d.data = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
    d.encoded = False
    return d, size


class _Writer:
    """A new database at ``path`` (a folder that does not exist yet), written in transactions."""

    def __init__(self, path: str, backend: int, who: str = "convert-imageset"):
        self.backend = backend
        mod = _module(backend, who)
        if backend == DP.LMDB:
            self.mod = mod
            self.env = mod.open(path, map_size=1 << 26, subdir=True, meminit=False, map_async=False)
        else:   # db_leveldb.cpp NEW: error_if_exists, create_if_missing, block_size 64 KiB, write buffer 256 MiB
            self.db = mod.DB(path, create_if_missing=True, error_if_exists=True, block_size=65536,
                             write_buffer_size=268435456, max_open_files=100)

    def commit(self, pairs: list) -> None:
        if self.backend == DP.LEVELDB:
            with self.db.write_batch() as wb:
                for k, v in pairs:
                    wb.put(k, v)
            return
        while True:   # db_lmdb.cpp Commit: double the map on MDB_MAP_FULL and try again
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in pairs:
                        txn.put(k, v)
                return
            except self.mod.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self) -> None:
        if self.backend == DP.LMDB:
            self.env.sync(True)
            self.env.close()
        else:
            self.db.close()


@contextlib.contextmanager
def new_database(db_name, backend: str, who: str):
    """A new database at ``db_name`` (db::NEW: an existing one is refused), written through the yielded
    writer's ``commit(pairs)`` under a temporary name beside it and renamed when the block completes; removed on
    any failure, so a half-written database never has the final name."""
    b = backend_of(backend)
    target = Path(db_name)
    if target.exists():
        raise CaffeFileError(target, f"already exists ({who} creates a new database)")
    check_output(target, "database")   # its folder can take it: before any image is read
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        writer = _Writer(tmp, b, who)
        try:
            yield writer
        finally:
            writer.close()
        if target.exists():
            raise CaffeFileError(target, "appeared while converting; not replaced")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Batched:
    """convert_imageset.cpp's transactions (convert_annoset.cpp's too): records committed every 1000, with
    "Processed N files." after each commit and after the last one."""

    def __init__(self, writer, log=None, every: int = 1000):
        self.writer, self.log, self.every = writer, log, every
        self.pending: list = []
        self.written = 0

    def add(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        self.written += 1
        if len(self.pending) == self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.commit(self.pending)
            self.pending = []
            if self.log:
                self.log(f"Processed {self.written} files.")


def encoding_for(name: str, encode_type: str, encoded: bool, list_file, line: int, option: str) -> str:
    """The encoding a record is stored in: ``encode_type``, or with ``encoded`` alone the one guessed from the
    name *with* its dot, as convert_imageset.cpp / convert_annoset.cpp do (their matchExt then never matches, so
    ReadImageToDatum re-encodes)."""
    if not encoded or encode_type:
        return encode_type
    dot = name.rfind(".")
    if dot < 0:
        raise CaffeFileError(list_file, f"line {line}: cannot guess the encoding of '{name}' (give {option})")
    return name[dot:].lower()


def unreadable(path: str, list_file, line: int) -> CaffeFileError:
    what = "missing" if not os.path.exists(path) else "unreadable or corrupt"
    return CaffeFileError(list_file, f"line {line}: image '{path}' is {what}")


def same_size(d, size: tuple | None, list_file, line: int, path: str, option: str) -> tuple:
    """--check_size: every raw record the size of the first (returns the first's)."""
    shape = (d.channels, d.height, d.width)
    if size is not None and shape != size:
        raise CaffeFileError(list_file, f"line {line}: image '{path}' is {'x'.join(map(str, shape))}, the first "
                                        f"{'x'.join(map(str, size))} ({option})")
    return size or shape


def convert_imageset(root_folder: str, list_file, db_name, gray: bool = False, shuffle: bool = False,
                     seed: int = 0, backend: str = "lmdb", resize_width: int = 0, resize_height: int = 0,
                     check_size: bool = False, encoded: bool = False, encode_type: str = "",
                     skip_bad: bool = False, log=None) -> dict:
    """tools/convert_imageset.cpp: the images of ``list_file`` (``path label`` lines; path = ``root_folder +
    path``, joined as strings as Caffe does) as Datum records keyed ``%08d_<path>`` in list order (``shuffle``:
    a permutation seeded by ``seed``). The database is written under a temporary name beside ``db_name`` and
    renamed when complete; an existing ``db_name`` is refused as Caffe does (db::NEW). A missing or unreadable
    image stops with its list line (Caffe logs and skips it: ``skip_bad``). Returns counts."""
    backend_of(backend)
    if Path(db_name).exists():
        raise CaffeFileError(db_name, "already exists (convert-imageset creates a new database)")
    check_output(db_name, "database")   # its folder can take it: before the list is read
    entries = read_list(list_file)
    if shuffle:
        entries = [entries[i] for i in np.random.default_rng([seed, 4099]).permutation(len(entries))]
    is_color = not gray
    encoded = encoded or bool(encode_type)   # "encode_type specified, assuming encoded=true"
    resize_height, resize_width = max(0, resize_height), max(0, resize_width)
    skipped = 0
    size = None
    with new_database(db_name, backend, "convert-imageset") as writer:
        out = Batched(writer, log)
        for line_id, e in enumerate(entries):
            enc = encoding_for(e.path, encode_type, encoded, list_file, e.line, "--encode_type")
            path = root_folder + e.path
            d = image_to_datum(path, e.label, resize_height, resize_width, is_color, enc)
            if d is None:
                if skip_bad:
                    skipped += 1
                    if log:
                        log(f"Could not open or find file {path}")
                    continue
                raise unreadable(path, list_file, e.line)
            if check_size and not d.encoded:
                size = same_size(d, size, list_file, e.line, path, "--check_size")
            out.add(f"{line_id:08d}_{e.path}".encode(), d.SerializeToString())
        out.flush()
    written = out.written
    return {"images": len(entries), "written": written, "skipped": skipped}
