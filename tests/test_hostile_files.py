"""Issue 14, the file containers: hostile Caffe files, sfport .pt files and the wire reader.

A legal caffemodel whose blobs come in 200,000 packed pieces reads as the one-piece file does; non-regular and
oversized files are refused before they are read; blob shapes are checked in exact integers as Caffe's
Blob::Reshape does; a caffemodel renamed .solverstate (and the like) is named for what it is; Caffe's fatal
upgrade errors are one line; sfport's converted-net .pt is checked before use; and a seeded fuzz of ~200
truncated, flipped, bombed and nested files gives `sfport inspect` one error line (exit 2) or exit 0, quickly.
"""
import contextlib
import os
import signal
import struct
import time

import numpy as np
import pytest
import torch

from sfport.formats import caffe_files, disk, wire
from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

from badinput import assert_bad_input, files_under, run
from conftest import FIXTURES

DET1 = FIXTURES / "mtcnn/det1.caffemodel"
LENET = FIXTURES / "lenet/lenet_iter_10000.caffemodel"
INT_MAX = 2 ** 31 - 1


# --------------------------------------------------------------------------------------------------------
# Protobuf wire format, written here independently of sfport.formats.wire
# --------------------------------------------------------------------------------------------------------

def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        if not v:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def fld(number: int, wire_type: int, payload: bytes = b"") -> bytes:
    """One field: tag, then the payload (a LEN field's length is written here)."""
    tag = varint(number << 3 | wire_type)
    return tag + varint(len(payload)) + payload if wire_type == 2 else tag + payload


def floats(*values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def one_layer_net(blob: bytes, name=b"w", type_=b"InnerProduct") -> bytes:
    """A NetParameter with one layer (field 100) holding one BlobProto (LayerParameter.blobs = 7)."""
    return fld(1, 2, b"n") + fld(100, 2, fld(1, 2, name) + fld(2, 2, type_) + fld(7, 2, blob))


def shape(*dims) -> bytes:
    return fld(7, 2, fld(1, 2, b"".join(varint(d % 2 ** 64) for d in dims)))  # BlobShape.dim, packed int64


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def boom(signum, frame):
        raise AssertionError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def limit():
    """disk.set_max_file_bytes, put back to the environment's limit afterwards."""
    yield disk.set_max_file_bytes
    disk.set_max_file_bytes(None)


# --------------------------------------------------------------------------------------------------------
# 1. Packed value fields in many pieces
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_field", [1, 200, 10 ** 9], ids=["1-value pieces", "200-value pieces", "one piece"])
def test_values_in_many_packed_pieces_read_as_the_one_piece_file(per_field, tmp_path):
    """lenet with each blob's values cut into packed fields of ``per_field`` values (431,080 pieces for 1):
    the same arrays, and written back, Caffe's own one-piece bytes."""
    original = LENET.read_bytes()
    pieces = wire.split_packed(original, wire.NET_SPEC, per_field)
    assert (len(pieces) > len(original)) == (per_field < 10 ** 9)
    path = tmp_path / "pieces.caffemodel"
    path.write_bytes(pieces)
    t0 = time.perf_counter()
    many = caffe_files.read_caffemodel(path)
    took = time.perf_counter() - t0
    one = caffe_files.read_caffemodel(LENET)
    assert [l.name for l in many.net.layer] == [l.name for l in one.net.layer]
    n = 0
    for i in range(len(one.net.layer)):
        for a, b in zip(one.blob_arrays(i), many.blob_arrays(i)):
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a, b)
            n += a.size
    assert n == 431080
    assert caffe_files.net_to_bytes(many) == original
    assert took < 20, took  # quadratic joining took minutes here; the bench (bench_read.py) times it properly


def test_one_piece_is_a_view_of_the_file_and_a_few_pieces_are_joined_once():
    """The three ways a blob's values are taken: one packed field -> a read-only view of the file's bytes; a few
    pieces -> one joined copy; very many pieces -> left to protobuf's C parser (and converted by caffe_files)."""
    data = LENET.read_bytes()
    _, values = wire.strip_blobs(data, wire.NET_SPEC)
    conv1 = values[((100, 1), (7, 0))].arrays["data"]
    assert conv1.size == 500 and not conv1.flags.writeable and conv1.base is not None
    _, values = wire.strip_blobs(wire.split_packed(data, wire.NET_SPEC, 200), wire.NET_SPEC)
    assert values[((100, 1), (7, 0))].arrays["data"].size == 500       # 3 pieces, joined
    assert ((100, 3), (7, 0)) not in values                           # ip1: 2,000 pieces, parsed by protobuf
    model = caffe_files.read_caffemodel(LENET)
    assert np.array_equal(values[((100, 1), (7, 0))].arrays["data"], model.blob_arrays(1)[0].ravel())


def test_packed_and_unpacked_pieces_keep_their_order(tmp_path):
    """Values written one by one (unpacked, legal protobuf) between packed pieces: protobuf's order, as Caffe's
    C++ parser reads them."""
    blob = shape(5) + fld(5, 2, floats(1, 2)) + fld(5, 5, floats(3)) + fld(5, 2, floats(4, 5))
    data = one_layer_net(blob)
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(data)
    ref = list(caffe_pb2.NetParameter.FromString(data).layer[0].blobs[0].data)
    assert ref == [1, 2, 3, 4, 5]
    assert caffe_files.read_caffemodel(path).blob_arrays(0)[0].tolist() == ref


@pytest.mark.parametrize("blob,what", [
    (shape(2) + fld(5, 0, b"\x01"), "layer[0].blobs[0]: its data field has wire type 0 (varint), not 32-bit values"),
    (shape(2) + fld(8, 5, floats(1)), "its double_data field has wire type 5 (32-bit), not 64-bit values"),
    (shape(2) + fld(5, 2, b"\x00" * 6), "a packed data field of 6 bytes is not a whole number of 4-byte values"),
    (fld(7, 0, b"\x02") + fld(5, 2, floats(1, 2)), "BlobProto field 7 has wire type 0 (varint), the schema's is 2"),
], ids=["data as varint", "double_data as 32-bit", "partial float", "shape as varint"])
def test_blob_fields_of_the_wrong_wire_type_are_refused(blob, what, tmp_path):
    """Protobuf would keep such a field aside as unknown and read the blob without it: silently wrong."""
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(one_layer_net(blob))
    assert_bad_input(run("inspect", path), path, what)


# --------------------------------------------------------------------------------------------------------
# 2. Non-regular and oversized files
# --------------------------------------------------------------------------------------------------------

def test_devices_fifos_and_folders_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.caffemodel"
    os.mkfifo(fifo)  # nobody writes: opening it for reading would block for ever
    folder = tmp_path / "folder.caffemodel"
    folder.mkdir()
    before = files_under(tmp_path)
    with deadline(20):
        for path, what in [("/dev/zero", "is not a regular file (a device, FIFO or socket)"),
                           (fifo, "is not a regular file (a device, FIFO or socket)"),
                           (folder, "is a directory"),
                           (tmp_path / "pipe.solverstate", "no such file")]:
            assert_bad_input(run("inspect", path), path, what)
        os.symlink(fifo, tmp_path / "link.solverstate")
        assert_bad_input(run("inspect", tmp_path / "link.solverstate"), "link.solverstate", "not a regular file")
    assert files_under(tmp_path) == before | {"link.solverstate"}


def test_files_over_the_size_limit_are_refused(tmp_path, limit):
    assert disk.max_file_bytes() == 2 ** 31 - 1   # io.cpp kProtoReadBytesLimit = INT_MAX
    size = DET1.stat().st_size
    assert run("--max-file-size", size, "inspect", DET1).exit_code == 0    # at the limit: read
    assert_bad_input(run("--max-file-size", size - 1, "inspect", DET1), DET1,
                     f"is 28,163 bytes, over the 28,162-byte limit for one input file")
    assert_bad_input(run("--max-file-size", "27k", "inspect", DET1), DET1, "over the 27,648-byte limit")
    limit("1k")
    assert disk.max_file_bytes() == 1024
    for bad in (0, -5, True, 1.5, "1.5G", "-1", "", "lots"):
        with pytest.raises(ValueError):
            limit(bad)


def test_the_limit_comes_from_the_environment(monkeypatch, limit):
    assert [disk.parse_size(t) for t in ("123", "64k", "500M", "4G", "4GiB", "2 mb")] == \
        [123, 65536, 500 * 2 ** 20, 4 * 2 ** 30, 4 * 2 ** 30, 2 * 2 ** 20]
    monkeypatch.setenv("SFPORT_MAX_FILE_BYTES", "20k")
    limit(None)  # None: the environment's limit again (what the CLI sets without its option)
    assert disk.max_file_bytes() == 20 * 1024
    assert_bad_input(run("inspect", DET1), DET1, "over the 20,480-byte limit")
    monkeypatch.setenv("SFPORT_MAX_FILE_BYTES", "a lot")
    limit(None)
    assert_bad_input(run("inspect", DET1), "$SFPORT_MAX_FILE_BYTES", "'a lot' is not a size in bytes")
    monkeypatch.delenv("SFPORT_MAX_FILE_BYTES")
    limit(None)
    assert disk.max_file_bytes() == 2 ** 31 - 1


# --------------------------------------------------------------------------------------------------------
# 3. Blob shapes in exact integers (blob.cpp Blob::Reshape)
# --------------------------------------------------------------------------------------------------------

def test_blob_count_is_blob_reshape_in_exact_integers():
    assert caffe_files.blob_count(()) == 1 and caffe_files.blob_count([2, 3, 0]) == 0
    assert caffe_files.blob_count([INT_MAX]) == INT_MAX and caffe_files.blob_count([1] * 32) == 1
    for dims, what in [([2 ** 32, 2 ** 32], "has 18,446,744,073,709,551,616 elements: blob size exceeds INT_MAX"),
                       ([INT_MAX + 1], "blob size exceeds INT_MAX"), ([1] * 33, "has 33 axes"),
                       ([3, -1], "negative dimension")]:
        with pytest.raises(ValueError, match=what):
            caffe_files.blob_count(dims)


@pytest.mark.parametrize("blob,what", [
    (shape(2 ** 32, 2 ** 32), "blob shape [4294967296, 4294967296] has 18,446,744,073,709,551,616 elements: "
                              "blob size exceeds INT_MAX"),   # an int64 product: 0, which no data matched
    (shape(*[1] * 33) + fld(5, 2, floats(1)), "blob shape has 33 axes (Caffe's limit is 32)"),
    (shape(-1, -1) + fld(5, 2, floats(1)), "negative dimension in blob shape [-1, -1]"),
    (fld(1, 0, varint(2 ** 64 - 1)) + fld(2, 0, varint(2 ** 64 - 1)) + fld(3, 0, b"\x01") + fld(4, 0, b"\x01")
     + fld(5, 2, floats(1)), "negative dimension in blob shape [-1, -1, 1, 1]"),   # legacy num/channels
    (shape(*[1] * 1_000_000), "blob shape has 1,000,000 axes"),
], ids=["2^32 x 2^32", "33 axes", "negative", "legacy negative", "a million axes"])
def test_impossible_blob_shapes_are_refused(blob, what, tmp_path):
    path = tmp_path / "shape.caffemodel"
    path.write_bytes(one_layer_net(blob))
    assert_bad_input(run("inspect", path), path, f"layer 'w' (InnerProduct) blob 0: {what}")
    state = tmp_path / "shape.solverstate"
    state.write_bytes(fld(1, 0, b"\x07") + fld(3, 2, blob))
    assert_bad_input(run("inspect", state), state, f"history blob 0: {what}")


# --------------------------------------------------------------------------------------------------------
# 4. One kind of binary Caffe file read as another
# --------------------------------------------------------------------------------------------------------

@pytest.fixture
def solverstate(tmp_path):
    path = tmp_path / "written.solverstate"
    caffe_files.write_solverstate(path, caffe_pb2.SolverState(iter=7, current_step=1, learned_net="x.caffemodel"),
                                  [np.ones((4, 3)), np.arange(5.0)])
    return path


def test_a_file_of_another_kind_is_named_for_what_it_is(tmp_path, solverstate):
    mean = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    mean.data.extend([0.5] * 12)
    net_without_name = caffe_pb2.NetParameter.FromString(DET1.read_bytes())
    net_without_name.ClearField("name")
    cases = [(DET1.read_bytes(), ".solverstate", "is a Caffe NetParameter (.caffemodel), not a Caffe SolverState"),
             (net_without_name.SerializeToString(), ".solverstate", "is a Caffe NetParameter (.caffemodel), not a"),
             (solverstate.read_bytes(), ".caffemodel", "is a Caffe SolverState (.solverstate), not a Caffe "
                                                       "NetParameter (.caffemodel)"),
             (mean.SerializeToString(), ".caffemodel", "is a Caffe BlobProto (.binaryproto, a mean file?), not a "
                                                       "Caffe NetParameter"),
             (mean.SerializeToString(), ".solverstate", "is a Caffe BlobProto (.binaryproto, a mean file?), not a "
                                                        "Caffe SolverState"),
             (fld(1, 5, b"abcd") + DET1.read_bytes(), ".caffemodel",
              "not a Caffe NetParameter (.caffemodel) (another kind of protobuf file?): its field 1 is a 32-bit "
              "value, but NetParameter.name is a string or message"),
             (fld(9999, 0, b"\x01") * 3, ".solverstate", "holds no Caffe solver state")]
    for k, (data, suffix, what) in enumerate(cases):
        path = tmp_path / f"case{k}{suffix}"
        path.write_bytes(data)
        assert_bad_input(run("inspect", path), path, what)
    with pytest.raises(CaffeFileError, match="is a Caffe NetParameter"):
        caffe_files.read_solverstate(tmp_path / "case0.solverstate")
    with pytest.raises(CaffeFileError, match="is a Caffe SolverState"):
        caffe_files.read_net(tmp_path / "case2.caffemodel")


def test_the_right_kinds_still_read(tmp_path, solverstate):
    """A solverstate and a caffemodel read as themselves; an unknown top-level field (another fork's) is let
    through, as Caffe's protobuf does."""
    result = run("inspect", solverstate)
    assert result.exit_code == 0 and "solver state at iteration 7, lr step 1" in result.output
    fork = tmp_path / "fork.caffemodel"
    fork.write_bytes(DET1.read_bytes() + fld(4242, 2, b"fork data"))
    result = run("inspect", fork)
    assert result.exit_code == 0 and "net '12Net'" in result.output, result.output


# --------------------------------------------------------------------------------------------------------
# 5. Caffe's fatal upgrade errors (upgrade_proto.cpp)
# --------------------------------------------------------------------------------------------------------

def test_layer_and_v1_layers_together_are_refused(tmp_path):
    """UpgradeV1Net: LOG(FATAL) "Refusing to upgrade inconsistent NetParameter input" - in text and binary."""
    text = tmp_path / "mixed.prototxt"
    text.write_text('layers { name: "old" type: RELU bottom: "x" top: "x" }\n'
                    'layer { name: "new" type: "ReLU" bottom: "x" top: "x" }\n')
    line = assert_bad_input(run("inspect", text), text, "Refusing to upgrade inconsistent NetParameter input; the "
                            "definition includes both 'layer' (layer 'new') and V1 'layers' (layer 'old') fields")
    binary = tmp_path / "mixed.caffemodel"
    net = caffe_pb2.NetParameter.FromString(DET1.read_bytes())
    net.layers.add(name="v1", type=caffe_pb2.V1LayerParameter.RELU, bottom=["data"], top=["data"])
    binary.write_bytes(net.SerializeToString())
    assert_bad_input(run("inspect", binary), binary, "Refusing to upgrade inconsistent NetParameter input")
    assert line.count("Refusing") == 1


def test_unknown_v0_layer_type_is_refused(tmp_path):
    """UpgradeV0LayerType: LOG(FATAL) "Unknown layer name" (it was a note, and a layer without a type, before)."""
    path = tmp_path / "v0.prototxt"
    path.write_text('input: "data"\ninput_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2\n'
                    'layers { layer { name: "r" type: "relu" } bottom: "data" top: "r" }\n'
                    'layers { layer { name: "f" type: "frobnicate" } bottom: "r" top: "f" }\n')
    assert_bad_input(run("inspect", path), path, "V0 layer 'f': unknown V0 layer type 'frobnicate'")
    path.write_text(path.read_text().replace("frobnicate", "sigmoid"))
    assert run("inspect", path).exit_code == 0


# --------------------------------------------------------------------------------------------------------
# 6. sfport's converted-net .pt
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt") / "det1.pt"
    result = run("convert", DET1, "-p", FIXTURES / "mtcnn/det1.prototxt", "-o", path)
    assert result.exit_code == 0, result.output
    return path


PT_CASES = {
    "net not text": (dict(net=5), "'net' is a int, not the text of a net definition"),
    "no net": (dict(net=None), "'net' is missing, not the text of a net definition"),
    "net syntax": (dict(net='layer { name: "a" frob: 1 }'), "'net' is not a valid net definition"),
    "state_dict list": (dict(state_dict=[1, 2]), "'state_dict' is missing or not a dict of tensors by name"),
    "state_dict values": (dict(state_dict={"conv1.weight": [1.0]}), "entry 'conv1.weight' is list"),
    "shapes not dict": (dict(input_shapes=[1, 3, 12, 12]), "'input_shapes' is not a dict of input name -> shape"),
    "shape zero": (dict(input_shapes={"data": [1, 0, 12, 12]}), "'data': [1, 0, 12, 12] is not a list of sizes >= 1"),
    "shape text": (dict(input_shapes={"data": "1,3,12,12"}), "'data': '1,3,12,12' is not a list of sizes"),
    "shape bool": (dict(input_shapes={"data": [True, 3]}), "is not a list of sizes >= 1"),
    "shape huge": (dict(input_shapes={"data": [2 ** 31, 2, 1, 1]}), "blob size exceeds INT_MAX"),
    "shape axes": (dict(input_shapes={"data": [1] * 33}), "blob shape has 33 axes"),
    "shape key": (dict(input_shapes={3: [1, 3, 12, 12]}), "its key 3 is not an input name"),
}


@pytest.mark.parametrize("case", list(PT_CASES), ids=list(PT_CASES))
def test_converted_net_structure_is_checked_before_use(case, good_pt, tmp_path):
    change, what = PT_CASES[case]
    doc = torch.load(good_pt, weights_only=True)
    for k, v in change.items():
        if v is None:
            del doc[k]
        else:
            doc[k] = v
    bad = tmp_path / "bad.pt"
    torch.save(doc, bad)
    out = tmp_path / "out"
    out.mkdir()
    assert_bad_input(run("convert", bad, "-o", out / "again.pt"), bad, what)
    assert files_under(out) == set()


def test_converted_net_container_is_checked(good_pt, tmp_path):
    doc = torch.load(good_pt, weights_only=True)
    assert run("convert", good_pt, "-o", tmp_path / "again.pt").exit_code == 0   # the good one converts

    class Code:
        def __reduce__(self):
            return (os.system, ("echo this must not run",))

    cases = {"evil.pt": ({**doc, "extra": Code()}, "unpickling refused: it holds more than tensors and plain "
                                                   "containers"),
             "other.pt": ({**doc, "format": "something-else"}, "not an sfport converted net"),
             "truncated.pt": (good_pt.read_bytes()[:3000], "not an sfport converted net"),
             "random.pt": (np.random.default_rng(0).bytes(4000), "not the zip archive torch.save writes"),
             "empty.pt": (b"", "empty file, not an sfport converted net")}
    out = tmp_path / "out"
    out.mkdir()
    for name, (content, what) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        result = run("convert", path, "-o", out / "x.pt")
        assert_bad_input(result, path, what)
        assert "this must not run" not in result.output
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with deadline(20):
        assert_bad_input(run("convert", fifo, "-o", out / "x.pt"), fifo, "is not a regular file")
        assert_bad_input(run("convert", "/dev/zero.pt", "-o", out / "x.pt"), "/dev/zero.pt", "no such file")
    assert_bad_input(run("--max-file-size", good_pt.stat().st_size - 1, "convert", good_pt, "-o", out / "x.pt"),
                     good_pt, "over the")
    assert files_under(out) == set()


# --------------------------------------------------------------------------------------------------------
# Text prototxts
# --------------------------------------------------------------------------------------------------------

def test_non_utf8_bytes(tmp_path):
    """In a comment they are harmless (Caffe's parser skips comments); in a value Caffe would keep them raw,
    which sfport cannot: an error at the byte, never a silently changed name."""
    base = (FIXTURES / "mtcnn/det1.prototxt").read_bytes()
    comment = tmp_path / "comment.prototxt"
    comment.write_bytes(base.replace(b"\n", "  # caf\xe9 'quoted # not a string\n".encode("latin-1"), 3))
    assert run("inspect", comment).exit_code == 0
    name = tmp_path / "name.prototxt"
    name.write_bytes(b"# \xff fine here\n" + base.replace(b'name: "PNet"', 'name: "PN\xe9t" # \xe9'.encode("latin-1")))
    assert_bad_input(run("inspect", name), f"{name}:2:10", "byte 0xE9 is not UTF-8 text")
    hash_in_string = tmp_path / "hash.prototxt"
    hash_in_string.write_bytes(base.replace(b'name: "PNet"', b'name: "P#N\xe9t"'))
    assert_bad_input(run("inspect", hash_in_string), f"{hash_in_string}:1:11", "byte 0xE9 is not UTF-8")


def test_long_garbage_makes_a_short_error_line(tmp_path):
    for k, data in enumerate([b"{" * 10_000_000, b"a" * 10_000_000, b"name: '" + b"x" * 5_000_000 + b"\n",
                              b"layer { name: 'a' type: 'Input' top: 'd' input_param { shape { dim: "
                              + b"9" * 5_000_000 + b" } } }"]):
        path = tmp_path / f"long{k}.prototxt"
        path.write_bytes(data)
        line = assert_bad_input(run("inspect", path), path, "syntax error")
        assert len(line) < 600, len(line)


# --------------------------------------------------------------------------------------------------------
# 7. Fuzz
# --------------------------------------------------------------------------------------------------------

def fuzz_cases(solverstate: bytes) -> list[tuple[str, bytes, str]]:
    """(name, bytes, suffix): 200 hostile files, seeded, from the fixtures and a solverstate."""
    rng = np.random.default_rng(0)
    det1, lenet = DET1.read_bytes(), LENET.read_bytes()
    texts = [(FIXTURES / p).read_bytes() for p in ("sphereface_prototxt/wy1iu/sphereface_deploy.prototxt",
                                                   "sphereface_prototxt/zuoqing1988/sphereface04_deploy.prototxt",
                                                   "mtcnn/det1.prototxt")]
    out = []
    for name, data, suffix in (("det1", det1, ".caffemodel"), ("lenet", lenet, ".caffemodel"),
                               ("state", solverstate, ".solverstate")):
        for k in range(12):
            out.append((f"{name}_truncated{k}", data[:int(rng.integers(1, len(data)))], suffix))
        for k in range(20):
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 20))):
                b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
            out.append((f"{name}_flipped{k}", bytes(b), suffix))
    pieces = wire.split_packed(det1, wire.NET_SPEC, 3)   # legal, then damaged: every path of the blob reader
    for k in range(12):
        b = bytearray(pieces[:int(rng.integers(len(pieces) // 2, len(pieces)))])
        b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        out.append((f"det1_pieces_damaged{k}", bytes(b), ".caffemodel"))
    for k in range(10):
        b = bytearray(det1)
        at = int(rng.integers(0, len(b)))
        b[at:at] = varint(int(rng.integers(2 ** 40, 2 ** 62)))
        out.append((f"det1_varint_inserted{k}", bytes(b), ".caffemodel"))
    bomb = varint(2 ** 62)   # a LEN field announcing 2^62 bytes
    nested = b""
    for _ in range(2000):
        nested = fld(999, 2, nested)
    out += [
        ("bomb_net", b"\x0a" + bomb + det1, ".caffemodel"),
        ("bomb_layer", det1 + b"\xa2\x06" + bomb + b"abc", ".caffemodel"),
        ("bomb_blob", det1 + fld(100, 2, fld(1, 2, b"L") + b"\x3a" + bomb + b"x"), ".caffemodel"),
        ("bomb_data", det1 + fld(100, 2, fld(1, 2, b"L") + fld(7, 2, b"\x2a" + bomb)), ".caffemodel"),
        ("bomb_history", b"\x08\x05\x1a" + bomb, ".solverstate"),
        ("varint_10_bytes", det1 + b"\x20" + b"\xff" * 9 + b"\x01", ".caffemodel"),
        ("varint_11_bytes", det1 + b"\x20" + b"\xff" * 10 + b"\x01", ".caffemodel"),
        ("tag_10_bytes", b"\xff" * 9 + b"\x01" + det1, ".caffemodel"),
        ("field_number_max", varint((2 ** 29 - 1) << 3) + b"\x01" + det1, ".caffemodel"),
        ("field_number_0", b"\x00\x01" + det1, ".caffemodel"),
        ("groups_nested", b"\x0b" * 5000 + b"\x0c" * 5000 + det1, ".caffemodel"),
        ("groups_in_layer", det1 + fld(100, 2, fld(1, 2, b"g") + b"\xbb\x3e" * 3000 + b"\xbc\x3e" * 3000),
         ".caffemodel"),
        ("groups_in_param", det1 + fld(100, 2, fld(1, 2, b"g") + fld(2, 2, b"Convolution")
                                       + fld(106, 2, b"\xbb\x3e" * 3000 + b"\xbc\x3e" * 3000)), ".caffemodel"),
        ("group_unclosed", det1 + fld(100, 2, fld(1, 2, b"g") + fld(106, 2, b"\xbb\x3e" * 3000)), ".caffemodel"),
        ("nested_2000_deep", det1 + fld(100, 2, fld(1, 2, b"n") + nested), ".caffemodel"),
        ("dims_a_million", one_layer_net(shape(*[1] * 1_000_000)), ".caffemodel"),
        ("dims_2^62", one_layer_net(shape(*[2 ** 62] * 4)), ".caffemodel"),
        ("dims_minus_1", one_layer_net(shape(-1, -1)), ".caffemodel"),
        ("input_dim_a_million", fld(1, 2, b"n") + fld(3, 2, b"data") + fld(4, 2, b"\x01" * 1_000_000),
         ".caffemodel"),
        ("input_shape_2^40", fld(1, 2, b"n") + fld(3, 2, b"data") + fld(8, 2, fld(1, 2, varint(2 ** 40) * 4)) + det1,
         ".caffemodel"),
        ("history_2^32", b"\x08\x05" + fld(3, 2, shape(2 ** 32, 2 ** 32)), ".solverstate"),
    ]
    for k, text in enumerate(texts):
        for j in range(6):
            b = bytearray(text)
            for _ in range(int(rng.integers(1, 5))):
                at = int(rng.integers(0, len(b)))
                b[at:at] = bytes([int(rng.integers(0x80, 0x100))])
            out.append((f"text{k}_non_utf8_{j}", bytes(b), ".prototxt"))
        for j in range(6):
            out.append((f"text{k}_truncated{j}", text[:int(rng.integers(1, len(text)))], ".prototxt"))
        for j in range(6):
            b = bytearray(text)
            for _ in range(int(rng.integers(1, 10))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(32, 127))
            out.append((f"text{k}_flipped{j}", bytes(b), ".prototxt"))
    out += [
        ("text_braces_100k", b"layer {" * 100_000 + b"}" * 100_000, ".prototxt"),
        ("text_braces_in_param", b'layer { name: "c" type: "Convolution" convolution_param { weight_filler '
         + b"{" * 50_000, ".prototxt"),
        ("text_10MB_comment", b"# " + b"x" * 10_000_000 + b"\nname: 'n'\n", ".prototxt"),
        ("text_10MB_word", b"a" * 10_000_000, ".prototxt"),
        ("text_10MB_braces", b"{" * 10_000_000, ".prototxt"),
        ("text_NUL", texts[2].replace(b"layer", b"lay\x00er", 1), ".prototxt"),
        ("text_dims_2^32", b"layer { name: 'a' type: 'Input' top: 'd' input_param { shape { dim: 4294967296 "
         b"dim: 4294967296 } } }", ".prototxt"),
        ("text_blob_2^32", b"layer { name: 'a' type: 'ReLU' bottom: 'x' top: 'x' blobs { shape { dim: 4294967296 "
         b"dim: 4294967296 } } }", ".prototxt"),
    ]
    return out


def test_fuzz_inspect_gives_one_error_line_or_exit_0(tmp_path, solverstate):
    cases = fuzz_cases(solverstate.read_bytes())
    assert len(cases) >= 200
    outcomes = {0: 0, 2: 0}
    slow = []
    t_all = time.perf_counter()
    with deadline(120):
        for name, data, suffix in cases:
            path = tmp_path / (name + suffix)
            path.write_bytes(data)
            t0 = time.perf_counter()
            result = run("inspect", path)
            took = time.perf_counter() - t0
            if took > 5:
                slow.append((name, round(took, 1)))
            assert result.exit_code in (0, 2), (name, result.exit_code, repr(result.exception), result.output[-500:])
            assert "Traceback" not in result.output, name
            if result.exit_code == 2:
                assert_bad_input(result, path)
                assert len(result.stderr) < 1000, (name, len(result.stderr))
            else:
                assert result.exception is None and result.stderr == "", (name, result.stderr)
            outcomes[result.exit_code] += 1
            path.unlink()
    assert not slow, slow
    assert time.perf_counter() - t_all < 60
    # both outcomes occur: damage inside float data or a string is harmless, damage to the structure is not
    assert outcomes[2] > 100 and outcomes[0] > 10, outcomes
    assert files_under(tmp_path) == {"written.solverstate"}
