"""Every image source behind one call: `load_dataset(spec)` returns an `ImageDataset`.

Specs: `fashion_mnist`, `mnist`, `cifar10` (TFDS, all splits pooled train then
test), `tfds:NAME[:SPLIT]`, `idx:DIR` (MNIST-format files), `folder:DIR` (a user's
images, class sub-folders as labels) and `npz:FILE`. Training and evaluation then
never branch on where the pixels came from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from tensorflow_datasets.core.registered import DatasetNotFoundError

from harr_tf.data.folder import read_image_folder, resize_square
from harr_tf.data.idx import find_idx_files, read_idx_folder
from harr_tf.data.tfds_source import DataUnavailableError, load_tfds

logger = logging.getLogger(__name__)

ACCEPTED_SPECS = "fashion_mnist, mnist, cifar10, tfds:NAME[:SPLIT], idx:DIR, folder:DIR, npz:FILE"
SHORT_NAMES = ("fashion_mnist", "mnist", "cifar10")
# Local IDX copies of the MNIST-format datasets, as the Debian packages install them.
_IDX_FOLDERS = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}
_SYSTEM_DATASETS = Path("/usr/share/datasets")
_BATCH = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole image collection in memory, with optional evaluation labels.

    Attributes:
        images: `(N, H, W, C)` uint8, C = 1 (grayscale) or 3 (RGB).
        labels: `(N,)` int64 class ids, `(N, num_classes)` uint8 multi-hot, or None
            when unlabeled (labels serve evaluation only).
        name: short name, e.g. "fashion_mnist".
        source: where the pixels came from, e.g. "idx:/usr/share/datasets/fashion-mnist".
        ids: per-item ids (paths relative to the folder for `folder:`), else None.
        class_names: the name of each class id, when known.
    """

    images: np.ndarray
    labels: np.ndarray | None
    name: str
    source: str
    ids: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"{self.source}: images must be uint8 of shape (N, H, W, C) with C = 1 or 3. "
                f"Received: dtype={images.dtype}, shape={images.shape}"
            )
        if self.labels is not None:
            object.__setattr__(self, "labels", _checked_labels(self.labels, len(images), self))
        if self.ids is not None and len(self.ids) != len(images):
            raise ValueError(f"{self.source}: {len(self.ids)} ids for {len(images)} images.")

    @property
    def num_items(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)`."""
        return tuple(self.images.shape[1:])

    @property
    def multi_label(self) -> bool:
        return self.labels is not None and self.labels.ndim == 2


def load_dataset(
    spec: str, *, data_dir: str | None = None, image_size: int | None = None
) -> ImageDataset:
    """Load the images named by `spec` (see the module docstring) into memory.

    Args:
        spec: which images; one of `ACCEPTED_SPECS`.
        data_dir: for TFDS specs, the TFDS data directory (default `$TFDS_DATA_DIR`,
            else `~/tensorflow_datasets`). For `fashion_mnist` and `mnist` it is also
            where IDX files are looked for first: found there, they are used directly
            with no download attempt. Defaults to None.
        image_size: when given, every image is centre-cropped and resized to
            `image_size` × `image_size` as it is loaded. Sources whose images differ
            in size are resized to 224 × 224 when it is None. Defaults to None.

    Returns:
        The images, their labels when the source has them, and where they came from.
    """
    kind, colon, argument = spec.partition(":")
    if not colon and spec in SHORT_NAMES:
        dataset = _load_short_name(spec, data_dir, image_size)
    elif colon and kind == "tfds" and argument:
        name, _, split = argument.partition(":")
        dataset = _load_tfds(name, split or None, data_dir, image_size)
    elif colon and kind in ("idx", "folder", "npz") and argument:
        path = Path(argument).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{spec}: no such file or directory: {path}")
        if kind == "idx":
            dataset = _load_idx(path, path.name)
        elif kind == "folder":
            found = read_image_folder(path, image_size)
            dataset = ImageDataset(
                found.images,
                found.labels,
                path.stem,
                f"folder:{path}",
                found.ids,
                found.class_names,
            )
        else:
            dataset = _load_npz(path)
    else:
        hint = f" ({spec} exists: prefix it, e.g. folder:{spec})" if os.path.exists(spec) else ""
        raise ValueError(f"Unknown dataset {spec!r}{hint}. Expected one of: {ACCEPTED_SPECS}.")
    dataset = _resized(dataset, image_size)
    logger.info(
        "Loaded %d images %s from %s", dataset.num_items, dataset.image_shape, dataset.source
    )
    return dataset


def _load_short_name(name: str, data_dir: str | None, image_size: int | None) -> ImageDataset:
    """TFDS with all splits pooled; for MNIST formats, local IDX files when TFDS cannot serve."""
    if data_dir is not None and name in _IDX_FOLDERS:
        local = _first_idx_dir(_idx_candidates(name, data_dir, None))
        if local is not None:
            return _load_idx(local, name)
    try:
        return _load_tfds(name, "train+test", data_dir, image_size)
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


def _load_tfds(
    name: str, split: str | None, data_dir: str | None, image_size: int | None
) -> ImageDataset:
    """A TFDS dataset (see `load_tfds`); an unknown name is reported as a bad spec."""
    try:
        found = load_tfds(name, split, data_dir, image_size)
    except DatasetNotFoundError as err:
        raise ValueError(
            f"Unknown TFDS dataset {name!r} in tfds:{name}. Expected a name that "
            f"tfds.list_builders() lists; accepted specs: {ACCEPTED_SPECS}."
        ) from err
    return ImageDataset(
        found.images, found.labels, found.name, found.source, class_names=found.class_names
    )


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
    return ImageDataset(images, labels, name, f"idx:{directory}")


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
        images = archive["images"]
        labels = archive["labels"] if "labels" in archive.files else None
    if images.ndim == 3:
        images = images[..., None]
    return ImageDataset(images, labels, path.stem, f"npz:{path}")


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


def _resized(dataset: ImageDataset, image_size: int | None) -> ImageDataset:
    """`dataset` at `image_size` × `image_size`, resized in batches to bound memory."""
    if image_size is None or dataset.image_shape[:2] == (image_size, image_size):
        return dataset
    parts = [
        np.asarray(resize_square(dataset.images[start : start + _BATCH], image_size))
        for start in range(0, dataset.num_items, _BATCH)
    ]
    return dataclasses.replace(dataset, images=np.concatenate(parts))
