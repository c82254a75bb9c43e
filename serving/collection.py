"""The images `serving.encode` sends: a folder, a list of files, or a dataset spec.

Every item has an id and a way to read its encoded bytes. Files are sent as they are on
disk, and records (`tfrecord:`, `tfds:`) as they are stored: the server decodes and
resizes them exactly as training read them, and refuses a damaged one, which is then
named among the failures. Items of in-memory arrays (`npz:`, `idx:`, ...) are encoded to
PNG here, losslessly, at their native size. Bytes are read only when a batch is about to
be sent, so a collection of millions of files costs its ids in memory.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from harr_tf.data import load_dataset
from harr_tf.data.folder import IMAGE_EXTENSIONS, list_image_files
from harr_tf.data.sources import SHORT_NAMES

INPUT_FORMS = (
    "DIR (image files under it, recursively), FILE_LIST (a text file naming one image per "
    "line, relative paths from the list's folder), an image file, or a dataset spec "
    "(npz:FILE, tfds:NAME[:SPLIT], idx:DIR, tfrecord:PATTERN, "
    f"{', '.join(SHORT_NAMES)})"
)


@dataclasses.dataclass(frozen=True, eq=False)
class Collection:
    """Items to encode: `ids[i]` names item i, `read(i)` returns its encoded image bytes
    (raising OSError when the file cannot be read)."""

    ids: tuple[str, ...]
    read: Callable[[int], bytes]
    source: str

    def __len__(self) -> int:
        return len(self.ids)


def open_collection(spec: str) -> Collection:
    """The collection named by `spec` (one of `INPUT_FORMS`); ids are unique.

    Folder ids are paths relative to the folder; list ids are the lines as written,
    relative paths being taken from the list's folder; dataset ids are "NAME/INDEX".

    Raises:
        ValueError: `spec` names nothing readable, or an empty or ambiguous collection.
    """
    path = Path(spec.removeprefix("folder:")).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
        files = list_image_files(path)
        if not files:
            raise ValueError(
                f"--input {spec}: no image file under it; expected files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)} (any case)."
            )
        base = path.parent if path.is_file() else path
        return _file_collection([file.relative_to(base).as_posix() for file in files], base, spec)
    if path.is_file():
        return _listed_collection(path, spec)
    kind, colon, _ = spec.partition(":")
    if (colon and kind in ("npz", "tfds", "idx", "tfrecord")) or spec in SHORT_NAMES:
        return _dataset_collection(spec)
    raise ValueError(
        f"--input {spec}: no such file or folder, nor a dataset spec. Expected {INPUT_FORMS}."
    )


def _file_collection(ids: list[str], base: Path, source: str) -> Collection:
    def read(position: int) -> bytes:
        return (base / ids[position]).read_bytes()

    return Collection(tuple(ids), read, source)


def _listed_collection(list_file: Path, spec: str) -> Collection:
    """One image path per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"--input {spec}: not a readable text file listing image paths ({err}). "
            f"Expected {INPUT_FORMS}."
        ) from err
    ids = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not ids:
        raise ValueError(f"--input {spec}: the list names no image file.")
    repeated = sorted(item for item, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(
            f"--input {spec}: each file must be listed once (its path is its id); listed "
            f"more than once: {', '.join(repeated[:10])}"
        )
    return _file_collection(ids, list_file.parent, spec)


def _dataset_collection(spec: str) -> Collection:
    try:
        dataset = load_dataset(spec)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise ValueError(f"--input {spec}: {err}") from err
    return Collection(dataset.ids, _StreamCursor(dataset).read, dataset.source)


class _StreamCursor:
    """The encoded bytes of item `position`, read from the dataset's stream in order:
    reading the items one after another costs one pass, another order restarts it.
    Records are their stored bytes; array items the PNG of their native pixels."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.next_position, self.items = 0, None

    def read(self, position: int) -> bytes:
        if self.items is None or position != self.next_position:
            rest = np.arange(position, self.dataset.num_items)
            stream = self.dataset.raw(rest) if self.dataset.sequential else self._png(rest)
            self.items = stream.prefetch(64).as_numpy_iterator()
        contents = next(self.items)
        self.next_position = position + 1
        return contents

    def _png(self, indices: np.ndarray) -> tf.data.Dataset:
        return self.dataset.images(indices).map(tf.io.encode_png)
