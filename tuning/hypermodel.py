"""HarrHyperModel: HARR's loss weights, WTA structure and optimisation as a KerasTuner
search space, trained as `train.py` trains (`harr_tf.training_assembly`) and scored by
`val_map` on the validation split (DESIGN §3)."""

from __future__ import annotations

import os

import keras
import keras_tuner

from harr_tf.config import TrainConfig, WTAConfig
from harr_tf.frozen import prepare_frozen
from harr_tf.model import HarrModel
from harr_tf.run_data import WTAStructure, build_wta_structure, load_run_data
from harr_tf.training import with_batch_size
from harr_tf.training_assembly import assemble_training, training_model
from tuning.space import SETTINGS, SpaceDeclarer, parse_overrides, with_values

OBJECTIVE = keras_tuner.Objective("val_map", direction="max")


class HarrHyperModel(keras_tuner.HyperModel):
    """Builds and trains one HARR model per trial; `fit` returns the trial's `val_map`.

    `val_map` is mAP@K of the validation queries (drawn from the database) against a
    sample of the rest of the database, after the trial's last epoch; the protocol's
    query set is never used. The data are loaded once; the WTA structure is rebuilt
    only when its settings (P, K, ρ) change. A trial trains as a run does (WTA refresh,
    checkpoint, β schedule); a frozen student's trials share the backbone's features,
    cached once in `features_dir`, and are scored on them.

    Args:
        config: the base configuration of every trial, with one code length in
            `bits`; its values are the defaults of the search space, so
            `TrainConfig()` gives `train.py`'s defaults.
        search_space: the `search_space:` mapping of a config file, fixing or
            narrowing hyperparameters (see `tuning.space`). Defaults to None.
        features_dir: where a frozen student's backbone features are cached (the
            search's directory); needed only for the frozen student. Defaults to None.
    """

    def __init__(
        self,
        config: TrainConfig,
        search_space: dict | None = None,
        features_dir: str | None = None,
    ) -> None:
        super().__init__(name="harr")
        if len(config.bits) != 1:
            raise ValueError(f"Tuning trains one code length. Received: bits={config.bits}")
        self.data = load_run_data(config)
        shape, train = self.data.dataset.image_shape, self.data.split.train
        self.overrides = parse_overrides(search_space)
        self.config = with_batch_size(self.data.config, shape, len(train))
        if self.data.dataset.labels is None or len(self.data.split.validation) == 0:
            raise ValueError(
                f"Tuning scores trials by val_map, which needs labels and a validation split; "
                f"{config.dataset} has none."
            )
        self.frozen = None
        if self.config.model.student_mode == "frozen":
            if features_dir is None:
                raise ValueError("The frozen student's trials need a features_dir to cache in.")
            self.frozen = prepare_frozen(self.config, self.data, features_dir, progress=True)
        self._wta: tuple[WTAConfig, WTAStructure] | None = None

    def build(self, hp: keras_tuner.HyperParameters) -> HarrModel:
        space = SpaceDeclarer(hp, self.config, self.overrides)
        values = {
            "bcr_weight": space.float("bcr_weight", 0.1, 4.0, log=True),  # η₁
            "quantization_weight": space.float("quantization_weight", 0.05, 2.0, log=True),  # η₂
            "temperature": space.float("temperature", 0.03, 0.5, log=True),  # T
            "positive_fraction": space.float("positive_fraction", 0.01, 0.3, log=True),  # ρ
            "window": space.choice("window", [2, 4, 8, 16]),  # K
            "num_permutations": space.choice("num_permutations", [128, 256, 512, 1024]),  # P
            "learning_rate": space.float("learning_rate", 0.005, 0.2, log=True),
            "beta_growth": space.float("beta_growth", 0.0, 0.5),  # β schedule
            "batch_size": space.choice("batch_size", [64, 128, 256]),  # read again by `fit`
        }
        config = with_values(self.config, values)
        keras.utils.set_random_seed(config.seed)  # trials differ by their values only
        wta = self.wta_structure(config)
        return training_model(config, config.bits[0], self.data, wta, frozen=self.frozen)

    def fit(
        self,
        hp: keras_tuner.HyperParameters,
        model: HarrModel,
        callbacks: list | None = None,
        epochs: int | None = None,
        initial_epoch: int = 0,
        verbose: int = 1,
    ) -> dict[str, float]:
        """Trains `model` as `train.py` would for the trial's budget (Hyperband passes
        `epochs` and `initial_epoch`) with the trial's batch size; returns `val_map` and
        the last epoch's losses.

        Under a tuner, the trial checkpoints each epoch into `trial_ID/checkpoint`, and
        a trial run again (an interrupted search resumed) continues from it. Called
        without a tuner's callbacks, it keeps no checkpoint.

        Raises `keras_tuner.errors.FailedTrialError` when the loss becomes NaN/inf, so
        the trial is recorded as failed and the search goes on.
        """
        config = self.trial_config(hp)
        callbacks = list(callbacks or [])
        directory = trial_directory(callbacks)
        training = assemble_training(
            config,
            self.data,
            self.wta_structure(config),
            model,
            os.path.join(directory, "checkpoint") if directory else None,
            start_epoch=initial_epoch,
            epochs=epochs,
            callbacks=callbacks,  # after `val_map` enters the logs
            frozen=self.frozen,
        )
        logs = training.fit(verbose)
        if training.guard.failed_epoch is not None:
            raise keras_tuner.errors.FailedTrialError(
                f"The loss became NaN/inf in epoch {training.guard.failed_epoch + 1}: "
                + _describe(hp.values)
            )
        validation = training.validation
        if validation.last_map is None:  # restored at its last epoch: score what it restored
            validation.evaluate(model.encoder)
        return {**logs, "val_map": validation.last_map}

    def trial_config(self, hp: keras_tuner.HyperParameters) -> TrainConfig:
        """The base configuration with the trial's values."""
        return with_values(self.config, hp.values)

    def wta_structure(self, config: TrainConfig) -> WTAStructure:
        """The WTA structure of the training images for `config.wta` (the last one built
        is kept, since `build` and `fit` of a trial need the same)."""
        wta = config.wta
        if self._wta is None or self._wta[0] != wta:
            data = self.data
            features = None
            if self.frozen is not None and wta.features == "backbone":
                features = self.frozen.train  # the frozen backbone's, cached
            structure = build_wta_structure(data.dataset, data.split.train, config, False, features)
            self._wta = (wta, structure)
        return self._wta[1]


def trial_directory(callbacks: list) -> str | None:
    """The directory of the trial whose callbacks these are: KerasTuner tells
    `HyperModel.fit` its trial only through the callback reporting to the tuner."""
    for callback in callbacks:
        tuner, trial = getattr(callback, "tuner", None), getattr(callback, "trial", None)
        if tuner is not None and trial is not None:
            return tuner.get_trial_dir(trial.trial_id)
    return None


def _describe(values: dict) -> str:
    return ", ".join(f"{name}={value:.4g}" for name, value in values.items() if name in SETTINGS)
