"""One model's training as `train.py` and each tuner trial run it, so a trial honours
every setting a run does: the model built for a strategy (`training_model`), then its
stream and callbacks from a `TrainConfig` (`assemble_training`): the checkpoint, the
WTA refresh, the β schedule, the NaN guard and `val_map`. A caller adds only where the
checkpoint goes, where training starts and ends, and its own callbacks.

`train_code_length` trains one code length of a run with them; `tuning.hypermodel`
trains a trial, checkpointing into the trial's directory.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import keras
import tensorflow as tf

from harr_tf.callbacks import (
    BetaSchedule,
    LastGoodCheckpoint,
    RetrievalEvaluation,
    StopOnNonFiniteLoss,
    WTARefresh,
)
from harr_tf.config import TrainConfig
from harr_tf.distribute import is_chief, synchronize_batch_norm, work_around_keras_multi_worker
from harr_tf.frozen import (
    FrozenFeatures,
    feature_stream,
    head_encoder,
    pixel_encoder,
    start_from_itq,
)
from harr_tf.frozen_validation import better_head, feature_evaluation
from harr_tf.memory_budget import network_name, training_does_not_fit
from harr_tf.model import HarrModel
from harr_tf.run_data import RunData, WTAStructure
from harr_tf.run_directory import LengthDirectory
from harr_tf.training import (
    TrainingDiverged,
    new_model,
    training_length,
    training_stream,
    validation_callback,
)

logger = logging.getLogger("harr_tf")


def training_model(
    config: TrainConfig,
    bits: int,
    data: RunData,
    wta: WTAStructure,
    strategy: tf.distribute.Strategy | None = None,
    frozen: FrozenFeatures | None = None,
) -> HarrModel:
    """`new_model` in `strategy`'s scope (default: none) with its optimizer's variables,
    so a checkpoint restores into it. With `frozen`, the model trains the hash head on
    the cached features, starting from ITQ on them."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        head = None
        if frozen is not None:
            head = head_encoder(frozen.train.shape[1], bits, config.model.beta)
            start_from_itq(head, frozen.train, config.seed)
        model = new_model(config, bits, data.dataset.image_shape, wta, head)
        model.optimizer.build(model.trainable_variables)
        if strategy.num_replicas_in_sync > 1:
            synchronize_batch_norm(model.encoder)
    work_around_keras_multi_worker(model, strategy)
    return model


@dataclasses.dataclass
class Training:
    """A model's training as `train.py` and each tuner trial run it (`assemble_training`)."""

    model: HarrModel
    stream: tf.data.Dataset
    epochs: int
    steps: int
    start_epoch: int
    callbacks: list[keras.callbacks.Callback]
    checkpoint: LastGoodCheckpoint | None
    guard: StopOnNonFiniteLoss
    validation: RetrievalEvaluation | None

    def fit(self, verbose: int) -> dict[str, float]:
        """Trains from `start_epoch` to `epochs`; returns the last epoch's logs. When the
        checkpoint already holds every epoch (stopped before what follows training),
        restores it only and returns `{}`."""
        if self.start_epoch >= self.epochs:
            self.checkpoint.set_model(self.model)
            self.checkpoint.on_train_begin()
            return {}
        history = self.model.fit(
            self.stream,
            epochs=self.epochs,
            initial_epoch=self.start_epoch,
            steps_per_epoch=self.steps,
            shuffle=False,  # the stream shuffles itself
            callbacks=self.callbacks,
            verbose=verbose,
        )
        return {name: values[-1] for name, values in history.history.items()}


def assemble_training(
    config: TrainConfig,
    data: RunData,
    wta: WTAStructure,
    model: HarrModel,
    checkpoints: str | None,
    start_epoch: int = 0,
    epochs: int | None = None,
    callbacks: list | tuple = (),
    strategy: tf.distribute.Strategy | None = None,
    frozen: FrozenFeatures | None = None,
) -> Training:
    """The stream and callbacks that train `model` (`training_model`) by `config`: the
    checkpoint in `checkpoints` (restored first; None: none kept), `WTARefresh` every
    `wta.refresh_every` epochs, the β schedule, the NaN guard, `val_map`, then
    `callbacks`, which read it. Training starts after `start_epoch` or the checkpoint's
    epochs, whichever is later, and ends after `epochs` (default: the config's)."""
    budget, steps = training_length(config, len(wta.codes))
    done = LastGoodCheckpoint.completed_epochs(checkpoints) if checkpoints else 0
    done = max(done, start_epoch)
    refresh = validation = None
    if frozen is None:
        stream, codes = training_stream(config, data, wta, model.views, start_epoch=done)
        every = config.wta.refresh_every
        if every:
            train = data.split.train
            refresh = WTARefresh(data.dataset, train, codes, config.wta, config.seed, every, done)
        validation = validation_callback(data, config)
    else:
        stream = feature_stream(
            frozen.views, wta.codes, frozen.names, config.batch_size, config.seed, done * steps
        )
        validation = feature_evaluation(frozen, data, config, progress=False)
    checkpoint = None
    if checkpoints:
        chief = is_chief(strategy or tf.distribute.get_strategy())
        checkpoint = LastGoodCheckpoint(checkpoints, write=chief)
    guard = StopOnNonFiniteLoss()
    beta = BetaSchedule(config.model.beta, config.model.beta_growth)
    # The checkpoint first: it restores the weights the others then see.
    chain = [checkpoint, refresh, beta, guard, validation, *callbacks]
    return Training(
        model=model,
        stream=stream,
        epochs=epochs or budget,
        steps=steps,
        start_epoch=done,
        callbacks=[c for c in chain if c is not None],
        checkpoint=checkpoint,
        guard=guard,
        validation=validation,
    )


def train_code_length(
    config: TrainConfig,
    bits: int,
    data: RunData,
    wta: WTAStructure,
    directory: LengthDirectory,
    verbose: int,
    strategy: tf.distribute.Strategy | None = None,
    frozen: FrozenFeatures | None = None,
) -> tuple[keras.Model, float]:
    """Trains (or resumes) one model under `strategy` (default: none); returns its
    encoder and the training seconds. `fit` gets the global batch: Keras splits it
    over the replicas, and the losses gather it back (`HarrModel`). With `frozen`, the
    encoder returned is the frozen backbone with the trained head.

    The checkpoint (weights and optimizer) is `directory.checkpoint`: only the chief
    writes it, every worker restores from it, so under multi-worker it must be on
    storage all workers see."""
    checkpoints = str(directory.checkpoint)
    model = training_model(config, bits, data, wta, strategy, frozen)
    logs = keras.callbacks.TensorBoard(str(directory.logs))
    training = assemble_training(
        config, data, wta, model, checkpoints, callbacks=[logs], strategy=strategy, frozen=frozen
    )
    if training.start_epoch:
        logger.info("Resuming %d-bit model after epoch %d", bits, training.start_epoch)
    start = time.perf_counter()
    try:
        training.fit(verbose)
    except tf.errors.ResourceExhaustedError:
        name = network_name(model.encoder)
        raise training_does_not_fit(name, bits, config.batch_size) from None
    seconds = time.perf_counter() - start
    failed = training.guard.failed_epoch
    if failed is not None:
        kept = LastGoodCheckpoint.completed_epochs(checkpoints)
        raise TrainingDiverged(
            f"The {bits}-bit model's loss became NaN/inf in epoch {failed + 1}. "
            + (
                f"The last good checkpoint, after epoch {kept}, is kept in {checkpoints}"
                if kept
                else "No epoch had ended with a finite loss, so there is no checkpoint"
            )
            + "; lower --learning-rate or the loss weights and run again with --resume."
        )
    if frozen is not None:
        validation = training.validation  # scored the last epoch, unless restored only
        head = better_head(
            model.encoder, frozen, validation, config, validation and validation.last_map
        )
        return pixel_encoder(frozen.backbone, head), seconds
    return model.encoder, seconds
