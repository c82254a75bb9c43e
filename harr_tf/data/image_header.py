"""Images decoded within a pixel budget checked from their header, before any pixel.

A few kilobytes of PNG can declare 8,000 × 8,000 pixels: decoding them takes 192 MB and
resizing them in float32 0.8 GB more (a decompression bomb). Every decoder refuses them:
`decode_within_budget`, the one decode of encoded bytes shared by the training readers
and the serving graph, with TensorFlow ops (so that TF Serving enforces the budget too,
and a TFRecord whose declared size understates its image is caught); the search page and
`serving.encode`, with PIL's lazy header read (`check_pixels`).
"""

from __future__ import annotations

import io
import warnings

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

_PNG = b"\x89PNG\r\n\x1a\n"
# A GIF's blocks are walked in loop steps (a run of full data sub-blocks in one); a GIF
# needing more steps is refused.
_GIF_MAX_BLOCKS = 100_000
_FULL_RUN = 1024


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
    height, width, frames = declared_size(contents)
    pixels = tf.cast(height, tf.float64) * tf.cast(width, tf.float64)
    pixels *= tf.cast(tf.maximum(frames, 1), tf.float64)
    limit = f"over the limit of {max_pixels} pixels."
    message = tf.where(
        frames > 1,
        tf.strings.format(
            "The image is {} x {} pixels in {} frames, " + limit, (width, height, frames)
        ),
        tf.strings.format("The image is {} x {} pixels, " + limit, (width, height)),
    )
    readable = tf.debugging.Assert(
        frames >= 0, [f"The GIF holds more than {_GIF_MAX_BLOCKS} blocks; refused unread."]
    )
    return tf.group(readable, tf.debugging.Assert(pixels <= max_pixels, [message]))


def decode_within_budget(contents: tf.Tensor, channels: int, max_pixels: int) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes → uint8 (H, W, `channels`) at their native
    size, refused (INVALID_ARGUMENT) before decoding when the header declares more than
    `max_pixels`. Three channels as RGB, one as grey. Transparent pixels are shown over
    white, as a page shows them: dropping the alpha channel instead turns line art on
    a transparent background (a fifth of Debian's clip-art) into a black square."""
    with tf.control_dependencies([budget_check(contents, max_pixels)]):
        native = tf.io.decode_image(contents, expand_animations=False)
    opaque = tf.cond(
        tf.shape(native)[-1] % 2 == 0,  # grey + alpha, or RGB + alpha
        lambda: _over_white(native),
        lambda: native,
    )
    if channels == 3:
        image = tf.cond(
            tf.shape(opaque)[-1] == 1, lambda: tf.image.grayscale_to_rgb(opaque), lambda: opaque
        )
    else:
        image = tf.cond(
            tf.shape(opaque)[-1] == 3, lambda: tf.image.rgb_to_grayscale(opaque), lambda: opaque
        )
    return tf.ensure_shape(image, (None, None, channels))


def _over_white(image: tf.Tensor) -> tf.Tensor:
    """uint8 colour + alpha (last channel) → the colour composited over white."""
    alpha = tf.cast(image[..., -1:], tf.float32) / 255.0
    colour = tf.cast(image[..., :-1], tf.float32)
    return tf.cast(tf.round(colour * alpha + 255.0 * (1.0 - alpha)), tf.uint8)


def declared_size(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(height, width, frames) int64 scalars that the encoded image `contents` declares:
    PNG, JPEG, BMP or WebP (its canvas) headers, one frame; for a GIF, its largest frame
    and how many frames (-1: too many blocks to read), as TensorFlow's decoder sizes it
    by the largest frame, not the screen; (0, 0, 1) for other bytes, which the decoder
    then refuses itself."""
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
    one = tf.constant(1, tf.int64)
    jpeg = starts(b"\xff\xd8\xff")
    size = tf.case(
        [
            (
                jpeg,
                lambda: tf.concat([tf.image.extract_jpeg_shape(contents, tf.int64)[:2], [1]], 0),
            ),
            (starts(b"GIF8"), lambda: tf.stack(_gif_frames(padded))),
        ],
        default=lambda: tf.stack([height, width, one]),
    )
    return size[0], size[1], size[2]


def _gif_frames(padded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(largest height, largest width, frames) of the GIF `padded`, walking its blocks:
    extensions and image descriptors, each followed by data sub-blocks."""
    data = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)
    end = tf.size(data, out_type=tf.int64) - 1
    zero, two = tf.constant(0, tf.int64), tf.constant(2, tf.int64)
    run_offsets = tf.range(0, 256 * _FULL_RUN, 256, dtype=tf.int64)

    def byte(at):
        return tf.gather(data, tf.minimum(tf.cast(at, tf.int64), end))

    def colour_table(flags):  # a colour table follows when the flags' top bit is set
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(two, flags % 8), zero)

    def step(at, in_data, done, height, width, frames):
        value = byte(at)
        extension, image = ~in_data & (value == 0x21), ~in_data & (value == 0x2C)
        # In data, `value` is the size of the next sub-block (0 ends the data); encoders
        # write full ones (255 bytes), so a run of them is skipped in one step.
        full = tf.gather(data, tf.minimum(at + run_offsets, end)) == 255
        run = tf.reduce_sum(tf.math.cumprod(tf.cast(full, tf.int64)))
        skip = tf.where(in_data, tf.where(run > 0, 256 * run, value + 1), zero)
        skip += tf.where(extension, two, zero)
        skip += tf.where(image, 11 + colour_table(byte(at + 9)), zero)  # descriptor, LZW
        frame_height = byte(at + 7) + 256 * byte(at + 8)
        frame_width = byte(at + 5) + 256 * byte(at + 6)
        return (
            at + skip,
            tf.where(in_data, value != 0, extension | image),
            ~in_data & ~extension & ~image,  # the trailer, or what no GIF holds
            tf.where(image, tf.maximum(height, frame_height), height),
            tf.where(image, tf.maximum(width, frame_width), width),
            frames + tf.cast(image, tf.int64),
        )

    at, _, done, height, width, frames = tf.while_loop(
        lambda at, in_data, done, *_: ~done & (at <= end),
        step,
        (13 + colour_table(byte(10)), tf.constant(False), tf.constant(False), zero, zero, zero),
        maximum_iterations=_GIF_MAX_BLOCKS,
    )
    return height, width, tf.where(done | (at > end), frames, tf.constant(-1, tf.int64))
