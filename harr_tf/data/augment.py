"""The three training views of HARR (DESIGN §2.3), deterministic under a seed.

View A is SimCLR-style (random resized crop, colour jitter, grayscale, blur, flip),
view B is a random resized crop + flip + RandAugment, view W a plain random resized
crop + flip. The work is split in two stages so that a seed fixes every pixel even
with a parallel `tf.data` map:

1. `crop_views` runs per image with stateless TF ops whose seed is derived from the
   run seed and the element's position in the stream; it also draws the per-image
   coins that decide whether colour jitter and blur apply.
2. `finish_batch` runs per batch, sequentially, with Keras 3 preprocessing layers
   seeded at construction (their seed generators advance in batch order).

Colour operations are skipped on grayscale data; crop areas and blur are scaled to
the image size. Only the views the model reads are made (`views`): without L_bcr a
step needs view W alone.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

VIEWS = ("a", "b", "w")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (authors' values, except view W's crop; Keras 3 semantics
    for the colour ops).

    `min_crop_pixels` scales crops to small images: the smallest crop keeps at
    least this many pixels on a side, so a 28×28 image is never cut to 8×8.
    `weak_crop_scale` (view W, the view L_sim and L_q see) keeps at least 60 % of the
    image, closer to the whole images its WTA targets were computed on; alone it moves
    mAP within noise, together with the default teacher and pooling it was measured best
    (README, "What was tried").
    """

    strong_crop_scale: tuple[float, float] = (0.08, 1.0)
    weak_crop_scale: tuple[float, float] = (0.6, 1.0)
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_crop_pixels: int = 16
    flip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    color_jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    randaugment_ops: int = 2
    randaugment_factor: float = 0.5

    def __post_init__(self) -> None:
        for name in ("strong_crop_scale", "weak_crop_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(
                    f"`{name}` must satisfy 0 < low <= high <= 1. Received: {name}={(low, high)}"
                )
        for name in ("color_jitter_probability", "grayscale_probability", "blur_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value}")


def scaled_crop_scale(
    scale: tuple[float, float], image_size: int, min_crop_pixels: int
) -> tuple[float, float]:
    """Raises the smallest crop area so a crop keeps `min_crop_pixels` on a side."""
    low, high = scale
    floor = min(1.0, (min_crop_pixels / image_size) ** 2)
    low = max(low, floor)
    return low, max(low, high)


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
) -> tf.Tensor:
    """Crops a random area fraction and aspect ratio, resized back to the input size.

    `image` is (H, W, C) float32; `seed` a stateless seed of shape (2,).
    """
    shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    return tf.image.resize(crop, shape[:2], method="bilinear")


class ViewAugmenter:
    """Makes views A, B and W of images of one fixed shape.

    Args:
        image_shape: `(height, width, channels)` of the images.
        config: augmentation strengths. Defaults to `AugmentConfig()`.
        seed: run seed; the same seed gives the same views. Defaults to 0.
        views: which of `"a"`, `"b"`, `"w"` to make. A view's pixels do not depend
            on which others are made. Defaults to all three.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        config: AugmentConfig | None = None,
        seed: int = 0,
        views: tuple[str, ...] = VIEWS,
    ) -> None:
        if not views or not set(views) <= set(VIEWS):
            raise ValueError(f"`views` must be a non-empty subset of {VIEWS}. Received: {views}")
        self.views = tuple(name for name in VIEWS if name in views)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.config = config or AugmentConfig()
        self.seed = int(seed)
        height, width, channels = self.image_shape
        size = min(height, width)
        cfg = self.config
        self.strong_scale = scaled_crop_scale(cfg.strong_crop_scale, size, cfg.min_crop_pixels)
        self.weak_scale = scaled_crop_scale(cfg.weak_crop_scale, size, cfg.min_crop_pixels)
        self.is_color = channels == 3
        value_range = (0.0, 255.0)
        if self.is_color:
            brightness, contrast, saturation, hue = cfg.color_jitter
            self.color_jitter = keras.layers.RandomColorJitter(
                value_range=value_range,
                brightness_factor=brightness,
                contrast_factor=contrast,
                saturation_factor=saturation,
                hue_factor=hue,
                seed=seed + 1,
            )
            self.grayscale = keras.layers.RandomGrayscale(
                factor=cfg.grayscale_probability, seed=seed + 2
            )
        # SimCLR blurs with a kernel of ~10% of the image and sigma in [0.1, 2] at 224 px.
        kernel = max(3, int(round(0.1 * size)) | 1)
        sigma_scale = size / 224.0
        self.blur = keras.layers.RandomGaussianBlur(
            factor=1.0,
            kernel_size=kernel,
            sigma=(max(0.1 * sigma_scale, 1e-3), max(2.0 * sigma_scale, 2e-3)),
            value_range=value_range,
            seed=seed + 3,
        )
        self.randaugment = keras.layers.RandAugment(
            value_range=value_range,
            num_ops=cfg.randaugment_ops,
            factor=cfg.randaugment_factor,
            seed=seed + 4,
        )

    def crop_views(self, image: tf.Tensor, position: tf.Tensor) -> dict[str, tf.Tensor]:
        """Stage 1, per image: the views' crops (+ flips) and the coins of view A.

        `image` is (H, W, C) uint8 or float; `position` the element's index in the
        stream (int64), which with the run seed fixes every random choice.
        """
        image = tf.cast(image, tf.float32)
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(self.seed, tf.int64), tf.cast(position, tf.int64)]), num=7
        )
        cfg = self.config
        scales = {"a": self.strong_scale, "b": self.strong_scale, "w": self.weak_scale}
        views = {}
        for name in self.views:
            i = VIEWS.index(name)  # each view keeps its own seeds
            view = random_resized_crop(image, seeds[2 * i], scales[name], cfg.aspect_ratio)
            if cfg.flip:
                view = tf.image.stateless_random_flip_left_right(view, seeds[2 * i + 1])
            views[name] = tf.ensure_shape(view, self.image_shape)
        if "a" in self.views:
            coins = tf.random.stateless_uniform((2,), seeds[6])
            views["jitter"] = coins[0] < cfg.color_jitter_probability
            views["blur"] = coins[1] < cfg.blur_probability
        return views

    def finish_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Stage 2, per batch (sequential): Keras layers for colour, blur and RandAugment.

        Returns the views (`a`, `b`, `w` by default) as (batch, H, W, C) float32 in
        [0, 255].
        """
        views = {name: batch[name] for name in self.views}
        if "a" in views:
            view_a = views["a"]
            if self.is_color:
                jittered = self.color_jitter(view_a, training=True)
                view_a = tf.where(batch["jitter"][:, None, None, None], jittered, view_a)
                view_a = self.grayscale(view_a, training=True)
            blurred = self.blur(view_a, training=True)
            views["a"] = tf.where(batch["blur"][:, None, None, None], blurred, view_a)
        if "b" in views:
            views["b"] = self.randaugment(views["b"], training=True)
        return {name: _to_pixels(view) for name, view in views.items()}


def _to_pixels(images: tf.Tensor) -> tf.Tensor:
    """Keras layers may overshoot the value range; the model expects [0, 255]."""
    return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)
