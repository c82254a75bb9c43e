"""The encoder that training produces and serving exports: pixels → backbone → hash head,
and the one way to turn a collection of images (an array or a stream) into binary codes."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from harr_tf.backbones import build_backbone
from harr_tf.config import ModelConfig
from harr_tf.data.image_size import inference_batch_size
from harr_tf.layers import HashHead, sign_codes
from harr_tf.memory_budget import HalvingBatches, network_name


def build_encoder(
    input_shape: tuple[int, int, int], bits: int, config: ModelConfig | None = None
) -> keras.Model:
    """(batch, H, W, C) float pixels in [0, 255] → continuous codes h, (batch, bits).

    The backbone is the sub-model named "backbone" (its learning rate is scaled
    during training), starting from `config.student_weights`; the head is the layer
    named "hash_head".
    """
    config = config or ModelConfig()
    backbone = build_backbone(
        config.trained_backbone, input_shape, config.student_weights, config.width, config.pooling
    )
    inputs = keras.Input(input_shape, name="pixels")
    codes = HashHead(bits, beta=config.beta, name="hash_head")(backbone(inputs))
    return keras.Model(inputs, codes, name=f"harr_encoder_{bits}")


def encode_images(
    encoder: keras.Model,
    images: np.ndarray | tf.data.Dataset,
    batch_size: int | None = None,
    progress: bool = False,
    continuous: bool = False,
) -> np.ndarray:
    """±1 int8 codes (n, bits) of images, in order, without augmentation; with
    `continuous`, the float32 codes h (n, bits) whose signs those are (an asymmetric
    ranking's queries).

    `images` is an (n, H, W, C) array or a `tf.data.Dataset` of single (H, W, C) images
    (`ImageDataset.images(indices)`), read batch by batch: only the codes are kept.
    `batch_size` None: `inference_batch_size` of the encoder; a batch that runs out of
    memory is encoded in halves (`HalvingBatches`).
    """
    if isinstance(images, np.ndarray):
        images = tf.data.Dataset.from_tensor_slices(images)
    batch_size = inference_batch_size(encoder, batch_size)
    count = int(images.cardinality())
    batches = images.batch(batch_size).map(lambda batch: tf.cast(batch, tf.float32))
    total = -(-count // batch_size) if count >= 0 else None

    def encode(batch: tf.Tensor) -> np.ndarray:
        h = encoder(batch, training=False)
        return keras.ops.convert_to_numpy(h if continuous else sign_codes(h))

    halving = HalvingBatches(batch_size, "Encoding", network_name(encoder))
    codes = []
    for batch in tqdm(
        batches.prefetch(tf.data.AUTOTUNE), "encoding", total, unit="batch", disable=not progress
    ):
        codes.append(halving(encode, batch))
    dtype = np.float32 if continuous else np.int8
    return np.concatenate(codes) if codes else np.zeros((0, encoder.output_shape[-1]), dtype)
