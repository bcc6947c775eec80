"""The commands that write training data: ``convert-imageset`` (Caffe's tools/convert_imageset.cpp)."""
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
