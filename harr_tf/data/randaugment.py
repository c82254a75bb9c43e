"""View B's RandAugment as the HARR authors' code makes it, drawn per image of a batch.

The authors' `RandomAugment(N=2, M=10)` (github.com/Zeyu77/HARR, data/randaugment.py)
is not torchvision's: it draws N of 14 operations with replacement, applies each with
probability 0.5 at magnitude M out of a maximum level of 10 (so M = 10 is full
strength: rotations of ±30°, shears of ±0.3, colour, contrast, brightness and
sharpness factors of 1.9, translations of ±10 px at 224 px, posterize to 4 bits, a
solarize threshold of 256, which changes nothing), then always cuts out a 16-px gray
square (at 224 px). Translations and the cut-out scale with the image size here.
Keras's `RandAugment` draws one set of operations for the whole batch instead; here each
image draws its own, and each operation runs once on the images that drew it.
"""

from __future__ import annotations

import tensorflow as tf

from harr_tf.data import geometry, image_ops

OPERATIONS = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "translate_x",
    "translate_y",
    "posterize",
    "shear_y",
)
MAX_LEVEL = 10.0
REFERENCE_SIZE = 224.0  # the authors' image size, at which their pixel constants hold


def draw_count(num_ops: int) -> int:
    """How many uniforms per image `sample_operations` reads."""
    return 3 * num_ops + 2


def sample_operations(
    uniforms: tf.Tensor, num_ops: int, probability: float = 0.5
) -> dict[str, tf.Tensor]:
    """Each image's random choices from its `uniforms` (B, draw_count(num_ops)):
    `ops` (B, num_ops) int32 indices into `OPERATIONS` (with replacement), `applied`
    (B, num_ops) bool coins of `probability`, `signs` (B, num_ops) ±1.0 for the signed
    operations, and `cutout` (B, 2) uniforms placing the square."""
    ops = tf.cast(uniforms[:, :num_ops] * len(OPERATIONS), tf.int32)
    applied = uniforms[:, num_ops : 2 * num_ops] < probability
    signs = tf.where(uniforms[:, 2 * num_ops : 3 * num_ops] < 0.5, -1.0, 1.0)
    return {"ops": ops, "applied": applied, "signs": signs, "cutout": uniforms[:, 3 * num_ops :]}


def _operations(magnitude: float, translate_pixels: float) -> list:
    """One callable (images, signs) per entry of `OPERATIONS` (`None` for identity), at
    the authors' level-to-argument maps; `signs` (n,) ±1 per image."""
    level = magnitude / MAX_LEVEL
    enhance = level * 1.8 + 0.1
    ops, geo = image_ops, geometry
    table = {
        "identity": None,
        "autocontrast": lambda x, sign: ops.autocontrast(x),
        "equalize": lambda x, sign: ops.equalize(x),
        "rotate": lambda x, sign: geo.rotate(x, sign * 30.0 * level),
        "solarize": lambda x, sign: ops.solarize(x, float(int(level * 256))),
        "color": lambda x, sign: ops.saturation(x, enhance),
        "contrast": lambda x, sign: ops.contrast(x, enhance),
        "brightness": lambda x, sign: ops.brightness(x, enhance),
        "sharpness": lambda x, sign: ops.sharpness(x, enhance),
        "shear_x": lambda x, sign: geo.shear(x, sign * 0.3 * level, axis=1),
        "translate_x": lambda x, sign: geo.translate(x, sign * translate_pixels * level, axis=1),
        "translate_y": lambda x, sign: geo.translate(x, sign * translate_pixels * level, axis=0),
        "posterize": lambda x, sign: ops.posterize(x, int(level * 4)),
        "shear_y": lambda x, sign: geo.shear(x, sign * 0.3 * level, axis=0),
    }
    return [table[name] for name in OPERATIONS]


def rand_augment(
    images: tf.Tensor,
    uniforms: tf.Tensor,
    num_ops: int = 2,
    magnitude: float = 10.0,
    probability: float = 0.5,
    cutout: bool = True,
) -> tf.Tensor:
    """The authors' RandomAugment on a batch (B, H, W, C) float32 in [0, 255].

    `uniforms` (B, draw_count(num_ops)) are each image's random numbers; `magnitude`
    is out of 10.
    """
    size = min(images.shape[1], images.shape[2])
    scale = size / REFERENCE_SIZE
    choices = sample_operations(uniforms, num_ops, probability)
    operations = _operations(magnitude, 10.0 * scale)
    images = tf.round(images)  # the authors' operations act on uint8 pixels
    for i in range(num_ops):
        chosen = tf.where(choices["applied"][:, i], choices["ops"][:, i], 0)  # 0: identity
        images = image_ops.choose(images, chosen, operations, choices["signs"][:, i])
    if cutout:
        images = geometry.cutout(images, choices["cutout"], int(round(16 * scale)))
    return images
