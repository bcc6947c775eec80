"""The face commands: align, eval, embed, compare (the LFW / features side of sfport)."""
# The torch-based library modules are imported inside the commands, for start-up time (see sfport/cli.py).
from __future__ import annotations

import json

import click

from sfport.commands.options import backend_option, caffe_log, model_state, state_options
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
@backend_option()
@click.option("--all-faces", is_flag=True,
              help="Write every face MTCNN finds (PHOTO_face1.jpg nearest the centre, then _face2, ...), not only the "
                   "one nearest the centre.")
@click.option("--ext", type=click.Choice(["jpg", "png"]),
              help="Crop format: png is lossless, jpg is JPEG quality 95. Default: the photo's own extension.")
def align(input_dir, output_dir, landmarks, landmarks_base, mtcnn_dir, size, template, workers, backend, all_faces,
          ext):
    """Align faces to the template: landmarks from a list or from MTCNN; mirrors the folder tree.

    Each photo gives the crop of its face nearest the centre, under the same relative path (with --ext, its
    extension replaced), or with --all-faces a crop per face MTCNN finds, PHOTO_face1 (nearest the centre),
    PHOTO_face2, ... Writes OUTPUT_DIR/landmarks.txt (path, 5 points, box and score when detected: the photo's
    path, a landmark list for the originals; with --all-faces each crop's path, the points in its photo) and
    OUTPUT_DIR/no_face.txt (photos without a crop, and why). Photos flat in INPUT_DIR match a landmark list's
    entries by file name when unambiguous (lfw_landmark.txt names Person/Person_0001.jpg).

    \b
    Examples:
      sfport align lfw lfw-112X96 --mtcnn models/mtcnn
      sfport align lfw lfw-112X96 --landmarks lfw_landmark.txt --ext png
      sfport align lfw lfw-112x112 --landmarks lfw_landmark.txt --template arcface112
      sfport align photos crops --mtcnn models/mtcnn --all-faces --ext png
    """
    from sfport.face.align import align_folder

    s = align_folder(input_dir, output_dir, landmarks=landmarks, mtcnn_dir=mtcnn_dir, size=size, template=template,
                     workers=workers, landmarks_one_based=landmarks_base == "1", progress=None, backend=backend,
                     log=caffe_log(), all_faces=all_faces, ext=ext)
    faces = f"{s.faces} faces in " if all_faces else ""
    by_name = f" ({s.by_file_name} matched to the landmark list by file name)" if s.by_file_name else ""
    click.echo(f"aligned {faces}{s.aligned} of {s.total} images to {output_dir} ({s.size[0]}x{s.size[1]}, "
               f"{s.template}); {s.missing} listed in no_face.txt{by_name}")


@click.command(name="eval")
@click.option("--model", "-m", help="caffemodel, .caffemodel.h5 or training snapshot .pt (+ "
                                                    "--prototxt), sfport .pt or .onnx.")
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
@click.option("--features", "features_file",
              help="Precomputed features: .npy (row i = image on line i of --list), or .mat: embed's (features, "
                   "images) or evaluation.m's (struct array pairs with featureL/featureR, or featureLs/featureRs, "
                   "one column per pair).")
@click.option("--list", "list_file", help="Image list for --features (paths relative to the LFW root).")
@click.option("--skip-missing", is_flag=True,
              help="Leave out the pairs with an image missing (no file, no landmarks, not in --list) instead of "
                   "stopping; the others keep their folds, and folds left without pairs are left out (at least 2 "
                   "must have pairs). Without it, missing images are an error with each fold's count of pairs.")
@click.option("--report", help="Write a JSON report (with each pair's score, so --compare can draw it again).")
@click.option("--plot", help="Write the ROC curve: .png, .svg or .pdf.")
@click.option("--compare", "compare_reports", multiple=True, metavar="REPORT.json",
              help="Draw an earlier eval --report's ROC curve in the --plot figure too (repeatable).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@backend_option()
def eval_(model, prototxt, blob, phase, stages, level, shapes, lfw_dir, pairs, landmarks, landmarks_base, template,
          protocol, features_file, list_file, skip_missing, report, plot, compare_reports, batch_size, workers,
          no_cache, backend):
    """LFW verification, by default exactly as SphereFace's evaluation.m (10 folds, mean-subtracted cosine).

    Prints each fold's accuracy and threshold, the mean, std and standard error, ROC AUC, EER and TAR at FAR
    1e-3 / 1e-2. --plot draws TAR against FAR (log scale) with those points and the protocol's own operating
    point marked; --compare adds the curves of earlier --report files to the figure. --skip-missing evaluates
    the pairs whose two images are there: it first prints how many pairs of each fold have both images; pair k
    of pairs.txt stays in fold ceil(k/600), a fold's accuracy is over the pairs it has left, a fold with none left
    is left out, and the skipped pairs and folds are counted in the table and the report.

    \b
    Examples:
      sfport eval -m sphereface_model.caffemodel -p sphereface_deploy.prototxt --lfw-dir lfw-112X96 \\
          --pairs pairs.txt --report lfw.json --plot roc.png
      sfport eval -m mobilefacenet.onnx --lfw-dir lfw --landmarks lfw_landmark.txt --protocol insightface \\
          --pairs pairs.txt --skip-missing
      sfport eval --features features.npy --list features.txt --pairs pairs.txt
      sfport eval --features pairs.mat --pairs pairs.txt --plot roc.svg --compare lfw.json
    """
    from os.path import abspath

    from sfport.face import lfw
    from sfport.report import plots
    from sfport.formats.disk import check_output, write_files

    if report and plot and abspath(report) == abspath(plot):
        raise CaffeFileError(report, "--report and --plot name the same file")
    if compare_reports and not plot:
        raise CaffeFileError(None, "--compare draws earlier reports in the ROC figure: give --plot too")
    for path, what in ((report, "the report"), (plot, "the ROC plot")):
        if path:
            check_output(path, what)   # before any work
    if plot:
        plots.plot_format(plot)
    earlier = [(path, lfw.read_report(path)) for path in compare_reports]
    if features_file:
        rep = lfw.evaluate_features(pairs, features_file, list_file, protocol, skip_missing=skip_missing,
                                    note=click.echo)
    else:
        rep = lfw.evaluate_model(pairs, model, lfw_dir, prototxt, blob, protocol, landmarks, landmarks_base == "1",
                                 template, batch_size, workers, cache=not no_cache, progress=None,
                                 state=model_state(phase, stages, level, shapes), backend=backend, log=caffe_log(),
                                 skip_missing=skip_missing, note=click.echo)
    click.echo(rep.table())
    outputs = {}
    if report:
        outputs[report] = (json.dumps(rep.as_dict(), indent=2) + "\n").encode()
    if plot:
        from pathlib import Path

        runs = {protocol if not earlier else f"this run ({protocol})": rep}
        for k, (path, other) in enumerate(earlier, 2):
            label = f"{Path(path).stem} ({other.protocol})"
            runs[label if label not in runs else f"{label} [{k}]"] = other   # one curve per run, named apart
        outputs[plot] = lfw.plot_roc(plot, runs)
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
@click.option("--root", default=".", show_default=True,
              help="The folder the --list paths are relative to (the LFW root); IMAGES inside it are listed "
                   "relative to it, as pairs.txt names them.")
@click.option("--output", "-o", required=True,
              help="Features .npy (row i = image i; the image list beside it as .txt) or .mat (variables features "
                   "and images).")
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
@backend_option()
def embed(images, model, prototxt, blob, phase, stages, level, shapes, list_file, root, output, flip, protocol,
          landmarks, landmarks_base, template, batch_size, workers, backend):
    """Features of aligned face images (or a list) -> .npy and its image list, or one .mat.

    Row i is image i's feature, joined with its mirror image's by --flip (concat: 1024-d for SphereFace-20). A
    .npy output has the image list beside it (.txt); a .mat output (scipy.io.savemat, for Matlab) holds both, as
    variables features (N x D single, row i = image i) and images (N x 1 cell). eval --features reads either.

    \b
    Examples:
      sfport embed --list lfw_list.txt --root lfw-112X96 -m sphereface_model.caffemodel \\
          -p sphereface_deploy.prototxt -o features.npy
      sfport embed --list lfw_list.txt --root lfw-112X96 -m sphereface_model.caffemodel \\
          -p sphereface_deploy.prototxt -o features.mat
      sfport embed a.jpg b.jpg -m mobilefacenet.onnx --protocol insightface --flip sum -o ab.npy
      sfport embed lfw-112X96/A/A_0001.jpg lfw-112X96/B/B_0001.jpg --root lfw-112X96 \\
          -m sphereface_model.caffemodel -p sphereface_deploy.prototxt -o ab.npy
    """
    from sfport.face import features

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
@backend_option()
def compare(a, b, model, prototxt, blob, phase, stages, level, shapes, threshold, protocol, backend):
    """Cosine similarity of two aligned face images (with their mirror images) and the same/different call.

    Each image's feature is joined with its mirror image's as --protocol does (sphereface: concatenated, BGR
    input; insightface: summed, RGB input), so the cosine depends on the protocol: use the one the net was
    trained with (insightface for MobileFaceNet and other insightface models), and a threshold chosen on it
    (eval's threshold for the protocol).

    \b
    Examples:
      sfport compare a.jpg b.jpg -m sphereface_model.caffemodel -p sphereface_deploy.prototxt
      sfport compare a.jpg b.jpg -m mobilefacenet.caffemodel -p mobilefacenet.prototxt --protocol insightface \\
          --threshold 0.3
    """
    from sfport.face import features

    cos = features.compare(a, b, model, prototxt, blob, protocol, state=model_state(phase, stages, level, shapes),
                           backend=backend, log=caffe_log())
    click.echo(f"cosine {cos:.4f}: {'same person' if cos > threshold else 'different people'} "
               f"(threshold {threshold:g})")
