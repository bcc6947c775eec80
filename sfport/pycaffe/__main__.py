"""``python -m sfport.pycaffe [--shadow] SCRIPT [ARGS...]``: run an unchanged pycaffe script on sfport.

The script's ``import caffe``, ``import caffe.draw``, ``from caffe.proto import caffe_pb2`` (...) resolve to
sfport's modules (:mod:`sfport.pycaffe.importer`); it runs as ``__main__`` with ``sys.argv`` = [SCRIPT, ARGS...]
and its folder first on ``sys.path``, as ``python SCRIPT ARGS`` would run it. A real pycaffe that the script
could import is never shadowed unless ``--shadow`` is given: then this says so in one line and exits 2.
"""
from __future__ import annotations

import os
import runpy
import sys

from sfport.pycaffe import importer

USAGE = "usage: python -m sfport.pycaffe [--shadow] SCRIPT [ARGS...]"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    shadow = bool(args) and args[0] == "--shadow"
    if shadow:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + (__doc__ or "").strip().split("\n\n", 1)[1])
        return 0 if args else 2
    script = args[0]
    if not os.path.isfile(script):
        print(f"sfport: error: {script}: no such script", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if not importer.install(shadow):
        print(f"sfport: error: a real pycaffe is importable ({importer.real_caffe()}): the script would run on it; "
              f"give --shadow to run it on sfport instead", file=sys.stderr)
        return 2
    sys.argv = args
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
