"""One HARR run end to end: data and split, WTA structure, one model per code length
(`harr_tf.training_assembly`), evaluation on the query set, and the run directory (DESIGN §5).

Images are streamed from the dataset's reader wherever they are needed (training
views, the WTA teacher, the baselines, the evaluation and the plots); the run holds
only ids, labels, WTA codes and hash codes for the whole collection.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from harr_tf import report
from harr_tf.atomic import atomic_path, write_json_atomically
from harr_tf.baselines import evaluate_baselines, exact_map
from harr_tf.config import TrainConfig
from harr_tf.data.pipeline import check_training_items
from harr_tf.encoder import encode_images
from harr_tf.features import pixel_features
from harr_tf.frozen import FrozenFeatures, head_codes, prepare_frozen
from harr_tf.layers import sign_codes
from harr_tf.pretrain_record import check_pretrained_weights
from harr_tf.resume import check_same_split
from harr_tf.retrieval import asymmetric_mean_average_precision, evaluate
from harr_tf.run_data import RunData, build_wta_structure, load_run_data
from harr_tf.run_directory import RunDirectory
from harr_tf.training import training_length, with_batch_size
from harr_tf.training_assembly import train_code_length

logger = logging.getLogger("harr_tf")

# The baselines hash pixels at most this many on a side (d <= 3,072): PCA and ITQ on
# 64 x 64 x 3 = 12,288 dimensions cost minutes and GBs for no better yardstick.
BASELINE_SIDE = 32
_CHUNK = 2048


def describe_teacher(config: TrainConfig) -> str:
    """One log line: which teacher and student this run uses, and why."""
    model, source = config.model, config.wta.features
    teacher = f"{model.backbone} ({model.weights} weights)" if source == "backbone" else source
    student = {
        "frozen": f"the hash head on the frozen {model.backbone}'s cached features",
        "fine_tuned": f"{model.backbone} and the hash head, trained together",
        "distilled": f"small_cnn (width {model.width}) from scratch, at its own image size",
    }[model.student_mode]
    why = "as set" if model.student else f"the default for {model.backbone}"
    return f"WTA teacher: {teacher}; student: {student} ({why})."


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


def feature_baseline_maps(
    frozen: FrozenFeatures, data: RunData, config: TrainConfig, progress: bool
) -> dict:
    """`{method: {bits: mAP}}` of PCAH and ITQ on the frozen backbone's own features, and
    `exact_cosine`, those features ranked by cosine: the shallow hashing of the same
    features that HARR's head must beat, and the ranking it approximates."""
    split = data.split
    for part in ("query", "database"):
        frozen.features(part, data.dataset, getattr(split, part), progress)
    parts = {"train": frozen.train, **frozen.evaluated}

    def features(indices: np.ndarray):
        part = next(name for name in parts if indices is getattr(split, name))
        yield np.asarray(parts[part], np.float32)

    found = evaluate_baselines(
        features, data.dataset.labels, split, config.bits, data.top_k, config.seed, ("pcah", "itq")
    )
    maps = {f"{m}_features": {str(b): v for b, v in by.items()} for m, by in found.items()}

    def unit(part: str) -> np.ndarray:
        values = np.asarray(parts[part], np.float32)
        return values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)

    ranked = np.concatenate([unit("query"), unit("database")])
    both = dataclasses.replace(
        split,
        query=np.arange(len(split.query)),
        database=np.arange(len(split.query), len(ranked)),
    )
    labels = np.concatenate([data.dataset.labels[split.query], data.dataset.labels[split.database]])
    exact = exact_map(ranked, labels, both, data.top_k)
    maps["exact_cosine"] = {str(b): exact for b in config.bits}
    return maps


def encode_part(
    encoder, data: RunData, part: str, batch, progress: bool, frozen, continuous: bool
) -> np.ndarray:
    """The codes of one part of the split: through the encoder, or for a frozen student
    its head on the backbone's features, computed once for every code length."""
    indices = getattr(data.split, part)
    if frozen is None:
        images = data.dataset.images(indices)
        return encode_images(encoder, images, batch, progress, continuous=continuous)
    return head_codes(encoder, frozen.features(part, data.dataset, indices, progress), continuous)


def run(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Trains every code length of `config` in `run_dir` (resuming what is there) under
    `strategy` (`harr_tf.distribute`; default: none) and writes `metrics.json` and the
    plots; returns the metrics."""
    data = load_run_data(config)
    config = with_batch_size(data.config, data.dataset.image_shape, len(data.split.train))
    # Refused settings are refused before anything is written, so a corrected rerun starts.
    check_training_items(config.batch_size, len(data.split.train))
    training_length(config, len(data.split.train))
    if os.path.isfile(config.model.weights):
        check_pretrained_weights(config.model.weights, config.dataset, data.dataset.image_shape)
    directory = RunDirectory(run_dir)
    check_same_split(str(directory.split_file), data.split)
    directory.write_config(config)
    with atomic_path(directory.split_file) as temporary:
        data.split.save(temporary)
    logger.info("Data: %s from %s", data.dataset.name, data.dataset.source)
    progress = verbose > 0
    logger.info(describe_teacher(config))
    frozen = None
    if config.model.student_mode == "frozen":
        frozen = prepare_frozen(config, data, str(directory.features), progress)
    wta = build_wta_structure(
        data.dataset,
        data.split.train,
        config,
        progress,
        features=frozen.train if frozen is not None and config.wta.features == "backbone" else None,
    )
    with atomic_path(directory.wta_file) as temporary, open(temporary, "wb") as f:
        np.savez(f, table=wta.table, codes=wta.codes, **dataclasses.asdict(wta.thresholds))
    metrics = report.read_metrics(directory.metrics_file, config, data.top_k)
    labels = data.dataset.labels
    evaluated = labels is not None and len(data.split.query) > 0
    if labels is None:
        logger.warning("%s has no labels: the evaluation is skipped.", config.dataset)
    elif not evaluated:
        logger.warning("No class has the 10 items a query needs: the evaluation is skipped.")
    baselines = baseline_maps(data, config, progress) if evaluated else {}
    if evaluated and frozen is not None:
        baselines.update(feature_baseline_maps(frozen, data, config, progress))
    for bits in config.bits:
        length = directory.length(bits)
        encoder, seconds = train_code_length(
            config, bits, data, wta, length, verbose, strategy, frozen
        )
        with atomic_path(length.encoder) as temporary:
            encoder.save(temporary)  # whole or not at all: a cut-off one fails to load
        if not evaluated:
            continue
        batch = config.encode_batch_size
        query_continuous = encode_part(encoder, data, "query", batch, progress, frozen, True)
        query_codes = keras.ops.convert_to_numpy(sign_codes(query_continuous))
        database_codes = encode_part(encoder, data, "database", batch, progress, frozen, False)
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
            directory,
            bits,
            result,
            data.dataset.read,
            data.split,
            query_codes,
            database_codes,
            labels=data.dataset.labels,
        )
        write_json_atomically(directory.metrics_file, metrics)
    data.dataset.damaged.report(str(directory.damaged_items_file))
    return metrics
