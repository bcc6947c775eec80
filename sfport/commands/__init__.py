"""The commands of the ``sfport`` command line that live outside sfport/cli.py (which registers them)."""
