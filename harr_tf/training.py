"""The parts of one model's training: the batch and budget a run resolves, the compiled
model, the stream of views it reads and the validation score.

`harr_tf.training_assembly` puts them together, for `train.py` and each tuner trial alike.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from harr_tf.callbacks import RetrievalEvaluation
from harr_tf.config import TrainConfig
from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.image_size import default_batch_sizes
from harr_tf.data.pipeline import training_dataset
from harr_tf.encoder import build_encoder
from harr_tf.memory_budget import budget_bytes, default_budget_gb, set_budget
from harr_tf.model import HarrModel
from harr_tf.run_data import RunData, WTAStructure
from harr_tf.wta import WTASimilarity

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


def validation_sets(data: RunData, config: TrainConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The validation queries (drawn from the database, never the protocol's queries) and
    the seeded sample of the rest of the database they are ranked against; None without
    labels or validation queries."""
    if data.dataset.labels is None or len(data.split.validation) == 0:
        return None
    rest = np.setdiff1d(data.split.database, data.split.validation)
    rng = np.random.default_rng(config.seed)
    if len(rest) > config.validation_database_size:
        rest = np.sort(rng.choice(rest, config.validation_database_size, replace=False))
    return data.split.validation, rest


def validation_callback(data: RunData, config: TrainConfig) -> RetrievalEvaluation | None:
    """`val_map` of the validation queries against their sample of the database."""
    sets = validation_sets(data, config)
    if sets is None:
        return None
    return RetrievalEvaluation(
        data.dataset,
        *sets,
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
