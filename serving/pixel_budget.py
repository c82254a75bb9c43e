"""A pixel budget checked from an image's header before any pixel is decoded.

A few kilobytes of PNG can declare 8,000 × 8,000 pixels: decoding them takes 192 MB and
resizing them in float32 0.8 GB more (a decompression bomb). Training skips images over
`harr_tf.data.folder.MAX_IMAGE_PIXELS`; every decoder on the serving side refuses them
too: the serving graph, with TensorFlow ops, so that TF Serving enforces the budget
(`budget_check`); the search page and `serving.encode`, with PIL's lazy header read
(`check_pixels`).
"""

from __future__ import annotations

import io
import warnings

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from harr_tf.data.folder import MAX_IMAGE_PIXELS

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
_PNG = b"\x89PNG\r\n\x1a\n"


class TooManyPixels(ValueError):
    """An image whose header declares more pixels than the budget; one line."""


def check_pixels(contents: bytes, max_pixels: int, name: str) -> None:
    """Raises `TooManyPixels` if the image `contents` (named `name` in the message)
    declares more than `max_pixels` pixels. Bytes PIL cannot identify pass: whoever
    decodes them next says what they are."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(contents)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        # PIL refuses to open it at all: over twice its own limit, far over any budget.
        declared = f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return
    else:
        if width * height <= max_pixels:
            return
        declared = f"{width} x {height} pixels"
    raise TooManyPixels(f"{name} is {declared}, over the limit of {max_pixels} pixels.")


def budget_check(contents: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An op that fails (INVALID_ARGUMENT) when the encoded image `contents` (a scalar
    tf.string) declares more than `max_pixels` pixels in its header. Run decoding under
    `tf.control_dependencies([budget_check(...)])`, so nothing is allocated before it."""
    height, width = declared_size(contents)
    pixels = tf.cast(height, tf.float64) * tf.cast(width, tf.float64)
    message = tf.strings.format(
        "The image is {} x {} pixels, over the limit of {} pixels.",
        (width, height, max_pixels),
    )
    return tf.debugging.Assert(pixels <= max_pixels, [message])


def declared_size(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) int64 scalars that the header of the encoded image `contents`
    declares: PNG, JPEG, GIF (its screen), BMP or WebP (its canvas); (0, 0) for other
    bytes, which the decoder then refuses itself."""
    # Padded, so that reading a short file's header cannot fail; the decoder rejects it.
    padded = tf.strings.join([contents, tf.constant(b"\0" * 32)])

    def starts(magic: bytes, at: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(padded, at, len(magic)), magic)

    def number(at: int, length: int, big_endian: bool = False) -> tf.Tensor:
        raw = tf.io.decode_raw(tf.strings.substr(padded, at, length), tf.uint8)
        weights = [256**position for position in range(length)]
        weights = weights[::-1] if big_endian else weights
        return tf.reduce_sum(tf.cast(raw, tf.int64) * tf.constant(weights, tf.int64))

    def low_bits(value: tf.Tensor, shift: int, bits: int) -> tf.Tensor:
        return tf.bitwise.bitwise_and(tf.bitwise.right_shift(value, shift), (1 << bits) - 1)

    def signed32(value: tf.Tensor) -> tf.Tensor:  # BMP heights are negative when top-down
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    lossless = number(21, 4)  # WebP "VP8L": 14 bits width − 1, then 14 bits height − 1
    webp = starts(b"RIFF") & starts(b"WEBP", 8)
    # (condition, height, width), first match wins; JPEG is read by TensorFlow's own op.
    formats = [
        (starts(_PNG), number(20, 4, big_endian=True), number(16, 4, big_endian=True)),
        (starts(b"GIF8"), number(8, 2), number(6, 2)),
        (starts(b"BM"), signed32(number(22, 4)), signed32(number(18, 4))),
        (webp & starts(b"VP8X", 12), number(27, 3) + 1, number(24, 3) + 1),
        (webp & starts(b"VP8L", 12), low_bits(lossless, 14, 14) + 1, low_bits(lossless, 0, 14) + 1),
        (
            webp & starts(b"VP8 ", 12),
            low_bits(number(28, 2), 0, 14),
            low_bits(number(26, 2), 0, 14),
        ),
    ]
    height = width = tf.constant(0, tf.int64)
    for condition, format_height, format_width in reversed(formats):
        height = tf.where(condition, format_height, height)
        width = tf.where(condition, format_width, width)
    jpeg_shape = tf.cond(
        starts(b"\xff\xd8\xff"),
        lambda: tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64),
        lambda: tf.stack([height, width]),
    )
    return jpeg_shape[0], jpeg_shape[1]
