"""One HARR run end to end: data and split, WTA structure, one model per code length,
evaluation on the query set, and the run directory (DESIGN §5)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf
import yaml

from harr_tf import report
from harr_tf.atomic import write_json_atomically
from harr_tf.baselines import METHODS, evaluate_baseline
from harr_tf.callbacks import (
    BetaSchedule,
    ResumableCheckpoint,
    RetrievalEvaluation,
    StopOnNonFiniteLoss,
    WTARefresh,
)
from harr_tf.config import TrainConfig, to_dict
from harr_tf.data import ImageDataset, ProtocolSplit, get_protocol, load_dataset, make_split
from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.pipeline import training_dataset
from harr_tf.encoder import build_encoder, encode_images
from harr_tf.features import pixel_features, wta_features
from harr_tf.model import HarrModel
from harr_tf.resume import check_same_split
from harr_tf.retrieval import evaluate
from harr_tf.wta import (
    WTASimilarity,
    WTAThresholds,
    encode_wta,
    estimate_thresholds,
    make_permutation_table,
)

logger = logging.getLogger("harr_tf")


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


def load_run_data(config: TrainConfig) -> RunData:
    """Loads the dataset and draws the protocol split (`train_size` overrides it)."""
    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    protocol = get_protocol(config.protocol)
    size = config.train_size
    if size is not None:
        everything = size == "all"
        if dataset.labels is None:
            protocol = dataclasses.replace(protocol, unlabeled_train=None if everything else size)
        elif dataset.multi_label:
            rest = dataset.num_items - protocol.multi_label_query - protocol.multi_label_validation
            protocol = dataclasses.replace(protocol, multi_label_train=rest if everything else size)
        else:
            classes = len(np.unique(dataset.labels))
            per_class = None if everything else max(1, size // classes)
            protocol = dataclasses.replace(protocol, train_per_class=per_class)
    split = make_split(dataset.labels, dataset.num_items, protocol, seed=config.seed)
    top_k = protocol.multi_label_top_k if dataset.multi_label else protocol.top_k
    return RunData(dataset, split, top_k)


def build_wta_structure(train_images: np.ndarray, config: TrainConfig) -> WTAStructure:
    """WTA codes of the training images' configured features, and τ, s_max, s_min."""
    wta = config.wta
    features = wta_features(train_images, wta.features)
    table = make_permutation_table(
        features.shape[1], wta.num_permutations, wta.window, seed=config.seed
    )
    codes = encode_wta(features, table)
    thresholds = estimate_thresholds(
        codes, wta.window, rho=wta.positive_fraction, max_pairs=wta.max_pairs, seed=config.seed
    )
    return WTAStructure(table, codes, thresholds)


def validation_callback(data: RunData, config: TrainConfig) -> RetrievalEvaluation | None:
    """`val_map` of validation queries against a seeded sample of the rest of the database."""
    labels = data.dataset.labels
    if labels is None or len(data.split.validation) == 0:
        return None
    rest = np.setdiff1d(data.split.database, data.split.validation)
    rng = np.random.default_rng(config.seed)
    if len(rest) > config.validation_database_size:
        rest = np.sort(rng.choice(rest, config.validation_database_size, replace=False))
    images = data.dataset.images
    return RetrievalEvaluation(
        images[data.split.validation],
        labels[data.split.validation],
        images[rest],
        labels[rest],
        top_k=data.top_k,
        every=config.eval_every,
    )


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
            1.0 if config.model.weights == "none" else config.model.backbone_lr_multiplier
        ),
    )
    steps = steps_per_epoch(config, wta)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * steps
    )
    optimizer = keras.optimizers.SGD(
        schedule, momentum=config.momentum, weight_decay=config.weight_decay
    )
    model.compile(optimizer=optimizer)
    return model


def steps_per_epoch(config: TrainConfig, wta: WTAStructure) -> int:
    return config.steps_per_epoch or max(1, len(wta.codes) // config.batch_size)


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
    images = data.dataset.images[data.split.train]
    augmenter = ViewAugmenter(
        data.dataset.image_shape, config.augment, seed=config.seed + start_epoch, views=views
    )
    stream = training_dataset(
        images,
        np.arange(len(images)),
        augmenter,
        config.batch_size,
        seed=config.seed,
        start_step=start_epoch * steps_per_epoch(config, wta),
    )
    codes = tf.Variable(wta.codes, trainable=False)
    stream = stream.map(lambda batch: {**batch, "wta": tf.gather(codes, batch["index"])})
    return stream, codes


def train_code_length(
    config: TrainConfig, bits: int, data: RunData, wta: WTAStructure, directory: str, verbose: int
) -> tuple[keras.Model, float]:
    """Trains (or resumes) one model; returns its encoder and the training seconds."""
    checkpoints = os.path.join(directory, "checkpoint")
    done = ResumableCheckpoint.completed_epochs(checkpoints)
    image_shape = data.dataset.image_shape
    if done:
        model = keras.saving.load_model(os.path.join(checkpoints, "last.keras"))
        logger.info("Resuming %d-bit model after epoch %d", bits, done)
    else:
        model = new_model(config, bits, image_shape, wta)
    steps = steps_per_epoch(config, wta)
    images = data.dataset.images[data.split.train]
    stream, codes = training_stream(config, data, wta, model.views, start_epoch=done)
    refresh = None
    if config.wta.refresh_every:
        refresh = WTARefresh(images, codes, config.wta, config.seed, config.wta.refresh_every)
        if done >= config.wta.refresh_every:  # the checkpoint's thresholds need their codes
            refresh.set_model(model)
            refresh.refresh(done - done % config.wta.refresh_every)
    guard = StopOnNonFiniteLoss()
    callbacks = [
        refresh,
        BetaSchedule(config.model.beta, config.model.beta_growth),
        guard,
        validation_callback(data, config),
        ResumableCheckpoint(checkpoints),
        keras.callbacks.TensorBoard(os.path.join(directory, "logs")),
    ]
    start = time.perf_counter()
    if done < config.epochs:
        model.fit(
            stream,
            epochs=config.epochs,
            initial_epoch=done,
            steps_per_epoch=steps,
            shuffle=False,  # the stream shuffles itself
            callbacks=[c for c in callbacks if c is not None],
            verbose=verbose,
        )
    seconds = time.perf_counter() - start
    if guard.failed_at is not None:
        epoch, batch = guard.failed_at
        raise TrainingDiverged(
            f"The {bits}-bit model's loss became NaN/inf at epoch {epoch + 1}, batch {batch}. "
            f"The last good checkpoint is kept in {checkpoints}; lower --learning-rate or the "
            "loss weights and run again with --resume."
        )
    return model.encoder, seconds


def run(config: TrainConfig, run_dir: str, verbose: int = 1) -> dict:
    """Trains every code length of `config` in `run_dir` (resuming what is there) and
    writes `metrics.json` and the plots; returns the metrics."""
    data = load_run_data(config)
    os.makedirs(run_dir, exist_ok=True)
    check_same_split(os.path.join(run_dir, "split.npz"), data.split)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
    data.split.save(os.path.join(run_dir, "split.npz"))
    logger.info("Data: %s from %s", data.dataset.name, data.dataset.source)
    wta = build_wta_structure(data.dataset.images[data.split.train], config)
    np.savez(
        os.path.join(run_dir, "wta.npz"),
        table=wta.table,
        codes=wta.codes,
        **dataclasses.asdict(wta.thresholds),
    )
    metrics_path = os.path.join(run_dir, "metrics.json")
    metrics = report.read_metrics(metrics_path, config, data.top_k)
    labels = data.dataset.labels
    pixels = pixel_features(data.dataset.images)  # the baselines' feature source
    for bits in config.bits:
        directory = os.path.join(run_dir, f"bits_{bits}")
        encoder, seconds = train_code_length(config, bits, data, wta, directory, verbose)
        encoder.save(os.path.join(directory, "encoder.keras"))
        if labels is None:
            logger.warning("%s has no labels: skipping the evaluation.", config.dataset)
            continue
        images = data.dataset.images
        progress = verbose > 0
        query_codes = encode_images(encoder, images[data.split.query], progress=progress)
        database_codes = encode_images(encoder, images[data.split.database], progress=progress)
        result = evaluate(
            query_codes,
            database_codes,
            labels[data.split.query],
            labels[data.split.database],
            top_k=data.top_k,
        )
        result["train_seconds"] = seconds + metrics["results"].get(str(bits), {}).get(
            "train_seconds", 0.0
        )
        metrics["results"][str(bits)] = result
        for method in METHODS:
            metrics["baselines"].setdefault(method, {})[str(bits)] = evaluate_baseline(
                method, pixels, labels, data.split, bits, data.top_k, seed=config.seed
            )
        report.write_plots(run_dir, bits, result, images, data.split, query_codes, database_codes)
        write_json_atomically(metrics_path, metrics)
    return metrics
