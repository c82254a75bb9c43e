"""WTA feature sources against direct NumPy computations of what they promise."""

import numpy as np
import pytest

from harr_tf.config import WTAConfig
from harr_tf.features import (
    pixel_features,
    smoothed_pixel_features,
    sqrt_smoothed_pixel_features,
    wta_features,
)


def test_pixel_features_scale_to_unit_interval():
    images = np.array([[[[0], [255]], [[51], [102]]]], dtype=np.uint8)
    np.testing.assert_allclose(pixel_features(images), [[0.0, 1.0, 0.2, 0.4]])


def reference_smoothed(images: np.ndarray) -> np.ndarray:
    """Per image: standardise, then convolve every row and column with [1 4 6 4 1]/16
    (zero padding); then standardise every dimension over the images."""
    kernel = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16
    out = []
    for image in images.astype(np.float64):
        image = (image - image.mean()) / (image.std() + 1e-3)
        for c in range(image.shape[-1]):
            channel = image[..., c]
            channel = np.stack([np.convolve(row, kernel, "same") for row in channel])
            channel = np.stack([np.convolve(col, kernel, "same") for col in channel.T]).T
            image[..., c] = channel
        out.append(image.reshape(-1))
    out = np.array(out)
    return (out - out.mean(axis=0)) / (out.std(axis=0) + 1e-3)


@pytest.mark.parametrize("shape", [(6, 7, 5, 1), (4, 6, 6, 3)])
def test_smoothed_pixels_match_the_direct_computation(shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    features = smoothed_pixel_features(images)
    assert features.shape == (shape[0], np.prod(shape[1:])) and features.dtype == np.float32
    np.testing.assert_allclose(features, reference_smoothed(images), rtol=1e-4, atol=1e-4)


def test_sqrt_smoothed_pixels_smooth_the_square_roots():
    images = np.random.default_rng(2).integers(0, 256, (5, 6, 7, 1), dtype=np.uint8)
    expected = reference_smoothed(np.sqrt(images.astype(np.float64)))
    np.testing.assert_allclose(sqrt_smoothed_pixel_features(images), expected, rtol=1e-4, atol=1e-4)


def test_sqrt_smoothed_pixels_ignore_each_images_contrast():
    rng = np.random.default_rng(3)
    images = rng.integers(1, 128, (5, 8, 8, 1)).astype(np.float32)
    changed = images * rng.uniform(0.5, 2.0, (5, 1, 1, 1))
    np.testing.assert_allclose(
        sqrt_smoothed_pixel_features(changed), sqrt_smoothed_pixel_features(images), atol=2e-3
    )
    # An offset is not a scale of the square roots: the features do see it.
    shifted = images + 60.0
    assert (
        np.abs(sqrt_smoothed_pixel_features(shifted) - sqrt_smoothed_pixel_features(images)).max()
        > 0.1
    )


def test_smoothed_pixels_ignore_each_images_brightness_and_contrast():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 128, (5, 8, 8, 1)).astype(np.float32)
    # A different affine change of each image's intensities: WTA ranks should not see it.
    changed = images * rng.uniform(0.5, 2.0, (5, 1, 1, 1)) + rng.uniform(0, 60, (5, 1, 1, 1))
    np.testing.assert_allclose(
        smoothed_pixel_features(changed), smoothed_pixel_features(images), atol=2e-3
    )


def test_feature_sources_are_checked_where_they_are_named():
    images = np.zeros((2, 4, 4, 1), np.uint8)
    np.testing.assert_array_equal(wta_features(images, "pixels"), pixel_features(images))
    with pytest.raises(ValueError, match="'hog'.*pixels"):
        wta_features(images, "hog")
    with pytest.raises(ValueError, match="'hog'"):
        WTAConfig(features="hog")
