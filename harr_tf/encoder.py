"""The encoder that training produces and serving exports: pixels → backbone → hash head,
and the one way to turn a collection of images into binary codes with it."""

from __future__ import annotations

import keras
import numpy as np
from tqdm import tqdm

from harr_tf.backbones import build_backbone
from harr_tf.config import ModelConfig
from harr_tf.layers import HashHead, sign_codes


def build_encoder(
    input_shape: tuple[int, int, int], bits: int, config: ModelConfig | None = None
) -> keras.Model:
    """(batch, H, W, C) float pixels in [0, 255] → continuous codes h, (batch, bits).

    The backbone is the sub-model named "backbone" (its learning rate is scaled
    during training); the head is the layer named "hash_head".
    """
    config = config or ModelConfig()
    backbone = build_backbone(
        config.backbone, input_shape, config.weights, config.width, config.pooling
    )
    inputs = keras.Input(input_shape, name="pixels")
    codes = HashHead(bits, beta=config.beta, name="hash_head")(backbone(inputs))
    return keras.Model(inputs, codes, name=f"harr_encoder_{bits}")


def encode_images(
    encoder: keras.Model, images: np.ndarray, batch_size: int = 512, progress: bool = False
) -> np.ndarray:
    """±1 int8 codes (n, bits) of pixels (n, H, W, C), in order, without augmentation."""
    codes = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="encoding", unit="batch", disable=not progress):
        chunk = images[start : start + batch_size].astype(np.float32)
        codes.append(keras.ops.convert_to_numpy(sign_codes(encoder(chunk, training=False))))
    return np.concatenate(codes) if codes else np.zeros((0, encoder.output_shape[-1]), np.int8)
