"""Pixel operations of the views against PIL and SciPy, the references the authors'
torchvision / cv2 code reproduces."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from harr_tf.data import image_ops


def smooth_image(size=32, seed=0):
    """A colour image of gradients and mild noise, away from 0 and 255."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([60 + 3 * xx + 2 * yy, 200 - 4 * yy + xx, 90 + 2 * xx + 30 * np.sin(yy / 3)])
    noise = np.random.default_rng(seed).integers(-10, 10, (3, size, size))
    return np.clip(image + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0)


IMAGE = smooth_image()
PIL_IMAGE = Image.fromarray(IMAGE)
GRAY_FILL = (128, 128, 128)


def ours(op, *args):
    return op(tf.constant(IMAGE, tf.float32), *args).numpy()


@pytest.mark.parametrize(
    ("op", "args", "reference", "atol"),
    [
        (image_ops.equalize, (), ImageOps.equalize(PIL_IMAGE), 0),
        (image_ops.posterize, (4,), ImageOps.posterize(PIL_IMAGE, 4), 0),
        (image_ops.solarize, (128.0,), ImageOps.solarize(PIL_IMAGE, 128), 0),
        (image_ops.autocontrast, (), ImageOps.autocontrast(PIL_IMAGE), 1),
        (image_ops.saturation, (1.9,), ImageEnhance.Color(PIL_IMAGE).enhance(1.9), 1.5),
        (image_ops.contrast, (0.6,), ImageEnhance.Contrast(PIL_IMAGE).enhance(0.6), 1.5),
        (image_ops.brightness, (1.4,), ImageEnhance.Brightness(PIL_IMAGE).enhance(1.4), 1),
        (image_ops.sharpness, (1.9,), ImageEnhance.Sharpness(PIL_IMAGE).enhance(1.9), 1.5),
        (image_ops.grayscale, (), PIL_IMAGE.convert("L").convert("RGB"), 1),
        (
            image_ops.translate,
            (tf.constant(3.0), 1),
            PIL_IMAGE.transform(
                PIL_IMAGE.size, Image.AFFINE, (1, 0, 3, 0, 1, 0), fillcolor=GRAY_FILL
            ),
            0,
        ),
    ],
)
def test_operations_match_pil(op, args, reference, atol):
    np.testing.assert_allclose(ours(op, *args), np.asarray(reference, np.float32), atol=atol)


def test_rotate_and_shear_match_pil_inside_the_image():
    rotated = ours(image_ops.rotate, tf.constant(20.0))
    reference = PIL_IMAGE.rotate(20, resample=Image.BILINEAR, fillcolor=GRAY_FILL)
    inner = slice(8, -8)  # away from the corners, where both fill with gray
    np.testing.assert_allclose(rotated[inner, inner], np.asarray(reference)[inner, inner], atol=1.5)
    sheared = ours(image_ops.shear, tf.constant(0.3), 1)
    # cv2 (the authors') puts pixel centres at integers, PIL at +0.5: hence the 0.15.
    matrix = (1, -0.3, 0.15, 0, 1, 0)
    reference = PIL_IMAGE.transform(
        PIL_IMAGE.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=GRAY_FILL
    )
    rows, cols = slice(0, 16), slice(8, 32)  # the part that stays inside after the shear
    np.testing.assert_allclose(sheared[rows, cols], np.asarray(reference)[rows, cols], atol=1.5)


def test_gaussian_blur_matches_scipy():
    image = IMAGE.astype(np.float32)
    blurred = ours(image_ops.gaussian_blur, tf.constant(1.5), 9)
    # Radius 4 = int(truncate·σ + 0.5); scipy's "mirror" is TF's and torchvision's "reflect".
    expected = ndimage.gaussian_filter(image, (1.5, 1.5, 0), mode="mirror", truncate=4 / 1.5)
    np.testing.assert_allclose(blurred, expected, atol=1e-3)


def test_colour_operations_leave_grayscale_images_as_they_are():
    gray = tf.constant(IMAGE[..., :1], tf.float32)
    for op, arg in ((image_ops.saturation, 1.4), (image_ops.hue, 0.1)):
        np.testing.assert_array_equal(op(gray, arg).numpy(), gray.numpy())
    gray_rgb = tf.constant(np.repeat(IMAGE[..., :1], 3, axis=-1), tf.float32)
    for op, arg in ((image_ops.saturation, 1.4), (image_ops.hue, 0.1)):
        # luma weights sum to 0.9999: a gray pixel may move by 0.03
        np.testing.assert_allclose(op(gray_rgb, arg).numpy(), gray_rgb.numpy(), atol=0.05)


def test_cutout_fills_a_square_of_the_given_size_with_gray():
    image = tf.zeros((20, 20, 1))
    filled = [
        image_ops.cutout(image, tf.constant([seed, 1]), 4).numpy()[..., 0] == 128
        for seed in range(50)
    ]
    sizes = [mask.sum() for mask in filled]
    assert max(sizes) == 16 and min(sizes) >= 4  # 4 × 4, smaller only where clipped
    rows, cols = np.nonzero(filled[0])
    assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
