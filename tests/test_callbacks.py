"""Callbacks: val_map against the retrieval code, β schedule, NaN stop keeping the last
good checkpoint, Keras's BackupAndRestore checkpoints of weights and optimizer state."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from harr_tf.callbacks import (
    BetaSchedule,
    LastGoodCheckpoint,
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


def make_model(momentum=0.0):
    model = HarrModel(
        build_encoder(SHAPE, 8, ModelConfig(width=4)),
        WTASimilarity(tau=0.5, s_max=0.9, s_min=0.1, window=4),
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01, momentum=momentum))
    return model


def state(model):
    """The model's weights and its optimizer's variables (iterations, momenta)."""
    return [np.array(v) for v in model.weights], [np.array(v) for v in model.optimizer.variables]


class Record(tf.keras.callbacks.Callback):
    """The model's state when `fit` begins (after a restore) and after each epoch."""

    def __init__(self):
        super().__init__()
        self.begin, self.epochs = None, {}

    def on_train_begin(self, logs=None):
        self.begin = state(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = state(self.model)


def assert_same(a, b):
    for left, right in zip(a, b, strict=True):
        assert len(left) == len(right)
        for x, y in zip(left, right, strict=True):
            np.testing.assert_array_equal(x, y)


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


def test_nan_epoch_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model, record = make_model(momentum=0.9), Record()
    guard, checkpoint = StopOnNonFiniteLoss(), LastGoodCheckpoint(str(tmp_path))
    # Epoch 1 (steps 0-1) is finite; the NaN arrives at step 3, in epoch 2.
    history = model.fit(
        batches(6, nan_from=3),
        epochs=3,
        steps_per_epoch=2,
        callbacks=[record, guard, checkpoint],
        verbose=0,
    )
    assert guard.failed_epoch == 1
    assert len(history.history["loss"]) == 2 and not np.isfinite(history.history["loss"][-1])
    assert not all(np.isfinite(w).all() for w in record.epochs[1][0])  # epoch 2 broke them
    assert LastGoodCheckpoint.completed_epochs(str(tmp_path)) == 1
    restored, after = make_model(momentum=0.9), Record()
    restored.fit(
        batches(2), epochs=1, callbacks=[LastGoodCheckpoint(str(tmp_path)), after], verbose=0
    )
    assert_same(after.begin, record.epochs[0])  # epoch 1's weights and momenta, all finite


def test_checkpoint_restores_weights_and_optimizer_state(tmp_path):
    model, record = make_model(momentum=0.9), Record()
    checkpoint = LastGoodCheckpoint(str(tmp_path))
    model.fit(batches(4), epochs=2, steps_per_epoch=2, callbacks=[checkpoint, record], verbose=0)
    # Only the last checkpoint, complete: no temporaries left.
    assert sorted(os.listdir(tmp_path)) == ["latest.weights.h5", "training_metadata.json"]
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 2
    saved_weights, saved_optimizer = record.epochs[1]
    assert int(saved_optimizer[0]) == 4  # iterations
    assert any(np.abs(m).sum() > 0 for m in saved_optimizer[2:])  # momenta, not zeros
    # A new process: same model, fresh optimizer; fit restores and skips the done epochs.
    resumed, after = make_model(momentum=0.9), Record()
    history = resumed.fit(
        batches(6),
        epochs=3,
        steps_per_epoch=2,
        callbacks=[LastGoodCheckpoint(str(tmp_path)), after],
        verbose=0,
    )
    assert_same(after.begin, record.epochs[1])
    assert len(history.history["loss"]) == 1 and list(after.epochs) == [2]
    assert LastGoodCheckpoint.completed_epochs(str(tmp_path)) == 3
    assert LastGoodCheckpoint.completed_epochs(str(tmp_path / "missing")) == 0


def test_a_worker_restores_the_chiefs_checkpoint_but_never_writes(tmp_path):
    chief = make_model(momentum=0.9)
    chief.fit(
        batches(2), epochs=1, steps_per_epoch=2, callbacks=[LastGoodCheckpoint(str(tmp_path))]
    )
    files = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    worker, record = make_model(momentum=0.9), Record()
    history = worker.fit(
        batches(4),
        epochs=2,
        steps_per_epoch=2,
        callbacks=[LastGoodCheckpoint(str(tmp_path), write=False), record],
        verbose=0,
    )
    assert len(history.history["loss"]) == 1  # resumed after the chief's epoch
    assert int(record.begin[1][0]) == 2  # the chief's optimizer iterations
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == files


def test_the_guard_does_no_work_per_step():
    # It reads the epoch's mean loss only: no batch hook, no wait for a step's result.
    hooks = ("on_batch_end", "on_train_batch_begin", "on_train_batch_end")
    for hook in hooks:
        assert getattr(StopOnNonFiniteLoss, hook) is getattr(tf.keras.callbacks.Callback, hook)


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
