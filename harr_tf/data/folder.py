"""A user's image folder (or a single image file): its files, labels and image sizes.

In an image folder, class sub-folders become evaluation labels and loose images
make an unlabeled set. Only headers are read here (size and format, with PIL's lazy
open): the pixels are decoded later, by `tf.data`, with the same TensorFlow ops as the
exported serving graph, so an image gets the same pixels in training and serving.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from harr_tf.config import MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DEFAULT_IMAGE_SIZE = 224
_FORMATS = {"JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO"}
# What a complete file ends with: a truncated download fails here, not mid-training.
_TRAILERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b";"}
_PROGRESS_MIN_FILES = 500
_MAX_NAMED_FILES = 20


@dataclasses.dataclass(frozen=True, eq=False)
class FolderFiles:
    """What `scan_image_folder` found: readable image files and their metadata.

    Attributes:
        paths: absolute paths, one per item.
        ids: paths relative to the folder (POSIX), one per item.
        labels: `(N,)` int64 class ids from sub-folders, or None.
        class_names: the sub-folder of each class id, or None.
        sizes: `(N, 2)` int64 `(height, width)` from each file's header.
    """

    paths: tuple[str, ...]
    ids: tuple[str, ...]
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    sizes: np.ndarray


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


def image_header(path: Path) -> tuple[int, int]:
    """`(height, width)` from the file's header, without decoding its pixels.

    Raises:
        ValueError: not a complete JPEG/PNG/BMP/GIF/WebP file (the reason is the message).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        return _bomb_size(path)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"not an image ({err})") from err
    if kind not in _FORMATS:
        raise ValueError(f"a {kind} image, which TensorFlow cannot decode")
    trailer = _TRAILERS.get(kind)
    if trailer is not None and not _ends_with(path, trailer):
        if kind not in ("JPEG", "MPO"):  # TensorFlow refuses a PNG or GIF without its end
            raise ValueError("truncated")
        _check_decodes(path)  # a JPEG may carry data after its end (motion photos)
    return height, width


def _ends_with(path: Path, trailer: bytes) -> bool:
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - 64))
        return trailer in stream.read()


def _check_decodes(path: Path) -> None:
    """Decodes the JPEG at 1/8 scale, or raises ValueError("truncated")."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8 or 1, image.height // 8 or 1))
            image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"truncated ({err})") from err


def _bomb_size(path: Path) -> tuple[int, int]:
    """The size of an image PIL refuses to open as a decompression bomb."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            width, height = image.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return height, width


def default_image_size(native: tuple[int, int] | None, source: str) -> tuple[int, int] | None:
    """The size a source reads its images at when no run asks for one: None (native)
    when every item has the same native size, else 224 x 224, said in the log. Folders,
    TFRecords and TFDS sources all ask here."""
    if native is not None:
        return None
    logger.info(
        "Images of %s differ in size: reading them at %d x %d.",
        source,
        DEFAULT_IMAGE_SIZE,
        DEFAULT_IMAGE_SIZE,
    )
    return (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)


def scan_image_folder(root: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> FolderFiles:
    """The readable images under `root` (or the single image file `root`).

    Labels come from first-level sub-folders when every image lies in one; images
    directly in `root` make the set unlabeled. Files that are not complete images are
    skipped with one warning naming them; images over `max_pixels` with another.

    Raises:
        ValueError: no image file under `root`, or none of them is readable.
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
    kept, sizes, unreadable, large = [], [], [], []
    progress = tqdm(
        paths, desc=f"Scanning {root.name}", unit="file", disable=len(paths) <= _PROGRESS_MIN_FILES
    )
    for position, path in enumerate(progress):
        try:
            height, width = image_header(path)
        except (OSError, ValueError):
            unreadable.append(ids[position])
            continue
        if height * width > max_pixels:
            large.append(f"{ids[position]} ({width} x {height})")
            continue
        kept.append(position)
        sizes.append((height, width))
    if not kept and root.is_file():
        raise ValueError(f"folder:{root} is not a decodable JPEG, PNG, BMP, GIF or WebP image.")
    if unreadable:
        logger.warning(
            "Skipped %d of %d files under %s that could not be decoded: %s",
            len(unreadable),
            len(paths),
            root,
            _name_files(unreadable),
        )
    if large:
        logger.warning(
            "Skipped %d images under %s larger than %d pixels, unread: %s",
            len(large),
            root,
            max_pixels,
            _name_files(large),
        )
    if not kept:
        raise ValueError(
            f"folder:{root}: none of its {len(paths)} image files could be decoded: "
            f"{_name_files(unreadable + large)}"
        )
    return FolderFiles(
        paths=tuple(str(paths[position]) for position in kept),
        ids=tuple(ids[position] for position in kept),
        labels=None if labels is None else labels[kept],
        class_names=class_names,
        sizes=np.asarray(sizes, np.int64),
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
