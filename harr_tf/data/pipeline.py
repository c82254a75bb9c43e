"""`tf.data` pipelines: an endless stream of augmented training views, read from an
`ImageDataset` as they are needed, and an ordered, un-augmented stream of array
batches (never shuffled: DESIGN §3)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.sources import ImageDataset

# Raw records (encoded bytes) a sequential source's shuffle holds: ~60 MB of 6 kB JPEGs.
SEQUENTIAL_SHUFFLE = 10_000


def check_training_items(batch_size: int, items: int) -> None:
    """Raises ValueError unless batches of `batch_size` can be drawn from `items` images:
    a run checks this before it writes anything."""
    if items < 2:
        raise ValueError(f"Training needs at least 2 images. Received: {items} training images.")
    if not 1 <= batch_size <= items:
        raise ValueError(
            f"`batch_size` must be between 1 and the number of training images "
            f"({items}); lower --batch-size. Received: batch_size={batch_size}"
        )


def training_dataset(
    images: ImageDataset | np.ndarray,
    indices: np.ndarray,
    augmenter: ViewAugmenter,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Endless batches of `{view: (batch, H, W, C) float32, "index": (batch,) int64}` for
    each of the augmenter's views (`"a"`, `"b"`, `"w"` by default).

    `images` is an `ImageDataset` (or an `(N, H, W, C)` uint8 array) and `indices` the
    items to train on; `index` is each image's position in `indices`, so the caller can
    look up per-image data (the stored WTA codes). Images are read and decoded as the
    batches need them. Reshuffled every pass and fully determined by `seed` and the
    augmenter's seed: a random-access source shuffles all of `indices`, a sequential one
    (TFDS, TFRecord) its raw records through a buffer of `SEQUENTIAL_SHUFFLE` items.
    `start_step` skips the batches already trained on, without decoding them: a resumed
    run sees the same images in the same order with the same views (every random choice
    of the augmenter is drawn from the image's position in the stream).
    """
    if isinstance(images, np.ndarray):
        images = ImageDataset.from_arrays(images)
    indices = np.asarray(indices, dtype=np.int64)
    check_training_items(batch_size, len(indices))
    positions = tf.data.Dataset.range(len(indices))
    buffer = min(len(indices), SEQUENTIAL_SHUFFLE) if images.sequential else len(indices)
    dataset = tf.data.Dataset.zip(positions, images.raw(indices))
    dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.enumerate().skip(start_step * batch_size)

    def decode(position, element):
        index, raw = element
        image = tf.ensure_shape(images.decode(raw), augmenter.image_shape)
        return {"image": image, "position": position, "index": index}

    items = tf.constant(indices)

    def augment(batch):
        views = augmenter.make_views(batch["image"], batch["position"])
        views["index"] = batch["index"]
        return views

    # Per image only the decoding; the views are made per batch, parameters per image.
    # A damaged image is left out (and named once in the log), not a failed run.
    dataset = images.decoding(dataset, decode, lambda _, element: tf.gather(items, element[0]))
    dataset = dataset.filter(lambda _, ok: ok).map(lambda element, _: element)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def inference_dataset(
    images: np.ndarray, batch_size: int = 256, image_size: tuple[int, int] | None = None
) -> tf.data.Dataset:
    """Batches of (batch, H, W, C) float32 pixels in [0, 255], in the order given.

    With `image_size`, images are resized after a centre crop to the target aspect
    ratio (the evaluation transform of DESIGN §2.3).
    """
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)

    def prepare(batch):
        batch = tf.cast(batch, tf.float32)
        if image_size is not None:
            batch = keras.ops.image.resize(batch, image_size, crop_to_aspect_ratio=True)
        return batch

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
