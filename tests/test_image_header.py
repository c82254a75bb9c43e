"""The pixel budget read from image headers: TensorFlow's reading (the serving graph)
against PIL's for every format the graph decodes, and bombs refused before decoding."""

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harr_tf.data.image_header import TooManyPixels, budget_check, check_pixels, declared_size

BYTES = tf.TensorSpec([], tf.string)


@tf.function(input_signature=[BYTES])
def graph_size(contents):
    """`declared_size` in a graph, as the serving graph runs it; traced once."""
    return tf.stack(declared_size(contents))


@tf.function(input_signature=[BYTES])
def checked(contents):
    with tf.control_dependencies([budget_check(contents, 40_000_000)]):
        return tf.constant(1)


def encoded(image_format: str, width: int, height: int, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, image_format, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG of an IHDR declaring width × height and no pixel data (90 bytes or so)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


def gif(screen: tuple[int, int], frame: tuple[int, int], blocks: list[bytes] = ()) -> bytes:
    """A GIF of one frame (no colour table) and the given data sub-blocks."""
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02"
    data = b"".join(bytes([len(block)]) + block for block in blocks) + b"\0"
    return b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0) + descriptor + data + b";"


def webp_canvas(width: int, height: int) -> bytes:
    canvas = bytes([0, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
    canvas += (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + canvas


FILES = {
    "PNG": lambda w, h: encoded("PNG", w, h),
    "JPEG": lambda w, h: encoded("JPEG", w, h),
    "progressive JPEG": lambda w, h: encoded("JPEG", w, h, progressive=True),
    "GIF": lambda w, h: encoded("GIF", w, h, "L"),
    "BMP": lambda w, h: encoded("BMP", w, h),
    "top-down BMP": lambda w, h: bmp_header(w, -h),
    "lossy WebP": lambda w, h: encoded("WEBP", w, h),
    "lossless WebP": lambda w, h: encoded("WEBP", w, h, lossless=True),
    "WebP with alpha": lambda w, h: encoded("WEBP", w, h, "RGBA"),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_graph_reads_the_size_pil_reads(name):
    for size in [(1, 1), (37, 23), (300, 5), (1021, 1030)]:
        contents = FILES[name](*size)
        height, width, frames = graph_size(contents).numpy().tolist()
        assert (width, height, frames) == (*size, 1)
        if name != "top-down BMP":  # PIL agrees on every file it writes
            assert Image.open(io.BytesIO(contents)).size == size


BOMBS = {
    "PNG": png_header(100_000, 100_000),
    "BMP": bmp_header(70_000, 70_000),
    "GIF": gif((65_535, 65_535), (65_535, 65_535)),
    "GIF frame larger than its screen": gif((10, 10), (8000, 8000), [b"\x01" * 255] * 3000),
    "WebP": webp_canvas(16_000_000, 16_000_000),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_header_over_the_budget_fails_the_check_naming_its_size(name):
    contents = BOMBS[name]
    height, width, _ = graph_size(contents).numpy().tolist()
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        checked(contents)
    assert f"{width} x {height} pixels, over the limit of 40000000 pixels" in refused.value.message
    assert width * height > 40_000_000
    assert int(checked(encoded("PNG", 6000, 6000, "L"))) == 1  # 36 MP passes


@pytest.mark.slow
def test_gif_frames_count_and_a_gif_of_too_many_blocks_is_refused():
    frames = [Image.new("L", (80, 60), shade) for shade in range(0, 70, 10)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    animated = buffer.getvalue()
    assert graph_size(animated).numpy().tolist() == [60, 80, 7]
    assert tf.io.decode_image(animated).shape == (7, 60, 80, 3)  # what TensorFlow decodes

    def budget(max_pixels):
        @tf.function(input_signature=[BYTES])
        def check(contents):
            with tf.control_dependencies([budget_check(contents, max_pixels)]):
                return tf.constant(1)

        return check

    assert int(budget(80 * 60 * 7)(animated)) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="80 x 60 pixels in 7 frames, over"):
        budget(80 * 60 * 7 - 1)(animated)
    tiny_blocks = gif((10, 10), (10, 10), [b"\x01"] * 150_000)  # one loop step per block
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds more than 100000 blocks"):
        checked(tiny_blocks)
    assert graph_size(gif((10, 10), (10, 10), [b"\x01"] * 1000)).numpy().tolist() == [10, 10, 1]


def test_bytes_of_no_known_format_pass_the_check_for_the_decoder_to_refuse():
    for contents in (b"", b"\x89PNG", b"not an image at all, but long enough to read"):
        assert graph_size(contents).numpy().tolist() == [0, 0, 1]


def test_check_pixels_reads_the_header_only():
    check_pixels(encoded("PNG", 6000, 6000, "L"), 40_000_000, "ok.png")
    check_pixels(b"not an image", 40_000_000, "other")  # left to the decoder
    with pytest.raises(
        TooManyPixels, match=r"^big.png is 8000 x 8000 pixels, over the limit of 40000000"
    ):
        check_pixels(encoded("PNG", 8000, 8000, "L"), 40_000_000, "big.png")
    bomb = png_header(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(
        TooManyPixels, match=r"^b.png is more than \d+ pixels, over the limit of 40"
    ):
        check_pixels(bomb, 40_000_000, "b.png")
    with pytest.raises(TooManyPixels, match="7 x 3 pixels, over the limit of 20 pixels"):
        check_pixels(encoded("BMP", 7, 3), 20, "small.bmp")
    check_pixels(encoded("BMP", 7, 3), 21, "small.bmp")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_decode_over_white(mode):
    """Line art on a transparent background is a drawing, not a black square."""
    from harr_tf.data.image_header import decode_within_budget

    pixels = np.zeros((3, 4, len(mode)), np.uint8)  # fully transparent black
    pixels[0, 0] = [40] * (len(mode) - 1) + [255]  # one opaque dark pixel
    pixels[1, 2] = [0] * (len(mode) - 1) + [128]  # half-transparent black
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "PNG")
    for channels in (3, 1):
        image = decode_within_budget(tf.constant(buffer.getvalue()), channels, 100).numpy()
        assert image.shape == (3, 4, channels)
        assert (image[0, 0] == 40).all() and (image[1, 2] == 127).all()
        others = np.ones((3, 4), bool)
        others[0, 0] = others[1, 2] = False
        assert (image[others] == 255).all()
