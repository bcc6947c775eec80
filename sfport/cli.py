"""The ``sfport`` command line (``sfport --help`` lists the commands; ``python cli.py`` in a checkout).

Each command parses its options, calls one library function and prints what it returns. Bad input (a missing,
truncated or wrong file, a syntax error, weights that do not fit the net) is reported as one line on stderr,
``sfport: error: <file>: <problem>``, with exit status 2; ``--debug`` shows the traceback.
"""
# The commands live in sfport/commands/, one file per family; this module is the group that registers them and
# turns bad input into one line. The library modules that need torch (net, verify, export, features, lfw, align,
# train) are imported inside the commands that use them. This is for start-up time (`sfport --help` starts without loading torch), not to
# dodge an import cycle: the library itself imports at module level, without cycles (tests/test_layout.py).
from __future__ import annotations

import sys

import click

from sfport.commands import data, draw, faces, model, score, solver, timing
from sfport.errors import CaffeFileError
from sfport.formats import disk, forkschema

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    """Turns bad input into one line on stderr and exit status 2 (unless --debug): a CaffeFileError, and an
    OSError about a named file (a folder where a file goes, no permission, a read-only file system) that a
    command's own checks did not catch first."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CaffeFileError as e:
            self._bad_input(ctx, str(e))
        except OSError as e:
            if e.filename is None or isinstance(e, (BlockingIOError, ChildProcessError, ConnectionError)):
                raise
            what = (e.strerror or type(e).__name__).lower()
            self._bad_input(ctx, f"{e.filename}: {what}")

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's own usage errors (an unknown option or command, a bad option value) as the one line too."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"sfport: error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _bad_input(ctx, line: str):
        if ctx.obj and ctx.obj.get("debug"):
            raise
        click.echo(f"sfport: error: {' '.join(line.split())}", err=True)
        ctx.exit(EXIT_BAD_INPUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.option("--max-file-size", metavar="SIZE", help="Largest input file read (default 2G, or "
                                                      "$SFPORT_MAX_FILE_BYTES): e.g. 4G, 500M.")
@click.option("--max-text-size", metavar="SIZE", help="Largest text definition (prototxt, solver) parsed (default "
                                                      "16M, about 270,000 layers, or $SFPORT_MAX_TEXT_BYTES): text "
                                                      "is parsed in Python, about 0.5 s per MB; e.g. "
                                                      "sfport --max-text-size 64M inspect huge.prototxt.")
@click.option("--python-layers", is_flag=True, help="Run the model's Python layers: import the modules their "
                                                     "python_param names (working directory, PYTHONPATH). That runs "
                                                     "their code; without this flag a Python layer is refused.")
@click.option("--proto", "proto", metavar="CAFFE.PROTO", help="A Caffe fork's caffe.proto, merged with sfport's "
                                                                "schema so that the fork's files parse (needs "
                                                                "grpcio-tools: pip install 'sfport[proto]').")
@click.version_option(package_name="sfport")
@click.pass_context
def cli(ctx, debug, max_file_size, max_text_size, python_layers, proto):
    """sfport: SphereFace / SphereFace+ Caffe models in PyTorch, exactly."""
    ctx.ensure_object(dict)
    forkschema.reset()   # each invocation starts from sfport's own schema
    if proto:
        for note in forkschema.use(proto):
            click.echo(f"sfport: --proto {proto}: {note}", err=True)
    if python_layers:
        from sfport.pycaffe import pylayers
        pylayers.enable()
    ctx.obj["debug"] = debug
    # set on every invocation (None: the default again), so one run's option never outlives it
    for option, limit, value in (("--max-file-size", disk.FILE_LIMIT, max_file_size),
                                 ("--max-text-size", disk.TEXT_LIMIT, max_text_size)):
        try:
            limit.set(value or None)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=option) from None


for _command in (model.inspect, model.upgrade, model.convert, model.deploy, model.verify, data.convert_imageset,
                 data.create_annoset,
                 solver.train, timing.command, score.command, draw.command, faces.align, faces.eval_, faces.embed,
                 faces.compare):
    cli.add_command(_command)


def main(argv=None) -> int:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="sfport", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
