"""Training one code length: its batch and length, the compiled model, the stream of
views it reads, and `fit` with the checkpoint, NaN guard, validation and TensorBoard.

`harr_tf.run` calls it once per code length; the tuner builds its trials from the same
parts, so a trial trains exactly as `train.py` does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from harr_tf.callbacks import (
    BetaSchedule,
    LastGoodCheckpoint,
    RetrievalEvaluation,
    StopOnNonFiniteLoss,
    WTARefresh,
)
from harr_tf.config import TrainConfig
from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.image_size import default_batch_sizes
from harr_tf.data.pipeline import training_dataset
from harr_tf.distribute import is_chief, synchronize_batch_norm, work_around_keras_multi_worker
from harr_tf.encoder import build_encoder
from harr_tf.frozen import (
    FrozenFeatures,
    feature_stream,
    head_encoder,
    pixel_encoder,
    start_from_itq,
)
from harr_tf.memory_budget import (
    budget_bytes,
    default_budget_gb,
    network_name,
    set_budget,
    training_does_not_fit,
)
from harr_tf.model import HarrModel
from harr_tf.run_data import RunData, WTAStructure
from harr_tf.wta import WTASimilarity

logger = logging.getLogger("harr_tf")

# Fashion-MNIST's default budget (30 epochs of 39 batches): every dataset gets as many
# updates unless --epochs or --steps says otherwise.
DEFAULT_STEPS = 1170
# The frozen student's default batch: cached features cost nothing to hold, and the
# contrastive loss sees more negatives per step.
FROZEN_BATCH = 256


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def with_batch_size(
    config: TrainConfig, image_shape, train_items: int | None = None
) -> TrainConfig:
    """`config` with its memory budget, training batch and inference batch resolved for
    `image_shape` (`default_batch_sizes`; a frozen student's batch, at most
    `train_items`), so the run directory stores what it ran at; the budget becomes the
    process's (`set_budget`)."""
    budget = config.memory_budget or default_budget_gb()
    set_budget(budget)
    batch_size = config.batch_size
    if config.model.student_mode == "frozen" and batch_size is None:
        # The head's batch holds features, not images: no memory rule, and no larger
        # than the training set (a power of two).
        largest = 2 ** (max(train_items or FROZEN_BATCH, 16).bit_length() - 1)
        batch_size = min(FROZEN_BATCH, largest)
    batch_size, encode_batch_size = default_batch_sizes(
        image_shape, config.model, batch_size, config.encode_batch_size, budget_bytes(budget)
    )
    return dataclasses.replace(
        config,
        batch_size=batch_size,
        encode_batch_size=encode_batch_size,
        memory_budget=budget,
    )


def validation_callback(data: RunData, config: TrainConfig) -> RetrievalEvaluation | None:
    """`val_map` of validation queries against a seeded sample of the rest of the database."""
    if data.dataset.labels is None or len(data.split.validation) == 0:
        return None
    rest = np.setdiff1d(data.split.database, data.split.validation)
    rng = np.random.default_rng(config.seed)
    if len(rest) > config.validation_database_size:
        rest = np.sort(rng.choice(rest, config.validation_database_size, replace=False))
    return RetrievalEvaluation(
        data.dataset,
        data.split.validation,
        rest,
        top_k=data.top_k,
        every=config.eval_every,
        batch_size=config.encode_batch_size,
    )


def training_length(config: TrainConfig, train_items: int) -> tuple[int, int]:
    """`(epochs, steps_per_epoch)`: `--epochs` as given, else `--steps` (default
    `DEFAULT_STEPS`) rounded up to whole epochs; an epoch is one pass over the
    training images (rounded down to whole calls of `--steps-per-execution`) unless
    `--steps-per-epoch` says otherwise. Keras runs an epoch in whole calls, so the
    steps of an epoch must be a multiple of the steps per call."""
    multiple = config.steps_per_execution
    passes = max(1, train_items // config.batch_size // multiple) * multiple
    per_epoch = config.steps_per_epoch or passes
    epochs = config.epochs
    if epochs is None:
        steps = config.steps or DEFAULT_STEPS
        per_epoch = min(per_epoch, steps)
        epochs = math.ceil(steps / per_epoch)
    if per_epoch % multiple:
        raise ValueError(
            f"The steps of an epoch ({per_epoch}) must be a multiple of "
            f"steps_per_execution ({multiple}): Keras runs whole calls of that many steps. "
            "Change --steps-per-epoch, --steps or --steps-per-execution."
        )
    return epochs, per_epoch


def new_model(
    config: TrainConfig,
    bits: int,
    image_shape,
    wta: WTAStructure,
    encoder: keras.Model | None = None,
) -> HarrModel:
    """A compiled HarrModel with the configured losses and optimizer, training `encoder`
    (default: the configured backbone and hash head)."""
    thresholds = wta.thresholds
    model = HarrModel(
        encoder or build_encoder(image_shape, bits, config.model),
        WTASimilarity(thresholds.tau, thresholds.s_max, thresholds.s_min, config.wta.window),
        temperature=config.loss.temperature,
        bcr_weight=config.loss.bcr_weight,
        quantization_weight=config.loss.quantization_weight,
        off_diagonal_weight=config.loss.off_diagonal_weight,
        include_self=config.loss.include_self,
        similarity_weight=config.loss.similarity_weight,
        guidance=config.loss.guidance,
        backbone_lr_multiplier=(
            1.0 if config.model.student_weights == "none" else config.model.backbone_lr_multiplier
        ),
    )
    epochs, steps = training_length(config, len(wta.codes))
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=epochs * steps
    )
    optimizer = keras.optimizers.SGD(
        schedule, momentum=config.momentum, weight_decay=config.weight_decay
    )
    model.compile(optimizer=optimizer, steps_per_execution=config.steps_per_execution)
    return model


def training_stream(
    config: TrainConfig,
    data: RunData,
    wta: WTAStructure,
    views: tuple[str, ...],
    start_epoch: int = 0,
) -> tuple[tf.data.Dataset, tf.Variable]:
    """Endless batches of `views` (the model's) of the training images with their WTA
    codes (`"wta"`, read from the returned variable, which `WTARefresh` may reassign),
    starting after `start_epoch` epochs."""
    augmenter = ViewAugmenter(
        data.dataset.image_shape, config.augment, seed=config.seed, views=views
    )
    _, per_epoch = training_length(config, len(wta.codes))
    stream = training_dataset(
        data.dataset,
        data.split.train,
        augmenter,
        config.batch_size,
        seed=config.seed,
        start_step=start_epoch * per_epoch,
    )
    codes = tf.Variable(wta.codes, trainable=False)
    stream = stream.map(lambda batch: {**batch, "wta": tf.gather(codes, batch["index"])})
    return stream, codes


def train_code_length(
    config: TrainConfig,
    bits: int,
    data: RunData,
    wta: WTAStructure,
    directory: str,
    verbose: int,
    strategy: tf.distribute.Strategy | None = None,
    frozen: FrozenFeatures | None = None,
) -> tuple[keras.Model, float]:
    """Trains (or resumes) one model under `strategy` (default: none); returns its
    encoder and the training seconds. `fit` gets the global batch: Keras splits it
    over the replicas, and the losses gather it back (`HarrModel`). With `frozen`, the
    hash head trains on the cached features (starting from ITQ on them) and the encoder
    returned is the frozen backbone with that head.

    The checkpoint (weights and optimizer) is `directory/checkpoint`: only the chief
    writes it, every worker restores from it, so under multi-worker it must be on
    storage all workers see."""
    checkpoints = os.path.join(directory, "checkpoint")
    done = LastGoodCheckpoint.completed_epochs(checkpoints)
    if done:
        logger.info("Resuming %d-bit model after epoch %d", bits, done)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        head = None
        if frozen is not None:
            head = head_encoder(frozen.train.shape[1], bits, config.model.beta)
            start_from_itq(head, frozen.train, config.seed)
        model = new_model(config, bits, data.dataset.image_shape, wta, head)
        # Its variables are made here, in the scope, before the checkpoint is restored.
        model.optimizer.build(model.trainable_variables)
        if strategy.num_replicas_in_sync > 1:
            synchronize_batch_norm(model.encoder)
    work_around_keras_multi_worker(model, strategy)
    epochs, steps = training_length(config, len(wta.codes))
    if frozen is None:
        stream, codes = training_stream(config, data, wta, model.views, start_epoch=done)
    else:
        stream = feature_stream(
            frozen.views, wta.codes, frozen.names, config.batch_size, config.seed, done * steps
        )
    refresh = None
    if config.wta.refresh_every and frozen is None:
        every = config.wta.refresh_every
        refresh = WTARefresh(
            data.dataset, data.split.train, codes, config.wta, config.seed, every, done
        )
    checkpoint = LastGoodCheckpoint(checkpoints, write=is_chief(strategy))
    guard = StopOnNonFiniteLoss()
    callbacks = [
        checkpoint,  # first: it restores the weights the others then see
        refresh,
        BetaSchedule(config.model.beta, config.model.beta_growth),
        guard,
        validation_callback(data, config) if frozen is None else None,
        keras.callbacks.TensorBoard(os.path.join(directory, "logs")),
    ]
    start = time.perf_counter()
    if done < epochs:
        try:
            model.fit(
                stream,
                epochs=epochs,
                initial_epoch=done,
                steps_per_epoch=steps,
                shuffle=False,  # the stream shuffles itself
                callbacks=[c for c in callbacks if c is not None],
                verbose=verbose,
            )
        except tf.errors.ResourceExhaustedError:
            name = network_name(model.encoder)
            raise training_does_not_fit(name, bits, config.batch_size) from None
    else:  # trained to the end, stopped before the encoder was saved: restore only
        checkpoint.set_model(model)
        checkpoint.on_train_begin()
    seconds = time.perf_counter() - start
    if guard.failed_epoch is not None:
        kept = checkpoint.completed_epochs(checkpoints)
        raise TrainingDiverged(
            f"The {bits}-bit model's loss became NaN/inf in epoch {guard.failed_epoch + 1}. "
            + (
                f"The last good checkpoint, after epoch {kept}, is kept in {checkpoints}"
                if kept
                else "No epoch had ended with a finite loss, so there is no checkpoint"
            )
            + "; lower --learning-rate or the loss weights and run again with --resume."
        )
    if frozen is not None:
        return pixel_encoder(frozen.backbone, model.encoder), seconds
    return model.encoder, seconds
