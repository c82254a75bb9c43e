"""What size the network sees (`--image-size`), chosen so a default run fits 24 GB.

Measured on 2 cores at batch 128: `small_cnn` at 224 x 224 peaked at 14.3 GB (three
views of 128 images), so it gets a small size on large photos; small images keep their
native size (Fashion-MNIST 28 x 28, CIFAR-10 32 x 32); the pretrained backbones get the
224 x 224 they were trained at.
"""

from __future__ import annotations

SMALL_IMAGE_SIDE = 96  # native images up to this side are trained at their own size
SMALL_CNN_SIZE = 64  # small_cnn on larger images
PRETRAINED_SIZE = 224
# keras.applications' smallest input without the classifier; small_cnn's grid pooling
# needs 3 x 3 cells after two 2 x 2 max-poolings.
MIN_SIZE = {
    "small_cnn": 12,
    "vgg16": 32,
    "resnet50": 32,
    "efficientnetb0": 32,
    "efficientnet_lite0": 32,
}
INFERENCE_PIXELS = 512 * 64 * 64  # 512 images of 64 x 64; 32 images of 224 x 224
# A training step keeps three views' activations for the gradient: at 224 x 224 a batch
# of 32 peaked at 9.6 GB (ResNet-50) and 128 passed 16 GB (docs/collections.md).
TRAINING_PIXELS = 32 * 224 * 224
TRAINING_BATCH = 128  # the batch of images up to 96 x 96 (Fashion-MNIST's 128)


def _batch_within(image_shape: tuple[int, ...], pixels: int, largest: int) -> int:
    """The largest power of two in [16, `largest`] whose batch of `image_shape` images
    holds at most `pixels` pixels (16 when even that holds more)."""
    fits = max(1, pixels // (image_shape[0] * image_shape[1]))
    return int(min(largest, max(16, 2 ** (fits.bit_length() - 1))))


def inference_batch_size(image_shape: tuple[int, ...], requested: int | None = None) -> int:
    """Images per batch when encoding or extracting features (`--encode-batch-size`;
    None: at most `INFERENCE_PIXELS` pixels per batch, a power of two in [16, 512]).

    Inference holds a whole batch's activations at once: 512 images at 224 x 224 through
    VGG16 would need over 13 GB for two of its first feature maps alone.
    """
    if requested is not None:
        return requested
    return _batch_within(image_shape, INFERENCE_PIXELS, 512)


def training_batch_size(image_shape: tuple[int, ...], requested: int | None = None) -> int:
    """Images per training batch (`--batch-size`; None: `TRAINING_BATCH` up to 96 x 96,
    then halved until a batch holds at most `TRAINING_PIXELS` pixels, at least 16), so a
    default run fits 24 GB at any image size."""
    if requested is not None:
        return requested
    return _batch_within(image_shape, TRAINING_PIXELS, TRAINING_BATCH)


def resolve_image_size(
    requested: int | None, native: tuple[int, int] | None, backbone: str
) -> int | None:
    """The side to read images at; None keeps every image at its `native` size.

    Args:
        requested: `--image-size`, or None for the default.
        native: the `(height, width)` all images share, or None when they differ.
        backbone: the backbone's name.

    Raises:
        ValueError: `requested` (or the native size kept) is below the backbone's minimum.
    """
    minimum = MIN_SIZE.get(backbone, 1)
    if requested is None:
        if backbone != "small_cnn":
            return PRETRAINED_SIZE
        if native is not None and max(native) <= SMALL_IMAGE_SIDE:
            if min(native) < minimum:
                return minimum
            return None
        return SMALL_CNN_SIZE
    if requested < minimum:
        raise ValueError(
            f"--image-size {requested} is below {backbone}'s minimum of {minimum} pixels. "
            f"Expected --image-size >= {minimum}."
        )
    return requested
