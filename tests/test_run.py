"""Run helpers: --train-size on labeled, multi-label and unlabeled data; the WTA structure."""

import numpy as np
import pytest

from harr_tf.config import TrainConfig, WTAConfig
from harr_tf.features import FEATURE_SOURCES, wta_features
from harr_tf.run import build_wta_structure, load_run_data
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
    with pytest.raises(ValueError, match="500"):
        load_run_data(TrainConfig(dataset=spec))  # the protocol's 500 per class do not exist


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


@pytest.mark.parametrize("source", FEATURE_SOURCES)
def test_wta_structure_of_the_configured_feature_source(source):
    images = np.random.default_rng(0).integers(0, 256, (50, 5, 4, 1), dtype=np.uint8)
    config = TrainConfig(
        wta=WTAConfig(features=source, num_permutations=32, window=4, positive_fraction=0.2)
    )
    structure = build_wta_structure(images, config)
    assert structure.table.shape == (32, 4) and structure.codes.shape == (50, 32)
    expected = encode_wta(wta_features(images, source), structure.table)
    np.testing.assert_array_equal(structure.codes, expected)
    thresholds = structure.thresholds
    assert 0.0 <= thresholds.s_min <= thresholds.tau <= thresholds.s_max <= 1.0
