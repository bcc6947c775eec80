"""Caffe's training databases (sfport.data.db): a Data layer on an LMDB / LevelDB written by `sfport convert-imageset`
gives batches bit-identical to ImageData on the same images; HDF5Data gives the arrays the test wrote; both feed
`sfport train` to the same weights as ImageData."""
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

import sfport
from sfport.data import imagedata, db, hdf5data
from sfport.cli import cli
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2
from sfport.netdef.datalayers import data_set_tops

lmdb = pytest.importorskip("lmdb")
h5py = pytest.importorskip("h5py")
cv2 = pytest.importorskip("cv2")

BACKENDS = ["lmdb"] + (["leveldb"] if __import__("importlib").util.find_spec("plyvel") else [])


def layer(text):
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    return lp


def make_images(folder, n=5, h=11, w=13, ext="png", gray_source=False):
    """n random images and their list (``img/i.ext label``)."""
    rng = np.random.default_rng(1)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img = rng.integers(0, 256, (h + i % 2, w, 1 if gray_source else 3), dtype=np.uint8)
        name = f"img/{i}.{ext}"
        assert cv2.imwrite(str(folder / name), img)
        lines.append(f"{name} {i * 3 % 7}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def convert(root, listfile, dbpath, *flags):
    r = CliRunner().invoke(cli, ["convert-imageset", f"{root}/", str(listfile), str(dbpath), *flags])
    assert r.exit_code == 0, r.output
    return r


def batches(dataset, batch, count, collate=imagedata.collate):
    it = iter(imagedata.loader(dataset, imagedata.MicroBatches(batch, stop_update=count), 0, False, collate))
    return [next(it) for _ in range(count)]


TRANSFORM = """transform_param { crop_size: 9 mirror: true scale: 0.25 %s }"""
MEAN3 = "mean_value: 100 mean_value: 50.5 mean_value: 7"


def image_data(listfile, root, is_color=True, tp=TRANSFORM % MEAN3, train=True, seed=5, resize=""):
    lp = layer(f'name: "d" type: "ImageData" top: "data" top: "label" {tp} '
               f'image_data_param {{ source: "{listfile}" root_folder: "{root}/" batch_size: 4 '
               f'is_color: {"true" if is_color else "false"} {resize} }}')
    return imagedata.ImageDataset.from_layer(lp, train=train, seed=seed)


def data_layer(dbpath, backend, tp=TRANSFORM % MEAN3, batch=4):
    return layer(f'name: "d" type: "Data" top: "data" top: "label" {tp} '
                 f'data_param {{ source: "{dbpath}" backend: {backend.upper()} batch_size: {batch} }}')


def assert_same_stream(a, b, batch=4, count=4):
    """Every micro-batch (wrapping past the end twice) of the two streams is bit-identical, labels too."""
    for (xa, ya, pa, _, ea), (xb, yb, pb, _, eb) in zip(batches(a, batch, count), batches(b, batch, count)):
        assert ea is None and eb is None, (ea, eb)
        assert pa == pb
        assert xa.dtype == xb.dtype == torch.float32 and xa.shape == xb.shape
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)


# ---------------------------------------------------------------------------------------------------------------
# the acceptance test: Data on a database = ImageData on the images
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flags", [[], ["--encoded"], ["--encode_type", "png"]], ids=["raw", "guessed", "png"])
@pytest.mark.parametrize("train", [True, False], ids=["TRAIN", "TEST"])
def test_data_layer_equals_image_data(tmp_path, backend, flags, train):
    listfile = make_images(tmp_path)
    convert(tmp_path, listfile, tmp_path / "db", "--backend", backend, *flags)
    ds = db.DatumDataset.from_layer(data_layer(tmp_path / "db", backend), train=train, seed=5)
    ref = image_data(listfile, tmp_path, train=train)
    assert len(ds) == len(ref) == 5
    assert_same_stream(ds, ref)
    # and the transform did something: crops of 9 from 11 / 12 rows, mirrored, scaled
    x = batches(ds, 4, 1)[0][0]
    assert x.shape == (4, 3, 9, 9) and float(x.abs().max()) > 10


def test_jpeg_file_bytes_and_gray_and_resize(tmp_path):
    """--encode_type jpg keeps the JPEG file's bytes (decoded as ImageData decodes the file); --gray with png; a
    raw resized database equals ImageData with new_height / new_width; one mean_value for every channel."""
    listfile = make_images(tmp_path, ext="jpg")
    convert(tmp_path, listfile, tmp_path / "jpg", "--encode_type", "jpg")
    d = caffe_pb2.Datum()
    with lmdb.open(str(tmp_path / "jpg"), readonly=True, lock=False) as env, env.begin() as txn:
        d.ParseFromString(txn.get(b"00000002_img/2.jpg"))
    assert d.encoded and d.data == (tmp_path / "img/2.jpg").read_bytes() and d.label == 6
    tp = TRANSFORM % "mean_value: 120"
    assert_same_stream(db.DatumDataset.from_layer(data_layer(tmp_path / "jpg", "lmdb", tp), seed=5),
                       image_data(listfile, tmp_path, tp=tp))
    convert(tmp_path, listfile, tmp_path / "gray", "--gray", "--encode_type", "png")
    assert_same_stream(db.DatumDataset.from_layer(data_layer(tmp_path / "gray", "lmdb", tp), seed=5),
                       image_data(listfile, tmp_path, is_color=False, tp=tp))
    convert(tmp_path, listfile, tmp_path / "small", "--resize_width", "10", "--resize_height", "9", "--check_size")
    ds = db.DatumDataset.from_layer(data_layer(tmp_path / "small", "lmdb", tp), seed=5)
    assert ds.first_shape() == (3, 9, 10)
    assert_same_stream(ds, image_data(listfile, tmp_path, tp=tp, resize="new_height: 9 new_width: 10"))


def test_float_data_and_mean_file(tmp_path):
    """A raw Datum of float_data; a mean_file: (x - mean) * scale, cropped as the image, against numpy."""
    rng = np.random.default_rng(3)
    imgs = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    with lmdb.open(str(tmp_path / "f"), map_size=1 << 20) as env, env.begin(write=True) as txn:
        for i, im in enumerate(imgs):
            d = caffe_pb2.Datum(channels=2, height=4, width=5, label=i)
            d.float_data.extend(im.ravel().tolist())
            txn.put(f"{i:08d}_x".encode(), d.SerializeToString())
    mean = rng.normal(size=(1, 2, 4, 5)).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(mean.shape)
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    tp = f'transform_param {{ scale: 0.5 mean_file: "{tmp_path}/mean.binaryproto" }}'
    ds = db.DatumDataset.from_layer(data_layer(tmp_path / "f", "lmdb", tp), seed=0)
    x, y, _, _, err = batches(ds, 3, 1)[0]
    assert err is None
    assert torch.equal(x, torch.from_numpy((imgs - mean[0]) * np.float32(0.5)))
    assert y.tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line naming the file (and the record)
# ---------------------------------------------------------------------------------------------------------------

def test_missing_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(CaffeFileError) as e:
        db.DatumDataset.from_layer(data_layer(tmp_path / "db", "lmdb"))
    assert str(e.value) == ("layer 'd' (Data): data_param.backend LMDB needs the Python package 'lmdb' "
                            "(pip install sfport[lmdb])")
    monkeypatch.setitem(sys.modules, "plyvel", None)
    lp = layer('name: "x" type: "Data" top: "data" data_param { source: "db" batch_size: 2 }')  # LEVELDB: default
    with pytest.raises(CaffeFileError, match=r"^layer 'x' \(Data\): data_param.backend LEVELDB needs the Python "
                                             r"package 'plyvel' \(pip install sfport\[leveldb\]\)$"):
        db.DatumDataset.from_layer(lp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_databases(tmp_path, backend):
    with pytest.raises(CaffeFileError, match=f"^{tmp_path}/none: no such {backend.upper()} database$"):
        db.DatumDataset.from_layer(data_layer(tmp_path / "none", backend))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CaffeFileError, match="^.*/file: not a .* database"):
        db.DatumDataset.from_layer(data_layer(tmp_path / "file", backend))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CaffeFileError, match="emptydir: (not a readable|the .* database is empty)"):
        db.DatumDataset.from_layer(data_layer(tmp_path / "emptydir", backend))


def _lmdb_with(path, records):
    with lmdb.open(str(path), map_size=1 << 20) as env, env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k, v)


def _datum(c, h, w, fill=1):
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=bytes([fill]) * (c * h * w)).SerializeToString()


def test_bad_records_name_file_and_key(tmp_path):
    _lmdb_with(tmp_path / "a", {b"k0": _datum(1, 4, 4), b"k1": b"\xff\xff\xff garbage"})
    ds = db.DatumDataset.from_layer(data_layer(tmp_path / "a", "lmdb", ""))
    assert ds.shape() == (1, 4, 4)
    *_, err = batches(ds, 2, 1)[0]
    assert str(CaffeFileError(*err)) == f"{tmp_path}/a: record 'k1': not a caffe.Datum"
    _lmdb_with(tmp_path / "b", {b"k0": _datum(1, 4, 4), b"k1": _datum(1, 5, 4)})
    ds = db.DatumDataset.from_layer(data_layer(tmp_path / "b", "lmdb", ""))
    ds.shape()
    with pytest.raises(CaffeFileError, match=r"/b: record 'k1' gives a \[1, 5, 4\] sample, the first record "
                                             r"\[1, 4, 4\]$"):
        imagedata.check(batches(ds, 2, 1)[0])
    bad = caffe_pb2.Datum(channels=1, height=4, width=4, data=b"123").SerializeToString()
    _lmdb_with(tmp_path / "c", {b"k0": bad})
    with pytest.raises(CaffeFileError, match=r"record 'k0': a 1x4x4 Datum holds 3 values, not 16"):
        db.DatumDataset.from_layer(data_layer(tmp_path / "c", "lmdb", "")).shape()
    enc = caffe_pb2.Datum(encoded=True, data=b"not an image").SerializeToString()
    _lmdb_with(tmp_path / "d", {b"k0": enc})
    with pytest.raises(CaffeFileError, match=r"record 'k0': the encoded image cannot be decoded"):
        db.DatumDataset.from_layer(data_layer(tmp_path / "d", "lmdb", "")).shape()
    # crop larger than the image
    with pytest.raises(CaffeFileError, match=r"record 'k0': image 4x4 is smaller than crop_size 9"):
        db.DatumDataset.from_layer(data_layer(tmp_path / "a", "lmdb", "transform_param { crop_size: 9 }")).shape()


# ---------------------------------------------------------------------------------------------------------------
# HDF5Data
# ---------------------------------------------------------------------------------------------------------------

def write_h5(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    names, datas, labels = [], [], []
    for i, n in enumerate(sizes):
        x, y = rng.normal(size=(n, 2, 3)), rng.integers(0, 9, n)
        with h5py.File(folder / f"f{i}.h5", "w") as f:
            f["data"] = x              # float64: Caffe reads it as float
            f["label"] = y             # integers too
        names.append(f"f{i}.h5")
        datas.append(x.astype(np.float32))
        labels.append(y.astype(np.float32))
    (folder / "h5.txt").write_text("  ".join(names[:1]) + "\n" + "\n".join(names[1:]) + "\n")
    return datas, labels


def hdf5_layer(source, shuffle=False, batch=3, extra=""):
    return layer(f'name: "h" type: "HDF5Data" top: "data" top: "label" {extra} hdf5_data_param {{ source: '
                 f'"{source}" batch_size: {batch} shuffle: {"true" if shuffle else "false"} }}')


def test_hdf5_batches_are_the_arrays(tmp_path):
    datas, labels = write_h5(tmp_path, [5, 3, 4])
    lp = hdf5_layer(tmp_path / "h5.txt")
    ds = hdf5data.HDF5Dataset.from_layer(lp)
    assert data_set_tops(lp, ds.top_shapes()) == [(3, 2, 3), (3,)]
    x, y = np.concatenate(datas), np.concatenate(labels)
    got = batches(ds, 3, 9, hdf5data.collate_tops)   # 27 rows: two passes of 12 and three more, across files
    for b, (rows, pos, err) in enumerate(got):
        assert err is None and pos == list(range(3 * b, 3 * b + 3))
        idx = [p % 12 for p in pos]
        assert rows[0].dtype == torch.float32 and torch.equal(rows[0], torch.from_numpy(x[idx]))
        assert torch.equal(rows[1], torch.from_numpy(y[idx]))


def test_hdf5_shuffle_is_seeded_per_pass(tmp_path):
    datas, _ = write_h5(tmp_path, [5, 3, 4])
    x = np.concatenate(datas)
    owner = np.repeat([0, 1, 2], [5, 3, 4])

    def stream(seed):
        ds = hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "h5.txt", shuffle=True), seed=seed)
        rows = torch.cat([r[0][0] for r in batches(ds, 4, 9, hdf5data.collate_tops)]).numpy()   # three passes
        return [int(np.flatnonzero((x == r).all(axis=(1, 2)))[0]) for r in rows]

    a = stream(1)
    assert a == stream(1)                      # a pure function of (source, seed, position)
    assert a != stream(2)
    passes = [a[i:i + 12] for i in range(0, 36, 12)]
    for p in passes:
        assert sorted(p) == list(range(12))    # each pass reads every row once
        files = [owner[i] for i in p]          # a file's rows are read together (Caffe holds one file)
        assert len([k for k in range(12) if k == 0 or files[k] != files[k - 1]]) == 3
    assert passes[0] != passes[1] and passes[1] != passes[2]


def test_hdf5_batched_fetch_is_the_rows_one_by_one(tmp_path):
    """The DataLoader's batched fetch (HDF5Dataset.__getitems__) gives what the rows one at a time stack to, for
    micro-batches within a file and across files, shuffled; a file that became unreadable is each row's error."""
    datas, labels = write_h5(tmp_path, [5, 3, 4])
    x, y = np.concatenate(datas), np.concatenate(labels)
    for shuffle in (False, True):
        ds = hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "h5.txt", shuffle=shuffle), seed=3)
        for positions in ([0, 1, 2], [3, 4, 5, 6], [10, 11, 12, 13, 14], list(range(24, 37))):
            got = hdf5data.collate_tops(ds.__getitems__(positions))
            want = hdf5data.collate_tops([ds[p] for p in positions])
            assert isinstance(ds.__getitems__(positions), hdf5data.StackedRows) and got[1:] == want[1:] == (positions, None)
            assert all(torch.equal(a, b) for a, b in zip(got[0], want[0]))
            if not shuffle:   # the rows themselves, in the stream's order (two passes of 12 rows)
                idx = [p % 12 for p in positions]
                assert torch.equal(got[0][0], torch.from_numpy(x[idx]))
                assert torch.equal(got[0][1], torch.from_numpy(y[idx]))
    ds = hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "h5.txt"))
    (tmp_path / "f1.h5").write_bytes(b"not hdf5 any more")
    rows, positions, error = hdf5data.collate_tops(ds.__getitems__([3, 4, 5]))
    assert rows is None and positions == [3, 4, 5] and error[0].endswith("f1.h5") and "unreadable" in error[1]


def test_hdf5_bad_input(tmp_path):
    write_h5(tmp_path, [2])
    with pytest.raises(CaffeFileError, match=r"^layer 'h' \(HDF5Data\): HDF5Data does not transform data"):
        hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "h5.txt", extra="transform_param { scale: 2 }"))
    (tmp_path / "l.txt").write_text("f0.h5 missing.h5\n")
    with pytest.raises(CaffeFileError, match=r"l.txt: line 1: HDF5 file 'missing.h5' not found$"):
        hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "l.txt"))
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["data"] = np.zeros((3, 2))
        f["label"] = np.zeros(2)
    (tmp_path / "l.txt").write_text("g.h5\n")
    with pytest.raises(CaffeFileError, match=r"g.h5: the datasets 'data' \[3, 2\], 'label' \[2\] differ in rows"):
        hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "l.txt"))
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["data"] = np.zeros((3, 2))
    with pytest.raises(CaffeFileError, match=r"g.h5: no dataset 'label'"):
        hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "l.txt"))
    (tmp_path / "g.h5").write_bytes(b"not hdf5")
    with pytest.raises(CaffeFileError, match=r"g.h5: not a readable HDF5 file"):
        hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "l.txt"))
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["data"] = np.zeros((3, 4))
        f["label"] = np.zeros(3)
    (tmp_path / "l.txt").write_text("f0.h5 g.h5\n")
    with pytest.raises(CaffeFileError, match=r"g.h5: rows of \[\[4\], \[\]\] where the first file has "
                                             r"\[\[2, 3\], \[\]\]"):
        hdf5data.HDF5Dataset.from_layer(hdf5_layer(tmp_path / "l.txt"))


# ---------------------------------------------------------------------------------------------------------------
# sfport convert-imageset
# ---------------------------------------------------------------------------------------------------------------

def keys_and_labels(path, backend="lmdb"):
    if backend == "lmdb":
        with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
            items = list(txn.cursor())
    else:
        import plyvel
        d = plyvel.DB(str(path))
        items = list(d.iterator())
        d.close()
    out = []
    for k, v in items:
        dt = caffe_pb2.Datum()
        dt.ParseFromString(v)
        out.append((k.decode(), dt.label))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_imageset_keys_and_shuffle(tmp_path, backend):
    listfile = make_images(tmp_path, n=12)
    entries = [line.split() for line in listfile.read_text().splitlines()]
    r = convert(tmp_path, listfile, tmp_path / "plain", "--backend", backend)
    assert r.stdout.strip().endswith(f"wrote 12 of 12 images to {tmp_path}/plain ({backend})")
    assert keys_and_labels(tmp_path / "plain", backend) == [(f"{i:08d}_{p}", int(lab))
                                                            for i, (p, lab) in enumerate(entries)]
    convert(tmp_path, listfile, tmp_path / "s1", "--backend", backend, "--shuffle", "--seed", "3")
    convert(tmp_path, listfile, tmp_path / "s2", "--backend", backend, "--shuffle", "--seed", "3")
    s1 = keys_and_labels(tmp_path / "s1", backend)
    assert s1 == keys_and_labels(tmp_path / "s2", backend)
    order = [k.split("_", 1)[1] for k, _ in s1]
    assert sorted(order) == sorted(p for p, _ in entries) and order != [p for p, _ in entries]
    assert [k[:8] for k, _ in s1] == [f"{i:08d}" for i in range(12)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_convert_imageset_bad_input_leaves_nothing(tmp_path):
    listfile = make_images(tmp_path)
    lines = listfile.read_text().splitlines()
    lines[3] = "img/nothere.png 1"
    listfile.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    r = CliRunner().invoke(cli, ["convert-imageset", f"{tmp_path}/", str(listfile), str(out / "db")])
    assert r.exit_code == 2
    assert r.stderr.strip() == f"sfport: error: {listfile}: line 4: image '{tmp_path}/img/nothere.png' is missing"
    assert list(out.iterdir()) == []
    # Caffe's behaviour: skip it
    r = CliRunner().invoke(cli, ["convert-imageset", f"{tmp_path}/", str(listfile), str(out / "db"),
                                 "--skip-bad-images"])
    assert r.exit_code == 0 and "wrote 4 of 5 images" in r.stdout and "skipped 1" in r.stdout
    assert [k for k, _ in keys_and_labels(out / "db")] == ["00000000_img/0.png", "00000001_img/1.png",
                                                          "00000002_img/2.png", "00000004_img/4.png"]
    r = CliRunner().invoke(cli, ["convert-imageset", f"{tmp_path}/", str(listfile), str(out / "db")])
    assert r.exit_code == 2 and r.stderr.strip() == \
        f"sfport: error: {out}/db: already exists (convert-imageset creates a new database)"
    (tmp_path / "bad.txt").write_text("img/0.png notalabel\n")
    r = CliRunner().invoke(cli, ["convert-imageset", f"{tmp_path}/", str(tmp_path / "bad.txt"), str(out / "x")])
    assert r.exit_code == 2 and r.stderr.strip() == \
        f"sfport: error: {tmp_path}/bad.txt: line 1: the label 'notalabel' is not an integer"
    r = CliRunner().invoke(cli, ["convert-imageset", f"{tmp_path}/", str(listfile), str(out / "y"), "--check_size"])
    assert r.exit_code == 2 and "(--check_size)" in r.stderr and r.stderr.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["db"]


# ---------------------------------------------------------------------------------------------------------------
# sfport train on a Data / HDF5Data layer = on the ImageData list
# ---------------------------------------------------------------------------------------------------------------

def _train(golden_copy, net_text, name, iters=4):
    (golden_copy / f"{name}.prototxt").write_text(net_text)
    lines = [line for line in (golden_copy / "solver_multistep.prototxt").read_text().splitlines()
             if line.split(":")[0].strip() not in ("net", "max_iter", "snapshot_prefix", "display")]
    lines += [f'net: "{name}.prototxt"', f"max_iter: {iters}", f'snapshot_prefix: "runs/{name}/x"', "display: 1"]
    (golden_copy / f"s_{name}.prototxt").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(cli, ["train", f"s_{name}.prototxt", "--weights", "init.caffemodel", "--workers", "0"])
    assert r.exit_code == 0, r.output[-3000:]
    params = sfport.read_caffemodel(golden_copy / f"runs/{name}/x_iter_{iters}.caffemodel").params
    return {k: [np.asarray(b) for b in v] for k, v in params.items()}, r.stderr


def same(a, b):
    """Every learned blob bit for bit."""
    return a.keys() == b.keys() and all(len(a[k]) == len(b[k]) and all(np.array_equal(x, y) for x, y in
                                                                        zip(a[k], b[k])) for k in a)


def _swap_data_layer(net_text, new_layer):
    start = net_text.index("layer {")
    end = net_text.index("layer {", start + 1)
    return net_text[:start] + new_layer + "\n" + net_text[end:]


def test_train_on_lmdb_and_hdf5_equals_image_data(golden_copy):
    net = (golden_copy / "tiny_sphereface.prototxt").read_text()
    ref, _ = _train(golden_copy, net, "imagedata")
    convert(".", "list.txt", "train_lmdb")
    tp = net[net.index("transform_param"):net.index("image_data_param")]
    lmdb_net = _swap_data_layer(net, 'layer { name: "data" type: "Data" top: "data" top: "label" '
                                     f'{tp} data_param {{ source: "train_lmdb" backend: LMDB batch_size: 8 }} }}')
    got, log = _train(golden_copy, lmdb_net, "lmdb")
    assert "output data size: 8,3,24,20" in log
    assert same(got, ref)
    # HDF5: the ImageData samples, transformed, written as arrays
    lp = caffe_pb2.NetParameter()
    text_format.Parse(net, lp)
    ds = imagedata.ImageDataset.from_layer(lp.layer[0], train=True, seed=0)
    xs = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    ys = np.array([ds[i][1] for i in range(len(ds))], np.float32)
    with h5py.File("a.h5", "w") as f:
        f["data"], f["label"] = xs[:40], ys[:40]
    with h5py.File("b.h5", "w") as f:
        f["data"], f["label"] = xs[40:], ys[40:]
    (golden_copy / "h5.txt").write_text("a.h5\nb.h5\n")
    h5_net = _swap_data_layer(net, 'layer { name: "data" type: "HDF5Data" top: "data" top: "label" '
                                   'hdf5_data_param { source: "h5.txt" batch_size: 8 } }')
    got, log = _train(golden_copy, h5_net, "hdf5")
    assert "Number of HDF5 files: 2" in log
    assert same(got, ref)
    # and the run is not trivially the same: other data gives other weights
    with h5py.File("b.h5", "w") as f:
        f["data"], f["label"] = xs[40:][::-1].copy(), ys[40:][::-1].copy()
    other, _ = _train(golden_copy, h5_net, "hdf5b", iters=4)
    assert not same(other, ref)


def test_worker_processes_read_the_same_batches(tmp_path):
    """DataLoader workers open the LMDB in their own process and give the batches of the main process."""
    listfile = make_images(tmp_path)
    convert(tmp_path, listfile, tmp_path / "db")
    ds = db.DatumDataset.from_layer(data_layer(tmp_path / "db", "lmdb"), seed=2)
    it = iter(imagedata.loader(ds, imagedata.MicroBatches(3, stop_update=4), 2, False))
    for (x, y, p, _, e), (x0, y0, p0, _, e0) in zip(it, batches(ds, 3, 4)):
        assert e is None and p == p0 and torch.equal(x, x0) and torch.equal(y, y0)


def test_default_workers_by_what_the_layer_reads(tmp_path, monkeypatch):
    """`sfport train` without --workers (Options.workers None): HDF5Data reads in the main process (its rows are in
    memory; workers only add the copy between processes), the decoding readers one worker per core, up to 16; an
    explicit count is kept."""
    from sfport.data.feed import Feeder
    from sfport.report.progress import CaffeLog
    from sfport.solver.config import Options

    write_h5(tmp_path, [5, 3])
    net = caffe_pb2.NetParameter()
    net.layer.add().CopyFrom(hdf5_layer(tmp_path / "h5.txt"))
    make = lambda w: Feeder(net, caffe_pb2.TRAIN, Options(workers=w), None, 0, 1, 0, 1,  # noqa: E731
                            CaffeLog(enabled=False))
    assert make(None).workers == 0 and make(3).workers == 3
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((4, 5, 3), np.uint8))[1].tobytes())
    (tmp_path / "list.txt").write_text("a.png 1\n")
    del net.layer[:]
    net.layer.add().CopyFrom(layer(f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ '
                                   f'source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 1 }}'))
    monkeypatch.setattr(os, "cpu_count", lambda: 40)
    assert make(None).workers == 16
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert make(None).workers == 2 and make(0).workers == 0
