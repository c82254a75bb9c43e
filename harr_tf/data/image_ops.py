"""Pixel operations of the views on a batch, with the meaning torchvision and PIL give
them and a parameter per image.

Each takes images (B, H, W, C) float32 with values in [0, 255] and returns the same
shape, clipped to [0, 255]; every factor is a (B,) tensor (or a scalar for all images),
so it can be drawn per image while one op serves the whole batch. Keras 3 layers of the
same names mean other things (additive brightness, a saturation factor of 0.4 giving
multipliers in [−0.29, 0.66], one σ of blur per batch), so the views are built from
these instead: docs/scale.md lists what each was translated from. Colour operations
(saturation, hue, grayscale) leave one-channel images as they are, as torchvision's do.
Geometric operations are in `harr_tf.data.geometry`.
"""

from __future__ import annotations

import tensorflow as tf


def choose(images: tf.Tensor, choice: tf.Tensor, operations, *params: tf.Tensor) -> tf.Tensor:
    """Image b becomes `operations[choice[b]](image, *its params)` (`None`: unchanged).

    The batch is split by `choice` (`tf.dynamic_partition`), so each operation runs once,
    on the images that chose it (if any), with their rows of each (B, ...) parameter.
    """
    count = len(operations)
    indices = tf.dynamic_partition(tf.range(tf.shape(images)[0]), choice, count)
    parts = tf.dynamic_partition(images, choice, count)
    split = [tf.dynamic_partition(param, choice, count) for param in params]

    def apply(k: int) -> tf.Tensor:
        op = operations[k]
        if op is None:
            return parts[k]

        def run() -> tf.Tensor:
            return op(parts[k], *(p[k] for p in split))

        # Skipped when no image chose it: some kernels refuse an empty batch.
        return tf.cond(tf.size(parts[k]) > 0, run, lambda: parts[k])

    results = [apply(k) for k in range(count)]
    return tf.ensure_shape(tf.dynamic_stitch(indices, results), images.shape)


def _clip(images: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(images, 0.0, 255.0)


def _per_image(value) -> tf.Tensor:
    """A (B,) or scalar parameter, shaped to broadcast over (B, H, W, C)."""
    return tf.reshape(tf.cast(value, tf.float32), (-1, 1, 1, 1))


def _blend(images: tf.Tensor, degenerate: tf.Tensor, factor) -> tf.Tensor:
    """PIL's ImageEnhance and torchvision's `_blend`: degenerate + factor·(image − degenerate)."""
    return _clip(degenerate + _per_image(factor) * (images - degenerate))


def luma(images: tf.Tensor) -> tf.Tensor:
    """(B, H, W, 1) ITU-R 601 luma (PIL's "L", torchvision's rgb_to_grayscale)."""
    return images if images.shape[-1] == 1 else tf.image.rgb_to_grayscale(images)


def grayscale(images: tf.Tensor) -> tf.Tensor:
    """Luma repeated to every channel (torchvision's RandomGrayscale keeps 3 channels)."""
    return tf.broadcast_to(luma(images), tf.shape(images))


def brightness(images: tf.Tensor, factor) -> tf.Tensor:
    """Multiplies every pixel by `factor` (a blend with black)."""
    return _clip(images * _per_image(factor))


def contrast(images: tf.Tensor, factor) -> tf.Tensor:
    """Blends with each image's mean luma."""
    return _blend(images, tf.reduce_mean(luma(images), axis=(1, 2, 3), keepdims=True), factor)


def saturation(images: tf.Tensor, factor) -> tf.Tensor:
    """Blends with the luma; a grayscale image has no saturation to change."""
    if images.shape[-1] == 1:
        return images
    return _blend(images, luma(images), factor)


def hue(images: tf.Tensor, shift) -> tf.Tensor:
    """Rotates the hue by `shift` of the colour wheel (in [−0.5, 0.5]), in HSV."""
    if images.shape[-1] == 1:
        return images
    h, s, v = tf.unstack(tf.image.rgb_to_hsv(images / 255.0), axis=-1)
    h = tf.math.floormod(h + _per_image(shift)[..., 0], 1.0)
    return _clip(tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)) * 255.0)


def gaussian_blur(images: tf.Tensor, sigma, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur of standard deviation `sigma` pixels per image, reflected
    borders: one depthwise convolution with the batch folded into the channels."""
    batch, height, width, channels = (tf.shape(images)[0], *images.shape[1:])
    radius = kernel_size // 2
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.broadcast_to(tf.cast(sigma, tf.float32), [batch])
    kernels = tf.exp(-tf.square(offsets)[None] / (2.0 * tf.square(sigma)[:, None]))
    kernels = kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)  # (B, k)
    kernels = tf.reshape(tf.repeat(tf.transpose(kernels), channels, axis=1), (-1, 1, 1))
    folded = tf.reshape(tf.transpose(images, (1, 2, 0, 3)), (1, height, width, -1))
    padded = tf.pad(folded, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    column = tf.reshape(kernels, (kernel_size, 1, -1, 1))
    row = tf.reshape(kernels, (1, kernel_size, -1, 1))
    blurred = tf.nn.depthwise_conv2d(padded, column, (1, 1, 1, 1), "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, row, (1, 1, 1, 1), "VALID")
    unfolded = tf.reshape(blurred, (height, width, batch, channels))
    return _clip(tf.transpose(unfolded, (2, 0, 1, 3)))


def autocontrast(images: tf.Tensor) -> tf.Tensor:
    """Stretches each channel to [0, 255] (PIL's `ImageOps.autocontrast`, cutoff 0)."""
    low = tf.reduce_min(images, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(images, axis=(1, 2), keepdims=True)
    scale = 255.0 / tf.maximum(high - low, 1e-3)
    return tf.where(high > low, _clip((images - low) * scale), images)


def equalize(images: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation of each channel of each image (PIL's `ImageOps.equalize`):
    one `bincount` over the batch, each (image, channel) offset to its own 256 bins."""
    batch, height, width, channels = (tf.shape(images)[0], *images.shape[1:])
    values = tf.cast(tf.round(images), tf.int32)
    values = tf.reshape(tf.transpose(values, (0, 3, 1, 2)), (-1, height * width))
    rows = tf.shape(values)[0]  # one per (image, channel)
    offsets = tf.range(rows)[:, None] * 256
    hist = tf.math.bincount(values + offsets, minlength=rows * 256, maxlength=rows * 256)
    hist = tf.reshape(hist, (rows, 256))
    last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), axis=[1]), axis=1)
    last_count = tf.gather(hist, tf.cast(last, tf.int32), batch_dims=1)
    step = ((height * width - last_count) // 255)[:, None]
    table = (tf.cumsum(hist, axis=1, exclusive=True) + step // 2) // tf.maximum(step, 1)
    table = tf.clip_by_value(table, 0, 255)
    equalized = tf.where(step > 0, tf.gather(table, values, batch_dims=1), values)
    equalized = tf.reshape(equalized, (batch, channels, height, width))
    return tf.cast(tf.transpose(equalized, (0, 2, 3, 1)), tf.float32)


def solarize(images: tf.Tensor, threshold) -> tf.Tensor:
    """Inverts the pixels at or above `threshold`."""
    return tf.where(images < _per_image(threshold), images, 255.0 - images)


def posterize(images: tf.Tensor, bits: int) -> tf.Tensor:
    """Keeps the `bits` most significant bits of each pixel."""
    mask = (255 << (8 - bits)) & 255
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(tf.round(images), tf.int32), mask), tf.float32)


def sharpness(images: tf.Tensor, factor) -> tf.Tensor:
    """Blends with PIL's SMOOTH filter (3×3, centre weight 5 of 13); borders stay."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    channels = images.shape[-1]
    kernel = tf.tile(tf.reshape(kernel, (3, 3, 1, 1)), (1, 1, channels, 1))
    smooth = tf.nn.depthwise_conv2d(images, kernel, (1, 1, 1, 1), "VALID")
    inner = images[:, 1:-1, 1:-1]
    change = _blend(inner, smooth, factor) - inner
    return images + tf.pad(change, [[0, 0], [1, 1], [1, 1], [0, 0]])
