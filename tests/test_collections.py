"""Real image collections: a folder of uneven classes trained and evaluated end to end,
streamed encoding against the in-memory one, TFRecord conversion, image-size rules, and
images too large to decode."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harr_tf import encoder as encoder_module
from harr_tf.config import ModelConfig, TrainConfig
from harr_tf.data import load_dataset
from harr_tf.data.folder import resize_square, scan_image_folder
from harr_tf.data.image_size import resolve_image_size
from harr_tf.data.splits import ProtocolSplit
from harr_tf.data.tfrecord import main as tfrecord_main
from harr_tf.encoder import build_encoder, encode_images
from harr_tf.run import run

SIZES = {"one": 1, "three": 3, "forty": 40, "many": 500}


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """JPEG classes of 1, 3, 40 and 500 images (36 x 28 px), each class its own colour."""
    root = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(0)
    for label, (name, count) in enumerate(SIZES.items()):
        (root / name).mkdir()
        for item in range(count):
            pixels = rng.integers(0, 60, (28, 36, 3)) + 60 * np.eye(3, dtype=int)[label % 3]
            pixels[:, :, label % 3] += 40 * (label // 3)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{item}.jpg")
    return root


@pytest.mark.slow
def test_uneven_classes_train_and_evaluate_end_to_end(uneven, tmp_path, caplog, monkeypatch):
    config = TrainConfig(
        dataset=f"folder:{uneven}",
        bits=(8,),
        steps=3,
        batch_size=32,
        image_size=16,
        eval_every=1,
        encode_batch_size=24,
        model=ModelConfig(width=4),
    )
    requested = []  # --encode-batch-size reaches the validation and the evaluation encodings
    monkeypatch.setattr(
        encoder_module, "inference_batch_size", lambda shape, size: requested.append(size) or size
    )
    with caplog.at_level(logging.INFO, logger="harr_tf"):
        metrics = run(config, str(tmp_path / "run"), verbose=0)
    assert len(requested) == 4 and set(requested) == {24}
    split = ProtocolSplit.load(tmp_path / "run" / "split.npz")
    # Class ids follow the sorted folder names: forty, many, one, three.
    assert split.class_counts.tolist() == [
        [0, 40, 4, 4, 32],
        [1, 500, 50, 50, 400],
        [2, 1, 0, 0, 1],
        [3, 3, 0, 0, 3],
    ]
    assert "Drawn per class" in caplog.text and "three" in caplog.text
    result = metrics["results"]["8"]
    assert 0.0 <= result["map"] <= 1.0 and set(metrics["baselines"]) == {"lsh", "pcah", "itq"}
    with open(tmp_path / "run" / "metrics.json") as f:
        assert json.load(f)["results"]["8"]["map"] == result["map"]
    assert (tmp_path / "run" / "plots" / "retrieval_grid_8.png").exists()
    checkpoint = tmp_path / "run" / "bits_8" / "checkpoint"
    assert (checkpoint / "latest.weights.h5").is_file()
    state = json.loads((checkpoint / "training_metadata.json").read_text())
    assert state["epoch"] == 1  # 3 steps: one epoch of 3


def test_streamed_encoding_equals_the_in_memory_encoding(uneven):
    dataset = load_dataset(f"folder:{uneven}", image_size=20)
    items = np.arange(0, dataset.num_items, 7)
    decoded = [
        resize_square(tf.io.decode_image((uneven / name).read_bytes(), channels=3), 20)
        for name in np.asarray(dataset.ids)[items]
    ]
    in_memory = np.stack([np.asarray(image) for image in decoded])
    encoder = build_encoder((20, 20, 3), 16, ModelConfig(width=4))
    streamed = encode_images(encoder, dataset.images(items), batch_size=16)
    np.testing.assert_array_equal(streamed, encode_images(encoder, in_memory, batch_size=16))
    np.testing.assert_array_equal(dataset.read(items[::-1]), in_memory[::-1])


def test_tfrecord_conversion_reads_back_the_folder(uneven, tmp_path, capsys):
    assert (
        tfrecord_main(
            [
                "convert",
                "--input",
                str(uneven),
                "--out",
                str(tmp_path / "u-*.tfrecord"),
                "--shards",
                "3",
            ]
        )
        == 0
    )
    assert len(list(tmp_path.glob("u-*-of-00003.tfrecord"))) == 3
    assert "tfrecord:" in capsys.readouterr().out
    records = load_dataset(f"tfrecord:{tmp_path / 'u-*.tfrecord'}", image_size=12)
    folder = load_dataset(f"folder:{uneven}", image_size=12)
    assert sorted(records.ids) == sorted(folder.ids) and records.sequential
    assert records.class_names == folder.class_names
    row = {item: position for position, item in enumerate(folder.ids)}
    order = np.array([row[item] for item in records.ids])
    np.testing.assert_array_equal(records.labels, folder.labels[order])
    chosen = np.arange(0, records.num_items, 37)
    np.testing.assert_array_equal(records.read(chosen), folder.read(order[chosen]))


def test_tfrecord_without_the_schema_keys_is_a_clear_error(tmp_path):
    with tf.io.TFRecordWriter(str(tmp_path / "bad.tfrecord")) as writer:
        feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}
        writer.write(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    with pytest.raises(ValueError, match="records lack image/encoded, image/id, image/height"):
        load_dataset(f"tfrecord:{tmp_path / 'bad.tfrecord'}")
    with pytest.raises(ValueError, match="no file matches"):
        load_dataset(f"tfrecord:{tmp_path / 'none-*.tfrecord'}")


def test_images_over_the_pixel_limit_are_skipped_unread(tmp_path, caplog):
    Image.new("RGB", (30, 20)).save(tmp_path / "big.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    with caplog.at_level(logging.WARNING):
        found = scan_image_folder(tmp_path, max_pixels=100)
    assert found.ids == ("small.png",) and found.sizes.tolist() == [[8, 8]]
    assert "larger than 100 pixels" in caplog.text and "big.png (30 x 20)" in caplog.text


def test_image_size_defaults_and_minimum():
    assert resolve_image_size(None, (28, 28), "small_cnn") is None  # native, unchanged
    assert resolve_image_size(None, (256, 256), "small_cnn") == 64
    assert resolve_image_size(None, None, "small_cnn") == 64
    assert resolve_image_size(None, (32, 32), "resnet50") == 224
    assert resolve_image_size(48, (256, 256), "vgg16") == 48
    with pytest.raises(ValueError, match="--image-size 16 is below resnet50's minimum of 32"):
        resolve_image_size(16, (256, 256), "resnet50")


def test_truncated_files_are_skipped_and_jpeg_tails_kept(tmp_path, caplog):
    Image.new("RGB", (16, 12), (200, 10, 10)).save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "motion.jpg").write_bytes(whole + b"\0" * 500)  # data after the JPEG's end
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (16, 12)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:-20])
    with caplog.at_level(logging.WARNING):
        found = scan_image_folder(tmp_path)
    assert found.ids == ("motion.jpg", "whole.jpg", "whole.png")
    assert "Skipped 2 of 5" in caplog.text and "cut.jpg, cut.png" in caplog.text
    pixels = load_dataset(f"folder:{tmp_path}").read(np.arange(3))  # all decode
    assert pixels.shape == (3, 12, 16, 3)


@pytest.mark.slow
def test_a_sequential_source_trains_through_its_shuffle_buffer(uneven, tmp_path):
    from harr_tf.data.augment import ViewAugmenter
    from harr_tf.data.pipeline import training_dataset

    assert tfrecord_main(["convert", "--input", str(uneven), "--out", str(tmp_path / "u.rec")]) == 0
    dataset = load_dataset(f"tfrecord:{tmp_path / 'u.rec'}", image_size=12)
    train = np.arange(0, dataset.num_items, 2)

    def batches(start_step=0):
        augmenter = ViewAugmenter(dataset.image_shape, seed=1, views=("w",))
        stream = training_dataset(dataset, train, augmenter, 16, seed=1, start_step=start_step)
        return [{k: v.numpy() for k, v in batch.items()} for batch in stream.take(3)]

    first, again, resumed = batches(), batches(), batches(start_step=2)
    for one, two in zip(first, again, strict=True):
        np.testing.assert_array_equal(one["w"], two["w"])
    np.testing.assert_array_equal(resumed[0]["index"], first[2]["index"])
    assert first[0]["w"].shape == (16, 12, 12, 3)
    indices = np.concatenate([batch["index"] for batch in first])
    assert len(set(indices)) == len(indices) and indices.max() < len(train)
