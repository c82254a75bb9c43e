"""The views' augmentation settings (DESIGN §2.3), a section of `harr_tf.config.TrainConfig`.
Plain module: no TensorFlow, like the config it belongs to.
"""

from __future__ import annotations

import dataclasses


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
