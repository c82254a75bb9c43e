"""One HARR run end to end: data and split, WTA structure, one model per code length,
evaluation on the query set, and the run directory (DESIGN §5).

Images are streamed from the dataset's reader wherever they are needed (training
views, the WTA teacher, the baselines, the evaluation and the plots); the run holds
only ids, labels, WTA codes and hash codes for the whole collection.
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
import yaml
from tqdm import tqdm

from harr_tf import report
from harr_tf.atomic import write_json_atomically
from harr_tf.backbones import build_backbone
from harr_tf.baselines import evaluate_baselines
from harr_tf.callbacks import (
    BetaSchedule,
    LastGoodCheckpoint,
    RetrievalEvaluation,
    StopOnNonFiniteLoss,
    WTARefresh,
)
from harr_tf.config import TrainConfig, to_dict
from harr_tf.data import ImageDataset, ProtocolSplit, get_protocol, load_dataset, make_split
from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.image_size import resolve_image_size, training_batch_size
from harr_tf.data.pipeline import training_dataset
from harr_tf.distribute import is_chief, synchronize_batch_norm, work_around_keras_multi_worker
from harr_tf.encoder import build_encoder, encode_images
from harr_tf.features import pixel_features, wta_codes
from harr_tf.layers import sign_codes
from harr_tf.model import HarrModel
from harr_tf.pretrain import check_pretrained_weights
from harr_tf.resume import check_same_split
from harr_tf.retrieval import asymmetric_mean_average_precision, evaluate
from harr_tf.wta import WTASimilarity, WTAThresholds, estimate_thresholds

logger = logging.getLogger("harr_tf")

# Fashion-MNIST's default budget (30 epochs of 39 batches): every dataset gets as many
# updates unless --epochs or --steps says otherwise.
DEFAULT_STEPS = 1170
# The baselines hash pixels at most this many on a side (d <= 3,072): PCA and ITQ on
# 64 x 64 x 3 = 12,288 dimensions cost minutes and GBs for no better yardstick.
BASELINE_SIDE = 32
_CHUNK = 2048


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class RunData:
    """The images, the protocol split and what the split's K is."""

    dataset: ImageDataset
    split: ProtocolSplit
    top_k: int | None


@dataclasses.dataclass(frozen=True)
class WTAStructure:
    """WTA codes of the training images (aligned with `split.train`) and thresholds."""

    table: np.ndarray
    codes: np.ndarray
    thresholds: WTAThresholds


def with_batch_size(config: TrainConfig, image_shape) -> TrainConfig:
    """`config` with its batch size resolved for `image_shape` (`training_batch_size`),
    so the run directory stores the batch trained at."""
    return dataclasses.replace(
        config, batch_size=training_batch_size(image_shape, config.batch_size)
    )


def load_run_data(config: TrainConfig) -> RunData:
    """Opens the dataset at the network's image size and draws the protocol split
    (`train_size`, `queries_per_class` and `validation_per_class` override it)."""
    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    size = resolve_image_size(config.image_size, dataset.native_size, config.model.backbone)
    dataset = dataset.at_size(size)
    protocol = get_protocol(config.protocol)
    overrides = {
        "query_per_class": config.queries_per_class,
        "validation_per_class": config.validation_per_class,
    }
    protocol = dataclasses.replace(
        protocol, **{key: value for key, value in overrides.items() if value is not None}
    )
    size = config.train_size
    if size is not None:
        everything = size == "all"
        if dataset.labels is None:
            protocol = dataclasses.replace(protocol, unlabeled_train=None if everything else size)
        elif dataset.multi_label:
            # Training takes up to this many of the items the queries leave.
            asked = dataset.num_items if everything else size
            protocol = dataclasses.replace(protocol, multi_label_train=asked)
        else:
            classes = len(np.unique(dataset.labels))
            per_class = None if everything else max(1, size // classes)
            protocol = dataclasses.replace(protocol, train_per_class=per_class)
    split = make_split(dataset.labels, dataset.num_items, protocol, seed=config.seed)
    logger.info(
        "%s: %d images read at %s; %d queries, %d database, %d training, %d validation",
        dataset.name,
        dataset.num_items,
        "x".join(map(str, dataset.image_shape)),
        len(split.query),
        len(split.database),
        len(split.train),
        len(split.validation),
    )
    if len(split.class_counts):
        logger.info("Drawn per class:\n%s", split.describe(dataset.class_names))
    top_k = protocol.multi_label_top_k if dataset.multi_label else protocol.top_k
    return RunData(dataset, split, top_k)


def build_wta_structure(
    dataset: ImageDataset, indices: np.ndarray, config: TrainConfig, progress: bool = False
) -> WTAStructure:
    """WTA codes of the items `indices` under the configured feature source, and τ,
    s_max, s_min. The `backbone` source is the backbone as configured (its weights),
    seeded by `config.seed`, applied to the images at the evaluation transform."""
    wta = config.wta
    network = None
    if wta.features == "backbone":
        keras.utils.set_random_seed(config.seed)
        model = config.model
        network = build_backbone(
            model.backbone, dataset.image_shape, model.weights, model.width, model.pooling
        )
    table, codes = wta_codes(
        dataset,
        indices,
        wta.features,
        num_permutations=wta.num_permutations,
        window=wta.window,
        seed=config.seed,
        network=network,
        progress=progress,
        batch_size=config.encode_batch_size,
    )
    thresholds = estimate_thresholds(
        codes, wta.window, rho=wta.positive_fraction, max_pairs=wta.max_pairs, seed=config.seed
    )
    return WTAStructure(table, codes, thresholds)


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


def new_model(config: TrainConfig, bits: int, image_shape, wta: WTAStructure) -> HarrModel:
    """A compiled HarrModel with the configured backbone, losses and optimizer."""
    thresholds = wta.thresholds
    model = HarrModel(
        build_encoder(image_shape, bits, config.model),
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
) -> tuple[keras.Model, float]:
    """Trains (or resumes) one model under `strategy` (default: none); returns its
    encoder and the training seconds. `fit` gets the global batch: Keras splits it
    over the replicas, and the losses gather it back (`HarrModel`).

    The checkpoint (weights and optimizer) is `directory/checkpoint`: only the chief
    writes it, every worker restores from it, so under multi-worker it must be on
    storage all workers see."""
    checkpoints = os.path.join(directory, "checkpoint")
    done = LastGoodCheckpoint.completed_epochs(checkpoints)
    if done:
        logger.info("Resuming %d-bit model after epoch %d", bits, done)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = new_model(config, bits, data.dataset.image_shape, wta)
        # Its variables are made here, in the scope, before the checkpoint is restored.
        model.optimizer.build(model.trainable_variables)
        if strategy.num_replicas_in_sync > 1:
            synchronize_batch_norm(model.encoder)
    work_around_keras_multi_worker(model, strategy)
    epochs, steps = training_length(config, len(wta.codes))
    stream, codes = training_stream(config, data, wta, model.views, start_epoch=done)
    refresh = None
    if config.wta.refresh_every:
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
        validation_callback(data, config),
        keras.callbacks.TensorBoard(os.path.join(directory, "logs")),
    ]
    start = time.perf_counter()
    if done < epochs:
        model.fit(
            stream,
            epochs=epochs,
            initial_epoch=done,
            steps_per_epoch=steps,
            shuffle=False,  # the stream shuffles itself
            callbacks=[c for c in callbacks if c is not None],
            verbose=verbose,
        )
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
    return model.encoder, seconds


def baseline_maps(data: RunData, config: TrainConfig, progress: bool) -> dict:
    """`{method: {bits: mAP}}` of LSH, PCAH and ITQ on the pixels (at most
    `BASELINE_SIDE` on a side), each item read once per part of the split."""
    dataset = data.dataset
    if max(dataset.image_shape[:2]) > BASELINE_SIDE:
        dataset = dataset.at_size(BASELINE_SIDE)

    def features(indices: np.ndarray):
        batches = dataset.images(indices).batch(_CHUNK).prefetch(1).as_numpy_iterator()
        steps = -(-len(indices) // _CHUNK)
        for batch in tqdm(batches, "baselines", steps, unit="batch", disable=not progress):
            yield pixel_features(batch)

    found = evaluate_baselines(
        features, dataset.labels, data.split, config.bits, data.top_k, seed=config.seed
    )
    return {method: {str(b): value for b, value in maps.items()} for method, maps in found.items()}


def run(
    config: TrainConfig,
    run_dir: str,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Trains every code length of `config` in `run_dir` (resuming what is there) under
    `strategy` (`harr_tf.distribute`; default: none) and writes `metrics.json` and the
    plots; returns the metrics."""
    data = load_run_data(config)
    config = with_batch_size(config, data.dataset.image_shape)
    if os.path.isfile(config.model.weights):
        check_pretrained_weights(config.model.weights, config.dataset, data.dataset.image_shape)
    os.makedirs(run_dir, exist_ok=True)
    check_same_split(os.path.join(run_dir, "split.npz"), data.split)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
    data.split.save(os.path.join(run_dir, "split.npz"))
    logger.info("Data: %s from %s", data.dataset.name, data.dataset.source)
    progress = verbose > 0
    wta = build_wta_structure(data.dataset, data.split.train, config, progress)
    np.savez(
        os.path.join(run_dir, "wta.npz"),
        table=wta.table,
        codes=wta.codes,
        **dataclasses.asdict(wta.thresholds),
    )
    metrics_path = os.path.join(run_dir, "metrics.json")
    metrics = report.read_metrics(metrics_path, config, data.top_k)
    labels = data.dataset.labels
    evaluated = labels is not None and len(data.split.query) > 0
    if labels is None:
        logger.warning("%s has no labels: the evaluation is skipped.", config.dataset)
    elif not evaluated:
        logger.warning("No class has the 10 items a query needs: the evaluation is skipped.")
    baselines = baseline_maps(data, config, progress) if evaluated else {}
    for bits in config.bits:
        directory = os.path.join(run_dir, f"bits_{bits}")
        encoder, seconds = train_code_length(config, bits, data, wta, directory, verbose, strategy)
        encoder.save(os.path.join(directory, "encoder.keras"))
        if not evaluated:
            continue
        batch = config.encode_batch_size
        query_continuous = encode_images(
            encoder, data.dataset.images(data.split.query), batch, progress, continuous=True
        )
        query_codes = keras.ops.convert_to_numpy(sign_codes(query_continuous))
        database_codes = encode_images(
            encoder, data.dataset.images(data.split.database), batch, progress
        )
        result = evaluate(
            query_codes,
            database_codes,
            labels[data.split.query],
            labels[data.split.database],
            top_k=data.top_k,
        )
        # The database stays binary; ranking it by ⟨h_query, b⟩ is the asymmetric distance.
        result["map_asymmetric"] = asymmetric_mean_average_precision(
            query_continuous,
            database_codes,
            labels[data.split.query],
            labels[data.split.database],
            top_k=data.top_k,
        )
        result["train_seconds"] = seconds + metrics["results"].get(str(bits), {}).get(
            "train_seconds", 0.0
        )
        metrics["results"][str(bits)] = result
        for method, maps in baselines.items():
            metrics["baselines"].setdefault(method, {})[str(bits)] = maps[str(bits)]
        report.write_plots(
            run_dir,
            bits,
            result,
            data.dataset.read,
            data.split,
            query_codes,
            database_codes,
            labels=data.dataset.labels,
        )
        write_json_atomically(metrics_path, metrics)
    return metrics
