"""``python cli.py`` in a checkout runs the sfport command line, :mod:`sfport.cli` (installed: ``sfport``)."""
import sys

from sfport.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(main())
