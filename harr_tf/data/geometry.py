"""Geometric operations of the views on a batch (B, H, W, C) float32 in [0, 255], with
parameters per image, as torchvision, PIL and the authors' cv2 code mean them.

Random numbers come in as uniforms (`harr_tf.data.draws`), so each image's choices are
its own; every parameter is a (B,) tensor (or a scalar, the same for all images).
"""

from __future__ import annotations

import math

import tensorflow as tf

GRAY_FILL = 128.0  # what the authors' RandAugment fills uncovered pixels with
CROP_ATTEMPTS = 10
CROP_DRAWS = 4 * CROP_ATTEMPTS


def sample_crop_boxes(
    uniforms: tf.Tensor,
    image_size: tuple[int, int],
    scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
) -> tf.Tensor:
    """torchvision's `RandomResizedCrop.get_params`, one box per image: (B, 4) int32
    (top, left, height, width).

    `uniforms` is (B, CROP_DRAWS). Up to 10 attempts draw an area in `scale` of the
    image and a log-uniform aspect ratio; the first that fits wins, otherwise the whole
    image (as `tf.image.sample_distorted_bounding_box` falls back).
    """
    height, width = image_size
    u = tf.reshape(uniforms, (-1, CROP_ATTEMPTS, 4))
    area = height * width * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    low, high = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    ratio = tf.exp(low + u[..., 1] * (high - low))
    w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = tf.cast(u[..., 2] * tf.cast(height - h + 1, tf.float32), tf.int32)
    left = tf.cast(u[..., 3] * tf.cast(width - w + 1, tf.float32), tf.int32)
    boxes = tf.stack([top, left, h, w], axis=-1)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    chosen = tf.gather(boxes, first, batch_dims=1)
    whole = tf.constant([0, 0, height, width], tf.int32)
    return tf.where(tf.reduce_any(fits, axis=1)[:, None], chosen, whole)


def _sample_points(start: tf.Tensor, size: tf.Tensor, out: int):
    """Bilinear sample rows (or columns) of `tf.image.resize` (half-pixel centres) of a
    crop [start, start + size) to `out`: (B, out) lower and upper indices and weights."""
    size = tf.cast(size, tf.float32)[:, None]
    x = (tf.range(out, dtype=tf.float32)[None] + 0.5) * (size / out) - 0.5
    x = tf.clip_by_value(x, 0.0, size - 1.0)
    lower = tf.floor(x)
    upper = tf.minimum(lower + 1.0, size - 1.0)
    start = start[:, None]
    return start + tf.cast(lower, tf.int32), start + tf.cast(upper, tf.int32), x - lower


def resized_crop(images: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Each image's box (top, left, height, width) resized bilinearly back to (H, W),
    what `tf.image.resize` makes of the cropped slice. Separable, rows then columns,
    each one gather of whole rows over the flattened batch (twice as fast as a
    per-element gather with `batch_dims`)."""
    height, width, channels = images.shape[1:]
    y0, y1, fy = _sample_points(boxes[:, 0], boxes[:, 2], height)
    x0, x1, fx = _sample_points(boxes[:, 1], boxes[:, 3], width)
    first = tf.range(tf.shape(images)[0])[:, None]  # each image's first row in the flat batch
    rows = tf.gather(
        tf.reshape(images, (-1, width, channels)), tf.concat([y0, y1], 1) + first * height
    )
    rows = rows[:, :height] + (rows[:, height:] - rows[:, :height]) * fy[:, :, None, None]
    columns = tf.reshape(tf.transpose(rows, (0, 2, 1, 3)), (-1, height, channels))
    cols = tf.gather(columns, tf.concat([x0, x1], 1) + first * width)  # (B, 2W, H, C)
    cols = cols[:, :width] + (cols[:, width:] - cols[:, :width]) * fx[:, :, None, None]
    return tf.transpose(cols, (0, 2, 1, 3))


def flip(images: tf.Tensor, coins: tf.Tensor) -> tf.Tensor:
    """Mirrors left-right the images whose coin (B,) is true."""
    return tf.where(coins[:, None, None, None], tf.reverse(images, axis=[2]), images)


def affine(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Samples output pixel (x, y) of image b at input `matrices[b]` · (x, y, 1) (a 2×3
    inverse map, (B, 6)), bilinear, pixels from outside filled with gray 128."""
    transforms = tf.concat([matrices, tf.zeros_like(matrices[:, :2])], axis=1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3],
        fill_value=GRAY_FILL,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.clip_by_value(warped, 0.0, 255.0)


def _per_image(images: tf.Tensor, value) -> tf.Tensor:
    return tf.broadcast_to(tf.cast(value, tf.float32), tf.shape(images)[:1])


def rotate(images: tf.Tensor, degrees) -> tf.Tensor:
    """Rotates counter-clockwise about the image centre (PIL's `Image.rotate`)."""
    height, width = images.shape[1], images.shape[2]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    angle = _per_image(images, degrees) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The inverse map: output (x, y) samples the input rotated back by `degrees`.
    rows = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    return affine(images, tf.stack(rows, axis=1))


def shear(images: tf.Tensor, factor, axis: int) -> tf.Tensor:
    """Shears along x (`axis=1`) or y (`axis=0`) about the top-left corner, as the
    authors' cv2 code does."""
    factor = _per_image(images, factor)
    zero, one = tf.zeros_like(factor), tf.ones_like(factor)
    if axis == 1:
        rows = [one, -factor, zero, zero, one, zero]
    else:
        rows = [one, zero, zero, -factor, one, zero]
    return affine(images, tf.stack(rows, axis=1))


def translate(images: tf.Tensor, pixels, axis: int) -> tf.Tensor:
    """Shifts the content by `pixels` towards −x (`axis=1`) or −y (`axis=0`)."""
    pixels = _per_image(images, pixels)
    zero, one = tf.zeros_like(pixels), tf.ones_like(pixels)
    dx, dy = (pixels, zero) if axis == 1 else (zero, pixels)
    return affine(images, tf.stack([one, zero, dx, zero, one, dy], axis=1))


def cutout(images: tf.Tensor, uniforms: tf.Tensor, size: int) -> tf.Tensor:
    """Fills a `size`-pixel square (clipped at the borders) at a uniform random centre
    per image (`uniforms` (B, 2)) with gray 128, as the authors' RandAugment ends."""
    if size < 2:
        return images
    height, width = images.shape[1], images.shape[2]
    centre = tf.cast(uniforms * tf.constant([height, width], tf.float32), tf.int32)
    half = size // 2
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    cy, cx = centre[:, :1, None], centre[:, 1:, None]
    inside = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
    return tf.where(inside[..., None], GRAY_FILL, images)
