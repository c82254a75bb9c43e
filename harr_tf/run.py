"""One HARR run end to end: data and split, WTA structure, one model per code length
(`harr_tf.training`), evaluation on the query set, and the run directory (DESIGN §5).

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
import yaml
from tqdm import tqdm

from harr_tf import report
from harr_tf.atomic import write_json_atomically
from harr_tf.backbones import build_backbone
from harr_tf.baselines import evaluate_baselines
from harr_tf.config import TrainConfig, to_dict
from harr_tf.data import ImageDataset, ProtocolSplit, get_protocol, load_dataset, make_split
from harr_tf.data.image_size import resolve_image_size
from harr_tf.encoder import encode_images
from harr_tf.features import pixel_features, wta_codes
from harr_tf.layers import sign_codes
from harr_tf.pretrain import check_pretrained_weights
from harr_tf.resume import check_same_split
from harr_tf.retrieval import asymmetric_mean_average_precision, evaluate
from harr_tf.training import train_code_length, with_batch_size
from harr_tf.wta import WTAThresholds, estimate_thresholds

logger = logging.getLogger("harr_tf")

# The baselines hash pixels at most this many on a side (d <= 3,072): PCA and ITQ on
# 64 x 64 x 3 = 12,288 dimensions cost minutes and GBs for no better yardstick.
BASELINE_SIDE = 32
_CHUNK = 2048


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
