"""Feature sources for the WTA similarity structure (DESIGN §2.1, step 1), streamed.

Sources, best first: `backbone` (the frozen backbone as built, `--weights
imagenet|PATH|none`, applied to each un-augmented training image at the evaluation
transform: the paper's teacher), `file:FEATURES.npz` (features computed elsewhere,
keyed by item id), and pixel transforms, the fallback for small images without a
network. Every source is computed in batches: only the WTA codes are kept.

WTA compares features by rank inside each window of K dimensions, so what matters is
which dimensions are *relatively* large. On raw pixels that is dominated by where
garments usually are bright and by ties among background zeros. `smoothed_pixels`
removes both effects: each image is contrast-normalised, blurred (so a one-pixel shift
changes little) and every dimension is standardised over the training images. On the
5,000 Fashion-MNIST training images this raises the share of same-class pairs among the
top 5 % of WTA pairs from 0.52 to 0.62 (README, "What was tried").
`sqrt_smoothed_pixels` (the default) first takes the square root of every intensity,
which compresses the bright, flat body of a garment so that its outline and the darker
details (collars, straps, seams) weigh more in each image's contrast normalisation:
0.64 on the same measure, and +0.02–0.03 mAP for the trained codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from harr_tf.config import PIXEL_SOURCES, validate_feature_source
from harr_tf.data.feature_file import read_feature_file
from harr_tf.data.image_size import inference_batch_size
from harr_tf.memory_budget import HalvingBatches, network_name
from harr_tf.wta import encode_wta, make_permutation_table

# Binomial approximation of a Gaussian with σ ≈ 1 pixel.
_BLUR_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
_EPSILON = 1e-3
_BATCH = 256


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Flattened pixels in [0, 1], (N, H·W·C) float32: the baselines' feature source."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def normalised_pixels(images: np.ndarray, source: str) -> np.ndarray:
    """The per-image part of a pixel source, (N, H·W·C) float32: for `smoothed_pixels`
    the contrast-normalised, blurred pixels (of the square roots for `sqrt_`)."""
    if source == "pixels":
        return pixel_features(images)
    pixels = images.astype(np.float32)
    if source == "sqrt_smoothed_pixels":
        # Scaling an image's intensities still changes nothing: the square root turns
        # the scale into another scale, which the per-image normalisation removes.
        pixels = np.sqrt(pixels)
    axes = (1, 2, 3)
    pixels = (pixels - pixels.mean(axis=axes, keepdims=True)) / (
        pixels.std(axis=axes, keepdims=True) + _EPSILON
    )
    return _blur(pixels).reshape(len(images), -1)


def wta_features(images: np.ndarray, source: str) -> np.ndarray:
    """The (N, d) pixel-source features of `images` computed in memory at once, each
    dimension standardised over exactly these images (the direct computation that
    `wta_codes` streams)."""
    validate_feature_source(source)
    if source not in PIXEL_SOURCES:
        raise ValueError(f"wta_features computes pixel sources {PIXEL_SOURCES}. Received: {source}")
    features = normalised_pixels(images, source)
    if source == "pixels":
        return features
    return (features - features.mean(axis=0)) / (features.std(axis=0) + _EPSILON)


def smoothed_pixel_features(images: np.ndarray) -> np.ndarray:
    """`smoothed_pixels` of `images`, (N, H·W·C) float32."""
    return wta_features(images, "smoothed_pixels")


def sqrt_smoothed_pixel_features(images: np.ndarray) -> np.ndarray:
    """`sqrt_smoothed_pixels` of `images`, (N, H·W·C) float32."""
    return wta_features(images, "sqrt_smoothed_pixels")


def _blur(images: np.ndarray) -> np.ndarray:
    """Separable binomial blur over height and width, zero padding, same size."""
    radius = len(_BLUR_KERNEL) // 2
    for axis in (1, 2):
        size = images.shape[axis]
        padding = [(0, 0)] * images.ndim
        padding[axis] = (radius, radius)
        padded = np.pad(images, padding)
        images = sum(
            weight * np.take(padded, np.arange(offset, offset + size), axis=axis)
            for offset, weight in enumerate(_BLUR_KERNEL)
        )
    return images


def wta_codes(
    dataset,
    indices: np.ndarray,
    source: str,
    *,
    num_permutations: int,
    window: int,
    seed: int,
    network: keras.Model | None = None,
    features: np.ndarray | None = None,
    progress: bool = False,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The WTA table (P, K) and the codes (n, P) of `dataset`'s items `indices` under
    `source`, features computed batch by batch and dropped once encoded.

    Args:
        dataset: an `ImageDataset`.
        indices: the items, ascending.
        source: one of `harr_tf.config.FEATURE_SOURCES`, or "file:PATH".
        num_permutations, window: P and K.
        seed: seed of the permutation table.
        network: for "backbone", the model mapping pixels to (batch, d) features.
        features: for "backbone", the network's (n, d) features of the items when
            already computed (the frozen student's), instead of `network`.
        progress: show a progress bar per pass over the images.
        batch_size: images per batch through `network` (`--encode-batch-size`; None:
            `inference_batch_size` of the network), halved if a batch runs out of memory.
    """
    validate_feature_source(source)
    indices = np.asarray(indices, np.int64)
    if source.startswith("file:") or (source == "backbone" and features is not None):
        if features is None:
            features = read_feature_file(source[5:], dataset.ids, indices)
        dim = features.shape[1]
        batches = (features[s : s + _BATCH] for s in range(0, len(features), _BATCH))
    else:
        dim, batches = _image_features(dataset, indices, source, network, progress, batch_size)
    table = make_permutation_table(dim, num_permutations, window, seed=seed)
    codes = [encode_wta(batch, table) for batch in batches]
    return table, np.concatenate(codes) if codes else np.zeros((0, num_permutations), np.uint8)


def _image_features(
    dataset, indices, source, network, progress, batch_size
) -> tuple[int, Iterator]:
    """The feature dimension and a generator of (batch, d) float32 features."""

    def passes(what: str, size: int = _BATCH) -> Iterator[np.ndarray]:
        stream = dataset.images(indices).batch(size).prefetch(tf.data.AUTOTUNE)
        steps = -(-len(indices) // size)
        return tqdm(
            stream.as_numpy_iterator(), what, total=steps, unit="batch", disable=not progress
        )

    if source == "backbone":
        if network is None:
            raise ValueError("The 'backbone' WTA source needs the backbone network.")

        def features(batch: np.ndarray) -> np.ndarray:
            found = network(batch.astype(np.float32), training=False)
            return keras.ops.convert_to_numpy(found).reshape(len(batch), -1)

        def network_batches() -> Iterator[np.ndarray]:
            size = inference_batch_size(network, batch_size)
            halving = HalvingBatches(size, "The WTA teacher pass", network_name(network))
            for batch in passes("WTA features (backbone)", size):
                yield halving(features, batch)

        return int(np.prod(network.output_shape[1:])), network_batches()
    dim = int(np.prod(dataset.image_shape))
    normalise: Callable = lambda batch: normalised_pixels(batch, source)  # noqa: E731
    if source == "pixels":
        return dim, (normalise(batch) for batch in passes("WTA features"))
    return dim, _standardised(lambda what: (normalise(b) for b in passes(what)), dim, len(indices))


def _standardised(batches: Callable[[str], Iterator[np.ndarray]], dim: int, count: int):
    """Each dimension standardised over all items, in three streamed passes (mean,
    variance, output) whose float32 sums run row after row as NumPy's `mean(axis=0)`
    and `std(axis=0)` do, so the result equals `wta_features` exactly."""
    total = np.zeros((1, dim), np.float32)
    for batch in batches("WTA features: mean"):
        total = np.concatenate([total, batch]).sum(axis=0, keepdims=True)
    mean = total[0] / np.float32(count)
    squares = np.zeros((1, dim), np.float32)
    for batch in batches("WTA features: variance"):
        centred = batch - mean
        squares = np.concatenate([squares, centred * centred]).sum(axis=0, keepdims=True)
    std = np.sqrt(squares[0] / np.float32(count))
    for batch in batches("WTA features"):
        yield (batch - mean) / (std + _EPSILON)
