"""`--mixed-precision none|float16|bfloat16`: Keras's global dtype policy for training.

Layers then compute in float16 or bfloat16 with float32 weights; the losses compute in
float32 (`harr_tf.losses`). Under float16, `compile` wraps the optimizer in a
`LossScaleOptimizer` and `HarrModel.train_step` scales the loss by its dynamic scale
(gradients of small losses would otherwise underflow); bfloat16 has float32's range and
needs no scaling. Set the policy before building the model.
"""

from __future__ import annotations

import keras

from harr_tf.backbones import BACKBONES

PRECISIONS = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# The backbones checked under both mixed policies (tests/test_precision.py).
MIXED_PRECISION_BACKBONES = BACKBONES


def policy_name(precision: str) -> str:
    """The Keras policy of a `--mixed-precision` value, or a clear error."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"--mixed-precision must be one of {sorted(PRECISIONS)}. Received: {precision!r}"
        )
    return PRECISIONS[precision]


def set_precision(precision: str, backbone: str) -> str:
    """Sets the global dtype policy for `precision` and returns its name.

    Refuses a backbone that has not been checked to train under a mixed policy.
    """
    policy = policy_name(precision)
    if policy != "float32" and backbone not in MIXED_PRECISION_BACKBONES:
        raise ValueError(
            f"--mixed-precision {precision} is not supported with backbone {backbone!r}: "
            f"use one of {MIXED_PRECISION_BACKBONES} or --mixed-precision none"
        )
    keras.mixed_precision.set_global_policy(policy)
    return policy
