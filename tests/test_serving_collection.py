"""`serving.encode`'s collections send what training reads: records as stored (the
served graph decodes and resizes them once, as the run did), array items as lossless
PNG of their native pixels, and a damaged record to the server, which refuses it."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harr_tf.data import load_dataset
from harr_tf.data.tfrecord import convert
from harr_tf.encoder import build_encoder
from harr_tf.layers import sign_codes
from serving import IMAGES_INPUT, IMAGES_SIGNATURE
from serving.collection import open_collection
from serving.signatures import EncoderServingGraph

SIZE = 16


@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory):
    """A TFRecord collection of colour photos-like images of six different sizes."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(30, 40), (50, 20), (17, 17), (64, 48), (21, 90)]):
        (root / f"c{index % 2}").mkdir(exist_ok=True)
        smooth = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(smooth).resize((width, height), Image.BILINEAR)
        image.save(root / f"c{index % 2}" / f"{index}.png")
    pattern = str(tmp_path_factory.mktemp("records") / "set-*.tfrecord")
    convert(root, pattern, shards=2)
    return f"tfrecord:{pattern}"


def test_served_codes_of_a_mixed_size_collection_equal_the_runs_own(mixed_records, tmp_path):
    encoder = build_encoder((SIZE, SIZE, 3), 16)
    EncoderServingGraph(encoder).archive().write_out(str(tmp_path / "1"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "1")).signatures[IMAGES_SIGNATURE]
    collection = open_collection(mixed_records)
    contents = [collection.read(position) for position in range(len(collection))]
    got = served(**{IMAGES_INPUT: tf.constant(contents)})

    dataset = load_dataset(mixed_records).at_size(SIZE)  # the run's reading
    assert collection.ids == dataset.ids
    pixels = dataset.read(np.arange(dataset.num_items)).astype(np.float32)
    expected = np.asarray(encoder(pixels))
    # The same pixels, not merely the same signs: one decode and one resize, as trained.
    np.testing.assert_allclose(got["continuous"].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["codes"].numpy(), np.asarray(sign_codes(expected)))


def test_array_items_are_sent_as_png_of_their_native_pixels(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 12, 9, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=images)
    collection = open_collection(f"npz:{tmp_path / 'set.npz'}")
    for position in (0, 3, 4, 1):  # another order restarts the stream
        decoded = tf.io.decode_png(collection.read(position)).numpy()
        np.testing.assert_array_equal(decoded, images[position])


def test_a_damaged_record_reaches_the_server_as_stored(mixed_records, tmp_path):
    """A record whose bytes are not an image is sent as is; the served graph refuses
    it, which `serving.encode` reports as that item's failure."""
    from test_damaged import write_record

    write_record(tmp_path / "r-0.tfrecord", b"not an image", "text", 0)
    collection = open_collection(f"tfrecord:{tmp_path}/r-*.tfrecord")
    assert collection.read(0) == b"not an image"
