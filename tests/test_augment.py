"""Views and pipelines: shapes, value range, determinism under a seed, resume."""

import numpy as np
import pytest

from harr_tf.data.augment import VIEWS, AugmentConfig, ViewAugmenter, scaled_crop_scale
from harr_tf.data.pipeline import inference_dataset, training_dataset

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


def test_resume_continues_the_same_stream():
    pixels = images(count=40)
    whole = stream(pixels, seed=5, config=NEUTRAL, batches=4)
    resumed = stream(pixels, seed=5, config=NEUTRAL, start_step=2, batches=2)
    for full, part in zip(whole[2:], resumed, strict=True):
        np.testing.assert_array_equal(full["index"], part["index"])
        np.testing.assert_array_equal(full["w"], part["w"])


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
