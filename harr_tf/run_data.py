"""What a run trains on: the data and its protocol split, and the WTA structure of the
training images under the configured teacher (DESIGN §2.1, §3).

Below `harr_tf.run`, `harr_tf.training`, `harr_tf.pretrain` and the tuner, which all
read their data through it. The teacher is a feature source: pixels, a file, or a
network — the trained backbone itself, or for a distilled student the pretrained
`--backbone`, which reads the images at its own size while the student reads them at
small_cnn's.
"""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np

from harr_tf.backbones import build_backbone
from harr_tf.collection_defaults import choose_backbone
from harr_tf.config import TrainConfig
from harr_tf.data import ImageDataset, ProtocolSplit, get_protocol, load_dataset, make_split
from harr_tf.data.image_size import resolve_image_size
from harr_tf.features import wta_codes
from harr_tf.wta import WTAThresholds, estimate_thresholds

logger = logging.getLogger("harr_tf")


@dataclasses.dataclass(frozen=True)
class RunData:
    """The images, the protocol split, what the split's K is, and the run's config with
    its backbone chosen for the images (`choose_backbone`)."""

    dataset: ImageDataset
    split: ProtocolSplit
    top_k: int | None
    config: TrainConfig


@dataclasses.dataclass(frozen=True)
class WTAStructure:
    """WTA codes of the training images (aligned with `split.train`) and thresholds."""

    table: np.ndarray
    codes: np.ndarray
    thresholds: WTAThresholds


def load_run_data(config: TrainConfig) -> RunData:
    """Opens the dataset, chooses the backbone for its images when the config leaves
    it to the collection (`data.config`, logged with the reason), reads the images at
    the network's size (stored in `data.config`) and draws the protocol split
    (`train_size`, `queries_per_class` and `validation_per_class` override it)."""
    dataset = load_dataset(config.dataset, data_dir=config.data_dir, max_pixels=config.max_pixels)
    config, why = choose_backbone(config, dataset.channels)
    if why != "as set":
        logger.info("Backbone: %s, chosen for %s.", config.model.backbone, why)
    size = resolve_image_size(config.image_size, dataset.native_size, config.model.trained_backbone)
    dataset = dataset.at_size(size)
    if size is not None:  # resolved once, and stored with the run (None: the native size)
        config = dataclasses.replace(config, image_size=size)
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
    return RunData(dataset, split, top_k, config)


def teacher_dataset(dataset: ImageDataset, config: TrainConfig) -> ImageDataset:
    """`dataset` read at the size the teacher network sees: the run's own, unless the
    teacher is not the trained network (a distilled student), then the teacher's default."""
    model = config.model
    if model.trained_backbone == model.network:
        return dataset
    return dataset.at_size(resolve_image_size(None, dataset.native_size, model.network))


def teacher_network(dataset: ImageDataset, config: TrainConfig) -> keras.Model:
    """The configured `--backbone` with `--weights`, seeded by `config.seed`, for
    images of `dataset`'s shape: the `backbone` feature source."""
    keras.utils.set_random_seed(config.seed)
    model = config.model
    return build_backbone(
        model.network, dataset.image_shape, model.weights, model.width, model.pooling
    )


def build_wta_structure(
    dataset: ImageDataset,
    indices: np.ndarray,
    config: TrainConfig,
    progress: bool = False,
    features: np.ndarray | None = None,
) -> WTAStructure:
    """WTA codes of the items `indices` under the configured feature source, and τ,
    s_max, s_min. The `backbone` source is `teacher_network` applied to the images at
    the evaluation transform, or its `features` of them when already computed."""
    wta = config.wta
    network = None
    if wta.features == "backbone" and features is None:
        dataset = teacher_dataset(dataset, config)
        network = teacher_network(dataset, config)
    table, codes = wta_codes(
        dataset,
        indices,
        wta.features,
        num_permutations=wta.num_permutations,
        window=wta.window,
        seed=config.seed,
        network=network,
        features=features,
        progress=progress,
        batch_size=config.encode_batch_size,
    )
    thresholds = estimate_thresholds(
        codes, wta.window, rho=wta.positive_fraction, max_pairs=wta.max_pairs, seed=config.seed
    )
    return WTAStructure(table, codes, thresholds)
