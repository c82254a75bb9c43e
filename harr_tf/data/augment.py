"""The three training views of HARR (DESIGN §2.3), as the authors' torchvision code
makes them, deterministic under a seed.

View A is SimCLR-style: random resized crop, flip, torchvision's `ColorJitter` with
probability 0.8 (brightness, contrast and saturation multiplied by factors drawn from
[1 − s, 1 + s], hue shifted by up to ±h of the colour wheel, the four in a random order
per image), grayscale with probability 0.2, Gaussian blur with probability 0.5 and a σ
drawn per image. View B is a random resized crop, flip and the authors' RandAugment
(`harr_tf.data.randaugment`), drawn per image. View W is a plain random resized crop and
flip.

The views are made per batch (`make_views`): each operation runs once on the whole
batch with a parameter per image, and every random choice of an image is drawn from
(run seed, the image's position in the stream) (`harr_tf.data.draws`), so an image's
views do not depend on its batch, a resumed stream continues exactly, and a view's
pixels do not depend on which other views are made (`views`: without L_bcr a step needs
view W alone). Colour operations leave grayscale data as it is; crop areas, blur and
RandAugment's pixel constants scale with the image size.
"""

from __future__ import annotations

import tensorflow as tf

from harr_tf.config import AugmentConfig
from harr_tf.data import draws, geometry, image_ops
from harr_tf.data.randaugment import REFERENCE_SIZE, draw_count, rand_augment

VIEWS = ("a", "b", "w")
CROP, FLIP, OWN = range(3)  # the random streams of a view: `stream(view, kind)`
JITTER_DRAWS = 8
COINS = 4  # view A: jitter, grayscale, blur, σ


def scaled_crop_scale(
    scale: tuple[float, float], image_size: int, min_crop_pixels: int
) -> tuple[float, float]:
    """Raises the smallest crop area so a crop keeps `min_crop_pixels` on a side."""
    low, high = scale
    floor = min(1.0, (min_crop_pixels / image_size) ** 2)
    low = max(low, floor)
    return low, max(low, high)


def stream(view: str, kind: int) -> int:
    """The random stream of one kind of choice (`CROP`, `FLIP`, `OWN`) of one view."""
    return 8 * VIEWS.index(view) + kind


def sample_jitter(uniforms: tf.Tensor, strengths: tuple[float, ...]) -> dict[str, tf.Tensor]:
    """torchvision `ColorJitter.get_params` per image from `uniforms` (B, JITTER_DRAWS):
    `factors` (B, 3) for brightness, contrast and saturation, uniform in
    [max(0, 1 − s), 1 + s]; `hue` (B,) uniform in [−h, h]; `order` (B, 4) a random
    permutation of the four operations."""
    strengths = tf.constant(strengths, tf.float32)
    low = tf.maximum(1.0 - strengths[:3], 0.0)
    factors = low + uniforms[:, :3] * (1.0 + strengths[:3] - low)
    hue = (2.0 * uniforms[:, 3] - 1.0) * strengths[3]
    order = tf.argsort(uniforms[:, 4:8], axis=1)
    return {"factors": factors, "hue": hue, "order": order}


def color_jitter(
    images: tf.Tensor, uniforms: tf.Tensor, strengths: tuple[float, ...], applied: tf.Tensor
) -> tf.Tensor:
    """torchvision's `ColorJitter` on the images of a batch (B, H, W, C) float32 in
    [0, 255] where `applied` (B,) is true, each with its own factors and order: at each
    of the 4 steps each image gets the operation its order names."""
    params = sample_jitter(uniforms, strengths)
    operations = [
        lambda x, f, h: image_ops.brightness(x, f[:, 0]),
        lambda x, f, h: image_ops.contrast(x, f[:, 1]),
        lambda x, f, h: image_ops.saturation(x, f[:, 2]),
        lambda x, f, h: image_ops.hue(x, h),
    ]
    # torchvision skips an operation of strength 0; index 4 leaves an image unchanged.
    operations = [op if s else None for op, s in zip(operations, strengths, strict=True)]
    for step in range(4):
        chosen = tf.where(applied, params["order"][:, step], 4)
        images = image_ops.choose(
            images, chosen, [*operations, None], params["factors"], params["hue"]
        )
    return images


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

    def make_views(self, images: tf.Tensor, positions: tf.Tensor) -> dict[str, tf.Tensor]:
        """Every view of a batch, complete, as (B, H, W, C) float32 in [0, 255].

        `images` is (B, H, W, C) uint8 or float; `positions` (B,) the images' indices in
        the stream (int64), which with the run seed fix every random choice.
        """
        images = tf.cast(images, tf.float32)
        cfg = self.config
        scales = {"a": self.strong_scale, "b": self.strong_scale, "w": self.weak_scale}
        views = {}
        for name in self.views:

            def draw(kind: int, count: int, name=name) -> tf.Tensor:
                return draws.uniform(self.seed, stream(name, kind), positions, count)

            size = self.image_shape[:2]
            boxes = geometry.sample_crop_boxes(
                draw(CROP, geometry.CROP_DRAWS), size, scales[name], cfg.aspect_ratio
            )
            view = geometry.resized_crop(images, boxes)
            if cfg.flip:
                view = geometry.flip(view, draw(FLIP, 1)[:, 0] < 0.5)
            if name == "a":
                view = self.simclr_colour_and_blur(view, draw(OWN, COINS + JITTER_DRAWS))
            elif name == "b":
                view = rand_augment(
                    view,
                    draw(OWN, draw_count(cfg.randaugment_ops)),
                    cfg.randaugment_ops,
                    cfg.randaugment_magnitude,
                    cfg.randaugment_probability,
                    cfg.randaugment_cutout,
                )
            views[name] = tf.clip_by_value(view, 0.0, 255.0)
        return views

    def simclr_colour_and_blur(self, views: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        """View A after its crop: jitter (p 0.8), grayscale (p 0.2), blur (p 0.5), each
        image with its own coins (`uniforms` (B, COINS + JITTER_DRAWS))."""
        cfg = self.config
        strengths = cfg.color_jitter if self.is_color else (*cfg.color_jitter[:2], 0.0, 0.0)
        if any(strengths) and cfg.color_jitter_probability:
            applied = uniforms[:, 0] < cfg.color_jitter_probability
            views = color_jitter(views, uniforms[:, COINS:], strengths, applied)
        if self.is_color and cfg.grayscale_probability:
            gray = uniforms[:, 1] < cfg.grayscale_probability
            views = tf.where(gray[:, None, None, None], image_ops.grayscale(views), views)
        if not cfg.blur_probability:
            return views
        low, high = self.blur_sigma
        sigma = low + uniforms[:, 3] * (high - low)

        def blur(images: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
            return image_ops.gaussian_blur(images, sigma, self.blur_kernel)

        fired = tf.cast(uniforms[:, 2] < cfg.blur_probability, tf.int32)
        return image_ops.choose(views, fired, [None, blur], sigma)
