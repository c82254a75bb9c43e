"""The three training views of HARR (DESIGN §2.3), as the authors' torchvision code
makes them, deterministic under a seed.

View A is SimCLR-style: random resized crop, flip, torchvision's `ColorJitter` with
probability 0.8 (brightness, contrast and saturation multiplied by factors drawn from
[1 − s, 1 + s], hue shifted by up to ±h of the colour wheel, the four in a random order
per image), grayscale with probability 0.2, Gaussian blur with probability 0.5 and a σ
drawn per image. View B is a random resized crop, flip and the authors' RandAugment
(`harr_tf.data.randaugment`), drawn per image. View W is a plain random resized crop and
flip.

Every random choice is made per image by stateless ops seeded by the run seed and the
element's position in the stream (`crop_views`), so a parallel `tf.data` map gives the
same pixels on every run and a resumed stream continues exactly; `finish_batch` only
hands the batched views on. Colour operations leave grayscale data as it is; crop
areas, blur and RandAugment's pixel constants scale with the image size. Only the views
the model reads are made (`views`): without L_bcr a step needs view W alone.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from harr_tf.data import image_ops
from harr_tf.data.randaugment import REFERENCE_SIZE, rand_augment

VIEWS = ("a", "b", "w")
SEEDS_PER_VIEW = 3  # crop, flip, the view's own operations


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths, in torchvision's and the authors' meaning (DESIGN §2.3).

    `color_jitter` is torchvision's `ColorJitter(brightness, contrast, saturation, hue)`:
    factors uniform in [1 − s, 1 + s], hue shift uniform in [−h, h].
    `blur_sigma` is σ's range in pixels at 224 px, scaled to the image size; the kernel
    spans about 10 % of the image. `randaugment_magnitude` is out of the authors' maximum
    level of 10; `randaugment_cutout` ends view B with their 16-px (at 224 px) gray square.
    `min_crop_pixels` scales crops to small images: the smallest crop keeps at least
    this many pixels on a side, so a 28×28 image is never cut to 8×8.
    `weak_crop_scale` (view W, the view L_sim and L_q see) keeps at least 60 % of the
    image, closer to the whole images its WTA targets were computed on (the authors: 8 %);
    together with the default teacher and pooling it was measured best (README).
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
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    randaugment_ops: int = 2
    randaugment_magnitude: float = 10.0
    randaugment_probability: float = 0.5
    randaugment_cutout: bool = True

    def __post_init__(self) -> None:
        for name in ("strong_crop_scale", "weak_crop_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(
                    f"`{name}` must satisfy 0 < low <= high <= 1. Received: {name}={(low, high)}"
                )
        for name in (
            "color_jitter_probability",
            "grayscale_probability",
            "blur_probability",
            "randaugment_probability",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value}")
        *factors, hue = self.color_jitter
        if not all(0.0 <= f <= 1.0 for f in factors) or not 0.0 <= hue <= 0.5:
            raise ValueError(
                "`color_jitter` must be (brightness, contrast, saturation) in [0, 1] and "
                f"hue in [0, 0.5]. Received: color_jitter={self.color_jitter}"
            )
        low, high = self.blur_sigma
        if not 0.0 < low <= high:
            raise ValueError(f"`blur_sigma` must satisfy 0 < low <= high. Received: {low, high}")
        if not 0.0 <= self.randaugment_magnitude <= 10.0:
            raise ValueError(
                "`randaugment_magnitude` must be in [0, 10]. "
                f"Received: randaugment_magnitude={self.randaugment_magnitude}"
            )


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


def sample_jitter(seed: tf.Tensor, strengths: tuple[float, ...]) -> dict[str, tf.Tensor]:
    """torchvision `ColorJitter.get_params` for one image: `factors` (3,) for brightness,
    contrast and saturation, uniform in [max(0, 1 − s), 1 + s]; `hue` uniform in
    [−h, h]; `order` (4,) a random permutation of the four operations."""
    keys = tf.random.experimental.stateless_split(seed, num=2)
    draws = tf.random.stateless_uniform((4,), keys[0])
    strengths = tf.constant(strengths, tf.float32)
    low = tf.maximum(1.0 - strengths[:3], 0.0)
    factors = low + draws[:3] * (1.0 + strengths[:3] - low)
    hue = (2.0 * draws[3] - 1.0) * strengths[3]
    order = tf.argsort(tf.random.stateless_uniform((4,), keys[1]))
    return {"factors": factors, "hue": hue, "order": order}


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strengths: tuple[float, ...]) -> tf.Tensor:
    """torchvision's `ColorJitter` on one image (H, W, C) float32 in [0, 255]."""
    params = sample_jitter(seed, strengths)
    factors = params["factors"]
    operations = (
        (image_ops.brightness, factors[0]),
        (image_ops.contrast, factors[1]),
        (image_ops.saturation, factors[2]),
        (image_ops.hue, params["hue"]),
    )
    for step in range(4):
        current = image
        branches = [
            (lambda op=op, arg=arg, x=current: op(x, arg)) if strength else (lambda x=current: x)
            for (op, arg), strength in zip(operations, strengths, strict=True)
        ]
        image = tf.ensure_shape(tf.switch_case(params["order"][step], branches), current.shape)
    return image


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
        # SimCLR's kernel of ~10 % of the image; the authors' σ range holds at 224 px.
        self.blur_kernel = max(3, int(round(0.1 * size)) | 1)
        self.blur_sigma = tuple(s * size / REFERENCE_SIZE for s in cfg.blur_sigma)

    def crop_views(self, image: tf.Tensor, position: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per image: every view, complete, as (H, W, C) float32 in [0, 255].

        `image` is (H, W, C) uint8 or float; `position` the element's index in the
        stream (int64), which with the run seed fixes every random choice.
        """
        image = tf.cast(image, tf.float32)
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(self.seed, tf.int64), tf.cast(position, tf.int64)]),
            num=SEEDS_PER_VIEW * len(VIEWS),
        )
        cfg = self.config
        scales = {"a": self.strong_scale, "b": self.strong_scale, "w": self.weak_scale}
        views = {}
        for name in self.views:
            crop_seed, flip_seed, own_seed = tf.unstack(
                seeds[SEEDS_PER_VIEW * VIEWS.index(name) :][:SEEDS_PER_VIEW]
            )
            view = random_resized_crop(image, crop_seed, scales[name], cfg.aspect_ratio)
            if cfg.flip:
                view = tf.image.stateless_random_flip_left_right(view, flip_seed)
            view = tf.ensure_shape(view, self.image_shape)
            if name == "a":
                view = self.simclr_colour_and_blur(view, own_seed)
            elif name == "b":
                view = rand_augment(
                    view,
                    own_seed,
                    cfg.randaugment_ops,
                    cfg.randaugment_magnitude,
                    cfg.randaugment_probability,
                    cfg.randaugment_cutout,
                )
            views[name] = tf.ensure_shape(tf.clip_by_value(view, 0.0, 255.0), self.image_shape)
        return views

    def simclr_colour_and_blur(self, view: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """View A after its crop: jitter (p 0.8), grayscale (p 0.2), blur (p 0.5)."""
        cfg = self.config
        keys = tf.random.experimental.stateless_split(seed, num=3)
        coins = tf.random.stateless_uniform((4,), keys[0])
        strengths = cfg.color_jitter if self.is_color else (*cfg.color_jitter[:2], 0.0, 0.0)
        if any(strengths):
            view = tf.cond(
                coins[0] < cfg.color_jitter_probability,
                lambda: color_jitter(view, keys[1], strengths),
                lambda: view,
            )
        if self.is_color:
            view = tf.where(coins[1] < cfg.grayscale_probability, image_ops.grayscale(view), view)
        low, high = self.blur_sigma
        sigma = low + coins[3] * (high - low)
        return tf.cond(
            coins[2] < cfg.blur_probability,
            lambda: image_ops.gaussian_blur(view, sigma, self.blur_kernel),
            lambda: view,
        )

    def finish_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per batch: the views (`a`, `b`, `w` by default), (batch, H, W, C) float32 in
        [0, 255]. All the work is done per image in `crop_views`."""
        return {name: batch[name] for name in self.views}
