"""The ``sfport`` command line (installed as ``sfport.cli``; ``sfport --help`` lists the commands).

Bad input (a missing, truncated or wrong file, a syntax error, weights that do not fit the net) is reported as
one line on stderr, ``sfport: error: <file>: <problem>``, with exit status 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from sfport.errors import CaffeFileError

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    """Turns CaffeFileError into one line on stderr and exit status 2 (unless --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CaffeFileError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"sfport: error: {e}", err=True)
            ctx.exit(EXIT_BAD_INPUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(package_name="sfport")
@click.pass_context
def cli(ctx, debug):
    """sfport: SphereFace / SphereFace+ Caffe models in PyTorch, exactly."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _fmt_shapes(shapes) -> str:
    return " ".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)


def _table(rows) -> str:
    headers = ("#", "name", "type", "bottoms -> tops", "blobs", "params")
    body = []
    for r in rows:
        conn = (",".join(r.bottoms) + " -> " + ",".join(r.tops)).strip()
        shapes = _fmt_shapes(r.blob_shapes) + (" (inferred)" if r.inferred else "")
        name = r.name + (f" [{r.phase}]" if r.phase else "")
        body.append((str(r.index), name, r.type, conn, shapes, f"{r.params:,}" if r.blob_shapes else ""))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for b in body:
        cells = [c.rjust(w) if i in (0, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@cli.command()
@click.argument("model", required=False)
@click.option("--prototxt", "-p", help="Net definition (text) to merge the MODEL's weights into, by layer name.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of the table.")
def inspect(model, prototxt, as_json):
    """Show the layers of a Caffe model: name, type, bottoms -> tops, blob shapes, parameter count.

    MODEL is a .caffemodel (weights and the net Caffe stored with them), a .prototxt (definition only;
    blob shapes are then inferred) or a .solverstate (iteration, lr step, momentum history). With
    --prototxt, MODEL's weights are matched to the definition's layers by name, as Caffe does, and what does not match is reported. Legacy formats (V0, V1 'layers', deploy
    'input:' headers) are upgraded and the upgrades listed. Without MODEL, the built-in SphereFace-20 deploy
    net is shown.

    \b
    Examples:
      sfport inspect det1.caffemodel
      sfport inspect sphereface_model.caffemodel --prototxt sphereface_deploy.prototxt --json
    """
    from sfport import caffe_files, model as model_mod, nets

    report = None
    if model is None and prototxt is None:
        source = "built-in:sphereface_deploy(20)"
        shown = caffe_files.CaffeModel.from_net(nets.sphereface_deploy(20), source)
    elif prototxt is not None:
        definition = caffe_files.read_prototxt(prototxt)
        if model is None:
            shown, source = definition, prototxt
        else:
            weights = caffe_files.read_caffemodel(model)
            shown, report = model_mod.merge(definition, weights)
            source = f"{model} + {prototxt}"
    elif model.lower().endswith(".solverstate"):
        _inspect_solverstate(caffe_files.read_solverstate(model), as_json)
        return
    else:
        shown, source = caffe_files.read_net(model), model
    rows = model_mod.summarize(shown)
    total = sum(r.params for r in rows)
    with_blobs = sum(1 for r in rows if r.blob_shapes)
    if as_json:
        doc = {"source": source, "name": model_mod.as_text(shown.net.name), "layers": [r.as_dict() for r in rows],
               "totals": {"layers": len(rows), "layers_with_blobs": with_blobs, "params": total,
                          "weights_present": shown.has_weights()},
               "upgrades": shown.upgrades, "unknown_fields": model_mod.unknown_field_notes(shown.net)}
        if report is not None:
            doc["merge"] = report.as_dict()
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{source}: net '{model_mod.as_text(shown.net.name)}'")
    click.echo(_table(rows))
    kind = "parameters" if shown.has_weights() else "parameters (inferred from the definition)"
    click.echo(f"total: {len(rows)} layers, {with_blobs} with blobs, {total:,} {kind}")
    for note in shown.upgrades:
        click.echo(f"upgraded: {note}")
    for note in model_mod.unknown_field_notes(shown.net):
        click.echo(f"warning: {note} (a file from another Caffe fork?)")
    if report is not None:
        click.echo(f"weights copied into {len(report.copied)} layers")
        if report.layers_without_weights:
            click.echo("layers without weights (left to their fillers): " + ", ".join(report.layers_without_weights))
        if report.weights_without_layers:
            click.echo("weights without layers (ignored): " + ", ".join(report.weights_without_layers))


def _inspect_solverstate(s, as_json: bool) -> None:
    shapes = [list(h.shape) for h in s.history]
    count = sum(int(h.size) for h in s.history)
    if as_json:
        click.echo(json.dumps({"source": s.path, "iter": s.state.iter, "current_step": s.state.current_step,
                               "learned_net": s.state.learned_net, "history_shapes": shapes,
                               "history_values": count}, indent=2))
        return
    click.echo(f"{s.path}: solver state at iteration {s.state.iter}, lr step {s.state.current_step}, "
               f"learned net '{s.state.learned_net}'")
    for j, shape in enumerate(shapes):
        click.echo(f"  history {j:3d}  [{','.join(map(str, shape))}]")
    click.echo(f"total: {len(shapes)} history blobs, {count:,} values")


@cli.command()
@click.argument("source")
@click.argument("output")
def upgrade(source, output):
    """Rewrite a legacy Caffe file in the current format (like Caffe's upgrade_net_proto_text/_binary).

    A binary SOURCE gives a binary .caffemodel, a text SOURCE a text .prototxt. The output is written to a
    temporary name and renamed, so it is never left half-written.

    \b
    Example:
      sfport upgrade old_v1.caffemodel new.caffemodel
    """
    from sfport import caffe_files

    m = caffe_files.read_net(source)
    if m.kind == caffe_files.BINARY:
        caffe_files.write_caffemodel(output, m)
    else:
        caffe_files.write_prototxt(output, m.net)
    for note in m.upgrades or ["nothing to upgrade"]:
        click.echo(f"{source}: {note}")
    click.echo(f"wrote {output}")


def _parse_shape(text: str | None):
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not N,C,H,W") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"'{text}' is not a list of positive sizes")
    return dims


def _load_net(model: str, prototxt: str | None, shape):
    """Build a Net from MODEL (+ --prototxt), the input shape applied to the first input."""
    from sfport import caffe_files
    from sfport.net import Net

    if prototxt is not None:
        definition, weights = caffe_files.read_prototxt(prototxt), caffe_files.read_net(model)
    else:
        definition, weights = caffe_files.read_net(model), None
    return Net(definition, weights=weights, input_shapes=shape)


@cli.command()
@click.argument("model")
@click.option("--prototxt", "-p", help="Deploy net definition; default: the net stored in the caffemodel.")
@click.option("--output", "-o", help="Output file (default: MODEL's name with the format's extension).")
@click.option("--format", "fmt", type=click.Choice(["pt", "torchscript", "onnx", "caffemodel"]), default="pt",
              show_default=True)
@click.option("--shape", help="Input shape N,C,H,W, when the definition has none (training snapshots).")
@click.option("--tol", type=float, default=1e-5, show_default=True,
              help="Largest error, relative to max|output|, an export may show against the eager net.")
def convert(model, prototxt, output, fmt, shape, tol):
    """Convert a Caffe model to PyTorch (pt), TorchScript, ONNX, or back to a caffemodel.

    Without --prototxt the net definition stored inside the caffemodel is used: a training snapshot's data
    layers become inputs (give --shape) and its loss layers are dropped. pt is sfport's self-contained file
    (net definition + state_dict, loadable with torch.load(weights_only=True) and sfport.Net). TorchScript
    and ONNX (opset 18, dynamic batch) are checked against the eager net (ONNX on onnxruntime) before they
    are written; a mismatch writes nothing and exits 1.

    \b
    Examples:
      sfport convert det1.caffemodel --prototxt det1.prototxt -o det1.pt
      sfport convert sphereface_model.caffemodel -p sphereface_deploy.prototxt --format onnx
    """
    from pathlib import Path

    from sfport import export

    net = _load_net(model, prototxt, _parse_shape(shape))
    ext = {"pt": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx", "caffemodel": ".converted.caffemodel"}
    output = output or str(Path(model).with_suffix("")) + ext[fmt]
    try:
        worst = export.write(net, output, fmt, tol)
    except export.ExportMismatch as e:
        click.echo(f"sfport: error: {output}: not written: {e}", err=True)
        raise SystemExit(1)
    if net.report and net.report.layers_without_weights:
        click.echo("warning: layers without weights: " + ", ".join(net.report.layers_without_weights), err=True)
    checked = "" if worst is None else f" (checked against the eager net: max relative error {worst:.2e})"
    click.echo(f"wrote {output}: {fmt}, inputs {net.inputs}, outputs {net.outputs}{checked}")


@cli.command()
@click.argument("model")
@click.option("--prototxt", "-p", help="Deploy net definition; default: the net stored in the caffemodel.")
@click.option("--reference", default="opencv", show_default=True,
              help="opencv (OpenCV 4's Caffe importer), caffe (pycaffe in a subprocess; $SFPORT_CAFFE_PYTHON), "
                   "or a directory of <blob>.npy files.")
@click.option("--input", "input_", default="random", show_default=True, help="An image file, or 'random'.")
@click.option("--shape", help="Input shape N,C,H,W (default: the net's).")
@click.option("--tol", type=float, default=1e-5, show_default=True,
              help="A blob fails when max|ours - ref| > tol * max(1, max|ref|).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of the table.")
def verify(model, prototxt, reference, input_, shape, tol, seed, as_json):
    """Check sfport against an independent Caffe implementation, blob by blob.

    Runs both on the same input and prints every blob both expose: shape, max|ref|, max abs error, error
    relative to max(1, max|ref|), cosine. Names the first blob that diverges and exits 1 when any fails.

    \b
    Examples:
      sfport verify det1.caffemodel --prototxt det1.prototxt --shape 1,3,217,173
      sfport verify mobilefacenet.caffemodel -p mobilefacenet.prototxt --input face.jpg --json
    """
    import tempfile

    from sfport import caffe_files, verify as V

    net = _load_net(model, prototxt, _parse_shape(shape))
    (in_name, in_shape), = list(net.inputs.items())[:1] or [(None, None)]
    x = V.make_input(in_shape, input_, seed)
    net.forward(**{in_name: x})
    with tempfile.TemporaryDirectory() as tmp:
        if prototxt is None:
            prototxt_used = str(Path(tmp) / "deploy.prototxt")
            caffe_files.write_prototxt(prototxt_used, net.definition)
        else:
            prototxt_used = prototxt
        if reference == "opencv":
            ref = V.opencv_reference(prototxt_used, model, {in_name: x})
            ours = {n: outs[0].detach().numpy() for n, outs in net.layer_outputs.items() if outs}
            order = list(net.layer_outputs)
        else:
            ref = V.caffe_reference(prototxt_used, model, {in_name: x}) if reference == "caffe" \
                else V.dir_reference(reference)
            ours = {n: t.detach().numpy() for n, t in net.blobs.items()}
            ours.update({n: outs[0].detach().numpy() for n, outs in net.layer_outputs.items() if outs
                         and n not in ours})
            order = list(dict.fromkeys([net.graph.caffe_name[t] for gl in net.graph.layers for t in gl.tops]
                                       + list(net.layer_outputs)))
    checks = V.compare(ours, ref, order, tol)
    failed = [c for c in checks if not c.ok]
    worst = max(checks, key=lambda c: c.rel_err) if checks else None
    if as_json:
        click.echo(V.as_json(checks, {"model": model, "reference": reference, "input_shape": list(in_shape),
                                      "tolerance": tol, "passed": not failed and bool(checks),
                                      "first_failure": failed[0].name if failed else None,
                                      "worst": worst.name if worst else None}))
    else:
        click.echo(V.format_table(checks))
        if not checks:
            click.echo("no blob in common with the reference")
        elif failed:
            click.echo(f"FAILED: {len(failed)} of {len(checks)} blobs over {tol:g}; first divergence at "
                       f"'{failed[0].name}' (rel err {failed[0].rel_err:.3e})")
        else:
            click.echo(f"passed: {len(checks)} blobs within {tol:g}; worst '{worst.name}' "
                       f"(rel err {worst.rel_err:.3e}, cosine {worst.cosine:.8f})")
    if failed or not checks:
        raise SystemExit(1)


def main(argv=None) -> int:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="sfport", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())


@cli.command()
@click.argument("solver")
@click.option("--weights", help="Caffemodel(s) to start from, comma-separated; copied by layer name.")
@click.option("--snapshot", help="Resume: an sfport .pt checkpoint (exact) or a Caffe .solverstate.")
@click.option("--gpu", help="GPU ids ('0', '0,1') or 'all'; several GPUs run DistributedDataParallel. "
                            "Default: the CPU (or what torchrun sets up).")
@click.option("--data-root", help="Folder the image lists' paths are relative to (replaces root_folder).")
@click.option("--source", help="Image list for the TRAIN data layer (replaces its source).")
@click.option("--amp", is_flag=True, help="bf16 autocast on the GPU (fp32 is the default, for parity with Caffe).")
@click.option("--seed", type=int, help="Seed for fillers, shuffling and augmentation (default: random_seed).")
@click.option("--workers", type=int, help="DataLoader worker processes (default: the CPU count, at most 16).")
@click.option("--skip-bad-images", is_flag=True, help="Skip and count unreadable images instead of stopping.")
@click.option("--keep-going", is_flag=True, help="Do not stop on a NaN loss or the 87.3365 plateau.")
@click.option("--synthetic-data", is_flag=True, help="Random images and labels (benchmarks; no list needed).")
@click.option("--shape", help="C,H,W of the synthetic images when the prototxt does not fix them.")
@click.option("--max-iter", type=int, help="Override the solver's max_iter.")
@click.option("--margin-grad", type=click.Choice(["caffe", "true"]), help="MarginInnerProduct backward.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def train(solver, weights, snapshot, gpu, data_root, source, amp, seed, workers, skip_bad_images, keep_going,
          synthetic_data, shape, max_iter, margin_grad, progress):
    """Train or finetune with Caffe's solver: `caffe train -solver S -weights W -gpu 0,1`, in PyTorch.

    Logs Caffe's lines (so Caffe's log tools parse them), writes `<prefix>_iter_N.caffemodel` / `.solverstate`
    (Caffe's formats) and an sfport `.pt` checkpoint that resumes exactly."""
    import torch

    from sfport import train as tr
    gpus = None
    device = "cpu"
    if gpu:
        if not torch.cuda.is_available():
            raise CaffeFileError(None, f"--gpu {gpu}: no CUDA device is available on this machine")
        gpus = list(range(torch.cuda.device_count())) if gpu == "all" else [int(g) for g in gpu.split(",")]
        device = f"cuda:{gpus[0]}"
        torch.backends.cudnn.benchmark = True
    elif tr._dist_env() is not None and torch.cuda.is_available():
        device = "cuda"
    if amp and not device.startswith("cuda"):
        raise CaffeFileError(None, "--amp needs a GPU (--gpu)")
    if workers is None:
        workers = min(16, os.cpu_count() or 2)
    opts = tr.Options(weights=[w for w in (weights or "").split(",") if w], snapshot=snapshot, data_root=data_root,
                      source=source, seed=seed, device=device, amp=amp, workers=workers,
                      skip_bad_images=skip_bad_images,
                      keep_going=keep_going, synthetic_data=synthetic_data,
                      data_shape=_parse_shape(shape) if shape else None, max_iter=max_iter, progress=progress,
                      channels_last=device.startswith("cuda"), margin_grad=margin_grad)
    try:
        tr.launch(solver, opts, gpus)
    except tr.TrainingStopped as e:
        click.echo(f"sfport: stopped: {e}", err=True)
        sys.exit(3)


# ------------------------------------------------------------------------------------------------------------
# align, eval, embed, compare
# ------------------------------------------------------------------------------------------------------------

def _align_one(args):
    """Worker: detect (or look up) landmarks, align, write. Returns (rel, landmarks, box, error)."""
    import cv2
    import numpy as np

    from sfport import align as al
    rel, src_root, dst_root, tmpl_name, size, landmarks, mtcnn_dir = args
    img = cv2.imread(os.path.join(src_root, rel), cv2.IMREAD_COLOR)
    if img is None:
        return rel, None, None, "unreadable or corrupt image"
    box = None
    if landmarks is not None:
        pts = landmarks.get(rel)
        if pts is None:
            return rel, None, None, "no landmarks in the list"
    else:
        from sfport.mtcnn import nearest_centre
        face = nearest_centre(_detector(mtcnn_dir).detect(img), img.shape)
        if face is None:
            return rel, None, None, "no face found"
        pts = face.landmarks
        box = np.r_[face.box, face.score]
    crop = al.align(img, pts, al.template(tmpl_name, size))
    out = os.path.join(dst_root, rel)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    ok, buf = cv2.imencode(os.path.splitext(out)[1] or ".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        return rel, None, None, "cannot encode the crop"
    from sfport.files import atomic_write
    atomic_write(out, buf.tobytes())
    return rel, pts, box, None


_DETECTORS = {}


def _detector(model_dir):
    if model_dir not in _DETECTORS:
        import torch
        torch.set_num_threads(1)
        from sfport.mtcnn import MTCNN
        _DETECTORS[model_dir] = MTCNN(model_dir)
    return _DETECTORS[model_dir]


@cli.command()
@click.argument("input_dir")
@click.argument("output_dir")
@click.option("--landmarks", help="Landmark list (relative path, then x1 y1 .. x5 y5); default: MTCNN (--mtcnn).")
@click.option("--landmarks-base", type=click.Choice(["0", "1"]), default="0", show_default=True,
              help="Index base of the list's coordinates (1 for Matlab output).")
@click.option("--mtcnn", "mtcnn_dir", help="Folder with MTCNN det1-det3 .prototxt/.caffemodel.")
@click.option("--size", default=None, help="Crop HxW (default: the template's, 112x96 or 112x112).")
@click.option("--template", type=click.Choice(["sphereface", "arcface112"]), default="sphereface",
              show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
def align(input_dir, output_dir, landmarks, landmarks_base, mtcnn_dir, size, template, workers):
    """Align faces to the template: landmarks from a list or from MTCNN; mirrors the folder tree.

    Writes OUTPUT_DIR/landmarks.txt (path, 5 points, box and score when detected) and OUTPUT_DIR/no_face.txt."""
    from sfport import align as al
    if not os.path.isdir(input_dir):
        raise CaffeFileError(input_dir, "input folder not found")
    if landmarks is None and mtcnn_dir is None:
        raise CaffeFileError(None, "give --landmarks FILE or --mtcnn DIR (the MTCNN det1-det3 models)")
    marks = al.read_landmarks(landmarks, one_based=landmarks_base == "1") if landmarks else None
    if mtcnn_dir:
        _detector(mtcnn_dir)  # fail early on a bad folder
    hw = tuple(int(v) for v in size.lower().split("x")) if size else al.TEMPLATES[template].size
    files = al.image_files(input_dir)
    if not files:
        raise CaffeFileError(input_dir, "no images in the folder")
    jobs = [(rel, input_dir, output_dir, template, hw, marks, mtcnn_dir) for rel in files]
    rows, missing = [], []
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="align", unit="img", disable=not sys.stderr.isatty())
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as ex:
            results = ex.map(_align_one, jobs, chunksize=8)
            for r in results:
                bar.update(1)
                (missing if r[3] else rows).append(r)
    else:
        for j in jobs:
            r = _align_one(j)
            bar.update(1)
            (missing if r[3] else rows).append(r)
    bar.close()
    os.makedirs(output_dir, exist_ok=True)
    al.write_landmarks(os.path.join(output_dir, "landmarks.txt"), [(r[0], r[1], r[2]) for r in rows])
    from sfport.files import atomic_write
    atomic_write(os.path.join(output_dir, "no_face.txt"), "".join(f"{r[0]}\t{r[3]}\n" for r in missing).encode())
    click.echo(f"aligned {len(rows)} of {len(files)} images to {output_dir} ({hw[0]}x{hw[1]}, {template}); "
               f"{len(missing)} listed in no_face.txt")


def _model(model, prototxt, blob):
    from sfport.features import Model
    return Model(model, prototxt, blob)


@cli.command(name="eval")
@click.option("--model", "-m", help="caffemodel (+ --prototxt), sfport .pt or .onnx.")
@click.option("--prototxt", "-p", help="Deploy net for a caffemodel.")
@click.option("--blob", help="Feature blob (default fc5, else the last output).")
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
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
def eval_(model, prototxt, blob, lfw_dir, pairs, landmarks, landmarks_base, template, protocol, features_file,
          list_file, report, plot, batch_size, workers, no_cache):
    """LFW verification, by default exactly as SphereFace's evaluation.m (10 folds, mean-subtracted cosine)."""
    import numpy as np

    from sfport import align as al
    from sfport import lfw
    pair_list = lfw.read_pairs(pairs)
    needed = sorted({p.left for p in pair_list} | {p.right for p in pair_list})
    if features_file:
        if not list_file:
            raise CaffeFileError(features_file, "--features needs --list (the image of each row)")
        try:
            feats = np.load(features_file, allow_pickle=False)
        except FileNotFoundError:
            raise CaffeFileError(features_file, "no such file") from None
        except ValueError as e:
            raise CaffeFileError(features_file, f"not a .npy array: {e}") from None
        names = [l.strip() for l in Path(list_file).read_text().splitlines() if l.strip()]
        if feats.ndim != 2 or len(feats) != len(names):
            raise CaffeFileError(features_file, f"{len(feats)} rows for {len(names)} images in {list_file}")
        index = {n: i for i, n in enumerate(names)}
        absent = [n for n in needed if n not in index]
        if absent:
            raise CaffeFileError(list_file, f"{len(absent)} images of the pairs are not listed, e.g. {absent[0]}")
        f_of = {n: feats[index[n]] for n in needed}
        flip_of = None
    else:
        if not model or not lfw_dir:
            raise CaffeFileError(None, "give --model and --lfw-dir (or --features and --list)")
        m = _model(model, prototxt, blob)
        marks = al.read_landmarks(landmarks, one_based=landmarks_base == "1") if landmarks else None
        from sfport.features import extract
        ex = extract(m, needed, lfw_dir, protocol, marks, landmarks, template, batch_size, workers,
                     cache_dir=False if no_cache else None, progress=sys.stderr.isatty())
        f_of = dict(zip(needed, ex.features))
        flip_of = dict(zip(needed, ex.flipped))

    def feat(name):
        f = f_of[name][None]
        return lfw.combine(f, None if flip_of is None else flip_of[name][None], protocol)[0]

    L = np.stack([feat(p.left) for p in pair_list])
    R = np.stack([feat(p.right) for p in pair_list])
    rep = lfw.evaluate(L, R, [p.same for p in pair_list], [p.fold for p in pair_list], protocol)
    click.echo(rep.table())
    if report:
        from sfport.files import atomic_write
        atomic_write(report, (json.dumps(rep.as_dict(), indent=2) + "\n").encode())
        click.echo(f"wrote {report}")
    if plot:
        lfw.plot_roc(plot, {protocol: rep})
        click.echo(f"wrote {plot}")


@cli.command()
@click.argument("images", nargs=-1)
@click.option("--model", "-m", required=True)
@click.option("--prototxt", "-p")
@click.option("--blob")
@click.option("--list", "list_file", help="A file of image paths (relative to --root).")
@click.option("--root", default=".", show_default=True)
@click.option("--output", "-o", required=True, help="Features .npy (row i = image i); a .txt list beside it.")
@click.option("--flip", type=click.Choice(["none", "concat", "sum"]), default="concat", show_default=True,
              help="Add the mirror image's feature (concat: SphereFace, sum: insightface).")
@click.option("--protocol", type=click.Choice(["sphereface", "insightface", "facenet"]), default="sphereface",
              show_default=True, help="Preprocessing.")
@click.option("--landmarks", help="Align from this landmark list first.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
def embed(images, model, prototxt, blob, list_file, root, output, flip, protocol, landmarks, batch_size, workers):
    """Features of aligned face images (or a list) -> .npy."""
    import io as _io

    import numpy as np

    from sfport import align as al
    from sfport.features import extract
    from sfport.files import atomic_write
    paths = list(images)
    if list_file:
        try:
            paths += [l.split()[0] for l in Path(list_file).read_text().splitlines() if l.strip()]
        except FileNotFoundError:
            raise CaffeFileError(list_file, "no such file") from None
    if not paths:
        raise CaffeFileError(None, "no images given")
    m = _model(model, prototxt, blob)
    marks = al.read_landmarks(landmarks) if landmarks else None
    ex = extract(m, paths, root, protocol, marks, landmarks, None, batch_size, workers, cache_dir=False,
                 progress=sys.stderr.isatty())
    f = ex.features if flip == "none" else (ex.features + ex.flipped if flip == "sum" else
                                            np.concatenate([ex.features, ex.flipped], axis=1))
    buf = _io.BytesIO()
    np.save(buf, f.astype(np.float32))
    atomic_write(output, buf.getvalue())
    atomic_write(str(Path(output).with_suffix(".txt")), ("\n".join(paths) + "\n").encode())
    click.echo(f"wrote {output}: {f.shape[0]} x {f.shape[1]}")


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--model", "-m", required=True)
@click.option("--prototxt", "-p")
@click.option("--blob")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Cosine above which the two faces are called the same person.")
@click.option("--protocol", type=click.Choice(["sphereface", "insightface", "facenet"]), default="sphereface",
              show_default=True)
def compare(a, b, model, prototxt, blob, threshold, protocol):
    """Cosine similarity of two aligned face images (with their mirror images) and the same/different call."""
    import numpy as np

    from sfport.features import extract
    from sfport import lfw
    m = _model(model, prototxt, blob)
    ex = extract(m, [a, b], ".", protocol, cache_dir=False, workers=0)
    f = lfw.combine(ex.features, ex.flipped, protocol)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = float(f[0] @ f[1])
    click.echo(f"cosine {cos:.4f}: {'same person' if cos > threshold else 'different people'} "
               f"(threshold {threshold:g})")
