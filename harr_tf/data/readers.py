"""How a source's items are read: a stream of small raw items, decoded one by one.

A reader turns dataset indices into a `tf.data` stream of *raw* items (an index into
an in-memory array, a file path, or the encoded bytes of a record) and decodes one
raw item into a uint8 image at its native size. Raw items are what a shuffle buffer
holds, so shuffling costs indices, paths or bytes, never pixels. Random-access readers
take indices in any order; sequential ones (TFDS, TFRecord) in ascending order only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf


class ArrayReader:
    """Items of an in-memory `(N, H, W, C)` uint8 array (IDX, npz: small sets)."""

    sequential = False

    def __init__(self, images: np.ndarray) -> None:
        self.array = images
        self._tensor: tf.Tensor | None = None

    def raw(self, indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))

    def decode(self, raw: tf.Tensor) -> tf.Tensor:
        if self._tensor is None:  # one eager copy, captured by every pipeline
            with tf.init_scope():
                self._tensor = tf.constant(self.array)
        return tf.gather(self._tensor, raw)


class FileReader:
    """Image files on disk (JPEG, PNG, BMP, GIF, WebP), decoded to RGB as the serving
    graph decodes them."""

    sequential = False

    def __init__(self, paths: list[str]) -> None:
        self.paths = np.asarray(paths, dtype=object)

    def raw(self, indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self.paths[np.asarray(indices, np.int64)])

    def decode(self, raw: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(tf.io.read_file(raw), channels=3, expand_animations=False)
        return tf.ensure_shape(image, (None, None, 3))


class SequentialReader:
    """Records read front to back (TFDS, TFRecord files): item `i` is record `positions[i]`.

    Args:
        records: a function giving a fresh ordered stream of every record's raw bytes.
        decode: raw bytes → uint8 `(H, W, C)`.
        positions: the record position of each item (records skipped at loading are
            not items), ascending.
    """

    sequential = True

    def __init__(
        self,
        records: Callable[[], tf.data.Dataset],
        decode: Callable[[tf.Tensor], tf.Tensor],
        positions: np.ndarray,
    ) -> None:
        self.records, self._decode, self.positions = records, decode, positions

    def raw(self, indices: np.ndarray) -> tf.data.Dataset:
        indices = np.asarray(indices, np.int64)
        if len(indices) > 1 and np.any(np.diff(indices) <= 0):
            raise ValueError("A sequential source reads its items in ascending order only.")
        wanted = np.zeros(int(self.positions[-1]) + 1 if len(self.positions) else 0, bool)
        wanted[self.positions[indices]] = True
        last = int(self.positions[indices[-1]]) if len(indices) else -1
        mask = tf.constant(wanted)
        stream = self.records().enumerate().take(last + 1)
        stream = stream.filter(lambda position, _: tf.gather(mask, position))
        return stream.map(lambda _, record: record)

    def decode(self, raw: tf.Tensor) -> tf.Tensor:
        return self._decode(raw)
