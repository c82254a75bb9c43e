"""Per-image random numbers for batched views, with no per-image op.

Each number is a fingerprint (farmhash) of (run seed, stream, stream position, index):
an image's random choices depend on its position in the stream alone, not on the batch
it lands in nor on which other numbers are drawn, so views are the same on every run,
a resumed stream continues exactly and a view does not depend on the others. TF's
stateless random ops take one seed per call, so per-image seeds would mean one op per
image (and `tf.vectorized_map` falls back to a loop for them).
"""

from __future__ import annotations

import tensorflow as tf


def uniform(seed: int, stream: int, positions: tf.Tensor, count: int) -> tf.Tensor:
    """(batch, count) float32 uniform in [0, 1) for the stream positions (batch,).

    `stream` names one kind of random choice: two streams give independent numbers.
    """
    positions = tf.cast(positions, tf.int64)
    shape = tf.stack([tf.size(positions), count])
    columns = [
        tf.fill(shape, tf.constant(seed, tf.int64)),
        tf.fill(shape, tf.constant(stream, tf.int64)),
        tf.broadcast_to(positions[:, None], shape),
        tf.broadcast_to(tf.range(count, dtype=tf.int64)[None], shape),
    ]
    fingerprints = tf.fingerprint(tf.reshape(tf.stack(columns, axis=-1), (-1, 4)))
    words = tf.bitcast(tf.reshape(fingerprints, (-1, 2, 4)), tf.uint32)[:, 0]
    # 24 bits: every value is exact in float32 and strictly below 1.
    values = tf.cast(tf.bitwise.right_shift(words, tf.constant(8, tf.uint32)), tf.float32)
    return tf.reshape(values * 2.0**-24, shape)
