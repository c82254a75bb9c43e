"""Every image source on tiny fixtures written here, the Fashion-MNIST fallback, bad input."""

import gzip
import logging
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import require_fashion_mnist
from PIL import Image

from harr_tf.data import ImageDataset, load_dataset, sources, tfds_source
from harr_tf.data.tfds_source import DataUnavailableError


def everything(dataset):
    """Every item's pixels, read through the dataset's stream."""
    return dataset.read(np.arange(dataset.num_items))


def write_idx(path, array, magic):
    """An IDX file as the MNIST distribution writes it; gzipped when `path` ends in .gz."""
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_idx_dir(directory, counts=(3, 2), labels=True):
    """train (gzipped) and t10k (plain) files; pixel [0, 0] holds the item's pooled index."""
    directory.mkdir(parents=True, exist_ok=True)
    start = 0
    for prefix, count, ext in zip(("train", "t10k"), counts, (".gz", ""), strict=False):
        images = np.zeros((count, 4, 5), np.uint8)
        images[:, 0, 0] = np.arange(start, start + count)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images, 2051)
        if labels:
            write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", images[:, 0, 0] % 3, 2049)
        start += count
    return directory


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """TFDS with an empty data dir and no network, whatever the machine has."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.delenv("HARR_DATA_DIR", raising=False)
    monkeypatch.setattr(tfds_source, "_offline_reason", lambda: "no network (test)")


# --- idx ---------------------------------------------------------------------------------


def test_idx_pools_train_then_t10k_gzipped_and_plain(tmp_path):
    dataset = load_dataset(f"idx:{write_idx_dir(tmp_path / 'digits')}")
    assert everything(dataset).shape == (5, 4, 5, 1)
    assert everything(dataset).dtype == np.uint8
    np.testing.assert_array_equal(everything(dataset)[:, 0, 0, 0], np.arange(5))
    np.testing.assert_array_equal(dataset.labels, np.arange(5) % 3)
    assert dataset.labels.dtype == np.int64
    assert (dataset.name, dataset.source) == ("digits", f"idx:{tmp_path / 'digits'}")


def test_idx_without_labels_is_unlabeled(tmp_path):
    dataset = load_dataset(f"idx:{write_idx_dir(tmp_path, labels=False)}")
    assert dataset.labels is None
    assert dataset.num_items == 5


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("train-images-idx3-ubyte", b"\x00\x00\x08\x01" + bytes(12), "magic number 2049"),
        ("train-images-idx3-ubyte", (2051).to_bytes(4, "big") + bytes(11), "magic number"),
        ("train-images-idx3-ubyte.gz", b"not gzip at all", "not a readable IDX file"),
    ],
)
def test_idx_malformed_file_is_a_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"idx:{tmp_path}")


def test_idx_size_mismatch_and_label_count_are_errors(tmp_path):
    header = b"".join(n.to_bytes(4, "big") for n in (2051, 2, 3, 3))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + bytes(17))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\).*34 bytes"):
        load_dataset(f"idx:{tmp_path}")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3)), 2051)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3), 2049)
    with pytest.raises(ValueError, match="3 labels for the 2 images"):
        load_dataset(f"idx:{tmp_path}")


def test_idx_directory_without_idx_files(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="images-idx3-ubyte"):
        load_dataset(f"idx:{tmp_path}")


# --- folder ------------------------------------------------------------------------------


def pixels(seed, size=(12, 10), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def test_folder_with_class_subfolders_reads_every_format(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog" / "puppies").mkdir(parents=True)
    pixels(0).save(tmp_path / "cat" / "a.PNG")
    pixels(1).save(tmp_path / "cat" / "b.jpg", quality=95)
    pixels(2).save(tmp_path / "cat" / "c.bmp")
    pixels(3).save(tmp_path / "dog" / "d.gif")
    pixels(4).save(tmp_path / "dog" / "e.webp")
    pixels(5, mode="L").save(tmp_path / "dog" / "puppies" / "f.png")
    (tmp_path / "dog" / "readme.txt").write_text("not an image")
    pixels(6).save(tmp_path / "dog" / ".hidden.png")

    dataset = load_dataset(f"folder:{tmp_path}")
    assert dataset.ids == (
        "cat/a.PNG",
        "cat/b.jpg",
        "cat/c.bmp",
        "dog/d.gif",
        "dog/e.webp",
        "dog/puppies/f.png",
    )
    assert everything(dataset).shape == (6, 10, 12, 3)
    assert dataset.class_names == ("cat", "dog")
    np.testing.assert_array_equal(dataset.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(everything(dataset)[0], np.asarray(pixels(0)))  # lossless PNG
    gray = np.asarray(pixels(5, mode="L"))
    np.testing.assert_array_equal(everything(dataset)[5], np.repeat(gray[..., None], 3, axis=-1))


def test_loose_images_make_an_unlabeled_set(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    pixels(0).save(tmp_path / "top.png")
    pixels(1).save(tmp_path / "sub" / "inner.png")
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(f"folder:{tmp_path}")
    assert dataset.labels is None and dataset.class_names is None
    assert dataset.ids == ("sub/inner.png", "top.png")
    assert "evaluation (mAP) will need labels" in caplog.text


def test_undecodable_file_is_skipped_with_one_warning(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    pixels(0).save(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8 truncated nonsense")
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(f"folder:{tmp_path}")
    assert dataset.ids == ("a/good.png",)
    skipped = [record for record in caplog.records if "could not be decoded" in record.message]
    assert len(skipped) == 1
    assert "Skipped 1 of 2" in skipped[0].message and "a/broken.jpg" in skipped[0].message


def test_folder_without_readable_image_is_an_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "worse.gif").write_bytes(b"")
    with pytest.raises(ValueError, match="none of its 2 image files.*bad.png, worse.gif"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="not a decodable"):
        load_dataset(f"folder:{tmp_path / 'bad.png'}")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="holds no image file"):
        load_dataset(f"folder:{tmp_path}")


def test_mixed_sizes_are_cropped_and_resized(tmp_path):
    pixels(0, size=(40, 20)).save(tmp_path / "wide.png")
    pixels(1, size=(10, 30)).save(tmp_path / "tall.png")
    assert load_dataset(f"folder:{tmp_path}").image_shape == (224, 224, 3)
    assert load_dataset(f"folder:{tmp_path}", image_size=16).image_shape == (16, 16, 3)


def test_single_image_file_and_uniform_resize(tmp_path):
    flat = np.full((8, 8, 3), 77, np.uint8)
    Image.fromarray(flat).save(tmp_path / "one.png")
    dataset = load_dataset(f"folder:{tmp_path / 'one.png'}", image_size=4)
    assert dataset.ids == ("one.png",)
    np.testing.assert_array_equal(everything(dataset), np.full((1, 4, 4, 3), 77, np.uint8))


# --- npz ---------------------------------------------------------------------------------


def test_npz_with_labels_and_grayscale_channel_axis(tmp_path):
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.savez(tmp_path / "set.npz", images=images, labels=np.array([4, 1], np.int32))
    dataset = load_dataset(f"npz:{tmp_path / 'set.npz'}")
    np.testing.assert_array_equal(everything(dataset)[..., 0], images)
    assert dataset.labels.dtype == np.int64 and not dataset.multi_label
    assert (dataset.name, dataset.source) == ("set", f"npz:{tmp_path / 'set.npz'}")


def test_npz_without_labels_and_multi_label(tmp_path):
    images = np.zeros((3, 2, 2, 3), np.uint8)
    np.savez(tmp_path / "plain.npz", images=images)
    assert load_dataset(f"npz:{tmp_path / 'plain.npz'}").labels is None
    tags = np.array([[1, 0, 1], [0, 0, 0], [0, 2, 0]])
    np.savez(tmp_path / "tags.npz", images=images, labels=tags)
    dataset = load_dataset(f"npz:{tmp_path / 'tags.npz'}")
    assert dataset.multi_label
    np.testing.assert_array_equal(dataset.labels, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert dataset.labels.dtype == np.uint8


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pixels": np.zeros((1, 2, 2), np.uint8)}, r"no 'images' array; it has: \['pixels'\]"),
        ({"images": np.zeros((1, 2, 2), np.float32)}, "dtype=float32"),
        ({"images": np.zeros((2, 2), np.uint8)}, r"shape=\(2, 2\)"),
        ({"images": np.zeros((1, 2, 2, 4), np.uint8)}, "C = 1 or 3"),
        ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.zeros(3, int)}, "N = 2"),
        ({"images": np.zeros((1, 2, 2), np.uint8), "labels": np.zeros(1)}, "dtype=float64"),
    ],
)
def test_npz_bad_content_is_a_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "x.npz").write_text("text")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'x.npz'}")


# --- bad specs ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["idx", "folder", "npz"])
def test_missing_path_names_it(tmp_path, kind):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_dataset(f"{kind}:{missing}")


@pytest.mark.parametrize("spec", ["imagenet_21k", "folder:", "zip:/tmp/x", "tfds:"])
def test_unknown_spec_lists_accepted_forms(spec):
    with pytest.raises(ValueError, match="Expected one of: fashion_mnist, mnist, cifar10"):
        load_dataset(spec)


def test_existing_path_without_prefix_gets_a_hint(tmp_path):
    with pytest.raises(ValueError, match=f"prefix it, e.g. folder:{tmp_path}"):
        load_dataset(str(tmp_path))


# --- tfds --------------------------------------------------------------------------------


def write_tfds(root, name, features, splits):
    """A prepared TFDS dataset on disk (TFRecords + metadata), readable by name offline."""
    directory = root / name / "1.0.0"
    directory.mkdir(parents=True)
    for split, examples in splits.items():
        path = directory / f"{name}-{split}.tfrecord-00000-of-00001"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for example in examples:
                writer.write(features.serialize_example(example))
    tfds.folder_dataset.write_metadata(
        data_dir=str(directory), features=features, split_infos=None, filename_template=None
    )


def test_tfds_pools_splits_train_first_and_reads_one_split(tmp_path, monkeypatch):
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(4, 4, 1)),
            "label": tfds.features.ClassLabel(names=["even", "odd"]),
        }
    )
    make = lambda values: [  # noqa: E731
        {"image": np.full((4, 4, 1), v, np.uint8), "label": v % 2} for v in values
    ]
    write_tfds(tmp_path, "harr_tiny", features, {"test": make([10, 11]), "train": make([0, 1, 2])})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))

    dataset = load_dataset("tfds:harr_tiny")
    np.testing.assert_array_equal(everything(dataset)[:, 0, 0, 0], [0, 1, 2, 10, 11])
    np.testing.assert_array_equal(dataset.labels, [0, 1, 0, 0, 1])
    assert dataset.class_names == ("even", "odd")
    assert dataset.name == "harr_tiny" and dataset.source.startswith("tfds:")
    test = load_dataset("tfds:harr_tiny:test", image_size=2)
    assert everything(test).shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(everything(test)[:, 0, 0, 0], [10, 11])


def test_tfds_multi_label_and_variable_sizes(tmp_path):
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=4)),
        }
    )
    examples = [
        {"image": np.zeros((6, 9, 3), np.uint8), "labels": [0, 2, 2]},
        {"image": np.ones((5, 3, 3), np.uint8), "labels": []},
    ]
    write_tfds(tmp_path, "harr_tags", features, {"train": examples})
    dataset = load_dataset("tfds:harr_tags", data_dir=str(tmp_path), image_size=8)
    assert everything(dataset).shape == (2, 8, 8, 3) and dataset.multi_label
    np.testing.assert_array_equal(dataset.labels, [[1, 0, 1, 0], [0, 0, 0, 0]])


def test_tfds_unknown_name_and_unavailable_dataset(offline):
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_set_xyz'"):
        load_dataset("tfds:no_such_set_xyz")
    with pytest.raises(DataUnavailableError, match="not prepared.*no network"):
        load_dataset("tfds:mnist:test")
    with pytest.raises(DataUnavailableError, match="cifar10"):
        load_dataset("cifar10")


def test_offline_probe_answers_within_seconds(monkeypatch):
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(tfds_source, "_PROBE_ADDRESS", ("harr-tf-test.invalid", 443))
    start = time.monotonic()
    reason = tfds_source._offline_reason(timeout=3.0)
    assert time.monotonic() - start < 3.5
    assert reason is not None and "harr-tf-test.invalid:443" in reason


# --- fashion_mnist / mnist fallback to IDX ------------------------------------------------


def test_fashion_mnist_falls_back_to_local_idx_files(offline, caplog):
    directory = require_fashion_mnist()
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset("fashion_mnist")
    assert isinstance(dataset, ImageDataset)
    assert everything(dataset).shape == (70_000, 28, 28, 1)
    assert dataset.source == f"idx:{directory}" and dataset.name == "fashion_mnist"
    np.testing.assert_array_equal(np.bincount(dataset.labels), [7_000] * 10)
    assert f"Using the IDX files in {directory}" in caplog.text


def test_explicit_data_dir_with_idx_files_skips_tfds(tmp_path, monkeypatch):
    def no_tfds(*args, **kwargs):
        raise AssertionError("TFDS must not be consulted")

    monkeypatch.setattr(tfds, "builder", no_tfds)
    monkeypatch.setattr(tfds_source, "_offline_reason", no_tfds)
    dataset = load_dataset("fashion_mnist", data_dir=str(write_idx_dir(tmp_path / "fm")))
    assert dataset.num_items == 5 and dataset.source == f"idx:{tmp_path / 'fm'}"


def test_harr_data_dir_subfolder_is_searched(tmp_path, offline, monkeypatch):
    write_idx_dir(tmp_path / "data" / "mnist", counts=(2, 1))
    monkeypatch.setenv("HARR_DATA_DIR", str(tmp_path / "data"))
    dataset = load_dataset("mnist")
    assert dataset.num_items == 3 and dataset.source == f"idx:{tmp_path / 'data' / 'mnist'}"


def test_failed_download_falls_back(tmp_path, monkeypatch):
    def failing_download(self, *args, **kwargs):
        raise OSError("connection reset (test)")

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("HARR_DATA_DIR", str(write_idx_dir(tmp_path / "local")))
    monkeypatch.setattr(tfds_source, "_offline_reason", lambda: None)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", failing_download)
    assert load_dataset("mnist").source == f"idx:{tmp_path / 'local'}"


def test_no_tfds_and_no_idx_names_where_it_looked(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(sources, "_SYSTEM_DATASETS", tmp_path / "system")
    with pytest.raises(DataUnavailableError, match="looked in: .*system/mnist"):
        load_dataset("mnist")
