"""The serving graph around a trained encoder: image bytes or pixels in, binary codes out.

Preprocessing lives in the graph so that every client, in any language, gets the
codes training would give: images are decoded with the op and channel count the
data loaders use and resized with the loaders' own `resize_square`, so a
`folder:` image arrives at the encoder with the same uint8 pixels. An image whose
header declares more pixels than the export's budget is refused before it is decoded
(`harr_tf.data.image_header`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from harr_tf.config import MAX_IMAGE_PIXELS
from harr_tf.data.folder import resize_square
from harr_tf.data.image_header import decode_within_budget
from harr_tf.layers import sign_codes
from serving import IMAGES_INPUT, IMAGES_SIGNATURE, PIXELS_INPUT, PIXELS_SIGNATURE

# Most-significant bit first, as np.packbits.
_BIT_WEIGHTS = tuple(1 << (7 - position) for position in range(8))


def pack_codes(codes: tf.Tensor) -> tf.Tensor:
    """±1 codes (batch, bits) → uint8 (batch, bits / 8) in `np.packbits` order, 1 ⇔ +1."""
    bits = codes.shape[-1]
    ones = tf.reshape(tf.cast(codes > 0, tf.uint8), [-1, bits // 8, 8])
    return tf.reduce_sum(ones * tf.constant(_BIT_WEIGHTS, tf.uint8), axis=-1)


class EncoderServingGraph:
    """The two signature functions around `encoder`, and the export archive holding them.

    `encode_images` takes encoded JPEG/PNG/BMP/GIF/WebP bytes `(batch,)`;
    `encode_pixels` takes float32 pixels `(batch, H, W, C)` in [0, 255]. Both return
    `codes` int8 (batch, bits) in {−1, +1}, `packed` uint8 (batch, bits / 8) and
    `continuous` float32 (batch, bits). An empty batch returns empty outputs.

    Args:
        encoder: a Keras model mapping float pixels (batch, H, W, C) in [0, 255] to
            continuous codes (batch, bits), as `harr_tf.encoder.build_encoder` makes.
        max_pixels: `encode_images` refuses (INVALID_ARGUMENT) an image whose header
            declares more pixels, before decoding it. Defaults to 40,000,000, the
            training readers' limit.
    """

    def __init__(self, encoder: keras.Model, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if max_pixels < 1:
            raise ValueError(f"`max_pixels` must be positive. Received: max_pixels={max_pixels}")
        self.encoder, self.max_pixels = encoder, int(max_pixels)
        height, width, channels = (int(size) for size in encoder.input_shape[1:])
        self.image_shape = (height, width, channels)
        self.bits = int(encoder.output_shape[-1])

    def archive(self) -> keras.export.ExportArchive:
        """Both signatures in a `keras.export.ExportArchive` that tracks the encoder.

        Tracking puts every encoder variable in the SavedModel's checkpoint under the
        SaverDef's restore op, which TF Serving's session-based loader runs; a plain
        `tf.Module` around a Keras 3 model does not (keras-team/keras#20096).
        """
        archive = keras.export.ExportArchive()
        archive.track(self.encoder)
        archive.add_endpoint(
            IMAGES_SIGNATURE,
            self._encode_images,
            input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)],
        )
        archive.add_endpoint(
            PIXELS_SIGNATURE,
            self._encode_pixels,
            input_signature=[
                tf.TensorSpec([None, *self.image_shape], tf.float32, name=PIXELS_INPUT)
            ],
        )
        return archive

    def _encode_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            self._decode,
            images,
            fn_output_signature=tf.TensorSpec(self.image_shape, tf.uint8),
        )
        return self._outputs(tf.cast(pixels, tf.float32))

    def _encode_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(pixels)

    def _decode(self, contents: tf.Tensor) -> tf.Tensor:
        """One encoded image → uint8 (H, W, C), as the data loaders read it."""
        height, width, channels = self.image_shape
        image = decode_within_budget(contents, channels, self.max_pixels)
        return tf.ensure_shape(resize_square(image, (height, width)), self.image_shape)

    def _outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # oneDNN's Conv2D fails on a batch of 0, so that case never reaches the encoder.
        continuous = tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: tf.cast(self.encoder(pixels, training=False), tf.float32),
            lambda: tf.zeros([0, self.bits], tf.float32),
        )
        codes = sign_codes(continuous)
        return {"codes": codes, "packed": pack_codes(codes), "continuous": continuous}
