"""The frozen student judged on validation, on cached features: `val_map` after each
evaluation epoch (so a tuner can score a frozen trial), and the head a run keeps.

The validation queries and their database sample are those a pixel run scores itself on
(`harr_tf.training.validation_sets`: drawn from the database, never the protocol's
queries); their features are the database's, cached once per run.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from harr_tf.callbacks import RetrievalEvaluation
from harr_tf.config import TrainConfig
from harr_tf.frozen import FrozenFeatures, head_codes, head_encoder, start_from_itq
from harr_tf.retrieval import mean_average_precision
from harr_tf.run_data import RunData
from harr_tf.training import validation_sets

logger = logging.getLogger("harr_tf")


def validation_map(
    head: keras.Model, frozen: FrozenFeatures, data: RunData, config: TrainConfig, progress: bool
) -> float | None:
    """`val_map` of `head` on the cached features of the validation queries and their
    database sample (`validation_sets`, as a pixel run scores itself); None without
    labels. The database's features are computed here if not yet (once per run)."""
    sets = validation_sets(data, config)
    if sets is None:
        return None
    database = data.split.database
    features = frozen.features("database", data.dataset, database, progress)

    def codes(indices: np.ndarray) -> np.ndarray:
        return head_codes(head, features[np.searchsorted(database, indices)], False)

    labels = data.dataset.labels
    queries, rest = sets
    return mean_average_precision(
        codes(queries), codes(rest), labels[queries], labels[rest], top_k=data.top_k
    )


def better_head(
    trained: keras.Model, frozen: FrozenFeatures, data: RunData, config: TrainConfig, progress: bool
) -> keras.Model:
    """`trained`, or its ITQ start when that ranks the validation queries better: the
    teacher's structure can guide the head away from the features' geometry, which ITQ
    keeps, so the student never ends below the shallow hash of its own features (on
    validation). Without labels, `trained`."""
    start = head_encoder(frozen.train.shape[1], trained.output_shape[-1], config.model.beta)
    start_from_itq(start, frozen.train, config.seed)
    trained_map = validation_map(trained, frozen, data, config, progress)
    if trained_map is None:
        return trained
    start_map = validation_map(start, frozen, data, config, progress)
    kept = "the trained head" if trained_map >= start_map else "its ITQ start"
    logger.info(
        "%d-bit head: val_map %.4f trained, %.4f at its ITQ start: kept %s.",
        start.output_shape[-1],
        trained_map,
        start_map,
        kept,
    )
    return trained if trained_map >= start_map else start


class FeatureEvaluation(RetrievalEvaluation):
    """`RetrievalEvaluation` of the hash head on cached features instead of images."""

    def __init__(
        self, frozen: FrozenFeatures, data: RunData, config: TrainConfig, progress: bool
    ) -> None:
        queries, rest = validation_sets(data, config)
        super().__init__(data.dataset, queries, rest, data.top_k, config.eval_every)
        self.frozen, self.data, self.config, self.progress = frozen, data, config, progress

    def evaluate(self, encoder: keras.Model) -> float:
        self.last_map = validation_map(encoder, self.frozen, self.data, self.config, self.progress)
        return self.last_map


def feature_evaluation(
    frozen: FrozenFeatures, data: RunData, config: TrainConfig, progress: bool
) -> FeatureEvaluation | None:
    """The frozen student's `val_map` callback; None without labels or validation."""
    if validation_sets(data, config) is None:
        return None
    return FeatureEvaluation(frozen, data, config, progress)
