"""A tuner trial trains as `train.py` does (`harr_tf.training_assembly`): it rebuilds the
WTA structure every `wta.refresh_every` epochs, and checkpoints into its trial directory,
resuming from there when an interrupted search runs again. Real KerasTuner searches of
one tiny trial (200 Fashion-MNIST images, 2 epochs of 2 batches, width 4)."""

import json

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import write_fashion_mnist_subset

from harr_tf.callbacks import WTARefresh
from harr_tf.config import ModelConfig, TrainConfig, WTAConfig
from tuning.hypermodel import OBJECTIVE, HarrHyperModel

SPACE = {"num_permutations": 32, "batch_size": 32, "window": 4}


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    return write_fashion_mnist_subset(tmp_path_factory.mktemp("data"), 200)


def trial_config(subset, wta: WTAConfig) -> TrainConfig:
    return TrainConfig(
        dataset=subset,
        bits=(16,),
        train_size=200,
        epochs=2,
        steps_per_epoch=2,
        model=ModelConfig(width=4),
        wta=wta,
    )


def one_trial_search(hypermodel, directory):
    """A search of one trial in `directory/harr`, reloaded when it exists."""
    return keras_tuner.RandomSearch(
        hypermodel, objective=OBJECTIVE, max_trials=1, seed=0, directory=str(directory)
    )


@pytest.mark.slow
def test_a_trial_refreshes_the_wta_structure(subset, tmp_path, monkeypatch):
    refreshed = []
    original = WTARefresh.refresh

    def spy(self, epoch):
        before = self.codes.numpy().copy()
        original(self, epoch)
        refreshed.append((epoch, before, self.codes.numpy().copy()))

    monkeypatch.setattr(WTARefresh, "refresh", spy)
    hypermodel = HarrHyperModel(trial_config(subset, WTAConfig(refresh_every=1)), SPACE)
    tuner = one_trial_search(hypermodel, tmp_path)
    tuner.search(verbose=0)
    assert tuner.oracle.trials["0"].status == "COMPLETED"
    # After epoch 1 of 2 (never after the last): the codes the trial's stream reads are
    # rebuilt from the backbone's features, no longer the pixels'.
    assert [epoch for epoch, _, _ in refreshed] == [1]
    _, before, after = refreshed[0]
    assert (before != after).any()


@pytest.mark.slow
def test_a_trial_checkpoints_into_its_directory_and_resumes_from_it(subset, tmp_path):
    begun = []

    class RecordEpochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            begun.append(epoch)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # after the checkpoint, listed first, wrote the epoch

    hypermodel = HarrHyperModel(trial_config(subset, WTAConfig()), SPACE)
    with pytest.raises(KeyboardInterrupt):
        one_trial_search(hypermodel, tmp_path).search(callbacks=[Interrupt()], verbose=0)
    checkpoint = tmp_path / "untitled_project" / "trial_0" / "checkpoint"
    assert (checkpoint / "latest.weights.h5").exists()
    assert json.loads((checkpoint / "training_metadata.json").read_text())["epoch"] == 1

    tuner = one_trial_search(hypermodel, tmp_path)  # reloaded: the trial runs again
    tuner.search(callbacks=[RecordEpochs()], verbose=0)
    assert begun == [1]  # from its checkpoint, not from the start
    trial = tuner.oracle.trials["0"]
    assert trial.status == "COMPLETED" and 0.0 < trial.score <= 1.0
    assert json.loads((checkpoint / "training_metadata.json").read_text())["epoch"] == 2


@pytest.mark.slow
def test_a_frozen_trial_trains_the_head_on_cached_features(tmp_path):
    """The frozen student (Lite0's default) is tuned too: its trials share the
    backbone's features, cached once in the search's directory, and score on them."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    images = rng.integers(0, 60, (120, 32, 32, 3), dtype=np.uint8)
    for item, label in enumerate(labels):  # each class a colour patch
        images[item, 8:24, 8:24, label] = 230
    np.savez(tmp_path / "colour.npz", images=images, labels=labels)
    config = TrainConfig(
        dataset=f"npz:{tmp_path / 'colour.npz'}",
        bits=(16,),
        epochs=2,
        steps_per_epoch=2,
        model=ModelConfig(backbone="efficientnet_lite0", weights="imagenet"),
        wta=WTAConfig(features="backbone"),
    )
    features = tmp_path / "features"
    hypermodel = HarrHyperModel(config, SPACE, str(features))
    assert hypermodel.frozen.train.shape == (len(hypermodel.data.split.train), 1280)
    tuner = one_trial_search(hypermodel, tmp_path)
    tuner.search(verbose=0)
    trial = tuner.oracle.trials["0"]
    assert trial.status == "COMPLETED" and 0.0 < trial.score <= 1.0
    assert (features / "train.npy").exists() and (features / "database.npy").exists()
