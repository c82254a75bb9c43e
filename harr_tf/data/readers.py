"""How a source's items are read: a stream of small raw items, decoded one by one.

A reader turns dataset indices into a `tf.data` stream of *raw* items (an index into
an in-memory array, a file path, or the encoded bytes of a record) and decodes one
raw item into a uint8 image at its native size. Raw items are what a shuffle buffer
holds, so shuffling costs indices, paths or bytes, never pixels. Random-access readers
take indices in any order; sequential ones (TFDS, TFRecord) in ascending order only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from harr_tf.atomic import write_text_atomically
from harr_tf.data.image_header import decode_within_budget

logger = logging.getLogger("harr_tf")
_NAMED = 20  # damaged items named in the closing log line; the file lists them all


class ArrayReader:
    """Items of an in-memory `(N, H, W, C)` uint8 array (IDX, npz: small sets)."""

    sequential = False
    can_be_damaged = False  # a gather cannot fail

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
    """Image files on disk (JPEG, PNG, BMP, GIF, WebP), decoded to RGB (or with
    `channels` 1, grey) by the serving graph's decode, within the same pixel budget (a
    file changed since the folder scan cannot bring a bomb)."""

    sequential = False
    can_be_damaged = True

    def __init__(self, paths: list[str], max_pixels: int, channels: int = 3) -> None:
        self.paths = np.asarray(paths, dtype=object)
        self.max_pixels, self.channels = max_pixels, channels

    def raw(self, indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self.paths[np.asarray(indices, np.int64)])

    def decode(self, raw: tf.Tensor) -> tf.Tensor:
        return decode_within_budget(tf.io.read_file(raw), self.channels, self.max_pixels)


class SequentialReader:
    """Records read front to back (TFDS, TFRecord files): item `i` is record `positions[i]`.

    Args:
        records: a function giving a fresh ordered stream of every record's raw bytes.
        decode: raw bytes → uint8 `(H, W, C)`.
        positions: the record position of each item (records skipped at loading are
            not items), ascending.
    """

    sequential = True
    can_be_damaged = True

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


class DamagedItems:
    """The items of a dataset that could not be decoded (a corrupt file or record),
    gathered as the streams meet them: each is named in the log once, and `report`
    names them all at the end of a run.

    Args:
        ids: the dataset's item ids.
        source: the dataset's spec, for the messages.
    """

    def __init__(self, ids: tuple[str, ...], source: str) -> None:
        self.ids, self.source = ids, source
        self.items: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> list[str]:
        return sorted(self.ids[item] for item in self.items)

    def note(self, item: tf.Tensor) -> tf.Tensor:
        """An op that records dataset item `item` (int64 scalar) as damaged. Only the
        damaged items' path runs it, so the Python call costs nothing per good image."""
        return tf.py_function(self._record, [item], tf.int64)

    def _record(self, item: tf.Tensor) -> int:
        item = int(item)
        with self._lock:
            new = item not in self.items
            self.items.add(item)
        if new:
            logger.warning("Skipped %s of %s: it cannot be decoded.", self.ids[item], self.source)
        return item

    def report(self, path: str | None = None) -> None:
        """Logs one line naming the damaged items (if any) and lists them all in `path`."""
        if not self.items:
            return
        names = self.names()
        shown = ", ".join(names[:_NAMED]) + (
            f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
        )
        listed = ""
        if path is not None:
            write_text_atomically(path, "".join(f"{name}\n" for name in names))
            listed = f" All are listed in {path}."
        logger.warning(
            "Skipped %d damaged images of %s: %s.%s", len(names), self.source, shown, listed
        )


def map_skipping_damaged(
    stream: tf.data.Dataset,
    fn: Callable,
    damaged: DamagedItems,
    item: Callable,
) -> tf.data.Dataset:
    """`(fn(*element), ok)` for each element of `stream`, in order, where `fn` decodes
    and may fail on a damaged item: there the value is zeros of `fn`'s output structure,
    `ok` is False, and `damaged` notes the dataset item `item(*element)`.

    Each element is decoded in a one-element dataset that ignores errors, followed by
    its zeros: the first of the two is taken. No element is added or lost, so the stream
    keeps its length, its order and its determinism, and no Python runs per good item.
    """

    def one(*element):
        single = tf.data.Dataset.from_tensors(element)
        decoded = single.map(lambda *e: (fn(*e), tf.constant(True)))
        spec = decoded.element_spec[0]

        def blank(*e):
            zeros = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), spec)
            with tf.control_dependencies([damaged.note(item(*e))]):
                return tf.nest.map_structure(tf.identity, (zeros, tf.constant(False)))

        return decoded.ignore_errors().concatenate(single.map(blank)).take(1)

    return stream.interleave(
        one, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
