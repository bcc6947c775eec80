"""Regenerate ``caffe_pb2.py`` from ``caffe.proto``: ``python -m sfport.protos.regen`` (needs grpcio-tools).

The bindings are committed so that users need neither protoc nor grpcio-tools. They are generated into a
private descriptor pool, so that another ``caffe.proto`` loaded in the same process (pycaffe, another
converter) cannot clash with ours over the shared ``caffe.*`` names.
"""
from __future__ import annotations

import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE / "caffe.proto"
TARGET = HERE / "caffe_pb2.py"


def generate(proto: pathlib.Path = PROTO) -> str:
    """Run protoc (from grpcio-tools) on ``proto`` and return the Python source of the bindings."""
    from grpc_tools import protoc  # test/dev dependency only

    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main(["protoc", f"-I{proto.parent}", f"--python_out={out}", str(proto)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
        source = (pathlib.Path(out) / (proto.stem + "_pb2.py")).read_text()
    default = "_descriptor_pool.Default().AddSerializedFile("
    if source.count(default) != 1:
        raise RuntimeError("unexpected protoc output: cannot find the descriptor pool registration")
    return source.replace(default, "_descriptor_pool.DescriptorPool().AddSerializedFile(")


def main() -> int:
    TARGET.write_text(generate())
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
