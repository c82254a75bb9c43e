"""What size the network sees (`--image-size`) and how many images a batch holds, so a
default run fits its memory budget (`harr_tf.memory_budget`).

Measured on 2 cores at batch 128: `small_cnn` at 224 x 224 peaked at 14.3 GB (three
views of 128 images), so it gets a small size on large photos; small images keep their
native size (Fashion-MNIST 28 x 28, CIFAR-10 32 x 32); the pretrained backbones get the
224 x 224 they were trained at. Batches follow what the network costs per image at that
size, within the budget, up to Fashion-MNIST's 128 (training) and 512 (inference).
"""

from __future__ import annotations

import keras

from harr_tf.memory_budget import (
    GB,
    BatchDoesNotFit,
    activation_bytes,
    budget_bytes,
    inference_cost,
    largest_batch,
    network_cost,
    training_cost,
)

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
INFERENCE_BATCH = 512  # the largest inference batch (Fashion-MNIST's, as before)
TRAINING_BATCH = 128  # the largest training batch (Fashion-MNIST's 128)


def inference_batch_size(
    network: keras.Model, requested: int | None = None, budget: int | None = None
) -> int:
    """Images per batch when `network` encodes or extracts features
    (`--encode-batch-size`; None: the largest power of two up to `INFERENCE_BATCH` whose
    batch fits in `budget` bytes by `inference_cost`, at least 1).

    Inference holds a whole batch's activations at once, and what they cost is the
    network's, not the pixels': ResNet-50 resizes a 64-px image to 224 px inside.
    """
    if requested is not None:
        return requested
    per_image, fixed = inference_cost(activation_bytes(network), 4 * network.count_params())
    return max(1, largest_batch(per_image, fixed, budget or budget_bytes(), INFERENCE_BATCH, 1))


def default_batch_sizes(
    image_shape: tuple[int, ...],
    model,
    batch_size: int | None = None,
    encode_batch_size: int | None = None,
    budget: int | None = None,
) -> tuple[int, int]:
    """`(training batch, inference batch)` of the `model` (a `ModelConfig`) on images of
    `image_shape` within `budget` bytes: the ones given, else the largest powers of two
    up to `TRAINING_BATCH` and `INFERENCE_BATCH` whose estimated cost fits.

    Raises:
        BatchDoesNotFit: not even a training batch of `MIN_BATCH_SIZE` fits.
    """
    from harr_tf.config import MIN_BATCH_SIZE  # harr_tf.config imports this module

    shape = tuple(image_shape)
    # The teacher is the configured backbone; a distilled student trains small_cnn.
    student = model.trained_backbone
    costs = {
        name: network_cost(name, shape, model.width, model.pooling)
        for name in {model.network, student}
    }
    budget = budget_bytes() if budget is None else budget
    if encode_batch_size is None:
        per_image, fixed = max(inference_cost(*cost) for cost in costs.values())
        encode_batch_size = max(1, largest_batch(per_image, fixed, budget, INFERENCE_BATCH, 1))
    if batch_size is None:
        per_image, fixed = training_cost(*costs[student])
        batch_size = largest_batch(per_image, fixed, budget, TRAINING_BATCH, MIN_BATCH_SIZE)
        if batch_size < MIN_BATCH_SIZE:
            need = (fixed + MIN_BATCH_SIZE * per_image) / GB
            raise BatchDoesNotFit(
                f"Training {student} at {image_shape[0]} px needs about {need:.1f} GB "
                f"at the smallest batch ({MIN_BATCH_SIZE}), over the memory budget of "
                f"{budget / GB:.1f} GB. Expected a larger --memory-budget, a smaller "
                "--image-size, or --batch-size to try anyway."
            )
    return batch_size, encode_batch_size


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
