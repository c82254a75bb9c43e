"""A user's image folder (or a single image file) read into uint8 arrays.

In an image folder, class sub-folders become evaluation labels and loose images
make an unlabeled set. Decoding and resizing use the same TensorFlow ops as the
exported serving graph, so an image gets the same pixels in training and serving.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DEFAULT_IMAGE_SIZE = 224
_PROGRESS_MIN_FILES = 500
_MAX_NAMED_FILES = 20


@dataclasses.dataclass(frozen=True, eq=False)
class FolderImages:
    """What `read_image_folder` found: `(N, H, W, 3)` uint8 images and their metadata."""

    images: np.ndarray
    labels: np.ndarray | None
    ids: tuple[str, ...]
    class_names: tuple[str, ...] | None


def resize_square(images: tf.Tensor | np.ndarray, size: int | tuple[int, int]) -> tf.Tensor:
    """Centre-crop to a square, then resize to `(size, size)`; uint8 in, uint8 out.

    Works on one image `(H, W, C)` or a batch `(N, H, W, C)`, eagerly or inside
    `tf.data` or a serving graph. Cropping first keeps the aspect ratio; antialiasing
    keeps large photos from aliasing when shrunk. A `(height, width)` pair crops to
    that aspect ratio instead (the serving graph of a model trained on non-square images).
    """
    resized = keras.ops.image.resize(
        keras.ops.cast(images, "float32"),
        (size, size) if isinstance(size, int) else tuple(size),
        crop_to_aspect_ratio=True,
        antialias=True,
    )
    return keras.ops.cast(keras.ops.clip(keras.ops.round(resized), 0, 255), "uint8")


def list_image_files(root: Path) -> list[Path]:
    """Image files under `root` by extension (any case), sorted by relative path.

    Hidden files and folders (`.ipynb_checkpoints`, macOS `._x.jpg`) are left out:
    they are tool debris, not part of the collection.
    """
    if root.is_file():
        return [root]
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if not hidden and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def read_image_folder(root: Path, image_size: int | None = None) -> FolderImages:
    """Decode every image under `root` (or the single image file `root`) to RGB.

    Labels come from first-level sub-folders when every image lies in one; images
    directly in `root` make the set unlabeled. Images are resized to
    `image_size` × `image_size` when it is given, or to 224 × 224 when they differ
    in size; otherwise they keep their common size. Files that do not decode are
    skipped with one warning naming them.

    Raises:
        ValueError: no image file under `root`, or none of them decodes.
    """
    paths = list_image_files(root)
    if not paths:
        raise ValueError(
            f"folder:{root} holds no image file; expected {', '.join(IMAGE_EXTENSIONS)} "
            "files, directly or in class sub-folders."
        )
    base = root.parent if root.is_file() else root
    ids = [path.relative_to(base).as_posix() for path in paths]
    labels, class_names = _folder_labels(root, ids)

    images, kept, skipped = [], [], []
    target = image_size
    progress = tqdm(
        paths, desc=f"Reading {root.name}", unit="image", disable=len(paths) <= _PROGRESS_MIN_FILES
    )
    for position, path in enumerate(progress):
        try:
            image = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
        except (tf.errors.OpError, OSError):
            skipped.append(ids[position])
            continue
        if target is None and images and tuple(image.shape) != images[0].shape:
            target = DEFAULT_IMAGE_SIZE
            logger.info(
                "Images under %s differ in size (%s and %s): resizing all to %d x %d.",
                root,
                images[0].shape,
                tuple(image.shape),
                target,
                target,
            )
            images = [np.asarray(resize_square(kept_image, target)) for kept_image in images]
        if target is not None:
            image = resize_square(image, target)
        images.append(np.asarray(image))
        kept.append(position)

    if not images and root.is_file():
        raise ValueError(f"folder:{root} is not a decodable JPEG, PNG, BMP, GIF or WebP image.")
    if not images:
        raise ValueError(
            f"folder:{root}: none of its {len(paths)} image files could be decoded: "
            f"{_name_files(skipped)}"
        )
    if skipped:
        logger.warning(
            "Skipped %d of %d files under %s that could not be decoded: %s",
            len(skipped),
            len(paths),
            root,
            _name_files(skipped),
        )
    return FolderImages(
        images=np.stack(images),
        labels=None if labels is None else labels[kept],
        ids=tuple(ids[position] for position in kept),
        class_names=class_names,
    )


def _folder_labels(root: Path, ids: list[str]) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Class ids from first-level sub-folder names, or `(None, None)` when any image is loose."""
    parts = [item.split("/") for item in ids]
    if len(ids) > 1 and all(len(item) > 1 for item in parts):
        class_names = tuple(sorted({item[0] for item in parts}))
        lookup = {name: index for index, name in enumerate(class_names)}
        return np.array([lookup[item[0]] for item in parts], np.int64), class_names
    if len(ids) > 1:
        logger.warning(
            "Images lie directly in %s, not all in class sub-folders: the set is unlabeled, "
            "and evaluation (mAP) will need labels. Put each class in its own sub-folder "
            "to evaluate on it.",
            root,
        )
    return None, None


def _name_files(names: list[str]) -> str:
    """A readable list of file names, cut off after a few."""
    shown = ", ".join(names[:_MAX_NAMED_FILES])
    more = len(names) - _MAX_NAMED_FILES
    return f"{shown} and {more} more" if more > 0 else shown
