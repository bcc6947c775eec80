"""The ImageData pipeline: Caffe's own delivered batches (golden/solver/input_batches.npz), the stream's order,
shuffling, transform_param (crop, mirror, mean file / values, scale), is_color, bad images."""
import numpy as np
import pytest

from sfport.data.imagedata import (ImageDataset, MicroBatches, Transform, check, collate, loader, read_list,
                         read_mean_file)
from sfport.errors import CaffeFileError
from sfport.formats.caffe_files import read_prototxt
from sfport.protos import caffe_pb2

from conftest import GOLDEN

SOLVER = GOLDEN / "solver"


def golden_dataset(**kw):
    layer = read_prototxt(SOLVER / "tiny_sphereface.prototxt").net.layer[0]
    for k, v in kw.items():
        setattr(layer.image_data_param, k, v)
    return ImageDataset.from_layer(layer, train=True, base_dir=SOLVER)


def test_batches_equal_what_caffe_delivered():
    ref = np.load(SOLVER / "input_batches.npz")
    ds = golden_dataset()
    it = iter(loader(ds, MicroBatches(8, stop_update=8), workers=2))
    for b in range(8):
        x, y, pos, bad, err = next(it)
        assert err is None
        assert pos == list(range(8 * b, 8 * b + 8)) and bad == 0
        assert np.array_equal(x.numpy(), ref["data"][8 * b:8 * b + 8])  # bit for bit
        assert np.array_equal(y.numpy(), ref["label"][8 * b:8 * b + 8])


def test_ranks_and_iter_size_partition_the_same_stream():
    one = list(MicroBatches(4, world=1, rank=0, iter_size=4, stop_update=3))
    two = [list(MicroBatches(4, world=2, rank=r, iter_size=2, stop_update=3)) for r in range(2)]
    for t in range(3):
        assert one[4 * t:4 * t + 4] == two[0][2 * t:2 * t + 2] + two[1][2 * t:2 * t + 2]
    resumed = list(MicroBatches(4, iter_size=4, start_update=1, stop_update=3))
    assert resumed == one[4:]


def test_shuffle_reshuffles_every_pass_deterministically():
    ds = golden_dataset(shuffle=True)
    first = [ds.entry_at(p).line for p in range(64)]
    second = [ds.entry_at(p).line for p in range(64, 128)]
    assert sorted(first) == sorted(second) == list(range(1, 65))
    assert first != second and first != list(range(1, 65))
    again = golden_dataset(shuffle=True)
    assert [again.entry_at(p).line for p in range(128)] == first + second
    other = ImageDataset(ds.entries, ds.root, ds.transform, shuffle=True, seed=1)
    assert [other.entry_at(p).line for p in range(64)] != first


def test_transform_crop_mirror_mean_scale(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (3, 10, 12)).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 3, 10, 12])
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    mean = read_mean_file(tmp_path / "mean.binaryproto")
    chw = img.astype(np.float32).transpose(2, 0, 1)
    # TEST: centre crop, mean image at the crop's source pixels, scale
    t = Transform(crop_size=6, mirror=False, mean_image=mean, scale=0.5, train=False)
    out = t(img, np.random.default_rng(0))
    assert np.allclose(out, (chw[:, 2:8, 3:9] - mean[:, 2:8, 3:9]) * 0.5)
    # TRAIN: random crops stay inside, mirror flips the width after the mean is taken at the source pixels
    t = Transform(crop_size=6, mirror=True, mean_values=(10.0, 20.0, 30.0), scale=2.0, train=True)
    seen_mirror = seen_plain = 0
    for s in range(40):
        out = t(img, np.random.default_rng(s))
        found = False
        for y0 in range(5):
            for x0 in range(7):
                base = (chw[:, y0:y0 + 6, x0:x0 + 6] - np.array([10, 20, 30], np.float32)[:, None, None]) * 2
                if np.array_equal(out, base):
                    seen_plain += 1
                    found = True
                elif np.array_equal(out, base[:, :, ::-1]):
                    seen_mirror += 1
                    found = True
        assert found
    assert seen_mirror > 5 and seen_plain > 5
    gray = Transform(mean_values=(100.0,), scale=1.0)(img[:, :, 0], np.random.default_rng(0))
    assert gray.shape == (1, 10, 12) and np.allclose(gray[0], img[:, :, 0] - 100.0)


def test_is_color_false_reads_one_channel():
    ds = golden_dataset(is_color=False)
    x, _, _, err = ds[0]
    assert x is None and "3 mean_value entries for 1 channels" in err[1]  # Caffe's check: 1 or C values
    ds.transform.mean_values = (127.5,)
    x, y, _, _ = ds[0]
    assert tuple(x.shape) == (1, 24, 20)
    ds = golden_dataset(new_height=12, new_width=10)
    assert tuple(ds[0][0].shape) == (3, 12, 10)


def test_bad_lists_and_images(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg 1\nb.jpg notanumber\n")
    with pytest.raises(CaffeFileError, match="line 2: the label 'notanumber' is not an integer"):
        read_list(tmp_path / "l.txt")
    with pytest.raises(CaffeFileError, match="image list not found"):
        read_list(tmp_path / "none.txt")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (tmp_path / "l.txt").write_text("bad.jpg 1\nmissing.jpg 2\n")
    ds = ImageDataset(read_list(tmp_path / "l.txt"), tmp_path, Transform(), list_path=str(tmp_path / "l.txt"))
    it = iter(loader(ds, MicroBatches(1, stop_update=2), workers=2))  # the message crosses the worker intact
    with pytest.raises(CaffeFileError, match=r"l.txt: line 1: image '.*bad.jpg' is unreadable or corrupt"):
        check(next(it))
    with pytest.raises(CaffeFileError, match=r"l.txt: line 2: image '.*missing.jpg' is missing"):
        check(next(it))
    ds.skip_bad = True
    batch = check(collate([ds[0], ds[1]]))
    assert batch[0] is None and batch[3] == 2
