"""The commands that need no forward import no torch (issue 32, item 3): ``sfport inspect`` of a definition whose
input shapes are stated and of a caffemodel, ``sfport upgrade`` and ``sfport deploy`` run in a fresh interpreter
end without ``torch`` in ``sys.modules``, and print (and write) exactly what the same command prints in this
process, where torch is imported. The shape inference of every registered type (the contract's cases) needs no
torch either. Timings are not asserted (see the issue for them)."""
import base64
import json
import os
import subprocess
import sys

import pytest
import torch  # noqa: F401 - the in-process runs compared against have torch imported
from click.testing import CliRunner

from sfport import converters
from sfport.cli import cli
from tests.conftest import FIXTURES, ROOT
from tests.test_converter_contract import CASES, _layer

DET1 = FIXTURES / "mtcnn" / "det1.prototxt"
MOBILEFACENET = FIXTURES / "mobilefacenet_insightface" / "mxnet2caffe_mobilefacenet.prototxt"
LENET_TRAIN_TEST = ROOT / "tests" / "nets" / "lenet_train_test.prototxt"

# the command line in a fresh interpreter; then which torch modules it imported, and its exit status
PROBE = """
import json, os, sys
from sfport.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
sys.stderr.flush()
with open(os.environ["SFPORT_STARTUP_REPORT"], "w") as f:
    json.dump({"code": code, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}, f)
"""


def _fresh(code: str, args, cwd, report, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SFPORT_CONVERTERS"}   # no plugin of the user's
    env["SFPORT_STARTUP_REPORT"] = str(report)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


COMMANDS = {
    "inspect det1.prototxt": ["inspect", DET1],
    "inspect MobileFaceNet prototxt": ["inspect", MOBILEFACENET],
    "inspect det1.caffemodel": ["inspect", DET1.with_suffix(".caffemodel")],
    "inspect --json caffemodel -p prototxt": ["inspect", "--json", DET1.with_suffix(".caffemodel"), "-p", DET1],
    "upgrade": ["upgrade", DET1, "out.prototxt"],
    "deploy": ["deploy", LENET_TRAIN_TEST, "--shape", "1,1,28,28", "-o", "out.prototxt"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_imports_no_torch_and_prints_the_same(name, tmp_path, monkeypatch):
    args = COMMANDS[name]
    fresh_dir, here_dir = tmp_path / "fresh", tmp_path / "here"
    fresh_dir.mkdir()
    here_dir.mkdir()
    report = tmp_path / "report.json"
    fresh = _fresh(PROBE, args, fresh_dir, report)
    assert report.exists(), fresh.stderr
    seen = json.loads(report.read_text())
    assert seen["torch"] == [], f"sfport {name} imported {seen['torch'][:5]}"

    monkeypatch.chdir(here_dir)
    here = CliRunner().invoke(cli, [str(a) for a in args])
    assert here.exit_code == seen["code"] == 0, (here.output, fresh.stderr)
    assert fresh.stdout == here.stdout
    assert fresh.stderr == here.stderr
    written = sorted(p.name for p in fresh_dir.iterdir())
    assert written == sorted(p.name for p in here_dir.iterdir())
    for f in written:
        assert (fresh_dir / f).read_bytes() == (here_dir / f).read_bytes(), f


# every contract case's top and parameter shapes, asked of the registry in a fresh interpreter
SHAPES = """
import base64, json, os, sys
from sfport import converters
from sfport.protos import caffe_pb2
out = {}
for t, (layer, bottoms) in json.load(sys.stdin).items():
    layer = caffe_pb2.LayerParameter.FromString(base64.b64decode(layer))
    bottoms = [tuple(b) for b in bottoms]
    c = converters.get(t)
    try:
        out[t] = [c.top_shapes(layer, bottoms), c.param_shapes(layer, bottoms)]
    except Exception as e:
        out[t] = f"{type(e).__name__}: {e}"
with open(os.environ["SFPORT_STARTUP_REPORT"], "w") as f:
    json.dump({"shapes": out, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}, f)
"""


def test_shape_inference_of_every_type_imports_no_torch(tmp_path):
    """No registered type needs torch for its top and parameter shapes (what inspect and deploy ask)."""
    cases = {}
    expected = {}
    for t in sorted(CASES):
        layer, bottoms = _layer(t)
        cases[t] = [base64.b64encode(layer.SerializeToString()).decode(), bottoms]
        c = converters.get(t)
        expected[t] = json.loads(json.dumps([c.top_shapes(layer, bottoms), c.param_shapes(layer, bottoms)]))
    report = tmp_path / "report.json"
    fresh = _fresh(SHAPES, [], tmp_path, report, stdin=json.dumps(cases))
    assert fresh.returncode == 0 and report.exists(), fresh.stderr
    seen = json.loads(report.read_text())
    assert seen["torch"] == [], seen["torch"][:5]
    assert seen["shapes"] == expected
