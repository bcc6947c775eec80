"""Seeded malformed inputs for every sfport command, built from the real fixtures: truncations, byte flips, length
bombs, wrong file kinds, hostile numbers in layer and solver fields, corrupt images, lists and arrays, and
unwritable outputs. ``cases(rng, n)`` yields :class:`Case` objects; tests/test_fuzz.py runs a few hundred,
bench/fuzz.py as many as asked (each in its own process, so a crash or a hang is seen too).

The promise checked for each case: exit status 0 (the input was harmless, or Caffe accepts it) or 2 with exactly
one line ``sfport: error: ...`` on stderr and no traceback; after a failure nothing is left in the output
folder. ``verify`` may also exit 1 (a parity failure is its answer, not an error).
"""
from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOSTILE_INTS = ["0", "-1", "2147483647", "-2147483648", "4294967295", "99999999999", "1000000"]
HOSTILE_FLOATS = ["nan", "inf", "-inf", "1e38", "-1e30", "0"]

FACE_NET = """name: "tiny_face"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 112 dim: 96 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 8 stride: 8 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc5" type: "InnerProduct" bottom: "conv1" top: "fc5" inner_product_param { num_output: 8
  weight_filler { type: "xavier" } } }
"""

TINY_TRAIN = """name: "tiny_train"
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
  image_data_param { source: "LIST" batch_size: 2 new_height: 8 new_width: 8 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 2 kernel_size: 3 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 2
  weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

TINY_SOLVER = """net: "NET"
base_lr: 0.01
lr_policy: "step"
stepsize: 10
gamma: 0.1
momentum: 0.9
weight_decay: 0.0005
max_iter: 2
display: 1
snapshot: 0
snapshot_prefix: "OUT/snap"
solver_mode: CPU
"""


@dataclass
class Case:
    name: str
    args: list                       # the command line after `sfport`
    out_dir: Path | None = None      # must hold nothing after a failure
    allowed: tuple = (0, 2)
    env: dict = field(default_factory=dict)


def broken(case: Case, exit_code: int, stderr: str, output: str) -> str | None:
    """What breaks the promise in a finished run of ``case`` (None: it holds): an exit status not allowed, a
    traceback, after exit 2 anything but one ``sfport: error:`` line on stderr (``train`` logs first, as Caffe
    does: then the error must be its last line and the only one), or files left in the output folder."""
    from badinput import files_under  # noqa: PLC0415 - the tests' helper; bench/fuzz.py puts tests/ on the path

    if exit_code not in case.allowed:
        return f"exit {exit_code}: {output[-400:]}"
    if "Traceback" in output:
        return "a traceback"
    if exit_code == 2:
        lines = stderr.splitlines()
        if case.args[0] == "train" and lines and lines[-1].startswith("sfport: error: "):
            lines = [l for l in lines if l.startswith("sfport: error: ")]
        if len(lines) != 1 or not lines[0].startswith("sfport: error: "):
            return f"not one error line: {stderr[-400:]!r}"
        if case.out_dir is not None and files_under(case.out_dir):
            return f"left behind: {sorted(files_under(case.out_dir))}"
    return None


# ---- byte-level mutations -------------------------------------------------------------------------------------

def truncate(data: bytes, rng) -> bytes:
    return data[:int(rng.integers(0, len(data)))]


def flip(data: bytes, rng, n: int | None = None) -> bytes:
    b = bytearray(data)
    for _ in range(n or int(rng.integers(1, 12))):
        i = int(rng.integers(0, len(b)))
        b[i] = int(rng.integers(0, 256))
    return bytes(b)


def length_bomb(data: bytes, rng) -> bytes:
    """A LEN field (wire type 2) announcing an absurd length, or a 10-byte varint, at a random place."""
    i = int(rng.integers(0, len(data)))
    bomb = bytes([0x3a]) + b"\xff" * 9 + b"\x01" if rng.random() < 0.5 else bytes([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])
    return data[:i] + bomb + data[i:]


def mutate_bytes(data: bytes, rng) -> tuple[str, bytes]:
    kind = ["truncate", "flip", "bomb"][int(rng.integers(0, 3))]
    return kind, {"truncate": truncate, "flip": flip, "bomb": length_bomb}[kind](data, rng)


# ---- text-level mutations of prototxts ----------------------------------------------------------------------

_NUM = re.compile(r"(\b[a-z_]+\s*:\s*)(-?[0-9][0-9.e+-]*)")


def mutate_text(text: str, rng) -> tuple[str, str]:
    kind = ["number", "number", "number", "drop_line", "dup_line", "rename_blob", "garbage", "non_utf8"][
        int(rng.integers(0, 8))]
    lines = text.splitlines()
    if kind == "number":
        hits = list(_NUM.finditer(text))
        if hits:
            m = hits[int(rng.integers(0, len(hits)))]
            value = (HOSTILE_FLOATS if "." in m.group(2) or "e" in m.group(2) else HOSTILE_INTS)
            v = value[int(rng.integers(0, len(value)))]
            return f"number:{m.group(1).strip()}={v}", text[:m.start(2)] + v + text[m.end(2):]
    if kind == "drop_line" and lines:
        i = int(rng.integers(0, len(lines)))
        return kind, "\n".join(lines[:i] + lines[i + 1:])
    if kind == "dup_line" and lines:
        i = int(rng.integers(0, len(lines)))
        return kind, "\n".join(lines[:i + 1] + lines[i:])
    if kind == "rename_blob":
        names = re.findall(r'(?:bottom|top): "([^"]+)"', text)
        if names:
            a = names[int(rng.integers(0, len(names)))]
            b = names[int(rng.integers(0, len(names)))]
            occurrences = [m.start() for m in re.finditer(f'"{re.escape(a)}"', text)]
            j = occurrences[int(rng.integers(0, len(occurrences)))]
            return kind, text[:j] + f'"{b}"' + text[j + len(a) + 2:]
    if kind == "non_utf8":
        i = int(rng.integers(0, len(text)))
        return kind, text[:i] + "\udcff\udcfe" + text[i:]   # bytes 0xff 0xfe (surrogateescape)
    i = int(rng.integers(0, len(text)))
    return "garbage", text[:i] + "{ } :: \" layer {" + text[i:]


def _write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


# ---- images ------------------------------------------------------------------------------------------------

def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (a few bytes of IDAT, no real data)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def bad_image(good: bytes, rng) -> tuple[str, bytes]:
    kind = ["truncate", "flip", "huge_png", "text", "empty", "half"][int(rng.integers(0, 6))]
    if kind == "truncate":
        return kind, truncate(good, rng)
    if kind == "half":
        return kind, good[:len(good) // 2]
    if kind == "flip":
        return kind, flip(good, rng, 40)
    if kind == "huge_png":
        return kind, png_header_claiming(100000, 100000)
    if kind == "text":
        return kind, b"this is not an image\n"
    return kind, b""


# ---- the cases ------------------------------------------------------------------------------------------------

class Workspace:
    """The files the cases start from, made once in ``root``: a tiny face net with weights, aligned face crops,
    an image list, a features array, a tiny training set."""

    def __init__(self, root: Path, fixtures: Path):
        import cv2

        from sfport.runtime.net import Net

        self.root, self.fixtures = root, fixtures
        root.mkdir(parents=True, exist_ok=True)
        self.face_prototxt = root / "face.prototxt"
        self.face_prototxt.write_text(FACE_NET)
        self.face_model = root / "face.caffemodel"
        Net(str(self.face_prototxt), seed=0).save_caffemodel(self.face_model)
        rng = np.random.default_rng(0)
        self.faces = root / "faces"
        (self.faces / "A").mkdir(parents=True, exist_ok=True)
        (self.faces / "B").mkdir(parents=True, exist_ok=True)
        for person in "AB":
            for k in (1, 2):
                img = rng.integers(0, 256, (112, 96, 3), dtype=np.uint8)
                cv2.imwrite(str(self.faces / person / f"{person}_{k:04d}.jpg"), img)
        self.pairs_text = "2\t1\nA\t1\t2\nA\t1\tB\t1\nB\t1\t2\nB\t2\tA\t2\n"
        self.list_text = "".join(f"{p}/{p}_{k:04d}.jpg\n" for p in "AB" for k in (1, 2))
        self.features = rng.standard_normal((4, 8)).astype(np.float32)
        self.jpeg = (self.faces / "A" / "A_0001.jpg").read_bytes()
        self.landmarks = root / "landmarks.txt"
        self.landmarks.write_text("A/A_0001.jpg 30 50 66 50 48 70 34 90 62 90\n")
        self.train_dir = root / "train"
        (self.train_dir / "img").mkdir(parents=True, exist_ok=True)
        for k in range(4):
            cv2.imwrite(str(self.train_dir / "img" / f"{k}.png"), rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
        self.train_list = "".join(f"img/{k}.png {k % 2}\n" for k in range(4))


def cases(ws: Workspace, rng, n: int, tmp: Path, exclude: tuple = ()):
    """``n`` cases, round-robin over the generators below (but those of the commands in ``exclude``), each
    writing its inputs under ``tmp``."""
    gens = [_caffemodel_case, _prototxt_case, _prototxt_case, _solver_case, _eval_case, _image_case,
            _features_case, _landmarks_case, _output_case, _pt_case]
    gens = [g for g in gens if not (g is _solver_case and "train" in exclude)]
    for i in range(n):
        d = tmp / f"case{i:04d}"
        d.mkdir(parents=True)
        yield gens[i % len(gens)](ws, rng, d, i)


def _out(d: Path) -> Path:
    o = d / "out"
    o.mkdir()
    return o


def _caffemodel_case(ws, rng, d, i):
    src = [ws.fixtures / "mtcnn/det1.caffemodel", ws.fixtures / "lenet/lenet_iter_10000.caffemodel",
           ws.face_model][i % 3]
    kind, data = mutate_bytes(src.read_bytes(), rng)
    m = d / "m.caffemodel"
    m.write_bytes(data)
    out = _out(d)
    cmd = [["inspect", m], ["convert", m, "-o", out / "m.pt", "--shape", "1,3,12,12"], ["upgrade", m, out / "u.caffemodel"]][
        int(rng.integers(0, 3))]
    if src == ws.face_model and cmd[0] == "convert":
        cmd = ["convert", m, "-o", out / "m.pt"]
    return Case(f"caffemodel-{kind}-{cmd[0]}", cmd, out)


def _prototxt_case(ws, rng, d, i):
    pairs = [("mtcnn/det1.prototxt", "mtcnn/det1.caffemodel"), ("lenet/lenet.prototxt", "lenet/lenet_iter_10000.caffemodel"),
             ("mtcnn/det3.prototxt", "mtcnn/det3.caffemodel")]
    proto, model = pairs[i % len(pairs)]
    kind, text = mutate_text((ws.fixtures / proto).read_text(), rng)
    p = _write_text(d / "d.prototxt", text)
    out = _out(d)
    which = int(rng.integers(0, 3))
    if which == 0:
        return Case(f"prototxt-{kind}-inspect", ["inspect", p], out)
    if which == 1:
        return Case(f"prototxt-{kind}-convert", ["convert", ws.fixtures / model, "-p", p, "-o", out / "n.pt"], out)
    return Case(f"prototxt-{kind}-deploy", ["deploy", p, "-o", out / "deploy.prototxt"], out)


def _solver_case(ws, rng, d, i):
    out = _out(d)
    (d / "list.txt").write_text(ws.train_list)
    net_text = TINY_TRAIN.replace("LIST", str(d / "list.txt"))
    solver = TINY_SOLVER.replace("OUT", str(out))
    target = int(rng.integers(0, 3))
    if target == 0:
        kind, net_text = mutate_text(net_text, rng)
    elif target == 1:
        kind, solver = mutate_text(solver, rng)
    else:
        kind, lst = mutate_text(ws.train_list, rng)
        _write_text(d / "list.txt", lst)
    _write_text(d / "net.prototxt", net_text)
    s = _write_text(d / "solver.prototxt", solver.replace("NET", str(d / "net.prototxt")))
    return Case(f"train-{('net', 'solver', 'list')[target]}-{kind}",
                ["train", s, "--data-root", ws.train_dir, "--workers", "0", "--no-progress", "--max-iter", "2"], out)


def _eval_case(ws, rng, d, i):
    out = _out(d)
    kind, pairs = mutate_text(ws.pairs_text, rng) if rng.random() < 0.7 else ("pairs-ok", ws.pairs_text)
    _write_text(d / "pairs.txt", pairs)
    kind2, lst = mutate_text(ws.list_text, rng) if rng.random() < 0.5 else ("list-ok", ws.list_text)
    _write_text(d / "list.txt", lst)
    np.save(d / "f.npy", ws.features)
    return Case(f"eval-{kind}-{kind2}", ["eval", "--pairs", d / "pairs.txt", "--features", d / "f.npy", "--list",
                                         d / "list.txt", "--report", out / "r.json"], out)


def _image_case(ws, rng, d, i):
    out = _out(d)
    kind, data = bad_image(ws.jpeg, rng)
    bad = d / "bad.jpg"
    bad.write_bytes(data)
    good = ws.faces / "A" / "A_0002.jpg"
    which = int(rng.integers(0, 3))
    if which == 0:
        return Case(f"image-{kind}-compare", ["compare", bad, good, "-m", ws.face_model, "-p", ws.face_prototxt], out)
    if which == 1:
        return Case(f"image-{kind}-embed", ["embed", good, bad, "-m", ws.face_model, "-p", ws.face_prototxt, "-o",
                                            out / "f.npy", "--workers", "0"], out)
    return Case(f"image-{kind}-verify", ["verify", ws.face_model, "-p", ws.face_prototxt, "--input", bad], out,
                allowed=(0, 1, 2))


def _features_case(ws, rng, d, i):
    out = _out(d)
    f = d / "f.npy"
    kind = ["truncate", "flip_header", "npz", "strings", "complex", "huge_header", "empty", "nan", "rows"][
        int(rng.integers(0, 9))]
    np.save(f, ws.features)
    data = f.read_bytes()
    if kind == "truncate":
        f.write_bytes(truncate(data, rng))
    elif kind == "flip_header":
        f.write_bytes(flip(data[:128], rng, 4) + data[128:])
    elif kind == "npz":
        np.savez(d / "f.npz", a=ws.features)
        os.replace(d / "f.npz", f)
    elif kind == "strings":
        np.save(f, np.array([["a"] * 8] * 4))
    elif kind == "complex":
        np.save(f, ws.features.astype(np.complex64))
    elif kind == "huge_header":
        f.write_bytes(data.replace(b"(4, 8)", b"(1000000000000, 8)"))
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "nan":
        bad = ws.features.copy()
        bad[1, 2] = np.nan
        np.save(f, bad)
    else:
        np.save(f, ws.features[:3])
    (d / "pairs.txt").write_text(ws.pairs_text)
    (d / "list.txt").write_text(ws.list_text)
    return Case(f"features-{kind}", ["eval", "--pairs", d / "pairs.txt", "--features", f, "--list", d / "list.txt"],
                out)


def _landmarks_case(ws, rng, d, i):
    out = _out(d) / "aligned"
    rows = ["A/A_0001.jpg 30 50 66 50 48 70 34 90 62 90", "B/B_0001.jpg 31 51 65 51 48 71 35 91 61 91"]
    kind = ["zeros", "nan", "inf", "columns", "text", "dir", "missing"][int(rng.integers(0, 7))]
    lm = d / "landmarks.txt"
    if kind == "zeros":
        rows[0] = "A/A_0001.jpg " + " ".join(["0"] * 10)
    elif kind == "nan":
        rows[1] = rows[1].replace("48", "nan")
    elif kind == "inf":
        rows[0] = rows[0].replace("30", "inf")
    elif kind == "columns":
        rows[0] = rows[0].rsplit(" ", 3)[0]
    elif kind == "text":
        rows[0] = "A/A_0001.jpg a b c d e f g h i j"
    lm.write_text("\n".join(rows) + "\n")
    if kind == "dir":
        lm = d
    elif kind == "missing":
        lm = d / "nope.txt"
    return Case(f"align-landmarks-{kind}", ["align", ws.faces, out, "--landmarks", lm, "--workers", "0"], out.parent)


def _output_case(ws, rng, d, i):
    """An output that cannot be written: a folder, a path under a file."""
    (d / "afile").write_text("x")
    blocked = [d, d / "afile" / "x.out"][int(rng.integers(0, 2))]
    (d / "pairs.txt").write_text(ws.pairs_text)
    (d / "list.txt").write_text(ws.list_text)
    np.save(d / "f.npy", ws.features)
    cmds = [
        ["convert", ws.face_model, "-o", blocked],
        ["upgrade", ws.fixtures / "mtcnn/det1.caffemodel", blocked],
        ["deploy", ws.face_prototxt, "-o", blocked],
        ["eval", "--pairs", d / "pairs.txt", "--features", d / "f.npy", "--list", d / "list.txt", "--report", blocked],
        ["embed", ws.faces / "A" / "A_0001.jpg", "-m", ws.face_model, "-p", ws.face_prototxt, "-o", blocked,
         "--workers", "0"],
        ["align", ws.faces, d / "afile" if blocked == d else blocked, "--landmarks", ws.landmarks, "--workers", "0"],
    ]
    cmd = cmds[int(rng.integers(0, len(cmds)))]
    return Case(f"output-{cmd[0]}-{'folder' if blocked == d else 'under_a_file'}", cmd, None, allowed=(2,))


def _pt_case(ws, rng, d, i):
    """sfport's own .pt containers, mutated: bytes, or a well-formed container with wrong contents."""
    import io

    import torch

    out = _out(d)
    from sfport.runtime.net import Net
    net = Net(str(ws.face_prototxt), weights=str(ws.face_model))
    good = d / "good.pt"
    net.save(good)
    doc = torch.load(good, weights_only=True)
    kind = ["bytes", "net", "shapes", "state", "keys", "pickle"][int(rng.integers(0, 6))]
    p = d / "m.pt"
    if kind == "bytes":
        _, data = mutate_bytes(good.read_bytes(), rng)
        p.write_bytes(data)
    else:
        if kind == "net":
            doc["net"] = ["abc", "layer { name: ", 42][int(rng.integers(0, 3))]
        elif kind == "shapes":
            doc["input_shapes"] = ["abc", {"data": [1, 3, -112, 96]}, {"data": "x"}, {"data": [1] * 40}][
                int(rng.integers(0, 4))]
        elif kind == "state":
            k = next(iter(doc["state_dict"]))
            doc["state_dict"][k] = torch.zeros(3, 3)
        elif kind == "keys":
            doc.pop(["net", "state_dict", "format"][int(rng.integers(0, 3))])
        else:  # a pickle that would run code: weights_only refuses it
            class Evil:
                def __reduce__(self):
                    return (os.system, (f"touch {out / 'PWNED'}",))
            doc["evil"] = Evil()
        buf = io.BytesIO()
        torch.save(doc, buf)
        p.write_bytes(buf.getvalue())
    cmd = [["inspect", p], ["convert", p, "-o", out / "x.onnx", "--format", "onnx"],
           ["compare", ws.faces / "A" / "A_0001.jpg", ws.faces / "A" / "A_0002.jpg", "-m", p]][int(rng.integers(0, 3))]
    return Case(f"pt-{kind}-{cmd[0]}", cmd, out)
