"""Every image source behind one call: `load_dataset(spec)` returns an `ImageDataset`.

Specs: `fashion_mnist`, `mnist`, `cifar10` (TFDS, all splits pooled train then
test), `tfds:NAME[:SPLIT]`, `idx:DIR` (MNIST-format files), `folder:DIR` (a user's
images, class sub-folders as labels), `tfrecord:PATTERN` (files written by
`python -m harr_tf.data.tfrecord convert`) and `npz:FILE`. A dataset is its ids, its
labels and a reader: images are decoded and resized by `tf.data` as they are needed,
so training and evaluation never branch on where the pixels came from, and never hold
a collection's pixels (IDX and npz files are small enough to stay arrays).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_datasets.core.registered import DatasetNotFoundError

from harr_tf.config import MAX_IMAGE_PIXELS
from harr_tf.data.folder import default_image_size, resize_square, scan_image_folder
from harr_tf.data.idx import find_idx_files, read_idx_folder
from harr_tf.data.readers import ArrayReader, DamagedItems, FileReader, map_skipping_damaged
from harr_tf.data.tfds_source import DataUnavailableError, open_tfds

logger = logging.getLogger(__name__)

ACCEPTED_SPECS = (
    "fashion_mnist, mnist, cifar10, tfds:NAME[:SPLIT], idx:DIR, folder:DIR, "
    "tfrecord:PATTERN, npz:FILE"
)
SHORT_NAMES = ("fashion_mnist", "mnist", "cifar10")
# Local IDX copies of the MNIST-format datasets, as the Debian packages install them.
_IDX_FOLDERS = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}
_SYSTEM_DATASETS = Path("/usr/share/datasets")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image collection: ids, optional evaluation labels, and a way to read any item.

    Attributes:
        ids: one unique id per item (paths relative to the folder for `folder:`,
            "NAME/INDEX" for arrays and TFDS).
        labels: `(N,)` int64 class ids, `(N, num_classes)` uint8 multi-hot, or None
            when unlabeled (labels serve evaluation only).
        name: short name, e.g. "fashion_mnist".
        source: where the pixels come from, e.g. "idx:/usr/share/datasets/fashion-mnist".
        reader: the source's reader (`harr_tf.data.readers`).
        channels: 1 (grayscale) or 3 (RGB).
        native_size: the `(height, width)` every item has on disk, or None when they differ.
        image_size: the `(height, width)` items are read at (centre crop, then resize);
            None reads them at `native_size`.
        class_names: the name of each class id, when known.
        damaged: the items found damaged so far (shared by every copy, e.g. `at_size`).
    """

    ids: tuple[str, ...]
    labels: np.ndarray | None
    name: str
    source: str
    reader: object
    channels: int
    native_size: tuple[int, int] | None
    image_size: tuple[int, int] | None = None
    class_names: tuple[str, ...] | None = None
    damaged: DamagedItems | None = None

    def __post_init__(self) -> None:
        if self.damaged is None:
            object.__setattr__(self, "damaged", DamagedItems(self.ids, self.source))
        if self.labels is not None:
            object.__setattr__(self, "labels", _checked_labels(self.labels, len(self.ids), self))
        if self.native_size is None and self.image_size is None:
            raise ValueError(f"{self.source}: images differ in size, so an image size is needed.")

    def __deepcopy__(self, memo: dict) -> ImageDataset:
        return self  # immutable; tuners deep-copy callbacks that hold one

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray | None = None, name: str = "array", source=None
    ) -> ImageDataset:
        """An in-memory dataset of `(N, H, W, C)` uint8 images (C = 1 or 3)."""
        source = source or f"array:{name}"
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"{source}: images must be uint8 of shape (N, H, W, C) with C = 1 or 3. "
                f"Received: dtype={images.dtype}, shape={images.shape}"
            )
        ids = tuple(f"{name}/{index}" for index in range(len(images)))
        return cls(
            ids, labels, name, source, ArrayReader(images), images.shape[-1], images.shape[1:3]
        )

    @property
    def num_items(self) -> int:
        return len(self.ids)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)` of the images as read."""
        return (*(self.image_size or self.native_size), self.channels)

    @property
    def multi_label(self) -> bool:
        return self.labels is not None and self.labels.ndim == 2

    @property
    def sequential(self) -> bool:
        """True when items can only be read in ascending order (TFDS, TFRecord)."""
        return self.reader.sequential

    def at_size(self, size: int | None) -> ImageDataset:
        """This dataset read at `size` × `size` (None: the native size)."""
        target = None if size is None else (int(size), int(size))
        if target == self.native_size:
            target = None
        return dataclasses.replace(self, image_size=target)

    def raw(self, indices: np.ndarray) -> tf.data.Dataset:
        """The raw items of `indices` in order (indices, paths or encoded bytes)."""
        return self.reader.raw(np.asarray(indices, np.int64))

    def decode(self, raw: tf.Tensor) -> tf.Tensor:
        """One raw item → `image_shape` uint8: decoded, centre-cropped and resized."""
        image = self.reader.decode(raw)
        if self.image_size is not None:
            image = resize_square(image, self.image_size)
        return tf.ensure_shape(image, self.image_shape)

    def images(self, indices: np.ndarray) -> tf.data.Dataset:
        """`image_shape` uint8 images of `indices`, in order, decoded in parallel; a
        damaged item is a blank (zero) image, noted in `damaged`."""
        indices = np.asarray(indices, np.int64)
        items = tf.data.Dataset.from_tensor_slices(indices)
        stream = self.decoding(
            tf.data.Dataset.zip(self.raw(indices), items),
            lambda raw, _: self.decode(raw),
            lambda _, item: item,
        )
        stream = stream.map(lambda image, ok: image)
        return stream.apply(tf.data.experimental.assert_cardinality(len(indices)))

    def decoding(self, stream: tf.data.Dataset, fn, item) -> tf.data.Dataset:
        """`(fn(*element), ok)` for each element of `stream`, in order, where `fn`
        decodes a raw item (with `decode`) and `item(*element)` is its dataset item:
        where a damaged item makes `fn` fail, zeros with ok False (`map_skipping_damaged`)."""
        if not self.reader.can_be_damaged:
            return stream.map(
                lambda *element: (fn(*element), tf.constant(True)),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        return map_skipping_damaged(stream, fn, self.damaged, item)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """`(n, H, W, C)` uint8 images of `indices` (any order) in memory: a few items."""
        indices = np.asarray(indices, np.int64)
        unique, inverse = np.unique(indices, return_inverse=True)
        batches = list(self.images(unique).batch(256).as_numpy_iterator())
        pixels = np.concatenate(batches) if batches else np.zeros((0, *self.image_shape), np.uint8)
        return pixels[inverse]


def load_dataset(
    spec: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> ImageDataset:
    """Open the images named by `spec` (see the module docstring).

    Args:
        spec: which images; one of `ACCEPTED_SPECS`.
        data_dir: for TFDS specs, the TFDS data directory (default `$TFDS_DATA_DIR`,
            else `~/tensorflow_datasets`). For `fashion_mnist` and `mnist` it is also
            where IDX files are looked for first: found there, they are used directly
            with no download attempt. Defaults to None.
        image_size: when given, every image is centre-cropped and resized to
            `image_size` × `image_size` as it is read. Sources whose images differ
            in size are read at 224 × 224 when it is None. Defaults to None.
        max_pixels: folder and TFRecord images declaring more pixels in their header
            are skipped unread (named in the log). Defaults to 40,000,000.

    Returns:
        The ids, labels when the source has them, and a reader of the images.
    """
    kind, colon, argument = spec.partition(":")
    if not colon and spec in SHORT_NAMES:
        dataset = _load_short_name(spec, data_dir)
    elif colon and kind == "tfds" and argument:
        name, _, split = argument.partition(":")
        dataset = _load_tfds(name, split or None, data_dir)
    elif colon and kind == "tfrecord" and argument:
        # Imported here: `python -m harr_tf.data.tfrecord` runs that module as __main__.
        from harr_tf.data.tfrecord import open_tfrecords

        dataset = ImageDataset(**open_tfrecords(argument, max_pixels))
    elif colon and kind in ("idx", "folder", "npz") and argument:
        path = Path(argument).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{spec}: no such file or directory: {path}")
        if kind == "idx":
            dataset = _load_idx(path, path.name)
        elif kind == "folder":
            dataset = _load_folder(path, max_pixels)
        else:
            dataset = _load_npz(path)
    else:
        hint = f" ({spec} exists: prefix it, e.g. folder:{spec})" if os.path.exists(spec) else ""
        raise ValueError(f"Unknown dataset {spec!r}{hint}. Expected one of: {ACCEPTED_SPECS}.")
    if image_size is not None:
        dataset = dataset.at_size(image_size)
    logger.info(
        "Opened %d images %s from %s", dataset.num_items, dataset.image_shape, dataset.source
    )
    return dataset


def _load_folder(path: Path, max_pixels: int) -> ImageDataset:
    found = scan_image_folder(path, max_pixels)
    sizes = np.unique(found.sizes, axis=0)
    native = tuple(int(side) for side in sizes[0]) if len(sizes) == 1 else None
    source = f"folder:{path}"
    return ImageDataset(
        found.ids,
        found.labels,
        path.stem,
        source,
        FileReader(list(found.paths), max_pixels),
        3,
        native,
        default_image_size(native, source),
        found.class_names,
    )


def _load_short_name(name: str, data_dir: str | None) -> ImageDataset:
    """TFDS with all splits pooled; for MNIST formats, local IDX files when TFDS cannot serve."""
    if data_dir is not None and name in _IDX_FOLDERS:
        local = _first_idx_dir(_idx_candidates(name, data_dir, None))
        if local is not None:
            return _load_idx(local, name)
    try:
        return _load_tfds(name, "train+test", data_dir)
    except DataUnavailableError as err:
        if name not in _IDX_FOLDERS:
            raise
        candidates = _idx_candidates(name, data_dir, os.environ.get("HARR_DATA_DIR"))
        local = _first_idx_dir(candidates)
        if local is None:
            looked = ", ".join(str(path) for path in candidates)
            raise DataUnavailableError(
                f"{err} No local IDX files either; looked in: {looked}."
            ) from err
        logger.warning("%s Using the IDX files in %s instead.", err, local)
        return _load_idx(local, name)


def _load_tfds(name: str, split: str | None, data_dir: str | None) -> ImageDataset:
    """A TFDS dataset (see `open_tfds`); an unknown name is reported as a bad spec."""
    try:
        return ImageDataset(**open_tfds(name, split, data_dir))
    except DatasetNotFoundError as err:
        raise ValueError(
            f"Unknown TFDS dataset {name!r} in tfds:{name}. Expected a name that "
            f"tfds.list_builders() lists; accepted specs: {ACCEPTED_SPECS}."
        ) from err


def _idx_candidates(name: str, data_dir: str | None, harr_data_dir: str | None) -> list[Path]:
    """Where IDX files of `name` may be, in search order."""
    folder = _IDX_FOLDERS[name]
    bases = [Path(base).expanduser() for base in (data_dir, harr_data_dir) if base]
    return [path for base in bases for path in (base / folder, base)] + [_SYSTEM_DATASETS / folder]


def _first_idx_dir(candidates: list[Path]) -> Path | None:
    return next((path for path in candidates if path.is_dir() and find_idx_files(path)), None)


def _load_idx(directory: Path, name: str) -> ImageDataset:
    """All IDX image files in `directory`, pooled train then t10k, with their labels."""
    images, labels = read_idx_folder(directory)
    return ImageDataset.from_arrays(images, labels, name, f"idx:{directory}")


def _load_npz(path: Path) -> ImageDataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"npz:{path} is not a readable .npz file: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"npz:{path} holds one array, not an .npz archive with an 'images' key.")
    with archive:
        if "images" not in archive.files:
            raise ValueError(
                f"npz:{path} has no 'images' array; it has: {sorted(archive.files)}. Expected "
                "'images' (N, H, W[, C]) uint8 and optional 'labels' (N,) or (N, num_classes)."
            )
        try:
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
        except (OSError, ValueError, zipfile.BadZipFile) as err:  # e.g. an object array
            raise ValueError(
                f"npz:{path}: its arrays cannot be read ({err}). Expected 'images' "
                "(N, H, W[, C]) uint8 and optional 'labels' (N,) or (N, num_classes) integers."
            ) from err
    if images.ndim == 3:
        images = images[..., None]
    return ImageDataset.from_arrays(images, labels, path.stem, f"npz:{path}")


def _checked_labels(labels: np.ndarray, count: int, dataset: ImageDataset) -> np.ndarray:
    """Labels as int64 class ids `(N,)` or uint8 multi-hot `(N, C)`, or a clear error."""
    labels = np.asarray(labels)
    integral = labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)
    if labels.ndim not in (1, 2) or not integral or len(labels) != count:
        raise ValueError(
            f"{dataset.source}: labels must be integer class ids (N,) or multi-hot "
            f"(N, num_classes) with N = {count} images. Received: dtype={labels.dtype}, "
            f"shape={labels.shape}"
        )
    return labels.astype(np.int64) if labels.ndim == 1 else (labels != 0).astype(np.uint8)
