"""The encoder that training produces and serving exports: pixels → backbone → hash head."""

from __future__ import annotations

import keras

from harr_tf.backbones import build_backbone
from harr_tf.config import ModelConfig
from harr_tf.layers import HashHead


def build_encoder(
    input_shape: tuple[int, int, int], bits: int, config: ModelConfig | None = None
) -> keras.Model:
    """(batch, H, W, C) float pixels in [0, 255] → continuous codes h, (batch, bits).

    The backbone is the sub-model named "backbone" (its learning rate is scaled
    during training); the head is the layer named "hash_head".
    """
    config = config or ModelConfig()
    backbone = build_backbone(config.backbone, input_shape, config.weights, config.width)
    inputs = keras.Input(input_shape, name="pixels")
    codes = HashHead(bits, beta=config.beta, name="hash_head")(backbone(inputs))
    return keras.Model(inputs, codes, name=f"harr_encoder_{bits}")
