"""Run helpers: --train-size on labeled, multi-label and unlabeled data; the WTA teacher
from every feature source against its direct computation; the training length."""

import keras
import numpy as np
import pytest

from harr_tf.backbones import build_backbone
from harr_tf.config import ModelConfig, TrainConfig, WTAConfig
from harr_tf.data import ImageDataset
from harr_tf.features import PIXEL_SOURCES, wta_features
from harr_tf.run_data import build_wta_structure, load_run_data
from harr_tf.run_directory import RunDirectory
from harr_tf.training import training_length
from harr_tf.wta import encode_wta


def npz_spec(tmp_path, count, labels=None):
    images = np.random.default_rng(0).integers(0, 256, (count, 6, 6), dtype=np.uint8)
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(tmp_path / "data.npz", **arrays)
    return f"npz:{tmp_path / 'data.npz'}"


def test_train_size_on_single_label_data(tmp_path):
    # 3 classes x 200: 100 queries and 50 validation per class leave 50 per class.
    labels = np.repeat(np.arange(3), 200)
    spec = npz_spec(tmp_path, 600, labels)
    some = load_run_data(TrainConfig(dataset=spec, train_size=30))
    assert np.bincount(labels[some.split.train]).tolist() == [10, 10, 10]
    everything = load_run_data(TrainConfig(dataset=spec, train_size="all"))
    assert len(everything.split.train) == 150
    assert not set(everything.split.train) & set(everything.split.validation)
    # The protocol's 100 + 50 + 500 per class do not exist: a tenth each for query and
    # validation, the rest of each class trained on.
    shrunk = load_run_data(TrainConfig(dataset=spec))
    assert shrunk.split.class_counts[:, 2:].tolist() == [[20, 20, 160]] * 3
    given = load_run_data(TrainConfig(dataset=spec, queries_per_class=5, validation_per_class=0))
    assert given.split.class_counts[:, 2:].tolist() == [[5, 0, 195]] * 3


def test_train_size_on_unlabeled_and_multi_label_data(tmp_path):
    unlabeled = load_run_data(TrainConfig(dataset=npz_spec(tmp_path, 300), train_size=100))
    assert len(unlabeled.split.train) == 100 and len(unlabeled.split.query) == 0
    assert (
        len(
            load_run_data(
                TrainConfig(dataset=npz_spec(tmp_path, 300), train_size="all")
            ).split.train
        )
        == 300
    )
    multi_hot = np.random.default_rng(1).integers(0, 2, (2000, 4)).astype(np.uint8)
    multi_hot[:, 0] = 1  # every item has a label, so any item may be a query
    spec = npz_spec(tmp_path, 2000, multi_hot)
    assert len(load_run_data(TrainConfig(dataset=spec, train_size=200)).split.train) == 200
    data = load_run_data(TrainConfig(dataset=spec, train_size="all"))
    assert len(data.split.train) == 2000 - 1000 - 500 and data.top_k == 5000
    # Fewer items than queries + validation: those shrink, "all" trains on the rest.
    small = load_run_data(
        TrainConfig(dataset=npz_spec(tmp_path, 900, multi_hot[:900]), train_size="all")
    )
    assert len(small.split.query) == 90 and len(small.split.train) == 900 - 90 - 90


@pytest.mark.parametrize("source", PIXEL_SOURCES)
def test_streamed_pixel_teacher_equals_the_in_memory_computation(source):
    images = np.random.default_rng(0).integers(0, 256, (600, 5, 4, 1), dtype=np.uint8)
    dataset = ImageDataset.from_arrays(images)
    train = np.arange(40, 590)  # more than one streamed batch
    config = TrainConfig(
        wta=WTAConfig(features=source, num_permutations=32, window=4, positive_fraction=0.2)
    )
    structure = build_wta_structure(dataset, train, config)
    assert structure.table.shape == (32, 4) and structure.codes.shape == (550, 32)
    expected = encode_wta(wta_features(images[train], source), structure.table)
    np.testing.assert_array_equal(structure.codes, expected)
    thresholds = structure.thresholds
    assert 0.0 <= thresholds.s_min <= thresholds.tau <= thresholds.s_max <= 1.0


def test_backbone_teacher_equals_the_backbone_applied_directly():
    images = np.random.default_rng(0).integers(0, 256, (300, 16, 16, 3), dtype=np.uint8)
    dataset = ImageDataset.from_arrays(images)
    train = np.arange(0, 300, 3)
    config = TrainConfig(
        model=ModelConfig(width=4, pooling="global"),
        wta=WTAConfig(features="backbone", num_permutations=64, window=4),
        seed=3,
    )
    structure = build_wta_structure(dataset, train, config)
    keras.utils.set_random_seed(3)  # the backbone as built, same seed
    backbone = build_backbone("small_cnn", (16, 16, 3), "none", 4, "global")
    features = keras.ops.convert_to_numpy(backbone(images[train].astype("float32")))
    assert structure.table.shape == (64, 4) and structure.table.max() < features.shape[1]
    np.testing.assert_array_equal(structure.codes, encode_wta(features, structure.table))


def write_features(path, ids, features):
    np.savez(path, ids=np.asarray(ids), features=features)
    return f"file:{path}"


def test_feature_file_teacher_matches_rows_by_id(tmp_path):
    dataset = ImageDataset.from_arrays(np.zeros((50, 2, 2, 1), np.uint8), name="toy")
    features = np.random.default_rng(1).normal(size=(50, 24)).astype(np.float32)
    order = np.random.default_rng(2).permutation(50)  # the file's rows in another order
    source = write_features(tmp_path / "f.npz", np.asarray(dataset.ids)[order], features[order])
    train = np.arange(10, 50)
    config = TrainConfig(wta=WTAConfig(features=source, num_permutations=16, window=4))
    structure = build_wta_structure(dataset, train, config)
    np.testing.assert_array_equal(structure.codes, encode_wta(features[train], structure.table))


@pytest.mark.parametrize(
    "ids, features, message",
    [
        ([f"toy/{i}" for i in range(9)], np.zeros((9, 4)), "1 missing .e.g. toy/9., 0 extra"),
        ([f"toy/{i}" for i in range(11)], np.zeros((11, 4)), "0 missing .*1 extra .e.g. toy/10"),
        ([f"toy/{i}" for i in range(10)], np.zeros((10, 4), np.int64), "dtype=int64"),
        ([f"toy/{i}" for i in range(10)], np.zeros(10), r"shape=\(10,\)"),
        ([f"toy/{i}" for i in range(9)], np.zeros((10, 4)), "must be 10 strings"),
    ],
)
def test_feature_file_errors_name_the_problem(tmp_path, ids, features, message):
    dataset = ImageDataset.from_arrays(np.zeros((10, 2, 2, 1), np.uint8), name="toy")
    source = write_features(tmp_path / "f.npz", ids, features)
    config = TrainConfig(wta=WTAConfig(features=source))
    with pytest.raises(ValueError, match=f"file:.*f.npz.*{message}"):
        build_wta_structure(dataset, np.arange(10), config)


def test_training_length_in_steps_or_epochs():
    # Fashion-MNIST's default: 5,000 training images in batches of 128, 30 epochs of 39.
    assert training_length(TrainConfig(batch_size=128), 5000) == (30, 39)
    assert training_length(TrainConfig(batch_size=128), 1000) == (
        168,
        7,
    )  # 1,170 updates, whole epochs
    assert training_length(TrainConfig(batch_size=128, epochs=2), 1000) == (2, 7)
    assert training_length(TrainConfig(batch_size=128, steps=10, steps_per_epoch=4), 5000) == (3, 4)
    assert training_length(TrainConfig(batch_size=128, steps=5), 5000) == (1, 5)
    assert training_length(TrainConfig(batch_size=128, steps_per_execution=8), 5000) == (37, 32)
    with pytest.raises(ValueError, match=r"\(5\) must be a multiple of steps_per_execution \(4\)"):
        training_length(TrainConfig(batch_size=128, steps_per_epoch=5, steps_per_execution=4), 5000)
    with pytest.raises(ValueError, match="give one"):
        TrainConfig(epochs=2, steps=10)


@pytest.mark.slow
def test_several_steps_per_execution_train_like_one(tmp_path):
    """`--steps-per-execution 4` runs the same steps as one step per call: the same
    weights at the end. An epoch that is not whole calls is refused (Keras would run
    other steps than asked)."""
    from harr_tf.training_assembly import train_code_length

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 16, 16, 1), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=np.arange(300) % 10)
    weights = []
    for steps_per_execution in (1, 4):
        config = TrainConfig(
            dataset=f"npz:{tmp_path / 'data.npz'}",
            bits=(8,),
            epochs=1,
            steps_per_epoch=4,
            batch_size=16,
            model=ModelConfig(width=4),
            steps_per_execution=steps_per_execution,
        )
        data = load_run_data(config)
        wta = build_wta_structure(data.dataset, data.split.train, config)
        keras.utils.set_random_seed(0)
        directory = RunDirectory(tmp_path / f"run_{steps_per_execution}").length(8)
        encoder, _ = train_code_length(config, 8, data, wta, directory, verbose=0)
        weights.append(encoder.get_weights())
    keras.utils.set_random_seed(0)
    start = build_backbone("small_cnn", (16, 16, 1), "none", 4, "grid").get_weights()
    trained = weights[0][: len(start)]
    assert max(np.abs(a - b).max() for a, b in zip(trained, start, strict=True)) > 1e-3
    for one, four in zip(*weights, strict=True):
        np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("side", "channels", "stored"), [(100, 1, 64), (28, 1, None), (40, 3, 224)]
)
def test_the_image_size_is_resolved_once_and_kept_in_the_config(tmp_path, side, channels, stored):
    """The run's config holds the side its images are read at (None: their native size),
    whichever network the collection chose: small_cnn for one channel, Lite0 for three."""
    labels = np.repeat(np.arange(2), 30)
    images = np.zeros((60, side, side, channels), np.uint8)
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    data = load_run_data(TrainConfig(dataset=f"npz:{tmp_path / 'set.npz'}"))
    assert data.config.image_size == stored
    assert data.dataset.image_shape[:2] == ((stored, stored) if stored else (side, side))
