"""A tuner trial trains as `train.py` does (`harr_tf.training_assembly`): it rebuilds the
WTA structure every `wta.refresh_every` epochs, and checkpoints into its trial directory,
resuming from there when an interrupted search runs again. Real KerasTuner searches of
one tiny trial (200 Fashion-MNIST images, 2 epochs of 2 batches, width 4)."""

import json

import keras
import keras_tuner
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


def test_a_frozen_student_is_refused_before_any_data_is_read():
    # Its head trains on features cached in a run directory; a trial has none.
    model = ModelConfig(backbone="efficientnet_lite0")  # frozen by default
    config = TrainConfig(dataset="npz:/no/such/data.npz", bits=(16,), model=model)
    with pytest.raises(ValueError, match="the frozen student trains on cached features"):
        HarrHyperModel(config)
