"""`tfrecord:PATTERN`: an image collection as TFRecord files, and the converter from a folder.

Schema: one `tf.train.Example` per image, with features

    image/encoded      bytes   the image file's bytes as on disk (JPEG, PNG, BMP, GIF, WebP)
    image/id           bytes   a unique id (the converter: the path relative to the folder)
    image/height       int64   native height in pixels (read from the header, not decoded)
    image/width        int64   native width in pixels
    image/class/label  int64   optional: class id (all records or none)
    image/class/text   bytes   optional: class name

Files matching PATTERN are read in sorted order; item i is the i-th record. Opening a
source reads every record's id, size and label once (no image is decoded); images are
streamed afterwards. Convert a folder (class sub-folders as labels) with

    python -m harr_tf.data.tfrecord convert --input DIR --out 'data/set-*.tfrecord'

The records are written in a seeded random order, so that a stream's shuffle buffer
mixes classes even though it cannot hold the whole collection.
"""

from __future__ import annotations

if __name__ == "__main__":  # a command: TensorFlow's start-up lines are not its output
    from harr_tf.quiet import quiet_command_start

    quiet_command_start()

import argparse
import glob
import logging
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from harr_tf.config import MAX_IMAGE_PIXELS
from harr_tf.data.folder import FolderFiles, default_image_size, scan_image_folder
from harr_tf.data.image_header import decode_within_budget
from harr_tf.data.readers import DamagedItems, FileReader, SequentialReader, map_skipping_damaged
from harr_tf.quiet import log_to_stderr

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("image/encoded", "image/id", "image/height", "image/width")
_LABEL, _TEXT = "image/class/label", "image/class/text"
_SHARD_BYTES = 256 * 2**20
_BATCH = 1024


def _metadata(example: tf.Tensor) -> dict:
    spec = {
        "image/id": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        _LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        _TEXT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    return tf.io.parse_single_example(example, spec)


def _encoded(example: tf.Tensor) -> tf.Tensor:
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    return tf.io.parse_single_example(example, spec)["image/encoded"]


def open_tfrecords(pattern: str, max_pixels: int = MAX_IMAGE_PIXELS) -> dict:
    """The TFRecord files matching `pattern` as `ImageDataset` fields. Records declaring
    more than `max_pixels` are skipped unread; a record whose image holds more than its
    declared size is refused from its header when decoded (a damaged item).

    Raises:
        ValueError: no file matches, a record lacks a required key, labels are on
            some records only, or ids repeat.
    """
    files = sorted(glob.glob(str(Path(pattern).expanduser())))
    if not files:
        raise ValueError(f"tfrecord:{pattern}: no file matches the pattern.")
    _check_schema(files[0])
    try:
        batches = list(
            tf.data.TFRecordDataset(files)
            .map(_metadata, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(_BATCH)
            .as_numpy_iterator()
        )
    except tf.errors.OpError as err:
        raise ValueError(
            f"tfrecord:{pattern}: a record does not follow the schema "
            f"(keys {', '.join(REQUIRED_KEYS)}): {err.message.splitlines()[0]}"
        ) from err
    meta = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    ids = [item.decode() for item in meta["image/id"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"tfrecord:{pattern}: image/id must be unique; some ids repeat.")
    pixels = meta["image/height"] * meta["image/width"]
    kept = np.flatnonzero(pixels <= max_pixels)
    if len(kept) < len(ids):
        logger.warning(
            "Skipped %d records of tfrecord:%s larger than %d pixels, unread: %s",
            len(ids) - len(kept),
            pattern,
            max_pixels,
            ", ".join(ids[i] for i in np.flatnonzero(pixels > max_pixels)[:20]),
        )
    labels, class_names = _labels(meta, kept, pattern)
    sizes = np.unique(np.stack([meta["image/height"], meta["image/width"]], 1)[kept], axis=0)
    native = tuple(int(side) for side in sizes[0]) if len(sizes) == 1 else None
    return {
        "ids": tuple(ids[i] for i in kept),
        "labels": labels,
        "name": Path(files[0]).stem.split("-")[0],
        "source": f"tfrecord:{pattern}",
        "reader": SequentialReader(
            lambda: tf.data.TFRecordDataset(files).map(_encoded),
            lambda encoded: decode_within_budget(encoded, 3, max_pixels),
            kept.astype(np.int64),
        ),
        "channels": 3,
        "native_size": native,
        "image_size": default_image_size(native, f"tfrecord:{pattern}"),
        "class_names": class_names,
    }


def _check_schema(path: str) -> None:
    """The first record has the schema's keys, or a clear error naming the missing ones."""
    try:
        first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as err:
        raise ValueError(f"tfrecord:{path} is not a readable TFRecord file: {err.message}") from err
    if first is None:
        raise ValueError(f"tfrecord:{path} holds no record.")
    try:
        keys = set(tf.train.Example.FromString(first.numpy()).features.feature)
    except Exception as err:  # protobuf's DecodeError: not a tf.train.Example
        raise ValueError(f"tfrecord:{path}: its records are not tf.train.Example") from err
    missing = [key for key in REQUIRED_KEYS if key not in keys]
    if missing:
        raise ValueError(
            f"tfrecord:{path}: records lack {', '.join(missing)}; the schema needs "
            f"{', '.join(REQUIRED_KEYS)} (see `python -m harr_tf.data.tfrecord --help`)."
        )


def _labels(meta: dict, kept: np.ndarray, pattern: str):
    labels = meta[_LABEL][kept]
    if np.all(labels < 0):
        return None, None
    if np.any(labels < 0):
        raise ValueError(f"tfrecord:{pattern}: {_LABEL} is on some records only (all or none).")
    texts = meta[_TEXT][kept]
    names = {int(label): text.decode() for label, text in zip(labels, texts, strict=True)}
    count = int(labels.max()) + 1
    class_names = tuple(names.get(i, str(i)) for i in range(count)) if any(texts) else None
    return labels, class_names


def convert(
    source: Path,
    out: str,
    shards: int | None = None,
    seed: int = 0,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[str]:
    """Writes the readable images of folder `source` as TFRecord files; returns their paths.
    Each image is decoded once first: damaged ones and those over `max_pixels` are left
    out and named.

    `out` holds one `*`, replaced by `00000-of-0000N` per shard (without a `*`: one file).
    """
    found = scan_image_folder(source, max_pixels)
    damaged = find_damaged(found, f"folder:{source}", max_pixels)
    damaged.report()
    kept = np.setdiff1d(np.arange(len(found.ids)), sorted(damaged.items))
    if not len(kept):
        raise ValueError(f"folder:{source}: none of its images can be decoded.")
    order = kept[np.random.default_rng(seed).permutation(len(kept))]
    total = sum(Path(path).stat().st_size for path in found.paths)
    shards = shards or max(1, -(-total // _SHARD_BYTES))
    if "*" not in out and shards > 1:
        raise ValueError(f"--out {out}: {shards} shards need a '*' in the name.")
    names = [out.replace("*", f"{shard:05d}-of-{shards:05d}") for shard in range(shards)]
    Path(names[0]).parent.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(name) for name in names]
    for position, item in enumerate(tqdm(order, desc="Writing records", unit="image")):
        height, width = (int(side) for side in found.sizes[item])
        feature = {
            "image/encoded": _bytes(Path(found.paths[item]).read_bytes()),
            "image/id": _bytes(found.ids[item].encode()),
            "image/height": _int(height),
            "image/width": _int(width),
        }
        if found.labels is not None:
            feature[_LABEL] = _int(int(found.labels[item]))
            feature[_TEXT] = _bytes(found.class_names[found.labels[item]].encode())
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[position * shards // len(order)].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return names


def find_damaged(found: FolderFiles, source: str, max_pixels: int) -> DamagedItems:
    """The files among `found` that TensorFlow cannot decode (their headers passed the
    scan, their data is corrupt), each decoded once, in parallel, as training would."""
    reader = FileReader(list(found.paths), max_pixels)
    items = np.arange(len(found.ids))
    damaged = DamagedItems(found.ids, source)
    stream = tf.data.Dataset.zip(reader.raw(items), tf.data.Dataset.from_tensor_slices(items))
    checked = map_skipping_damaged(
        stream, lambda raw, _: tf.shape(reader.decode(raw)), damaged, lambda _, item: item
    )
    for _ in tqdm(checked.batch(256), "Checking images", unit="batch", leave=False):
        pass
    return damaged


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harr_tf.data.tfrecord",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("convert", help="write a folder of images as TFRecord files")
    command.add_argument("--input", required=True, help="image folder (class sub-folders = labels)")
    command.add_argument(
        "--out", required=True, help="output files, '*' replaced by the shard: 'd/x-*.tfrecord'"
    )
    command.add_argument("--shards", type=int, help="number of files (default: ~256 MB each)")
    command.add_argument("--seed", type=int, default=0, help="seed of the records' order")
    command.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        help="leave out images whose header declares more pixels (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for name in ("shards", "max_pixels"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be >= 1. Received: {getattr(args, name)}")
    log_to_stderr()
    source = Path(args.input).expanduser()
    if not source.exists():
        print(f"error: --input {source}: no such file or folder", file=sys.stderr)
        return 1
    try:
        names = convert(source, args.out, args.shards, args.seed, args.max_pixels)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Wrote {len(names)} file(s); train with --dataset 'tfrecord:{args.out}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
