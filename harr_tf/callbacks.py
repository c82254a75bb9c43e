"""Training callbacks: retrieval mAP on the validation split, the β schedule, NaN guard."""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from harr_tf.atomic import write_json_atomically
from harr_tf.config import WTAConfig
from harr_tf.encoder import encode_images
from harr_tf.features import wta_codes
from harr_tf.retrieval import mean_average_precision
from harr_tf.wta import estimate_thresholds


class RetrievalEvaluation(keras.callbacks.Callback):
    """Writes `val_map` (mAP@top_k of validation queries against a database) into the
    epoch logs every `every` epochs, so checkpoints and tuners can monitor it.

    Holds the dataset (ids, labels, a reader) and index arrays: the images are streamed
    at each evaluation, never kept. The query set of the protocol is never passed here.

    Args:
        dataset: the `ImageDataset` (with labels).
        queries: indices of the validation queries, drawn from the database (ascending).
        database: indices of what they are ranked against (ascending).
        top_k: the K of mAP@K; None for the whole database.
        every: evaluate every this many epochs (and always after the last).
        batch_size: images per encoding batch (None: `inference_batch_size`).
    """

    def __init__(
        self,
        dataset,
        queries: np.ndarray,
        database: np.ndarray,
        top_k: int | None = 1000,
        every: int = 1,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset, self.queries, self.database = dataset, queries, database
        self.top_k = top_k
        self.every = every
        self.batch_size = batch_size
        self.last_map: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        encoder, labels = self.model.encoder, self.dataset.labels
        self.last_map = mean_average_precision(
            encode_images(encoder, self.dataset.images(self.queries), self.batch_size),
            encode_images(encoder, self.dataset.images(self.database), self.batch_size),
            labels[self.queries],
            labels[self.database],
            top_k=self.top_k,
        )
        if logs is not None:
            logs["val_map"] = self.last_map


class BetaSchedule(keras.callbacks.Callback):
    """Sharpens the tanh relaxation: β = initial · (1 + growth · epoch) at each epoch."""

    def __init__(self, initial: float = 1.0, growth: float = 0.0) -> None:
        super().__init__()
        self.initial, self.growth = initial, growth

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        head = self.model.encoder.get_layer("hash_head")
        head.beta.assign(self.initial * (1.0 + self.growth * epoch))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss and says so; the checkpoint written at
    the end of the last good epoch stays the latest one."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_at: tuple[int, int] | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.failed_at = (self.epoch, batch)
            self.model.stop_training = True


class ResumableCheckpoint(keras.callbacks.Callback):
    """After every epoch with a finite loss, saves the whole model (weights and
    optimizer state) to `DIR/last.keras` and the epoch count to `DIR/state.json`.

    Both are written to a temporary file and renamed, so a `kill -9` leaves the
    previous complete checkpoint in place; a NaN epoch never replaces a good one.
    """

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    @property
    def model_path(self) -> str:
        return os.path.join(self.directory, "last.keras")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not np.isfinite(float(logs.get("loss", 0.0))):
            return
        temporary = os.path.join(self.directory, "saving.keras")
        self.model.save(temporary)
        os.replace(temporary, self.model_path)
        state = {"epoch": epoch + 1, "logs": {k: float(v) for k, v in logs.items()}}
        write_json_atomically(os.path.join(self.directory, "state.json"), state)

    @staticmethod
    def completed_epochs(directory: str) -> int:
        """Epochs completed by the checkpoint in `directory` (0 when there is none)."""
        path = os.path.join(directory, "state.json")
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return int(json.load(f)["epoch"])


class WTARefresh(keras.callbacks.Callback):
    """Rebuilds the WTA similarity structure from the encoder's own backbone features
    of the un-augmented training images every `every` epochs.

    Pixels are a weak feature source for WTA; once the backbone has learned
    augmentation-invariant features, their rank order gives better pair targets.
    The new codes are assigned to `codes` (read by the training stream) and the
    new thresholds to the model's `WTASimilarity` layer. Features are computed in
    streamed batches; only the codes are kept.

    Args:
        dataset: the `ImageDataset`.
        indices: the training items (ascending), aligned with the rows of `codes`.
        codes: variable (n, P) uint8 holding the current WTA codes.
        config: the WTA settings (P, K, ρ, pair budget).
        seed: seed of the permutation tables and the pair sample.
        every: epochs between refreshes.
    """

    def __init__(
        self, dataset, indices: np.ndarray, codes, config: WTAConfig, seed: int, every: int
    ) -> None:
        super().__init__()
        self.dataset, self.indices, self.codes, self.config = dataset, indices, codes, config
        self.seed, self.every = seed, every

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every == 0 and epoch + 1 < self.params.get("epochs", 0):
            self.refresh(epoch + 1)

    def refresh(self, epoch: int) -> None:
        config = self.config
        _, codes = wta_codes(
            self.dataset,
            self.indices,
            "backbone",
            num_permutations=config.num_permutations,
            window=config.window,
            seed=self.seed + epoch,
            network=self.model.encoder.get_layer("backbone"),
        )
        thresholds = estimate_thresholds(
            codes, config.window, config.positive_fraction, config.max_pairs, seed=self.seed
        )
        self.codes.assign(codes)
        self.model.similarity.set_thresholds(thresholds)
