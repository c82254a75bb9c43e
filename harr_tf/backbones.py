"""Backbones mapping images with pixels in [0, 255] to feature vectors (DESIGN §2.2).

`small_cnn` is trained from scratch on small images; `vgg16` (fc7, the usual
protocol of the hashing literature), `resnet50` (the authors' released code) and
`efficientnetb0` come from `keras.applications`, each with its own input
preprocessing built in, so callers always feed raw pixels. `efficientnet_lite0`
(harr_tf.efficientnet_lite) has ImageNet weights that work offline.
"""

from __future__ import annotations

import os

import keras

from harr_tf.config import validate_pooling
from harr_tf.efficientnet_lite import efficientnet_lite_backbone
from harr_tf.offline_weights import OFFLINE_WEIGHTS

BACKBONES = ("small_cnn", "vgg16", "resnet50", "efficientnetb0", "efficientnet_lite0")
PRETRAINED_INPUT_SIZE = 224


def small_cnn(
    input_shape: tuple[int, int, int], width: int = 32, pooling: str = "grid"
) -> keras.Model:
    """Three stages of two 3×3 conv-BN-ReLU blocks (width, 2·width, 4·width), then pooling.

    `pooling="grid"` averages the last feature map over a 3×3 grid of regions and
    flattens it, (batch, 36·width): where a part of the garment is stays in the
    features (a sleeve, a heel). `"global"` averages over the whole map, (batch, 4·width).
    """
    validate_pooling(pooling)
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        if stage:
            x = keras.layers.MaxPooling2D()(x)
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
    if pooling == "grid":
        features = keras.layers.Flatten()(keras.layers.AdaptiveAveragePooling2D(3)(x))
    else:
        features = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, features, name="backbone")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be downloaded here."""


def _resolve_weights(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"`weights` must be 'imagenet', 'none' or an existing weights file. "
            f"Received: weights={weights!r} (no such file)"
        )
    return weights


@keras.saving.register_keras_serializable(package="harr_tf")
class ImageNetPreprocess(keras.layers.Layer):
    """The input preprocessing a keras.applications model was trained with.

    A layer rather than a Lambda so that `.keras` files load in safe mode. It also
    resizes, instead of `keras.layers.Resizing`, whose `training=True` default in Keras
    3.15 becomes the training flag of every later layer in a model called without one:
    batch norm would use batch statistics at inference.

    Args:
        mode: `"caffe"` (VGG16, ResNet50: BGR, mean-centred) or `"none"`
            (EfficientNet normalises inside the model).
        size: the side images are resized to first (bilinear); None keeps them.
    """

    def __init__(self, mode: str, size: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("caffe", "none"):
            raise ValueError(f"Expected mode 'caffe' or 'none'. Received: mode={mode!r}")
        self.mode = mode
        self.size = size

    def call(self, images):
        if self.size is not None:
            images = keras.ops.image.resize(images, (self.size, self.size), "bilinear")
        if self.mode == "none":
            return images
        return keras.applications.imagenet_utils.preprocess_input(images, mode="caffe")

    def compute_output_shape(self, input_shape):
        if self.size is None:
            return input_shape
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "size": self.size}


def _application(name: str, weights: str | None) -> tuple[keras.Model, str]:
    """The keras.applications model cut at its feature layer, and its preprocessing mode."""
    apps = keras.applications
    shape = (PRETRAINED_INPUT_SIZE, PRETRAINED_INPUT_SIZE, 3)
    if name == "vgg16":
        full = apps.VGG16(include_top=True, weights=weights, input_shape=shape)
        model = keras.Model(full.input, full.get_layer("fc2").output)  # fc7
        return model, "caffe"
    if name == "resnet50":
        model = apps.ResNet50(include_top=False, weights=weights, input_shape=shape, pooling="avg")
        return model, "caffe"
    model = apps.EfficientNetB0(
        include_top=False, weights=weights, input_shape=shape, pooling="avg"
    )
    return model, "none"


def pretrained_backbone(
    name: str, input_shape: tuple[int, int, int], weights: str = "imagenet"
) -> keras.Model:
    """A keras.applications backbone for raw pixels of `input_shape`.

    Grayscale is repeated to three channels and images are resized to 224×224
    inside the model. `weights` is 'imagenet', 'none' or a local weights file;
    without network access 'imagenet' fails with a message saying what to do.
    """
    resolved = _resolve_weights(weights)
    try:
        application, mode = _application(name, "imagenet" if resolved == "imagenet" else None)
    except Exception as error:  # keras.utils.get_file raises a bare Exception offline.
        if resolved != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"Could not download the ImageNet weights of {name} ({error}). Without "
            f"network access, use a backbone whose weights work offline "
            f"({', '.join(OFFLINE_WEIGHTS)}), pass `--weights none` to train from "
            "scratch, or `--weights PATH` with a local weights file."
        ) from error
    inputs = keras.Input(input_shape, name="pixels")
    x = inputs
    if input_shape[-1] == 1:
        x = keras.layers.Concatenate()([x, x, x])
    x = ImageNetPreprocess(mode, PRETRAINED_INPUT_SIZE)(x)
    features = application(x)
    backbone = keras.Model(inputs, features, name="backbone")
    if resolved not in (None, "imagenet"):
        # A keras.applications weights file, or a whole backbone's (harr_tf.pretrain).
        load_weights_file(backbone, resolved, name, fallback=application)
    return backbone


def load_weights_file(
    model: keras.Model, path: str, name: str, fallback: keras.Model | None = None
) -> None:
    """Loads the weights file `path` into `model` (or, failing that, into `fallback`),
    or raises ValueError saying the file does not fit the `name` backbone."""
    errors = []
    for target in (model, fallback):
        if target is None:
            continue
        try:
            target.load_weights(path)
            return
        except (ValueError, KeyError, OSError, TypeError) as error:
            errors.append(str(error).strip().splitlines()[0])
    raise ValueError(
        f"--weights {path} does not fit the {name} backbone built for these images "
        f"({'; '.join(errors)}). Expected a weights file of the same backbone, width, "
        "pooling and image size (e.g. DIR/backbone.weights.h5 of python -m harr_tf.pretrain)."
    )


def build_backbone(
    name: str,
    input_shape: tuple[int, int, int],
    weights: str = "none",
    width: int = 32,
    pooling: str = "grid",
) -> keras.Model:
    """Any backbone of `BACKBONES` by name, named "backbone": (batch, H, W, C) → (batch, d).

    `width` and `pooling` shape `small_cnn` only; the others keep their own pooling.
    """
    if name == "small_cnn":
        if weights == "imagenet":
            raise ValueError(
                "small_cnn has no ImageNet weights: pass --weights none, the "
                "backbone.weights.h5 of `python -m harr_tf.pretrain`, or a backbone with "
                f"ImageNet weights offline ({', '.join(OFFLINE_WEIGHTS)}). "
                "Received: weights='imagenet'"
            )
        model = small_cnn(input_shape, width, pooling)
        resolved = _resolve_weights(weights)
        if resolved is not None:
            load_weights_file(model, resolved, name)
        return model
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone. Expected one of {BACKBONES}. Received: {name!r}")
    if name in OFFLINE_WEIGHTS:
        return _offline_backbone(name, input_shape, weights)
    if weights.endswith(".pth"):
        raise ValueError(
            f"PyTorch .pth weights are read for {', '.join(OFFLINE_WEIGHTS)} only. "
            f"Received: weights={weights!r} for the {name} backbone"
        )
    return pretrained_backbone(name, input_shape, weights)


def _offline_backbone(name: str, input_shape: tuple[int, int, int], weights: str):
    """'imagenet' and a `.pth` file are converted from PyTorch; any other file is a
    Keras weights file of the whole backbone (e.g. of `python -m harr_tf.pretrain`)."""
    if weights in ("imagenet", "none") or weights.endswith(".pth"):
        return efficientnet_lite_backbone(input_shape, weights, name)
    resolved = _resolve_weights(weights)
    model = efficientnet_lite_backbone(input_shape, "none", name)
    load_weights_file(model, resolved, name)
    return model
