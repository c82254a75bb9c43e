"""Training callbacks: retrieval mAP on the validation split, the β schedule, the NaN
guard and the last good checkpoint."""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from harr_tf.atomic import atomic_path, remove_leftovers, write_json_atomically
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
        self.evaluate(self.model.encoder)
        if logs is not None:
            logs["val_map"] = self.last_map

    def evaluate(self, encoder: keras.Model) -> float:
        """`val_map` of `encoder`, kept as `last_map`; also for a model restored without
        training (a tuner trial whose checkpoint already held its last epoch)."""
        labels = self.dataset.labels
        self.last_map = mean_average_precision(
            encode_images(encoder, self.dataset.images(self.queries), self.batch_size),
            encode_images(encoder, self.dataset.images(self.database), self.batch_size),
            labels[self.queries],
            labels[self.database],
            top_k=self.top_k,
        )
        return self.last_map


class BetaSchedule(keras.callbacks.Callback):
    """Sharpens the tanh relaxation: β = initial · (1 + growth · epoch) at each epoch."""

    def __init__(self, initial: float = 1.0, growth: float = 0.0) -> None:
        super().__init__()
        self.initial, self.growth = initial, growth

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        head = self.model.encoder.get_layer("hash_head")
        head.beta.assign(self.initial * (1.0 + self.growth * epoch))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training after an epoch whose loss is NaN/inf, reading the loss once per epoch.

    The epoch's logged `loss` is the running mean of its batches' losses, so it is not
    finite exactly when some batch's was: no work per step, no wait for a step's result.
    `LastGoodCheckpoint` skips that epoch, so the last good checkpoint stays.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failed_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.failed_epoch = epoch
            self.model.stop_training = True


class LastGoodCheckpoint(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore` (weights and optimizer state in `DIR/latest.weights.h5`,
    the epoch count in `DIR/training_metadata.json`, restored when `fit` begins), kept
    after training, with what a run adds:

    - an epoch whose loss or weights are not finite never replaces the checkpoint;
    - each file is written beside and renamed, so a kill leaves the last complete one,
      and the leftovers of killed writes are deleted when training begins;
    - the disk's free space is checked first: a full disk is an OSError(ENOSPC) with the
      last checkpoint kept, where h5py would crash the process;
    - only `write=True` (the chief) writes; every worker restores from `directory`, which
      must therefore be on storage that all workers see.
    """

    def __init__(self, directory: str, write: bool = True) -> None:
        super().__init__(directory, delete_checkpoint=False)
        self.write = write

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.write:
            remove_leftovers(self.backup_dir)
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss", 0.0)
        if not self.write or not np.isfinite(loss) or not finite_weights(self.model):
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        with atomic_path(self._weights_path, checkpoint_bytes(self.model)) as temporary:
            self.model.save_weights(temporary)
        write_json_atomically(self._training_metadata_path, {"epoch": epoch + 1, "batch": 0})

    @staticmethod
    def completed_epochs(directory: str) -> int:
        """Epochs completed by the checkpoint in `directory` (0 when there is none): known
        before `fit`, which the training stream and `WTARefresh` need."""
        path = os.path.join(directory, "training_metadata.json")
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return int(json.load(f)["epoch"])


def checkpoint_bytes(model: keras.Model) -> int:
    """About the size of `model.save_weights`: its and its optimizer's variables, and
    h5py's few kB per variable."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:  # a bare Functional has none
        variables += list(model.optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize + 4096 for v in variables)


def finite_weights(model: keras.Model) -> bool:
    """Whether every weight of `model` is finite: an update can overflow after the last
    finite loss of an epoch. Reads the weights once, as saving does."""
    return all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in model.weights)


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
        start_epoch: epochs already done (a resumed run): when `fit` begins, the codes of
            the last refresh are rebuilt, after `LastGoodCheckpoint` (listed before this)
            has restored the weights they come from.
    """

    def __init__(
        self,
        dataset,
        indices: np.ndarray,
        codes,
        config: WTAConfig,
        seed: int,
        every: int,
        start_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.dataset, self.indices, self.codes, self.config = dataset, indices, codes, config
        self.seed, self.every, self.start_epoch = seed, every, start_epoch

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.start_epoch >= self.every:
            self.refresh(self.start_epoch - self.start_epoch % self.every)

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
