"""A trained run from Python: `train` makes one as train.py does, `Run.load` opens one,
and `Run.encode` gives the codes of any images.

    run = harr_tf.train(harr_tf.TrainConfig(bits=(64,)), "runs/r1")
    codes = run.encode("folder:photos", 64)        # or Run.load("runs/r1").encode(...)

Images are read as the run's own evaluation reads its data: through the dataset readers
(`harr_tf.data`) at the run's image shape, files decoded as the serving graph decodes
them, so the codes equal those of the run's encoder in `train.py` and in an export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml

from harr_tf.codes import Codes
from harr_tf.config import TrainConfig
from harr_tf.data import ImageDataset, load_dataset
from harr_tf.data.readers import FileReader
from harr_tf.encoder import encode_images
from harr_tf.locks import LockHeld, exclusive
from harr_tf.resume import check_resumable, with_resolved_settings
from harr_tf.run import run as run_every_length
from harr_tf.run_directory import RunDirectory

logger = logging.getLogger("harr_tf")

# What `Run.encode` reads: an array, a dataset spec, image files, or a dataset.
Images = np.ndarray | str | Sequence[str | os.PathLike] | ImageDataset


class RunExists(FileExistsError):
    """`train` was asked to start a run where one already is (and not to resume it)."""


class Run:
    """A run directory that `train` (or train.py) wrote, opened for encoding.

    Args:
        directory: the run's files.
        config: the configuration it was trained with.
    """

    def __init__(self, directory: RunDirectory, config: TrainConfig) -> None:
        self.directory, self.config = directory, config
        self._encoders: dict[int, keras.Model] = {}

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> Run:
        """Opens the run in `run_dir`.

        Raises:
            FileNotFoundError: `run_dir` holds no run (no config.yaml).
        """
        directory = RunDirectory(run_dir)
        return cls(directory, directory.read_config())

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, bits={self.bits})"

    @property
    def path(self) -> Path:
        return self.directory.path

    @property
    def bits(self) -> tuple[int, ...]:
        """The code lengths trained to the end (their encoder saved), ascending."""
        return tuple(self.directory.trained_bits())

    @property
    def metrics(self) -> dict:
        """metrics.json: mAP per code length, baselines, timings; {} before any
        evaluation (or for data without labels)."""
        file = self.directory.metrics_file
        return json.loads(file.read_text()) if file.is_file() else {}

    def encoder(self, bits: int | None = None) -> keras.Model:
        """The trained `bits`-bit encoder (the longest when None): float pixels
        (batch, H, W, C) in [0, 255] → continuous codes (batch, bits).

        Raises:
            FileNotFoundError: no encoder of `bits` bits was saved.
        """
        available = self.bits
        if not available:
            raise FileNotFoundError(f"{self.path} holds no trained encoder yet.")
        chosen = max(available) if bits is None else bits
        if chosen not in self._encoders:
            file = self.directory.length(chosen).encoder
            if chosen not in available:
                raise FileNotFoundError(
                    f"{self.path} has no trained encoder {file.relative_to(self.path)}. "
                    f"Code lengths with an encoder: {list(available)}."
                )
            self._encoders[chosen] = keras.saving.load_model(file, compile=False)
        return self._encoders[chosen]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)`: the images every encoder of the run reads."""
        height, width, channels = self.encoder().input_shape[1:]
        return int(height), int(width), int(channels)

    def dataset(self, images: Images | None = None) -> ImageDataset:
        """`images` (the run's own dataset when None) read at `image_shape`.

        Args:
            images: a uint8 array (n, H, W, C) of any H and W (ids "0" … "n-1"), a
                dataset spec such as "folder:photos" or "npz:images.npz"
                (`harr_tf.data.load_dataset`, with the run's `data_dir` and
                `max_pixels`), a list of image file paths (their ids), or an
                `ImageDataset`.

        Raises:
            ValueError: the images have another channel count than the run's, or
                cannot be brought to its image shape.
        """
        config = self.config
        height, width, channels = self.image_shape
        if images is None:
            images = config.dataset
        if isinstance(images, str):
            images = load_dataset(images, data_dir=config.data_dir, max_pixels=config.max_pixels)
        elif isinstance(images, np.ndarray):
            images = _array_dataset(images)
        elif not isinstance(images, ImageDataset):  # files, decoded straight to the shape
            paths = [os.fspath(path) for path in images]
            reader = FileReader(paths, config.max_pixels, channels)
            shape = (height, width)
            return ImageDataset(tuple(paths), None, "files", "files", reader, channels, None, shape)
        if images.channels != channels:
            raise ValueError(
                f"{images.source} has {images.channels}-channel images; the run's encoder "
                f"reads {channels}-channel ones. Expected images of shape (n, {height}, "
                f"{width}, {channels})."
            )
        if images.native_size == (height, width):
            return images.at_size(None)
        if height != width:
            raise ValueError(
                f"The run reads images at their native {height} x {width} pixels; "
                f"{images.source} holds images of {images.native_size or 'several sizes'}. "
                f"Expected {height} x {width} images."
            )
        return images.at_size(height)

    def encode(
        self,
        images: Images,
        bits: int | None = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Codes:
        """The codes of `images` (see `dataset`) under the `bits`-bit encoder (the
        longest when None). Items that cannot be decoded are left out, named in the log.

        Args:
            batch_size: images per batch; None: the run's `encode_batch_size`, else as
                many as the memory budget fits. Defaults to None.
            progress: show a progress bar. Defaults to False.
        """
        encoder = self.encoder(bits)
        dataset = self.dataset(images)
        stream = dataset.images(np.arange(dataset.num_items))
        batch_size = batch_size or self.config.encode_batch_size
        signs = encode_images(encoder, stream, batch_size, progress)
        kept = np.ones(dataset.num_items, bool)
        kept[list(dataset.damaged.items)] = False
        return Codes.from_signs(np.asarray(dataset.ids, dtype=str)[kept], signs[kept])


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    wait: bool = False,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
) -> Run:
    """Trains and evaluates every code length of `config` in `run_dir`, as train.py does,
    and returns the run.

    Keras is seeded with `config.seed`; for bit-identical codes from run to run, enable
    TensorFlow's op determinism first, as train.py does
    (`tf.config.experimental.enable_op_determinism()`).

    Args:
        resume: continue the run in `run_dir` from its checkpoints; the settings it may
            change are `harr_tf.resume.RESUMABLE_SETTINGS`. Defaults to False.
        wait: when another process writes `run_dir`, wait for it instead of raising
            `LockHeld`. Defaults to False.
        verbose: 1 shows progress bars, 0 none. Defaults to 1.
        strategy: the `tf.distribute` strategy (`harr_tf.distribute`). Defaults to None.

    Raises:
        RunExists: `run_dir` already holds a run and `resume` is False.
        harr_tf.locks.LockHeld: another process writes `run_dir` (unless `wait`).
        ValueError: a setting cannot work with the data (named in the message).
    """
    directory = RunDirectory(run_dir)
    with _writer_lock(directory, wait):
        if directory.is_run():
            if not resume:
                raise RunExists(
                    f"{directory} already holds a run: resume it, or choose another directory."
                )
            saved = directory.read_config()
            config = with_resolved_settings(saved, config)
            check_resumable(saved, config)
        logger.info("Run directory: %s\n%s", directory, yaml.safe_dump(dataclasses.asdict(config)))
        keras.utils.set_random_seed(config.seed)
        run_every_length(config, directory, verbose, strategy)
    return Run.load(directory)


def _writer_lock(directory: RunDirectory, wait: bool) -> exclusive:
    """The run directory's lock, taken: at once, or with `wait` after its holder ends
    (said in the log)."""
    try:
        return directory.lock().acquire()
    except LockHeld as held:
        if not wait:
            raise
        logger.info("%s Waiting for it.", held)
    return directory.lock(wait=True).acquire()


def _array_dataset(images: np.ndarray) -> ImageDataset:
    """An in-memory dataset of uint8 `images` (n, H, W, C) whose ids are "0" … "n-1"."""
    dataset = ImageDataset.from_arrays(images, name="images", source="array")
    ids = tuple(str(position) for position in range(len(images)))
    return dataclasses.replace(dataset, ids=ids, damaged=None)
