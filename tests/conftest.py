"""Shared test fixtures: the read-only `shared/` folder beside the checkout (fixtures, upstream, golden), or where
$SFPORT_SHARED points.

Most tests are about real files. Without the shared folder (an install from a wheel, say) they are skipped, with
a reason naming SFPORT_SHARED, and the rest still run: the lists below are then empty, and every test of a
module that imports the shared paths or lists from here, or that asks for the `shared` / `golden_copy` fixtures,
is marked skipped at collection.
"""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("SFPORT_SHARED", ROOT.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
UPSTREAM = SHARED / "upstream"
GOLDEN = SHARED / "golden"

HAVE_SHARED = FIXTURES.is_dir()
NO_SHARED = (f"shared test data not found at {SHARED}: set SFPORT_SHARED to the folder with fixtures/, upstream/ "
             "and golden/")



def lenet_solver(net: str, snapshot_prefix: str) -> str:
    """BVLC Caffe's examples/mnist/lenet_solver.prototxt, with its net and snapshot_prefix paths given."""
    return f"""net: "{net}"
test_iter: 100
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "{snapshot_prefix}"
solver_mode: GPU
"""


# deploy prototxt -> caffemodel of the fixture models
MODEL_PAIRS = [
    ("mtcnn/det1.prototxt", "mtcnn/det1.caffemodel"),
    ("mtcnn/det2.prototxt", "mtcnn/det2.caffemodel"),
    ("mtcnn/det3.prototxt", "mtcnn/det3.caffemodel"),
    ("mtcnn/det4.prototxt", "mtcnn/det4.caffemodel"),
    ("lenet/lenet.prototxt", "lenet/lenet_iter_10000.caffemodel"),
    ("mobilefacenet_insightface/mxnet2caffe_mobilefacenet.prototxt",
     "mobilefacenet_insightface/mxnet2caffe_mobilefacenet.caffemodel"),
    ("ultraface/slim-320.prototxt", "ultraface/slim-320.caffemodel"),
] if HAVE_SHARED else []


def all_prototxts():
    return sorted(p for base in (FIXTURES, UPSTREAM, GOLDEN) for p in base.rglob("*.prototxt"))


def all_caffemodels(include_golden=False):
    paths = sorted(FIXTURES.rglob("*.caffemodel"))
    if include_golden:
        paths += sorted(GOLDEN.rglob("*.caffemodel"))
    return paths


# what a test module imports from here when it reads the shared folder
_SHARED_OBJECTS = (SHARED, FIXTURES, UPSTREAM, GOLDEN, MODEL_PAIRS, all_prototxts, all_caffemodels)
_SHARED_FIXTURES = {"shared", "golden_copy"}


def _uses_shared(item) -> bool:
    module = getattr(item, "module", None)
    if module is not None and any(v is obj for v in vars(module).values() for obj in _SHARED_OBJECTS):
        return True
    return bool(_SHARED_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    if HAVE_SHARED:
        return
    skip = pytest.mark.skip(reason=NO_SHARED)
    for item in items:
        if _uses_shared(item):
            item.add_marker(skip, append=False)  # before pytest's own 'empty parameter set' skip


@pytest.fixture
def shared():
    if not HAVE_SHARED:
        pytest.skip(NO_SHARED)
    return SHARED


@pytest.fixture
def golden_copy(tmp_path, monkeypatch, shared):
    """A writable copy of golden/solver (without Caffe's runs), made the working directory, as Caffe ran there."""
    import shutil
    dst = tmp_path / "solver"
    shutil.copytree(shared / "golden" / "solver", dst, ignore=shutil.ignore_patterns("runs"))
    monkeypatch.chdir(dst)
    return dst
