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


class FeatureEvaluation(RetrievalEvaluation):
    """`RetrievalEvaluation` of the hash head on cached features instead of images."""

    def __init__(
        self, frozen: FrozenFeatures, data: RunData, config: TrainConfig, progress: bool
    ) -> None:
        queries, rest = validation_sets(data, config)
        super().__init__(data.dataset, queries, rest, data.top_k, config.eval_every)
        self.frozen, self.data, self.progress = frozen, data, progress

    def score(self, head: keras.Model) -> float:
        """`val_map` of `head` on the queries' and database sample's cached features
        (the database's, computed here if not yet: once per run)."""
        database = self.data.split.database
        features = self.frozen.features("database", self.dataset, database, self.progress)

        def codes(indices: np.ndarray) -> np.ndarray:
            return head_codes(head, features[np.searchsorted(database, indices)], False)

        labels = self.dataset.labels
        return mean_average_precision(
            codes(self.queries),
            codes(self.database),
            labels[self.queries],
            labels[self.database],
            top_k=self.top_k,
        )

    def evaluate(self, encoder: keras.Model) -> float:
        self.last_map = self.score(encoder)
        return self.last_map


def feature_evaluation(
    frozen: FrozenFeatures, data: RunData, config: TrainConfig, progress: bool
) -> FeatureEvaluation | None:
    """The frozen student's `val_map` callback; None without labels or validation."""
    if validation_sets(data, config) is None:
        return None
    return FeatureEvaluation(frozen, data, config, progress)


def better_head(
    trained: keras.Model,
    frozen: FrozenFeatures,
    validation: FeatureEvaluation | None,
    config: TrainConfig,
    trained_map: float | None = None,
) -> keras.Model:
    """`trained`, or its ITQ start when that ranks the validation queries better: the
    teacher's structure can guide the head away from the features' geometry, which ITQ
    keeps, so the student never ends below the shallow hash of its own features (on
    validation). `trained_map`: its score when the last epoch already took it. Without
    validation, `trained`."""
    if validation is None:
        return trained
    if trained_map is None:
        trained_map = validation.score(trained)
    start = head_encoder(frozen.train.shape[1], trained.output_shape[-1], config.model.beta)
    start_from_itq(start, frozen.train, config.seed)
    start_map = validation.score(start)
    kept = "the trained head" if trained_map >= start_map else "its ITQ start"
    logger.info(
        "%d-bit head: val_map %.4f trained, %.4f at its ITQ start: kept %s.",
        start.output_shape[-1],
        trained_map,
        start_map,
        kept,
    )
    return trained if trained_map >= start_map else start
