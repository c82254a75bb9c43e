"""Batched pixel and geometric operations of the views against PIL, SciPy and NumPy,
the references the authors' torchvision / cv2 code reproduces, with parameters that
differ per image of a batch."""

import colorsys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from harr_tf.data import geometry, image_ops


def smooth_image(size=32, seed=0):
    """A colour image of gradients and mild noise, away from 0 and 255."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([60 + 3 * xx + 2 * yy, 200 - 4 * yy + xx, 90 + 2 * xx + 30 * np.sin(yy / 3)])
    noise = np.random.default_rng(seed).integers(-10, 10, (3, size, size))
    return np.clip(image + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0)


IMAGE = smooth_image()
PIL_IMAGE = Image.fromarray(IMAGE)
GRAY_FILL = (128, 128, 128)
BATCH = np.stack([smooth_image(seed=s) for s in range(4)])  # four different images


def ours(op, *args):
    return op(tf.constant(IMAGE[None], tf.float32), *args).numpy()[0]


def batched(op, *args):
    return op(tf.constant(BATCH, tf.float32), *args).numpy()


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
            geometry.translate,
            (3.0, 1),
            PIL_IMAGE.transform(
                PIL_IMAGE.size, Image.AFFINE, (1, 0, 3, 0, 1, 0), fillcolor=GRAY_FILL
            ),
            0,
        ),
    ],
)
def test_operations_match_pil(op, args, reference, atol):
    np.testing.assert_allclose(ours(op, *args), np.asarray(reference, np.float32), atol=atol)


@pytest.mark.parametrize("op", [image_ops.equalize, image_ops.autocontrast])
def test_histogram_operations_work_per_image_and_channel(op):
    pil = {image_ops.equalize: ImageOps.equalize, image_ops.autocontrast: ImageOps.autocontrast}
    expected = np.stack([np.asarray(pil[op](Image.fromarray(image))) for image in BATCH])
    np.testing.assert_allclose(batched(op), expected.astype(np.float32), atol=1)


FACTORS = np.array([0.6, 0.9, 1.2, 1.9], np.float32)  # one per image


def luma(pixels):
    return pixels @ np.array([0.2989, 0.587, 0.114], np.float32)


@pytest.mark.parametrize(
    ("op", "formula"),
    [
        (image_ops.brightness, lambda x, f: x * f),
        (image_ops.contrast, lambda x, f: luma(x).mean() + f * (x - luma(x).mean())),
        (image_ops.saturation, lambda x, f: luma(x)[..., None] + f * (x - luma(x)[..., None])),
        (image_ops.sharpness, None),
    ],
)
def test_blends_take_a_factor_per_image(op, formula):
    out = batched(op, FACTORS)
    for image, factor, got in zip(BATCH.astype(np.float32), FACTORS, out, strict=True):
        if formula is None:  # sharpness: PIL per image
            reference = ImageEnhance.Sharpness(Image.fromarray(image.astype(np.uint8)))
            expected = np.asarray(reference.enhance(float(factor)), np.float32)
            np.testing.assert_allclose(got, expected, atol=1.5)
        else:
            np.testing.assert_allclose(got, np.clip(formula(image, factor), 0, 255), atol=1e-2)


def test_hue_rotates_each_image_by_its_own_shift():
    shifts = np.array([-0.1, -0.03, 0.05, 0.1], np.float32)
    out = batched(image_ops.hue, shifts)
    for image, shift, got in zip(BATCH, shifts, out, strict=True):
        expected = np.array(
            [
                colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
                for h, s, v in (colorsys.rgb_to_hsv(*p) for p in image.reshape(-1, 3) / 255.0)
            ]
        )
        np.testing.assert_allclose(got.reshape(-1, 3), expected * 255.0, atol=0.05)


def test_gaussian_blur_matches_scipy_with_a_sigma_per_image():
    sigmas = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
    blurred = batched(image_ops.gaussian_blur, sigmas, 9)
    for image, sigma, got in zip(BATCH.astype(np.float32), sigmas, blurred, strict=True):
        # Radius 4 = int(truncate·σ + 0.5); scipy's "mirror" is TF's and torchvision's "reflect".
        expected = ndimage.gaussian_filter(
            image, (sigma, sigma, 0), mode="mirror", truncate=4 / sigma
        )
        np.testing.assert_allclose(got, expected, atol=1e-3)


def test_rotate_and_shear_match_pil_inside_the_image_per_image():
    degrees = np.array([20.0, -10.0, 5.0, 30.0], np.float32)
    rotated = batched(geometry.rotate, degrees)
    inner = slice(8, -8)  # away from the corners, where both fill with gray
    for image, angle, got in zip(BATCH, degrees, rotated, strict=True):
        reference = Image.fromarray(image).rotate(
            float(angle), resample=Image.BILINEAR, fillcolor=GRAY_FILL
        )
        np.testing.assert_allclose(got[inner, inner], np.asarray(reference)[inner, inner], atol=1.5)
    sheared = ours(geometry.shear, 0.3, 1)
    # cv2 (the authors') puts pixel centres at integers, PIL at +0.5: hence the 0.15.
    matrix = (1, -0.3, 0.15, 0, 1, 0)
    reference = PIL_IMAGE.transform(
        PIL_IMAGE.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=GRAY_FILL
    )
    rows, cols = slice(0, 16), slice(8, 32)  # the part that stays inside after the shear
    np.testing.assert_allclose(sheared[rows, cols], np.asarray(reference)[rows, cols], atol=1.5)
    shifts = batched(geometry.translate, np.array([0.0, 1.0, 2.0, 3.0], np.float32), 0)
    for k in range(4):  # shifts towards −y by k rows, gray below
        np.testing.assert_array_equal(shifts[k, : 32 - k], BATCH[k, k:])
        assert (shifts[k, 32 - k :] == 128).all()


def test_resized_crop_is_tf_resize_of_each_images_box():
    boxes = np.array([[0, 0, 32, 32], [3, 5, 10, 20], [10, 0, 22, 9], [31, 31, 1, 1]], np.int32)
    out = batched(geometry.resized_crop, boxes)
    for image, (top, left, h, w), got in zip(BATCH, boxes, out, strict=True):
        crop = image[top : top + h, left : left + w].astype(np.float32)
        np.testing.assert_allclose(got, tf.image.resize(crop, (32, 32)).numpy(), atol=1e-3)


def torchvision_crop_box(u, size, scale, ratio):
    """`RandomResizedCrop.get_params` with the given uniforms (10 attempts × 4)."""
    for area, log_ratio, top, left in u.reshape(10, 4):
        area = size * size * (scale[0] + area * (scale[1] - scale[0]))
        aspect = np.exp(np.log(ratio[0]) + log_ratio * (np.log(ratio[1]) - np.log(ratio[0])))
        w, h = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < w <= size and 0 < h <= size:
            return int(top * (size - h + 1)), int(left * (size - w + 1)), h, w
    return 0, 0, size, size


def test_crop_boxes_follow_torchvision_per_image():
    uniforms = tf.random.stateless_uniform((5_000, geometry.CROP_DRAWS), (0, 1))
    boxes = geometry.sample_crop_boxes(uniforms, (28, 28), (0.3, 1.0), (3 / 4, 4 / 3)).numpy()
    expected = [torchvision_crop_box(u, 28, (0.3, 1.0), (3 / 4, 4 / 3)) for u in uniforms.numpy()]
    assert (boxes == np.array(expected)).all(axis=1).mean() > 0.999  # float32 rounding aside
    top, left, h, w = boxes.T
    assert (top + h <= 28).all() and (left + w <= 28).all() and (h * w >= 0.28 * 28**2).all()
    assert len({tuple(box) for box in boxes[:32]}) > 25  # one batch: boxes differ per image
    # Nothing fits (ratio 4 at full area): the whole image, as TF's sampler falls back.
    whole = geometry.sample_crop_boxes(uniforms[:5], (28, 28), (1.0, 1.0), (4.0, 4.0))
    np.testing.assert_array_equal(whole, [[0, 0, 28, 28]] * 5)


def test_flip_and_cutout_act_per_image():
    flipped = batched(geometry.flip, tf.constant([True, False, True, False]))
    np.testing.assert_array_equal(flipped[0], BATCH[0, :, ::-1])
    np.testing.assert_array_equal(flipped[1], BATCH[1])
    zeros = tf.zeros((50, 20, 20, 1))
    filled = geometry.cutout(zeros, tf.random.stateless_uniform((50, 2), (3, 4)), 4).numpy() == 128
    sizes = filled.reshape(50, -1).sum(axis=1)
    assert sizes.max() == 16 and sizes.min() >= 4  # 4 × 4, smaller only where clipped
    rows, cols = np.nonzero(filled[0, ..., 0])
    assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    centres = {(r.min(), c.min()) for r, c in (np.nonzero(m[..., 0]) for m in filled)}
    assert len(centres) > 30  # a centre per image


def test_choose_applies_each_images_operation_with_its_parameters():
    choice = tf.constant([1, 0, 2, 1])
    out = batched(
        lambda x, f: image_ops.choose(
            x, choice, [None, image_ops.brightness, image_ops.solarize], f
        ),
        tf.constant([0.5, 2.0, 100.0, 0.25]),
    )
    expected = [BATCH[0] * 0.5, BATCH[1], np.where(BATCH[2] < 100, BATCH[2], 255 - BATCH[2])]
    for got, want in zip(out, [*expected, BATCH[3] * 0.25], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_colour_operations_leave_grayscale_images_as_they_are():
    gray = tf.constant(IMAGE[None, ..., :1], tf.float32)
    for op, arg in ((image_ops.saturation, 1.4), (image_ops.hue, 0.1)):
        np.testing.assert_array_equal(op(gray, arg).numpy(), gray.numpy())
    gray_rgb = tf.constant(np.repeat(IMAGE[None, ..., :1], 3, axis=-1), tf.float32)
    for op, arg in ((image_ops.saturation, 1.4), (image_ops.hue, 0.1)):
        # luma weights sum to 0.9999: a gray pixel may move by 0.03
        np.testing.assert_allclose(op(gray_rgb, arg).numpy(), gray_rgb.numpy(), atol=0.05)
