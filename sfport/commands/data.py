"""The commands that write training data: ``convert-imageset`` (Caffe's tools/convert_imageset.cpp) and
``create-annoset`` (the SSD fork's tools/convert_annoset.cpp)."""
from __future__ import annotations

import click


@click.command("convert-imageset")
@click.argument("root_folder")
@click.argument("list_file", metavar="LISTFILE")
@click.argument("db_name")
@click.option("--gray", is_flag=True, help="Treat images as grayscale ones.")
@click.option("--shuffle", is_flag=True, help="Shuffle the order of images and their labels (seeded by --seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --shuffle.")
@click.option("--backend", type=click.Choice(["lmdb", "leveldb"]), default="lmdb", show_default=True,
              help="The backend for storing the result.")
@click.option("--resize_width", "--resize-width", "resize_width", type=int, default=0,
              help="Width images are resized to.")
@click.option("--resize_height", "--resize-height", "resize_height", type=int, default=0,
              help="Height images are resized to.")
@click.option("--check_size", "--check-size", "check_size", is_flag=True,
              help="Check that all the datum have the same size.")
@click.option("--encoded", is_flag=True, help="Store the encoded image in the datum.")
@click.option("--encode_type", "--encode-type", "encode_type", default="",
              help="What type to encode the image as ('png', 'jpg', ...).")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable images (as Caffe does) instead of stopping.")
def convert_imageset(root_folder, list_file, db_name, gray, shuffle, seed, backend, resize_width, resize_height,
                     check_size, encoded, encode_type, skip_bad_images):
    """Caffe's convert_imageset: ROOTFOLDER/ + the LISTFILE's `path label` lines -> an LMDB / LevelDB of Datum
    records (keys %08d_path), for a Data layer. Written under a temporary name, then renamed.

    \b
    Examples:
      sfport convert-imageset data/CASIA-WebFace-112X96/ data/CASIA-WebFace-112X96.txt casia_lmdb --shuffle
      sfport convert-imageset mnist/ train.txt mnist_train_lmdb --gray --backend leveldb
      sfport convert-imageset faces/ list.txt faces_lmdb --resize_width 96 --resize_height 112 --encoded
    """
    from sfport.data import db

    counts = db.convert_imageset(root_folder, list_file, db_name, gray=gray, shuffle=shuffle, seed=seed,
                                 backend=backend, resize_width=resize_width, resize_height=resize_height,
                                 check_size=check_size, encoded=encoded, encode_type=encode_type,
                                 skip_bad=skip_bad_images, log=lambda m: click.echo(m, err=True))
    skipped = f", skipped {counts['skipped']} unreadable" if counts["skipped"] else ""
    click.echo(f"wrote {counts['written']} of {counts['images']} images to {db_name} ({backend}){skipped}")


@click.command("create-annoset")
@click.argument("root_folder")
@click.argument("list_file", metavar="LISTFILE")
@click.argument("db_name")
@click.option("--anno-type", "--anno_type", "anno_type", type=click.Choice(["classification", "detection"]),
              default="classification", show_default=True, help="The type of annotation.")
@click.option("--label-type", "--label_type", "label_type", type=click.Choice(["xml", "json", "txt"]),
              default="xml", show_default=True, help="The format of the annotation files (detection).")
@click.option("--label-map-file", "--label_map_file", "label_map_file", default="",
              help="A LabelMap prototxt: the label of each object name (detection, xml / json).")
@click.option("--check-label", "--check_label", "check_label", is_flag=True,
              help="Refuse a label map that gives a name twice.")
@click.option("--min-dim", "--min_dim", "min_dim", type=int, default=0,
              help="Minimum dimension images are resized to (aspect kept).")
@click.option("--max-dim", "--max_dim", "max_dim", type=int, default=0,
              help="Maximum dimension images are resized to (aspect kept).")
@click.option("--resize-width", "--resize_width", "resize_width", type=int, default=0,
              help="Width images are resized to.")
@click.option("--resize-height", "--resize_height", "resize_height", type=int, default=0,
              help="Height images are resized to.")
@click.option("--check-size", "--check_size", "check_size", is_flag=True,
              help="Check that all the raw datum have the same size.")
@click.option("--encoded", is_flag=True, help="Store the encoded image in the datum.")
@click.option("--encode-type", "--encode_type", "encode_type", default="",
              help="What type to encode the image as ('jpg', 'png', ...).")
@click.option("--gray", is_flag=True, help="Treat images as grayscale ones.")
@click.option("--shuffle", is_flag=True, help="Shuffle the order of the pairs (seeded by --seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --shuffle.")
@click.option("--backend", type=click.Choice(["lmdb", "leveldb"]), default="lmdb", show_default=True,
              help="The backend for storing the result.")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable images (as the fork does) instead of stopping.")
def create_annoset(root_folder, list_file, db_name, anno_type, label_type, label_map_file, check_label, min_dim,
                   max_dim, resize_width, resize_height, check_size, encoded, encode_type, gray, shuffle, seed,
                   backend, skip_bad_images):
    """The SSD fork's convert_annoset (create_annoset.py): ROOTFOLDER/ + the LISTFILE's `image annotation` pairs ->
    an LMDB / LevelDB of AnnotatedDatum records (keys %08d_image), for an AnnotatedData layer. VOC XML, COCO-style
    JSON or `label xmin ymin xmax ymax` text annotations; boxes normalized by the image size. Written under a
    temporary name, then renamed.

    \b
    Examples:
      sfport create-annoset VOCdevkit/ trainval.txt trainval_lmdb --anno-type detection \\
          --label-map-file labelmap_voc.prototxt --encode-type jpg --shuffle
      sfport create-annoset data/ test.txt test_lmdb --anno-type detection --label-map-file labelmap.prototxt \\
          --encode-type jpg --resize-height 300 --resize-width 300
    """
    from sfport.data import annoset

    counts = annoset.create_annoset(root_folder, list_file, db_name, anno_type=anno_type, label_type=label_type,
                                    label_map_file=label_map_file or None, check_label=check_label,
                                    min_dim=min_dim, max_dim=max_dim, resize_height=resize_height,
                                    resize_width=resize_width, check_size=check_size, encoded=encoded,
                                    encode_type=encode_type, gray=gray, shuffle=shuffle, seed=seed, backend=backend,
                                    skip_bad=skip_bad_images, log=lambda m: click.echo(m, err=True))
    skipped = f", skipped {counts['skipped']} unreadable" if counts["skipped"] else ""
    click.echo(f"wrote {counts['written']} of {counts['images']} images to {db_name} ({backend}){skipped}")
