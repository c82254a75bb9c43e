"""View B's RandAugment as the HARR authors' code makes it, drawn per image.

The authors' `RandomAugment(N=2, M=10)` (github.com/Zeyu77/HARR, data/randaugment.py)
is not torchvision's: it draws N of 14 operations with replacement, applies each with
probability 0.5 at magnitude M out of a maximum level of 10 (so M = 10 is full
strength: rotations of ±30°, shears of ±0.3, colour, contrast, brightness and
sharpness factors of 1.9, translations of ±10 px at 224 px, posterize to 4 bits, a
solarize threshold of 256, which changes nothing), then always cuts out a 16-px gray
square (at 224 px). Translations and the cut-out scale with the image size here.
Keras's `RandAugment` draws one set of operations for the whole batch instead.
"""

from __future__ import annotations

import tensorflow as tf

from harr_tf.data import image_ops

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


def sample_operations(
    seed: tf.Tensor, num_ops: int, probability: float = 0.5
) -> dict[str, tf.Tensor]:
    """The random choices for one image: `ops` (num_ops,) int32 indices into
    `OPERATIONS` (with replacement), `applied` (num_ops,) bool coins of `probability`,
    `signs` (num_ops,) ±1.0 for the signed operations, and `cutout` a seed (2,)."""
    keys = tf.random.experimental.stateless_split(seed, num=4)
    ops = tf.random.stateless_uniform(
        (num_ops,), keys[0], minval=0, maxval=len(OPERATIONS), dtype=tf.int32
    )
    applied = tf.random.stateless_uniform((num_ops,), keys[1]) < probability
    signs = tf.where(tf.random.stateless_uniform((num_ops,), keys[2]) < 0.5, -1.0, 1.0)
    return {"ops": ops, "applied": applied, "signs": signs, "cutout": keys[3]}


def _branches(image: tf.Tensor, sign: tf.Tensor, magnitude: float, translate_pixels: float) -> list:
    """One callable per entry of `OPERATIONS`, at the authors' level-to-argument maps."""
    level = magnitude / MAX_LEVEL
    enhance = level * 1.8 + 0.1
    shear = sign * 0.3 * level
    shift = sign * translate_pixels * level
    ops = image_ops
    table = {
        "identity": lambda: image,
        "autocontrast": lambda: ops.autocontrast(image),
        "equalize": lambda: ops.equalize(image),
        "rotate": lambda: ops.rotate(image, sign * 30.0 * level),
        "solarize": lambda: ops.solarize(image, float(int(level * 256))),
        "color": lambda: ops.saturation(image, enhance),
        "contrast": lambda: ops.contrast(image, enhance),
        "brightness": lambda: ops.brightness(image, enhance),
        "sharpness": lambda: ops.sharpness(image, enhance),
        "shear_x": lambda: ops.shear(image, shear, axis=1),
        "translate_x": lambda: ops.translate(image, shift, axis=1),
        "translate_y": lambda: ops.translate(image, shift, axis=0),
        "posterize": lambda: ops.posterize(image, int(level * 4)),
        "shear_y": lambda: ops.shear(image, shear, axis=0),
    }
    return [table[name] for name in OPERATIONS]


def rand_augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    num_ops: int = 2,
    magnitude: float = 10.0,
    probability: float = 0.5,
    cutout: bool = True,
) -> tf.Tensor:
    """The authors' RandomAugment on one image (H, W, C) float32 in [0, 255].

    `seed` is a stateless seed (2,); `magnitude` is out of 10.
    """
    size = min(image.shape[0], image.shape[1])
    scale = size / REFERENCE_SIZE
    choices = sample_operations(seed, num_ops, probability)
    image = tf.round(image)  # the authors' operations act on uint8 pixels
    for i in range(num_ops):
        current = image

        def operate(current=current, i=i):
            branches = _branches(current, choices["signs"][i], magnitude, 10.0 * scale)
            return tf.switch_case(choices["ops"][i], branches)

        image = tf.cond(choices["applied"][i], operate, lambda current=current: current)
        image = tf.ensure_shape(image, current.shape)
    if cutout:
        image = image_ops.cutout(image, choices["cutout"], int(round(16 * scale)))
    return image
