"""Per-image pixel operations with the meaning torchvision and PIL give them.

Each takes one image (H, W, C) float32 with values in [0, 255] and returns one of the
same shape, clipped to [0, 255]; every factor is a tensor so it can be drawn per image.
Keras 3 layers of the same names mean other things (additive brightness, a saturation
factor of 0.4 giving multipliers in [−0.29, 0.66], one σ of blur per batch), so the
views are built from these instead: docs/scale.md lists what each was translated from.
Colour operations (saturation, hue, grayscale) leave a one-channel image as it is, as
torchvision's do.
"""

from __future__ import annotations

import math

import tensorflow as tf

GRAY_FILL = 128.0  # what the authors' RandAugment fills uncovered pixels with


def _clip(image: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(image, 0.0, 255.0)


def _blend(image: tf.Tensor, degenerate: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's ImageEnhance and torchvision's `_blend`: degenerate + factor·(image − degenerate)."""
    return _clip(degenerate + factor * (image - degenerate))


def luma(image: tf.Tensor) -> tf.Tensor:
    """(H, W, 1) ITU-R 601 luma (PIL's "L", torchvision's rgb_to_grayscale)."""
    return image if image.shape[-1] == 1 else tf.image.rgb_to_grayscale(image)


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma repeated to every channel (torchvision's RandomGrayscale keeps 3 channels)."""
    return tf.broadcast_to(luma(image), tf.shape(image))


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Multiplies every pixel by `factor` (a blend with black)."""
    return _clip(image * factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blends with the image's mean luma."""
    return _blend(image, tf.reduce_mean(luma(image)), factor)


def saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blends with the image's luma; a grayscale image has no saturation to change."""
    if image.shape[-1] == 1:
        return image
    return _blend(image, luma(image), factor)


def hue(image: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Rotates the hue by `shift` of the colour wheel (in [−0.5, 0.5])."""
    if image.shape[-1] == 1:
        return image
    return _clip(tf.image.adjust_hue(image / 255.0, shift) * 255.0)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur of standard deviation `sigma` pixels, reflected borders."""
    radius = kernel_size // 2
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-tf.square(offsets) / (2.0 * tf.square(sigma)))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = image.shape[-1]
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    column = tf.tile(tf.reshape(kernel, (-1, 1, 1, 1)), (1, 1, channels, 1))
    row = tf.tile(tf.reshape(kernel, (1, -1, 1, 1)), (1, 1, channels, 1))
    blurred = tf.nn.depthwise_conv2d(padded, column, (1, 1, 1, 1), "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, row, (1, 1, 1, 1), "VALID")
    return _clip(blurred[0])


def affine(image: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """Samples output pixel (x, y) at input `matrix` · (x, y, 1) (a 2×3 inverse map),
    bilinear, pixels from outside filled with gray 128."""
    transform = tf.concat([tf.reshape(matrix, (6,)), tf.zeros((2,))], axis=0)[None]
    shape = tf.shape(image)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.cast(transform, tf.float32),
        output_shape=shape[:2],
        fill_value=GRAY_FILL,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return _clip(warped[0])


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """Rotates counter-clockwise about the image centre (PIL's `Image.rotate`)."""
    height, width = image.shape[0], image.shape[1]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    angle = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The inverse map: output (x, y) samples the input rotated back by `degrees`.
    matrix = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])
    return affine(image, matrix)


def shear(image: tf.Tensor, factor: tf.Tensor, axis: int) -> tf.Tensor:
    """Shears along x (`axis=1`) or y (`axis=0`) about the top-left corner, as the
    authors' cv2 code does."""
    zero, one = tf.zeros_like(factor), tf.ones_like(factor)
    if axis == 1:
        matrix = tf.stack([one, -factor, zero, zero, one, zero])
    else:
        matrix = tf.stack([one, zero, zero, -factor, one, zero])
    return affine(image, matrix)


def translate(image: tf.Tensor, pixels: tf.Tensor, axis: int) -> tf.Tensor:
    """Shifts the content by `pixels` towards −x (`axis=1`) or −y (`axis=0`)."""
    zero, one = tf.zeros_like(pixels), tf.ones_like(pixels)
    dx, dy = (pixels, zero) if axis == 1 else (zero, pixels)
    return affine(image, tf.stack([one, zero, dx, zero, one, dy]))


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel to [0, 255] (PIL's `ImageOps.autocontrast`, cutoff 0)."""
    low = tf.reduce_min(image, axis=(0, 1), keepdims=True)
    high = tf.reduce_max(image, axis=(0, 1), keepdims=True)
    scale = 255.0 / tf.maximum(high - low, 1e-3)
    return tf.where(high > low, _clip((image - low) * scale), image)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation of each channel (PIL's `ImageOps.equalize`)."""
    values = tf.cast(tf.round(image), tf.int32)

    def channel(ch: tf.Tensor) -> tf.Tensor:
        hist = tf.math.bincount(ch, minlength=256, maxlength=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        table = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
        table = tf.clip_by_value(table, 0, 255)
        return tf.where(step > 0, tf.gather(table, ch), ch)

    channels = [channel(values[..., c]) for c in range(image.shape[-1])]
    return tf.cast(tf.stack(channels, axis=-1), tf.float32)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """Inverts the pixels at or above `threshold`."""
    return tf.where(image < threshold, image, 255.0 - image)


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """Keeps the `bits` most significant bits of each pixel."""
    mask = tf.bitwise.left_shift(255, 8 - tf.cast(bits, tf.int32))
    mask = tf.bitwise.bitwise_and(mask, 255)
    values = tf.cast(tf.round(image), tf.int32)
    return tf.cast(tf.bitwise.bitwise_and(values, mask), tf.float32)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blends with PIL's SMOOTH filter (3×3, centre weight 5 of 13); borders stay."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    channels = image.shape[-1]
    kernel = tf.tile(tf.reshape(kernel, (3, 3, 1, 1)), (1, 1, channels, 1))
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, (1, 1, 1, 1), "VALID")[0]
    inner = image[1:-1, 1:-1]
    change = _blend(inner, smooth, factor) - inner
    return image + tf.pad(change, [[1, 1], [1, 1], [0, 0]])


def cutout(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """Fills a `size`-pixel square (clipped at the borders) at a uniform random centre
    with gray 128, as the authors' RandAugment ends."""
    if size < 2:
        return image
    height, width = image.shape[0], image.shape[1]
    centre = tf.random.stateless_uniform((2,), seed) * tf.constant([height, width], tf.float32)
    centre = tf.cast(centre, tf.int32)
    half = size // 2
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (
        (rows >= centre[0] - half)
        & (rows < centre[0] + half)
        & (cols >= centre[1] - half)
        & (cols < centre[1] + half)
    )
    return tf.where(inside, GRAY_FILL, image)
