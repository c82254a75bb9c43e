"""Damaged images are skipped and named, not a dead tf.data pipeline: a PNG whose data
is corrupt but whose end marker is intact (it passes the folder's header scan), and a
TFRecord whose image/encoded is not an image, in folders and TFRecords alike, while
training, converting and encoding."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harr_tf.data import load_dataset
from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.pipeline import training_dataset
from harr_tf.data.tfrecord import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAMAGED = "a/03.png"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 12 random 20 x 20 PNGs; `DAMAGED` has corrupt pixel data."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir()
        for index in range(12):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index:02d}.png")
    data = bytearray((root / DAMAGED).read_bytes())
    start = data.index(b"IDAT") + 8
    data[start + 10 : start + 30] = bytes(20)  # its CRC no longer matches; IEND intact
    (root / DAMAGED).write_bytes(bytes(data))
    return root


def all_images(dataset):
    return np.stack(list(dataset.images(np.arange(dataset.num_items)).as_numpy_iterator()))


def trained_items(dataset, batches=12):
    augmenter = ViewAugmenter(dataset.image_shape, seed=0)
    stream = training_dataset(dataset, np.arange(dataset.num_items), augmenter, 8)
    return {int(i) for batch in stream.take(batches).as_numpy_iterator() for i in batch["index"]}


def test_a_damaged_image_in_a_folder_is_skipped_and_named(folder, caplog):
    dataset = load_dataset(f"folder:{folder}")
    assert DAMAGED in dataset.ids  # the header scan passes it
    damaged = dataset.ids.index(DAMAGED)
    with caplog.at_level(logging.WARNING, logger="harr_tf"):
        images = all_images(dataset)
    # Every item keeps its place; the damaged one is blank, the others are their pixels.
    assert len(images) == dataset.num_items and not images[damaged].any()
    expected = np.asarray(Image.open(folder / "b" / "05.png"))
    np.testing.assert_array_equal(images[dataset.ids.index("b/05.png")], expected)
    assert dataset.damaged.names() == [DAMAGED]
    assert f"Skipped {DAMAGED} of folder:{folder}: it cannot be decoded." in caplog.messages
    # Training reads every other item and never the damaged one.
    assert trained_items(dataset) == set(range(dataset.num_items)) - {damaged}


def write_record(path, encoded: bytes, item_id: str, label: int, declared: int = 20) -> None:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item_id.encode()])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[declared])),
        "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[declared])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    with tf.io.TFRecordWriter(str(path)) as writer:
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writer.write(example.SerializeToString())


def test_damaged_records_are_skipped_and_named(folder, tmp_path):
    """The damaged PNG inside a TFRecord (written as bytes before conversion checked
    them), and a record whose image/encoded is not an image at all."""
    records = []
    for name in sorted(os.listdir(folder / "a")):
        path = tmp_path / f"r-{len(records):03d}.tfrecord"
        write_record(path, (folder / "a" / name).read_bytes(), f"a/{name}", 0)
        records.append(f"a/{name}")
    write_record(tmp_path / "r-999.tfrecord", b"not an image at all", "text", 1)
    dataset = load_dataset(f"tfrecord:{tmp_path}/r-*.tfrecord")
    images = all_images(dataset)
    assert len(images) == 13 and not images[dataset.ids.index("text")].any()
    assert dataset.damaged.names() == [DAMAGED, "text"]
    bad = {dataset.ids.index(DAMAGED), dataset.ids.index("text")}
    assert trained_items(dataset) == set(range(13)) - bad


def test_a_record_understating_its_size_is_refused_from_the_header(folder, tmp_path):
    """A hand-made record declaring 20 x 20 for a 4,000 x 4,000 PNG passes the metadata
    check; its decode refuses it from the PNG header before allocating, as damaged."""
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 4000)).save(big)
    write_record(tmp_path / "r-0.tfrecord", (folder / "b" / "00.png").read_bytes(), "b/00.png", 1)
    write_record(tmp_path / "r-1.tfrecord", big.read_bytes(), "liar", 0)
    dataset = load_dataset(f"tfrecord:{tmp_path}/r-*.tfrecord", max_pixels=1_000_000)
    assert dataset.ids == ("b/00.png", "liar")  # its declared 400 pixels pass
    images = all_images(dataset)
    assert not images[1].any() and dataset.damaged.names() == ["liar"]
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(folder / "b" / "00.png")))
    # Within a budget its real size fits, it decodes: only its size was refused.
    dataset = load_dataset(f"tfrecord:{tmp_path}/r-*.tfrecord").at_size(16)
    assert len(all_images(dataset)) == 2 and not len(dataset.damaged)


def test_a_folder_is_read_within_the_given_pixel_budget(folder, tmp_path):
    """`max_pixels` (train.py's --max-pixels) skips larger images unread."""
    (tmp_path / "a").mkdir()
    Image.new("RGB", (30, 30)).save(tmp_path / "a" / "large.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "a" / "small.png")
    assert load_dataset(f"folder:{tmp_path}", max_pixels=500).ids == ("a/small.png",)
    assert len(load_dataset(f"folder:{tmp_path}").ids) == 2


def test_convert_leaves_damaged_images_out_and_names_them(folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="harr_tf"):
        names = convert(folder, str(tmp_path / "set-*.tfrecord"), shards=2)
    assert f"Skipped 1 damaged images of folder:{folder}: {DAMAGED}." in caplog.messages
    dataset = load_dataset(f"tfrecord:{tmp_path}/set-*.tfrecord")
    assert len(names) == 2 and dataset.num_items == 23 and DAMAGED not in dataset.ids
    all_images(dataset)
    assert len(dataset.damaged) == 0


@pytest.mark.slow
def test_train_on_a_folder_with_a_damaged_image_names_it_at_the_end(folder, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", f"folder:{folder}", "--bits", "8", "--epochs", "1"]
    args += ["--steps-per-epoch", "2", "--batch-size", "8", "--width", "4", "--quiet"]
    args += ["--train-size", "16", "--queries-per-class", "2", "--validation-per-class", "1"]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"Skipped 1 damaged images of folder:{folder}: {DAMAGED}." in result.stderr
    assert (run_dir / "damaged_items.txt").read_text() == f"{DAMAGED}\n"
    assert (run_dir / "bits_8" / "encoder.keras").exists()
