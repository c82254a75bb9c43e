"""Views and pipelines: shapes, value range, determinism under a seed, resume, and the
sampled distributions of the authors' (torchvision) views."""

import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf

from harr_tf.data import draws
from harr_tf.data.augment import (
    JITTER_DRAWS,
    VIEWS,
    AugmentConfig,
    ViewAugmenter,
    sample_jitter,
    scaled_crop_scale,
)
from harr_tf.data.pipeline import inference_dataset, training_dataset
from harr_tf.data.randaugment import OPERATIONS, draw_count, sample_operations

# Crops covering the whole image, no flip, no blur: view W is then the image itself.
NEUTRAL = AugmentConfig(
    strong_crop_scale=(1.0, 1.0),
    weak_crop_scale=(1.0, 1.0),
    aspect_ratio=(1.0, 1.0),
    flip=False,
    blur_probability=0.0,
)


def images(shape=(16, 16, 1), count=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def take(dataset, batches):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(batches)]


def stream(pixels, seed, config=None, batch_size=8, start_step=0, batches=3, views=VIEWS):
    augmenter = ViewAugmenter(pixels.shape[1:], config, seed=seed, views=views)
    indices = np.arange(len(pixels))
    dataset = training_dataset(
        pixels, indices, augmenter, batch_size, seed=seed, start_step=start_step
    )
    return take(dataset, batches)


def test_scaled_crop_scale_keeps_min_crop_pixels():
    # 16 px of 28 px: the smallest area is (16/28)^2 = 0.3265; at 224 px 0.08 stands.
    assert scaled_crop_scale((0.08, 1.0), 28, 16) == pytest.approx(((16 / 28) ** 2, 1.0))
    assert scaled_crop_scale((0.08, 1.0), 224, 16) == (0.08, 1.0)
    assert scaled_crop_scale((0.08, 1.0), 8, 16) == (1.0, 1.0)


@pytest.mark.parametrize("shape", [(16, 16, 1), (20, 20, 3)])
def test_views_shapes_range_and_difference(shape):
    pixels = images(shape)
    batch = stream(pixels, seed=0, batches=1)[0]
    for name in "abw":
        assert batch[name].shape == (8, *shape) and batch[name].dtype == np.float32
        assert batch[name].min() >= 0.0 and batch[name].max() <= 255.0
    originals = pixels[batch["index"]].astype(np.float32)
    assert not np.allclose(batch["a"], batch["b"])
    assert not np.allclose(batch["a"], originals)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(16, 16, 1), (20, 20, 3)])
def test_same_seed_same_views_other_seed_other_views(shape):
    pixels = images(shape)
    first, again, other = (stream(pixels, s) for s in (7, 7, 8))
    for name in ("a", "b", "w", "index"):
        for x, y in zip(first, again, strict=True):
            np.testing.assert_array_equal(x[name], y[name])
    assert not np.array_equal(first[0]["index"], other[0]["index"])
    assert not np.allclose(first[0]["a"], other[0]["a"])


def test_view_w_alone_is_the_same_view_w_with_nothing_else():
    pixels = images((12, 12, 3))
    alone = stream(pixels, seed=4, views=("w",))
    for single, full in zip(alone, stream(pixels, seed=4), strict=True):
        assert set(single) == {"w", "index"}
        np.testing.assert_array_equal(single["index"], full["index"])
        np.testing.assert_array_equal(single["w"], full["w"])


def test_an_images_views_do_not_depend_on_its_batch():
    pixels = images((12, 12, 3), count=16)
    augmenter = ViewAugmenter(pixels.shape[1:], seed=2)
    positions = tf.range(100, 116, dtype=tf.int64)
    whole = augmenter.make_views(pixels, positions)
    part = augmenter.make_views(pixels[5:9], positions[5:9])
    for name in VIEWS:
        np.testing.assert_allclose(part[name], whole[name][5:9], atol=1e-4)
        assert not np.allclose(whole[name][5], whole[name][6])


def test_draws_depend_on_the_position_and_stream_alone():
    first = draws.uniform(3, 1, tf.constant([7, 8, 9]), 5).numpy()
    assert first.shape == (3, 5) and first.min() >= 0.0 and first.max() < 1.0
    np.testing.assert_array_equal(draws.uniform(3, 1, tf.constant([9]), 5), first[2:])
    np.testing.assert_array_equal(draws.uniform(3, 1, tf.constant([7, 8, 9]), 2), first[:, :2])
    assert not np.allclose(draws.uniform(3, 2, tf.constant([7, 8, 9]), 5), first)
    assert not np.allclose(draws.uniform(4, 1, tf.constant([7, 8, 9]), 5), first)
    many = draws.uniform(0, 0, tf.range(20_000), 2).numpy()
    assert abs(many.mean() - 0.5) < 0.005 and abs(np.corrcoef(many.T)[0, 1]) < 0.02
    counts = np.histogram(many, bins=10, range=(0, 1))[0]
    assert counts.min() > 3_800 and counts.max() < 4_200


def test_unknown_views_are_rejected():
    with pytest.raises(ValueError, match="subset of \\('a', 'b', 'w'\\). Received: \\('x',\\)"):
        ViewAugmenter((12, 12, 1), views=("x",))
    with pytest.raises(ValueError, match="non-empty"):
        ViewAugmenter((12, 12, 1), views=())


def test_weak_view_is_the_indexed_image_under_neutral_config():
    pixels = images((12, 12, 3))
    for batch in stream(pixels, seed=1, config=NEUTRAL):
        np.testing.assert_allclose(batch["w"], pixels[batch["index"]], atol=1e-3)


def test_each_pass_visits_every_image_once_and_reshuffles():
    pixels = images(count=40)
    batches = stream(pixels, seed=3, batch_size=8, batches=10)
    first = np.concatenate([b["index"] for b in batches[:5]])
    second = np.concatenate([b["index"] for b in batches[5:]])
    np.testing.assert_array_equal(np.sort(first), np.arange(40))
    np.testing.assert_array_equal(np.sort(second), np.arange(40))
    assert not np.array_equal(first, second)


@pytest.mark.slow
def test_resume_continues_the_same_stream_with_the_same_views():
    pixels = images((12, 12, 3), count=40)
    whole = stream(pixels, seed=5, batches=4)
    resumed = stream(pixels, seed=5, start_step=2, batches=2)
    for full, part in zip(whole[2:], resumed, strict=True):
        for name in ("index", "a", "b", "w"):
            np.testing.assert_array_equal(full[name], part[name])


def test_grayscale_probability_one_makes_view_a_gray():
    config = AugmentConfig(
        strong_crop_scale=(1.0, 1.0), color_jitter_probability=0.0, grayscale_probability=1.0
    )
    batch = stream(images((12, 12, 3)), seed=0, config=config, batches=1)[0]
    np.testing.assert_allclose(batch["a"][..., 0], batch["a"][..., 1], atol=1e-3)
    np.testing.assert_allclose(batch["a"][..., 1], batch["a"][..., 2], atol=1e-3)


def test_bad_batch_sizes_and_tiny_training_sets_are_rejected():
    pixels = images(count=10)
    augmenter = ViewAugmenter(pixels.shape[1:])
    with pytest.raises(ValueError, match="batch_size=11"):
        training_dataset(pixels, np.arange(10), augmenter, 11)
    with pytest.raises(ValueError, match="at least 2 images. Received: 1"):
        training_dataset(pixels, np.arange(1), augmenter, 1)


def test_bad_augment_config_is_rejected():
    with pytest.raises(ValueError, match="strong_crop_scale"):
        AugmentConfig(strong_crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="blur_probability"):
        AugmentConfig(blur_probability=1.5)


def test_inference_dataset_keeps_order_and_resizes():
    pixels = images((10, 14, 3), count=9)
    batches = list(inference_dataset(pixels, batch_size=4).as_numpy_iterator())
    assert [len(b) for b in batches] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(batches), pixels.astype(np.float32))
    resized = next(iter(inference_dataset(pixels, batch_size=4, image_size=(8, 8))))
    assert resized.shape == (4, 8, 8, 3)


# --- The sampled distributions (DESIGN §2.3: torchvision's meaning of the factors) ---

TWO_COLOURS = np.array([[100, 130, 160], [140, 110, 120]], np.float32)  # never clipped
COLOUR_IMAGE = np.repeat(TWO_COLOURS, 8, axis=0).reshape(4, 4, 3)
ONLY_JITTER = dataclasses.replace(NEUTRAL, color_jitter_probability=1.0, grayscale_probability=0.0)


def per_image(image, config, count, view="a"):
    """`count` views of one image, each at its own stream position, as NumPy."""
    augmenter = ViewAugmenter(image.shape, config, seed=0, views=(view,))
    batch = tf.repeat(tf.constant(image)[None], count, axis=0)
    return augmenter.make_views(batch, tf.range(count, dtype=tf.int64))[view].numpy()


def luma(pixels):
    return pixels @ np.array([0.2989, 0.587, 0.114], np.float32)


def measured_factor(name, out):
    """The multiplier an operation applied, read back from the pixels (N, 2, 3)."""
    before = TWO_COLOURS
    if name == "brightness":
        return out[:, 0, 0] / before[0, 0]
    if name == "contrast":  # a blend with the mean luma keeps differences × factor
        return (out[:, 0, 0] - out[:, 1, 0]) / (before[0, 0] - before[1, 0])
    # saturation: a blend with the pixel's own luma, which it keeps
    return (out[:, 0, 2] - luma(out[:, 0])) / (before[0, 2] - luma(before[0]))


@pytest.mark.parametrize(("position", "name"), enumerate(["brightness", "contrast", "saturation"]))
def test_jitter_multiplies_by_factors_filling_0_6_to_1_4(position, name):
    strengths = [0.0, 0.0, 0.0, 0.0]
    strengths[position] = 0.4
    config = dataclasses.replace(ONLY_JITTER, color_jitter=tuple(strengths))
    out = per_image(COLOUR_IMAGE, config, 10_000)[:, [0, 2], 0]
    factors = measured_factor(name, out)
    assert factors.min() >= 0.6 - 1e-3 and factors.max() <= 1.4 + 1e-3
    assert factors.min() < 0.61 and factors.max() > 1.39  # filled, not a narrow band
    assert abs(factors.mean() - 1.0) < 0.01  # uniform (Keras's saturation: mean 0.18)


def test_hue_shifts_by_at_most_a_tenth_of_the_colour_wheel():
    config = dataclasses.replace(ONLY_JITTER, color_jitter=(0.0, 0.0, 0.0, 0.1))
    out = per_image(COLOUR_IMAGE, config, 10_000)[:, 0, 0]
    hue_in = tf.image.rgb_to_hsv(TWO_COLOURS[:1] / 255.0).numpy()[0, 0]
    hue_out = tf.image.rgb_to_hsv(out / 255.0).numpy()[:, 0]
    shift = (hue_out - hue_in + 0.5) % 1.0 - 0.5
    assert np.abs(shift).max() <= 0.1 + 1e-3 and np.abs(shift).max() > 0.099
    assert shift.min() < -0.099


def test_jitter_fires_with_p_0_8_in_a_random_order_per_image():
    config = dataclasses.replace(NEUTRAL, grayscale_probability=0.0)
    out = per_image(COLOUR_IMAGE, config, 10_000)[:, 0, 0]
    changed = np.abs(out - TWO_COLOURS[0]).max(axis=1) > 1e-3
    assert abs(changed.mean() - 0.8) < 0.02
    uniforms = draws.uniform(0, 1, tf.range(2_400), JITTER_DRAWS)
    orders = sample_jitter(uniforms, (0.4, 0.4, 0.4, 0.1))["order"].numpy()
    orders = [tuple(order) for order in orders]
    counts = np.array([orders.count(p) for p in itertools.permutations(range(4))])
    assert counts.min() > 50 and counts.max() < 150  # all 24 orders, each about 100 times


def test_colour_ops_leave_grayscale_data_untouched():
    gray = images((6, 6, 1), count=1)[0].astype(np.float32)
    colour_only = dataclasses.replace(
        ONLY_JITTER, color_jitter=(0.0, 0.0, 0.4, 0.1), grayscale_probability=1.0
    )
    out = per_image(gray, colour_only, 200)
    np.testing.assert_array_equal(out, np.broadcast_to(gray, out.shape))
    # Brightness is not a colour: torchvision applies it to grayscale images too.
    brighter = dataclasses.replace(ONLY_JITTER, color_jitter=(0.4, 0.0, 0.0, 0.0))
    assert not np.allclose(per_image(gray, brighter, 20), gray)


def test_blur_fires_half_the_time_with_a_sigma_per_image():
    size = 112  # σ in [1, 2] at 224 px is [0.5, 1] here; the kernel spans 11 px
    delta = np.zeros((size, size, 1), np.float32)
    delta[size // 2, size // 2] = 255.0
    config = dataclasses.replace(
        NEUTRAL, blur_probability=0.5, blur_sigma=(1.0, 2.0), color_jitter_probability=0.0
    )
    offsets = np.arange(size, dtype=np.float32) - size // 2

    views = per_image(delta, config, 1_000)[..., 0]
    fired = views[:, size // 2, size // 2] < 255.0
    weights = views / views.sum(axis=(1, 2), keepdims=True)
    variance = (weights.sum(axis=1) * offsets**2).sum(axis=1)
    assert abs(fired.mean() - 0.5) < 0.05
    measured = np.sqrt(variance[fired])

    def sampled(sigma):  # the spread of a Gaussian kernel sampled at 11 integer offsets
        kernel = np.exp(-(np.arange(-5, 6) ** 2) / (2 * sigma**2))
        return np.sqrt((kernel * np.arange(-5, 6) ** 2).sum() / kernel.sum())

    assert sampled(0.5) - 1e-3 < measured.min() and measured.max() < sampled(1.0) + 1e-3
    low, high = np.percentile(measured, [25, 75])  # σ ~ U[0.5, 1]: quartiles 0.625, 0.875
    assert abs(low - sampled(0.625)) < 0.04 and abs(high - sampled(0.875)) < 0.04


def test_randaugment_draws_two_ops_per_image_each_with_p_0_5():
    uniforms = draws.uniform(0, 2, tf.range(5_000), draw_count(2))
    choices = sample_operations(uniforms, num_ops=2)
    ops, applied = choices["ops"].numpy(), choices["applied"].numpy()
    counts = np.bincount(ops.ravel(), minlength=len(OPERATIONS)) / ops.size
    assert np.abs(counts - 1 / len(OPERATIONS)).max() < 0.015
    assert abs(applied.mean() - 0.5) < 0.02
    assert len({tuple(pair) for pair in ops[:32]}) > 20  # one batch: ops differ per image


def test_randaugment_leaves_an_image_unchanged_as_often_as_the_authors():
    # Identity and solarize at threshold 256 change nothing, the 12 others change this
    # image: unchanged with probability (0.5 + 0.5 · 2/14)² = 0.327 (Keras: per batch).
    image = np.random.default_rng(0).integers(40, 200, (32, 32, 3)).astype(np.float32)
    config = dataclasses.replace(NEUTRAL, randaugment_cutout=False)
    out = per_image(image, config, 2_000, view="b")
    unchanged = np.abs(out - image).reshape(len(out), -1).max(axis=1) < 1e-3
    assert abs(unchanged.mean() - (0.5 + 0.5 * 2 / 14) ** 2) < 0.035


def test_view_b_ends_with_the_authors_gray_cutout_scaled_to_the_image():
    image = np.zeros((112, 112, 1), np.float32)  # 16 px at 224 px is 8 px here
    config = dataclasses.replace(NEUTRAL, randaugment_probability=0.0)
    filled = (per_image(image, config, 50, "b") == 128).reshape(50, -1).sum(axis=1)
    assert filled.max() == 64 and filled.min() > 0
