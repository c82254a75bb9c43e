"""Callbacks: val_map against the retrieval code, β schedule, NaN stop keeping the last
good checkpoint, atomic resumable checkpoints."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from harr_tf.callbacks import (
    BetaSchedule,
    ResumableCheckpoint,
    RetrievalEvaluation,
    StopOnNonFiniteLoss,
    WTARefresh,
)
from harr_tf.config import ModelConfig
from harr_tf.data import ImageDataset
from harr_tf.encoder import build_encoder, encode_images
from harr_tf.model import HarrModel
from harr_tf.retrieval import mean_average_precision
from harr_tf.wta import WTASimilarity

SHAPE = (8, 8, 1)


def make_model():
    model = HarrModel(
        build_encoder(SHAPE, 8, ModelConfig(width=4)),
        WTASimilarity(tau=0.5, s_max=0.9, s_min=0.1, window=4),
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01))
    return model


def batches(count, size=8, nan_from=None, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for step in range(count):
        views = {k: rng.uniform(0, 255, (size, *SHAPE)).astype("float32") for k in "abw"}
        if nan_from is not None and step >= nan_from:
            views["w"][0, 0, 0, 0] = np.nan
        views["wta"] = rng.integers(0, 4, (size, 16)).astype("uint8")
        out.append(views)
    return tf.data.Dataset.from_tensor_slices({k: np.stack([b[k] for b in out]) for k in out[0]})


def test_val_map_equals_retrieval_map_of_encoded_images():
    model = make_model()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 3, 20)
    queries, database = np.arange(0, 20, 2), np.arange(1, 20, 2)
    query_labels, database_labels = labels[queries], labels[database]
    callback = RetrievalEvaluation(
        ImageDataset.from_arrays(images, labels), queries, database, top_k=5, every=2
    )
    model.fit(batches(4), epochs=2, steps_per_epoch=2, callbacks=[callback], verbose=0)
    queries, database = images[queries], images[database]
    expected = mean_average_precision(
        encode_images(model.encoder, queries),
        encode_images(model.encoder, database),
        query_labels,
        database_labels,
        top_k=5,
    )
    history = model.history.history
    assert len(history["val_map"]) == 1  # evaluated at epoch 2 only
    assert history["val_map"][-1] == expected == callback.last_map


def test_beta_schedule_raises_beta_each_epoch():
    model = make_model()
    seen = []

    class Record(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(model.encoder.get_layer("hash_head").beta.numpy()))

    schedule = BetaSchedule(initial=2.0, growth=0.5)
    model.fit(batches(3), epochs=3, steps_per_epoch=1, callbacks=[schedule, Record()], verbose=0)
    assert seen == [2.0, 3.0, 4.0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = make_model()
    guard, checkpoint = StopOnNonFiniteLoss(), ResumableCheckpoint(str(tmp_path))
    # Epoch 1 (steps 0-1) is finite; the NaN arrives at step 3, in epoch 2.
    model.fit(
        batches(6, nan_from=3),
        epochs=3,
        steps_per_epoch=2,
        callbacks=[guard, checkpoint],
        verbose=0,
    )
    assert guard.failed_at == (1, 1)
    assert ResumableCheckpoint.completed_epochs(str(tmp_path)) == 1
    restored = tf.keras.models.load_model(checkpoint.model_path)
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def test_checkpoint_is_complete_and_resumable(tmp_path):
    model = make_model()
    checkpoint = ResumableCheckpoint(str(tmp_path))
    model.fit(batches(4), epochs=2, steps_per_epoch=2, callbacks=[checkpoint], verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["last.keras", "state.json"]  # no temporaries left
    with open(tmp_path / "state.json") as f:
        state = json.load(f)
    assert state["epoch"] == 2 and np.isfinite(state["logs"]["loss"])
    restored = tf.keras.models.load_model(checkpoint.model_path)
    assert int(restored.optimizer.iterations.numpy()) == 4
    assert ResumableCheckpoint.completed_epochs(str(tmp_path / "missing")) == 0


def test_wta_refresh_rebuilds_codes_and_thresholds_from_backbone_features():
    from harr_tf.config import WTAConfig
    from harr_tf.wta import encode_wta, estimate_thresholds, make_permutation_table

    model = make_model()
    images = np.random.default_rng(1).integers(0, 256, (40, *SHAPE), dtype=np.uint8)
    config = WTAConfig(num_permutations=16, window=4, positive_fraction=0.2)
    codes = tf.Variable(np.zeros((30, 16), np.uint8))
    train = np.arange(5, 35)  # the training items of a larger dataset
    refresh = WTARefresh(ImageDataset.from_arrays(images), train, codes, config, seed=5, every=1)
    refresh.set_model(model)
    refresh.refresh(2)
    features = model.encoder.get_layer("backbone").predict(images[train].astype("float32"))
    expected = encode_wta(features, make_permutation_table(features.shape[1], 16, 4, seed=7))
    thresholds = estimate_thresholds(expected, 4, rho=0.2, seed=5)
    np.testing.assert_array_equal(codes.numpy(), expected)
    assert model.similarity.tau == pytest.approx(thresholds.tau)
    assert model.similarity.s_max == pytest.approx(thresholds.s_max)


def test_wta_refresh_runs_every_n_epochs_but_not_after_the_last():
    from harr_tf.config import WTAConfig

    calls = []

    class Spy(WTARefresh):
        def refresh(self, epoch):
            calls.append(epoch)
            super().refresh(epoch)

    model = make_model()
    images = ImageDataset.from_arrays(np.zeros((30, *SHAPE), np.uint8))
    codes = tf.Variable(np.zeros((30, 16), np.uint8))
    wta = WTAConfig(num_permutations=16, window=4)
    spy = Spy(images, np.arange(30), codes, wta, seed=0, every=2)
    history = model.fit(batches(5), epochs=5, steps_per_epoch=1, callbacks=[spy], verbose=0)
    assert calls == [2, 4]
    assert np.isfinite(history.history["loss"]).all()  # training goes on after a rebuild
