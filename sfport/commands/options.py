"""Options and parsing that several commands share: the NetState options (--phase, --stage, --level), input
shapes (--shape), the data options (--data-root, --source), and the commands' glog-format log on stderr."""
from __future__ import annotations

import click

from sfport.runtime import AUTO_EAGER_BELOW, BACKENDS


def parse_shape(text: str | None):
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not N,C,H,W") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"'{text}' is not a list of positive sizes")
    return dims


def parse_shapes(values) -> dict | tuple | None:
    """Repeated ``--shape``: ``N,C,H,W`` (the first input) or ``NAME=N,C,H,W`` (an input by name)."""
    values = [v for v in (values or ()) if v]
    if not values:
        return None
    named, bare = {}, []
    for v in values:
        name, sep, dims = v.rpartition("=")
        if sep:
            if not name:
                raise click.BadParameter(f"'{v}' has no input name before '='", param_hint="--shape")
            named[name] = parse_shape(dims)
        else:
            bare.append(parse_shape(v))
    if bare and (named or len(bare) > 1):
        raise click.BadParameter("with several inputs, name each: --shape data=N,C,H,W --shape im_info=1,3",
                                 param_hint="--shape")
    return bare[0] if bare else named


def state_options(default_phase: str = "TEST"):
    """--phase, --stage (repeatable), --level and --shape (repeatable): Caffe's NetState and the input shapes.
    ``default_phase`` None: TEST and level 0, but an sfport .pt's own state (the one it was saved in)."""
    saved = " [default: TEST; an sfport .pt: the one it was saved in]" if default_phase is None else ""

    def decorate(f):
        f = click.option("--shape", "shapes", multiple=True,
                         help="Input shape N,C,H,W (the first input) or NAME=N,C,H,W (repeatable), where the "
                              "definition does not fix it.")(f)
        f = click.option("--level", type=int, default=0 if default_phase else None, show_default=not saved,
                         help="NetState level." + saved.replace("TEST", "0"))(f)
        f = click.option("--stage", "stages", multiple=True,
                         help="NetState stage (repeatable), as `caffe ... -stage`.")(f)
        f = click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
                         default=default_phase, show_default=True,
                         help="Which layers of a train/test definition (include/exclude rules)." + saved)(f)
        return f
    return decorate


def data_options(which: str = "the TRAIN data layer"):
    """--data-root and --source: where a data layer's image list and images are (a net written on another
    machine), with train's meaning for every command that reads a data layer; ``which`` names the layer in the
    help. Both go to :class:`sfport.solver.config.Options` and are applied by :class:`sfport.data.feed.Feeder`."""
    def decorate(f):
        f = click.option("--source", help=f"Image list (or LMDB / HDF5 list) for {which} (replaces its source).")(f)
        f = click.option("--data-root", help="Folder the image lists' paths are relative to (replaces "
                                             "root_folder).")(f)
        return f
    return decorate


def state_kwargs(phase, stages, level) -> dict:
    return {"phase": phase and phase.upper(), "stages": tuple(stages), "level": level}


def model_state(phase, stages, level, shapes) -> dict:
    """The keyword arguments of :class:`sfport.face.features.Model`: the NetState and the input shapes."""
    return {**state_kwargs(phase, stages, level), "input_shapes": parse_shapes(shapes)}


def caffe_log():
    """The commands' log: glog-format lines on stderr, as `train` writes them (the backend line, progress)."""
    from sfport.report.progress import CaffeLog
    return CaffeLog()


def backend_option():
    """``--backend`` of the commands that run a face net (sfport.runtime.backend.Runner)."""
    return click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                        help="What runs the net: auto is its optimized form's ONNX export on OpenVINO where "
                             "installed (sfport[openvino]), else on onnxruntime, else eager torch; eager torch "
                             f"for fewer than {AUTO_EAGER_BELOW} images (mirror images counted), too few to pay "
                             "for the export.")
