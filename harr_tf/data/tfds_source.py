"""Image datasets from TensorFlow Datasets (TFDS), failing fast when they cannot be had.

A dataset that is not prepared locally is downloaded, but only after a probe of a
few seconds shows a connection is possible: offline, TFDS's own retries would take
minutes before failing. Either way, an unavailable dataset raises
`DataUnavailableError`, so the caller can fall back to local files.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from harr_tf.data.folder import default_image_size
from harr_tf.data.readers import SequentialReader

logger = logging.getLogger(__name__)

# TFDS's downloader retries with backoff: offline, one attempt measured 204 s before
# failing. A connect to TFDS's storage host answers in milliseconds to seconds.
_PROBE_ADDRESS = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 3.0
_BATCH = 1024


class DataUnavailableError(RuntimeError):
    """A TFDS dataset is not prepared locally and cannot be downloaded now."""


def open_tfds(name: str, split: str | None, data_dir: str | None) -> dict:
    """A TFDS dataset as `ImageDataset` fields: labels read now, images streamed later.

    Labels (and the item count) come from one pass that skips image decoding; the
    reader then streams the chosen items' encoded images in the split's order.

    Args:
        name: the TFDS builder name, e.g. "cifar10".
        split: a TFDS split expression; None pools every official split, train first.
        data_dir: the TFDS data directory; None means `$TFDS_DATA_DIR`, else TFDS's default.

    Raises:
        tfds.core.registered.DatasetNotFoundError: TFDS has no dataset named `name`.
        DataUnavailableError: the dataset is not prepared and cannot be downloaded now.
        ValueError: the dataset has no image feature, or `split` holds no example.
    """
    builder = tfds.builder(name, data_dir=data_dir or os.environ.get("TFDS_DATA_DIR"))
    if not builder.is_prepared():
        _download(builder)
    features = builder.info.features
    if "image" not in features:
        raise ValueError(f"tfds:{name} has no 'image' feature; its features: {list(features)}")
    image_feature = features["image"]
    label_key = next((key for key in ("label", "labels") if key in features), None)
    to_labels, class_names = _label_converter(features[label_key] if label_key else None)
    split = split or "+".join(_ordered_splits(builder.info.splits))

    def records() -> tf.data.Dataset:
        return builder.as_dataset(
            split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
        )

    def label_of(example: dict) -> tf.Tensor:
        return to_labels(example[label_key]) if to_labels is not None else tf.constant(0)

    batches = list(
        tfds.as_numpy(records().map(label_of, num_parallel_calls=tf.data.AUTOTUNE).batch(_BATCH))
    )
    if not batches:
        raise ValueError(f"tfds:{name} split {split!r} holds no example.")
    labels = np.concatenate(batches)
    height, width, channels = image_feature.shape
    native = None if height is None or width is None else (height, width)
    source = f"tfds:{builder.data_dir} [{split}]"
    return {
        "ids": tuple(f"{builder.name}/{index}" for index in range(len(labels))),
        "labels": labels if to_labels is not None else None,
        "name": builder.name,
        "source": source,
        "reader": SequentialReader(
            lambda: records().map(lambda example: example["image"]),
            image_feature.decode_example,
            np.arange(len(labels)),
        ),
        "channels": channels or 3,
        "native_size": native,
        "image_size": default_image_size(native, source),
        "class_names": class_names,
    }


def _download(builder: tfds.core.DatasetBuilder) -> None:
    """Prepare `builder`, or fail within seconds when no download can work."""
    where = f"TFDS dataset {builder.name!r} is not prepared in {builder.data_dir}"
    advice = "Prepare it where there is internet and point TFDS_DATA_DIR (or data_dir) at it."
    reason = _offline_reason()
    if reason is not None:
        raise DataUnavailableError(f"{where} and cannot be downloaded: {reason}. {advice}")
    logger.info("Downloading %s with TFDS into %s", builder.name, builder.data_dir)
    try:
        builder.download_and_prepare()
    # Whatever stops a download (network, a missing optional module, a full disk),
    # the answer is the same: this source is unavailable, and the caller may fall back.
    except Exception as err:
        raise DataUnavailableError(f"{where} and its download failed: {err!r}. {advice}") from err


def _offline_reason(timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """Why no download can work right now (no route to the storage host or proxy), else None."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("http")
    if proxy:
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        address = (parsed.hostname or "", parsed.port or 80)
    else:
        address = _PROBE_ADDRESS
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    # Name resolution ignores socket timeouts, so the whole probe runs on a thread
    # that is abandoned once the deadline passes.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    if outcome and outcome[0] is None:
        return None
    error = outcome[0] if outcome else f"no answer within {timeout:g} s"
    return f"cannot reach {address[0]}:{address[1]} ({error})"


def _ordered_splits(splits: dict) -> list[str]:
    """Official splits, train first and test last, so pooled indices are stable."""
    rank = {"train": 0, "validation": 1, "test": 3}
    return sorted(splits, key=lambda split: (rank.get(split, 2), split))


def _label_converter(
    feature: object,
) -> tuple[Callable[[tf.Tensor], tf.Tensor] | None, tuple[str, ...] | None]:
    """A `tf` function from a TFDS label value to our label form, and the class names."""
    if isinstance(feature, tfds.features.ClassLabel):
        return (lambda label: tf.cast(label, tf.int64)), tuple(feature.names)
    if isinstance(feature, tfds.features.Sequence) and isinstance(
        feature.feature, tfds.features.ClassLabel
    ):
        depth = feature.feature.num_classes

        def multi_hot(label: tf.Tensor) -> tf.Tensor:
            counts = tf.reduce_sum(tf.one_hot(label, depth, dtype=tf.int32), axis=0)
            return tf.cast(tf.minimum(counts, 1), tf.uint8)

        return multi_hot, tuple(feature.feature.names)
    if isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 1:
        return (lambda label: tf.cast(tf.not_equal(label, 0), tf.uint8)), None
    if feature is not None:
        logger.warning("Label feature %s is not a class label: the set is unlabeled.", feature)
    return None, None
