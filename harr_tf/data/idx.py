"""MNIST-format IDX files read into uint8 arrays, pooled train then t10k.

The files are `NAME-images-idx3-ubyte[.gz]`, each with an optional
`NAME-labels-idx1-ubyte[.gz]`. IDX is how MNIST and Fashion-MNIST are distributed,
and how the Debian package `dataset-fashion-mnist` installs Fashion-MNIST (under
/usr/share/datasets). Reading it directly gives `idx:DIR`, and lets `fashion_mnist`
and `mnist` work offline when TFDS can neither find a prepared copy nor download one.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_IDX_IMAGES = re.compile(r"^(?P<prefix>.+)-images[-.]idx3-ubyte(\.gz)?$")
_IDX_LABELS = "{prefix}-labels[-.]idx1-ubyte(\\.gz)?"


def find_idx_files(directory: Path) -> list[tuple[Path, Path | None]]:
    """`(images, labels or None)` file pairs, one per prefix, train before t10k."""
    names = sorted(path.name for path in directory.iterdir() if path.is_file())
    pairs = {}
    for file_name in names:
        match = _IDX_IMAGES.match(file_name)
        if match and match["prefix"] not in pairs:  # sorted: "x" before "x.gz"
            pattern = re.compile(_IDX_LABELS.format(prefix=re.escape(match["prefix"])))
            labels = next((other for other in names if pattern.fullmatch(other)), None)
            pairs[match["prefix"]] = (directory / file_name, labels and directory / labels)
    rank = {"train": 0, "t10k": 1}
    return [pairs[prefix] for prefix in sorted(pairs, key=lambda p: (rank.get(p, 2), p))]


def read_idx_folder(directory: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """All IDX image files in `directory`, pooled train then t10k: `(N, H, W, 1)` uint8.

    Returns the images and their `(N,)` labels, or None when a labels file is missing.

    Raises:
        FileNotFoundError: no IDX image file in `directory`.
        ValueError: a malformed file, or labels that do not match their images.
    """
    pairs = find_idx_files(directory)
    if not pairs:
        raise FileNotFoundError(
            f"idx:{directory} holds no IDX image file; expected NAME-images-idx3-ubyte[.gz] "
            "with an optional NAME-labels-idx1-ubyte[.gz]."
        )
    images, labels = [], []
    for image_path, label_path in pairs:
        images.append(_read_idx(image_path, magic=2051, ndim=3))
        if label_path is not None:
            labels.append(_read_idx(label_path, magic=2049, ndim=1))
            if len(labels[-1]) != len(images[-1]):
                raise ValueError(
                    f"{label_path} has {len(labels[-1])} labels for the "
                    f"{len(images[-1])} images of {image_path}."
                )
    if labels and len(labels) != len(images):
        logger.warning(
            "Only some IDX image files in %s have labels: the set is unlabeled.", directory
        )
    pooled_labels = np.concatenate(labels) if len(labels) == len(images) else None
    return np.concatenate(images)[..., None], pooled_labels


def _read_idx(path: Path, *, magic: int, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes, checked against its magic number and header sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable IDX file: {err}") from err
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big")
    if len(data) < header or found != magic:
        raise ValueError(f"{path} is not an IDX file: magic number {found}, expected {magic}.")
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(
            f"{path} is malformed: its header gives shape {shape} ({header + np.prod(shape)} "
            f"bytes), but the file has {len(data)} bytes."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)
