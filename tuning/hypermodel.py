"""HarrHyperModel: HARR's loss weights, WTA structure and optimisation as a KerasTuner
search space, trained and scored by `val_map` on the validation split (DESIGN §3)."""

from __future__ import annotations

import keras
import keras_tuner

from harr_tf.callbacks import BetaSchedule, StopOnNonFiniteLoss
from harr_tf.config import TrainConfig, WTAConfig
from harr_tf.model import HarrModel
from harr_tf.run_data import WTAStructure, build_wta_structure, load_run_data
from harr_tf.training import (
    new_model,
    training_length,
    training_stream,
    validation_callback,
    with_batch_size,
)
from tuning.space import SETTINGS, SpaceDeclarer, parse_overrides, with_values

OBJECTIVE = keras_tuner.Objective("val_map", direction="max")


class HarrHyperModel(keras_tuner.HyperModel):
    """Builds and trains one HARR model per trial; `fit` returns the trial's `val_map`.

    `val_map` is mAP@K of the validation queries (drawn from the database) against a
    sample of the rest of the database, after the trial's last epoch; the protocol's
    query set is never used. The data are loaded once; the WTA structure is rebuilt
    only when its settings (P, K, ρ) change.

    Args:
        config: the base configuration of every trial, with one code length in
            `bits`; its values are the defaults of the search space, so
            `TrainConfig()` gives `train.py`'s defaults.
        search_space: the `search_space:` mapping of a config file, fixing or
            narrowing hyperparameters (see `tuning.space`). Defaults to None.
    """

    def __init__(self, config: TrainConfig, search_space: dict | None = None) -> None:
        super().__init__(name="harr")
        if len(config.bits) != 1:
            raise ValueError(f"Tuning trains one code length. Received: bits={config.bits}")
        self.overrides = parse_overrides(search_space)
        self.data = load_run_data(config)
        self.config = with_batch_size(config, self.data.dataset.image_shape)
        if self.data.dataset.labels is None or len(self.data.split.validation) == 0:
            raise ValueError(
                f"Tuning scores trials by val_map, which needs labels and a validation split; "
                f"{config.dataset} has none."
            )
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
        image_shape = self.data.dataset.image_shape
        return new_model(config, config.bits[0], image_shape, self.wta_structure(config))

    def fit(
        self,
        hp: keras_tuner.HyperParameters,
        model: HarrModel,
        callbacks: list | None = None,
        epochs: int | None = None,
        initial_epoch: int = 0,
        verbose: int = 1,
    ) -> dict[str, float]:
        """Trains `model` for the trial's budget (Hyperband passes `epochs` and
        `initial_epoch`) with the trial's batch size; returns `val_map` and the last loss.

        Raises `keras_tuner.errors.FailedTrialError` when the loss becomes NaN/inf, so
        the trial is recorded as failed and the search goes on.
        """
        config = self.trial_config(hp)
        wta = self.wta_structure(config)
        stream, _ = training_stream(config, self.data, wta, model.views, start_epoch=initial_epoch)
        guard = StopOnNonFiniteLoss()
        validation = validation_callback(self.data, config)
        budget, steps = training_length(config, len(wta.codes))
        history = model.fit(
            stream,
            epochs=epochs or budget,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            shuffle=False,  # the stream shuffles itself
            # `val_map` enters the logs before the tuner's callbacks read them.
            callbacks=[
                BetaSchedule(config.model.beta, config.model.beta_growth),
                guard,
                validation,
                *(callbacks or []),
            ],
            verbose=verbose,
        )
        if guard.failed_epoch is not None:
            raise keras_tuner.errors.FailedTrialError(
                f"The loss became NaN/inf in epoch {guard.failed_epoch + 1}: {_describe(hp.values)}"
            )
        return {"val_map": validation.last_map, "loss": history.history["loss"][-1]}

    def trial_config(self, hp: keras_tuner.HyperParameters) -> TrainConfig:
        """The base configuration with the trial's values."""
        return with_values(self.config, hp.values)

    def wta_structure(self, config: TrainConfig) -> WTAStructure:
        """The WTA structure of the training images for `config.wta` (the last one built
        is kept, since `build` and `fit` of a trial need the same)."""
        wta = config.wta
        if self._wta is None or self._wta[0] != wta:
            data = self.data
            self._wta = (wta, build_wta_structure(data.dataset, data.split.train, config))
        return self._wta[1]


def _describe(values: dict) -> str:
    return ", ".join(f"{name}={value:.4g}" for name, value in values.items() if name in SETTINGS)
