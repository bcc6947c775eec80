"""The face commands: align, eval, embed, compare (the LFW / features side of sfport)."""
# The torch-based library modules are imported inside the commands, for start-up time (see sfport/cli.py).
from __future__ import annotations

import json

import click

from sfport.commands.options import caffe_log, model_state, state_options
from sfport.errors import CaffeFileError


@click.command()
@click.argument("input_dir")
@click.argument("output_dir")
@click.option("--landmarks", help="Landmark list (relative path, then x1 y1 .. x5 y5); default: MTCNN (--mtcnn).")
@click.option("--landmarks-base", type=click.Choice(["0", "1"]), default="0", show_default=True,
              help="Index base of the list's coordinates (1 for Matlab output).")
@click.option("--mtcnn", "mtcnn_dir", help="Folder with MTCNN det1-det3 .prototxt/.caffemodel.")
@click.option("--size", default=None, help="Crop HxW or H,W (default: the template's, 112x96 or 112x112).")
@click.option("--template", type=click.Choice(["sphereface", "arcface112"]), default="sphereface",
              show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto", show_default=True,
              help="What runs the net: auto is its optimized form's ONNX export on onnxruntime, else eager torch.")
def align(input_dir, output_dir, landmarks, landmarks_base, mtcnn_dir, size, template, workers, backend):
    """Align faces to the template: landmarks from a list or from MTCNN; mirrors the folder tree.

    Writes OUTPUT_DIR/landmarks.txt (path, 5 points, box and score when detected) and OUTPUT_DIR/no_face.txt."""
    from sfport.align import align_folder

    s = align_folder(input_dir, output_dir, landmarks=landmarks, mtcnn_dir=mtcnn_dir, size=size, template=template,
                     workers=workers, landmarks_one_based=landmarks_base == "1", progress=None, backend=backend,
                     log=caffe_log())
    click.echo(f"aligned {s.aligned} of {s.total} images to {output_dir} ({s.size[0]}x{s.size[1]}, {s.template}); "
               f"{s.missing} listed in no_face.txt")


@click.command(name="eval")
@click.option("--model", "-m", help="caffemodel (+ --prototxt), sfport .pt or .onnx.")
@click.option("--prototxt", "-p", help="Net definition for a caffemodel (deploy, train_val or train_test).")
@click.option("--blob", help="Feature blob (default fc5, else the last output).")
@state_options()
@click.option("--lfw-dir", help="LFW root (name/name_0001.jpg): aligned crops, or originals with --landmarks.")
@click.option("--pairs", required=True, help="LFW pairs.txt.")
@click.option("--landmarks", help="Landmark list to align the originals on the fly.")
@click.option("--landmarks-base", type=click.Choice(["0", "1"]), default="0", show_default=True)
@click.option("--template", type=click.Choice(["sphereface", "arcface112"]), help="Default: by the net's input.")
@click.option("--protocol", type=click.Choice(["sphereface", "insightface", "facenet"]), default="sphereface",
              show_default=True)
@click.option("--features", "features_file", help="Precomputed features .npy (row i = image on line i of --list).")
@click.option("--list", "list_file", help="Image list for --features (paths relative to the LFW root).")
@click.option("--report", help="Write a JSON report.")
@click.option("--plot", help="Write the ROC curve as a PNG.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto", show_default=True,
              help="What runs the net: auto is its optimized form's ONNX export on onnxruntime, else eager torch.")
def eval_(model, prototxt, blob, phase, stages, level, shapes, lfw_dir, pairs, landmarks, landmarks_base, template,
          protocol, features_file, list_file, report, plot, batch_size, workers, no_cache, backend):
    """LFW verification, by default exactly as SphereFace's evaluation.m (10 folds, mean-subtracted cosine)."""
    from os.path import abspath

    from sfport import lfw
    from sfport.files import check_output, write_files

    if report and plot and abspath(report) == abspath(plot):
        raise CaffeFileError(report, "--report and --plot name the same file")
    for path, what in ((report, "the report"), (plot, "the ROC plot")):
        if path:
            check_output(path, what)   # before any work
    if features_file:
        rep = lfw.evaluate_features(pairs, features_file, list_file, protocol)
    else:
        rep = lfw.evaluate_model(pairs, model, lfw_dir, prototxt, blob, protocol, landmarks, landmarks_base == "1",
                                 template, batch_size, workers, cache=not no_cache, progress=None,
                                 state=model_state(phase, stages, level, shapes), backend=backend, log=caffe_log())
    click.echo(rep.table())
    outputs = {}
    if report:
        outputs[report] = (json.dumps(rep.as_dict(), indent=2) + "\n").encode()
    if plot:
        outputs[plot] = lfw.roc_png({protocol: rep})
    write_files(outputs)   # both or neither
    for path in outputs:
        click.echo(f"wrote {path}")


@click.command()
@click.argument("images", nargs=-1)
@click.option("--model", "-m", required=True)
@click.option("--prototxt", "-p", help="Net definition for a caffemodel (deploy, train_val or train_test).")
@click.option("--blob", help="Feature blob (default fc5, else the last output).")
@state_options()
@click.option("--list", "list_file", help="A file of image paths (relative to --root).")
@click.option("--root", default=".", show_default=True)
@click.option("--output", "-o", required=True, help="Features .npy (row i = image i); a .txt list beside it.")
@click.option("--flip", type=click.Choice(["none", "concat", "sum"]), default="concat", show_default=True,
              help="Add the mirror image's feature (concat: SphereFace, sum: insightface).")
@click.option("--protocol", type=click.Choice(["sphereface", "insightface", "facenet"]), default="sphereface",
              show_default=True, help="Preprocessing.")
@click.option("--landmarks", help="Align from this landmark list first.")
@click.option("--landmarks-base", type=click.Choice(["0", "1"]), default="0", show_default=True)
@click.option("--template", type=click.Choice(["sphereface", "arcface112"]),
              help="Template of --landmarks alignment. Default: by the net's input size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto", show_default=True,
              help="What runs the net: auto is its optimized form's ONNX export on onnxruntime, else eager torch.")
def embed(images, model, prototxt, blob, phase, stages, level, shapes, list_file, root, output, flip, protocol,
          landmarks, landmarks_base, template, batch_size, workers, backend):
    """Features of aligned face images (or a list) -> .npy."""
    from sfport import features

    f = features.embed(images, model, output, prototxt, blob, list_file, root, flip, protocol, landmarks, batch_size,
                       workers, progress=None, state=model_state(phase, stages, level, shapes),
                       template=template, landmarks_one_based=landmarks_base == "1", backend=backend, log=caffe_log())
    click.echo(f"wrote {output}: {f.shape[0]} x {f.shape[1]}")


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--model", "-m", required=True)
@click.option("--prototxt", "-p", help="Net definition for a caffemodel (deploy, train_val or train_test).")
@click.option("--blob", help="Feature blob (default fc5, else the last output).")
@state_options()
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Cosine above which the two faces are called the same person.")
@click.option("--protocol", type=click.Choice(["sphereface", "insightface", "facenet"]), default="sphereface",
              show_default=True)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto", show_default=True,
              help="What runs the net: auto is its optimized form's ONNX export on onnxruntime, else eager torch.")
def compare(a, b, model, prototxt, blob, phase, stages, level, shapes, threshold, protocol, backend):
    """Cosine similarity of two aligned face images (with their mirror images) and the same/different call."""
    from sfport import features

    cos = features.compare(a, b, model, prototxt, blob, protocol, state=model_state(phase, stages, level, shapes),
                           backend=backend, log=caffe_log())
    click.echo(f"cosine {cos:.4f}: {'same person' if cos > threshold else 'different people'} "
               f"(threshold {threshold:g})")
