"""Only the name `sfport` is importable after install; the design card's top-level folders live under it, and the
checkout's `cli.py` is a shim of `sfport.cli`."""
import subprocess
import sys

from conftest import ROOT

CHECK = """
import importlib.util, json
names = ["sfport", "sfport.cli", "sfport.protos", "sfport.protos.caffe_pb2", "cli", "protos", "converters",
         "prototxt", "tests", "bench"]
print(json.dumps({n: importlib.util.find_spec(n.split(".")[0]) is not None and
                  importlib.util.find_spec(n) is not None for n in names}))
"""


def test_only_sfport_is_importable(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, check=True)
    import json
    found = json.loads(out.stdout)
    assert found["sfport"] and found["sfport.cli"] and found["sfport.protos.caffe_pb2"]
    assert not any(found[n] for n in ("cli", "protos", "converters", "prototxt", "tests", "bench")), found


def test_reading_needs_no_torch(tmp_path, shared):
    """Reading and inspecting Caffe files works without importing torch (fast start, light installs)."""
    code = ("import sys, sfport.cli; from sfport.formats import caffe_files; "
            f"caffe_files.read_caffemodel({str(shared / 'fixtures/mtcnn/det1.caffemodel')!r}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


COMMANDS = ("inspect", "upgrade", "convert", "verify", "train", "align", "eval", "embed", "compare")


def test_checkout_cli_py_lists_every_command():
    """`python cli.py --help` in a checkout (the shim of sfport.cli) shows all nine commands."""
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    listed = p.stdout.split("Commands:", 1)[1].split()
    assert all(name in listed for name in COMMANDS), p.stdout


def test_the_wheel_holds_every_module(tmp_path):
    """A wheel built from the checkout (what `pip install .` installs) holds every module of sfport/, converters/
    and protos/ under its installed name, the schema, and the `sfport` entry point: packages are found, not
    listed by hand (a hand-kept list once missed sfport.commands)."""
    import zipfile
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("sfport-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = set()
    for folder, installed in (("sfport", "sfport"), ("converters", "sfport/converters"), ("protos", "sfport/protos")):
        for p in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in p.parts:
                want.add(f"{installed}/{p.relative_to(ROOT / folder).as_posix()}")
    want.add("sfport/protos/caffe.proto")
    assert want - names == set(), sorted(want - names)
    assert not {n for n in names if n.split("/")[0] in ("converters", "protos", "tests", "bench", "cli.py")}
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sfport = sfport.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


PUBLIC = """
import importlib, json, sys
import sfport
out = {"torch_after_import": "torch" in sys.modules}
import sfport.io, sfport.draw
from sfport.io import Transformer
from sfport.draw import draw
out["io"] = sfport.io is importlib.import_module("sfport.data.caffe_io") and Transformer is sfport.Transformer
out["draw"] = sfport.draw is importlib.import_module("sfport.netdef.draw") and callable(draw)
from sfport.verify import run
from sfport.export import write
out["verify"] = sfport.verify is importlib.import_module("sfport.runtime.verify") and callable(run)
out["export"] = sfport.export is importlib.import_module("sfport.runtime.export") and callable(write)
out["Net"] = (sfport.Net is importlib.import_module("sfport.pycaffe.net").Net
              and sfport.TorchNet is importlib.import_module("sfport.runtime.net").Net)
import sfport.proto.caffe_pb2
out["proto"] = (sfport.proto is importlib.import_module("sfport.protos")
                and sfport.proto.caffe_pb2 is importlib.import_module("sfport.protos.caffe_pb2")
                and sys.modules["sfport.proto.caffe_pb2"] is sys.modules["sfport.protos.caffe_pb2"])
out["merge"] = sfport.merge is importlib.import_module("sfport.netdef.weight_match").merge
try:
    import sfport.nothing
    out["unknown"] = False
except ModuleNotFoundError:
    out["unknown"] = True
print(json.dumps(out))
"""


def test_public_entry_points_keep_their_short_names(tmp_path):
    """sfport.Net (pycaffe's), sfport.TorchNet, sfport.io, sfport.draw, sfport.verify, sfport.export (and sfport.proto, merge) are the objects
    of their rooms' modules, whether reached as attributes or imported by the short name; importing sfport
    alone loads no torch."""
    out = subprocess.run([sys.executable, "-c", PUBLIC], cwd=tmp_path, capture_output=True, text=True, check=True)
    import json
    found = json.loads(out.stdout)
    assert found.pop("torch_after_import") is False
    assert all(found.values()), found
