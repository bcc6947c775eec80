"""Shared test fixtures: the read-only `shared/` folder beside the checkout (fixtures, upstream, golden)."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("SFPORT_SHARED", ROOT.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
UPSTREAM = SHARED / "upstream"
GOLDEN = SHARED / "golden"

if not FIXTURES.is_dir():  # the tests are about real files: without them there is nothing honest to run
    raise RuntimeError(f"shared test data not found at {SHARED} (set SFPORT_SHARED)")

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
]


def all_prototxts():
    return sorted(p for base in (FIXTURES, UPSTREAM, GOLDEN) for p in base.rglob("*.prototxt"))


def all_caffemodels(include_golden=False):
    paths = sorted(FIXTURES.rglob("*.caffemodel"))
    if include_golden:
        paths += sorted(GOLDEN.rglob("*.caffemodel"))
    return paths


@pytest.fixture
def shared():
    return SHARED


@pytest.fixture
def golden_copy(tmp_path, monkeypatch):
    """A writable copy of golden/solver (without Caffe's runs), made the working directory, as Caffe ran there."""
    import shutil
    dst = tmp_path / "solver"
    shutil.copytree(GOLDEN / "solver", dst, ignore=shutil.ignore_patterns("runs"))
    monkeypatch.chdir(dst)
    return dst
