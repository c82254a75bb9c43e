"""Backbones: feature shapes, grayscale input, weights handling and preprocessing."""

import keras
import numpy as np
import pytest

from harr_tf.backbones import ImageNetPreprocess, build_backbone


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("pooling", "dim"), [("grid", 9 * 32), ("global", 32)])
def test_small_cnn_features(channels, pooling, dim):
    backbone = build_backbone("small_cnn", (28, 28, channels), width=8, pooling=pooling)
    images = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, channels)).astype("float32")
    assert backbone.name == "backbone"
    assert backbone(images).shape == (2, dim)


def test_grid_pooling_keeps_where_features_are():
    """The last 7×7 feature map's 3×3 overlapping regions are averaged separately."""
    backbone = build_backbone("small_cnn", (28, 28, 1), width=4, pooling="grid")
    grid = backbone.layers[-2]
    assert isinstance(grid, keras.layers.AdaptiveAveragePooling2D)
    feature_map = np.arange(7 * 7 * 16, dtype="float32").reshape(1, 7, 7, 16)
    expected = np.stack(
        [
            feature_map[0, r : r + 3, c : c + 3].mean(axis=(0, 1))
            for r in (0, 2, 4)
            for c in (0, 2, 4)
        ]
    )
    np.testing.assert_allclose(grid(feature_map)[0], expected.reshape(3, 3, 16), rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "dim"), [("resnet50", 2048), ("efficientnetb0", 1280), ("efficientnet_lite0", 1280)]
)
def test_pretrained_architectures_take_small_grayscale_images(name, dim):
    backbone = build_backbone(name, (28, 28, 1), weights="none")
    images = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype("float32")
    features = backbone(images)
    assert features.shape == (2, dim)
    # Called without a training flag, batch norm uses its moving statistics (Keras 3.15's
    # Resizing would pass training=True on to every later layer).
    np.testing.assert_allclose(features, backbone(images, training=False), atol=1e-5)


def test_vgg16_gives_fc7_features():
    backbone = build_backbone("vgg16", (32, 32, 3), weights="none")
    assert backbone.output_shape == (None, 4096)


def test_local_weights_file_is_loaded(tmp_path):
    source = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(224, 224, 3), pooling="avg"
    )
    path = str(tmp_path / "effnet.weights.h5")
    source.save_weights(path)
    backbone = build_backbone("efficientnetb0", (224, 224, 3), weights=path)
    loaded = backbone.get_layer("efficientnetb0").get_weights()
    assert len(loaded) == len(source.get_weights())
    for mine, theirs in zip(loaded, source.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_offline_imagenet_weights_fail_with_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(RuntimeError, match="--weights none") as error:
        build_backbone("efficientnetb0", (32, 32, 3), weights="imagenet")
    assert "offline (efficientnet_lite0)" in str(error.value)


def test_bad_weights_and_names_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_backbone("resnet50", (32, 32, 3), weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="small_cnn has no ImageNet weights.*efficientnet_lite0"):
        build_backbone("small_cnn", (28, 28, 1), weights="imagenet")
    with pytest.raises(ValueError, match="'alexnet'"):
        build_backbone("alexnet", (28, 28, 1))
    with pytest.raises(ValueError, match="pooling.*'max'"):
        build_backbone("small_cnn", (28, 28, 1), pooling="max")


def test_caffe_preprocess_matches_keras_applications_and_round_trips():
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    layer = ImageNetPreprocess("caffe")
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(layer(images), expected, atol=1e-4)
    clone = ImageNetPreprocess.from_config(layer.get_config())
    np.testing.assert_allclose(clone(images), expected, atol=1e-4)
    with pytest.raises(ValueError, match="mode='torch'"):
        ImageNetPreprocess("torch")


def test_a_small_cnn_weights_file_round_trips_and_a_misfit_is_refused(tmp_path):
    source = build_backbone("small_cnn", (28, 28, 1), width=4, pooling="grid")
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    loaded = build_backbone("small_cnn", (28, 28, 1), weights=path, width=4, pooling="grid")
    images = np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), source.predict(images, verbose=0))
    with pytest.raises(ValueError, match="does not fit the small_cnn backbone"):
        build_backbone("small_cnn", (28, 28, 1), weights=path, width=8, pooling="grid")
