"""The hash head (Dense + scaled tanh relaxation) and binarisation (DESIGN §2.2, §2.5)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from harr_tf.config import validate_bits


@keras.saving.register_keras_serializable(package="harr_tf")
class HashHead(keras.layers.Layer):
    """Continuous hash code h = tanh(β · (x W + b)), shape (batch, bits).

    β is a non-trainable weight so a schedule can sharpen the relaxation towards
    sign() during training (`head.beta.assign(2.0)`); its current value saves
    with the model.

    Example:

    >>> head = HashHead(bits=16)
    >>> head(keras.ops.ones((2, 32))).shape
    (2, 16)

    Args:
        bits: code length, a positive multiple of 8.
        beta: initial tanh scale β > 0. Defaults to 1.0.
    """

    def __init__(self, bits: int, beta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bits = validate_bits(bits)
        if not beta > 0:
            raise ValueError(f"`beta` must be > 0. Received: beta={beta!r}")
        self.initial_beta = float(beta)
        self.dense = keras.layers.Dense(bits, dtype=self.dtype_policy, name="dense")
        # Created here, not in build(), so a callback can assign it before the first call.
        self.beta = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_beta),
            trainable=False,
            name="beta",
        )

    def build(self, input_shape: tuple) -> None:
        self.dense.build(input_shape)

    def call(self, inputs: Any) -> Any:
        v = self.dense(inputs)
        return ops.tanh(ops.cast(self.beta, v.dtype) * v)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.bits)

    def get_config(self) -> dict:
        return {**super().get_config(), "bits": self.bits, "beta": self.initial_beta}


def sign_codes(h: Any) -> Any:
    """Binary codes b = sign(h) as int8 in {−1, +1}, with 0 mapped to +1."""
    return ops.cast(ops.where(h >= 0, 1, -1), "int8")
