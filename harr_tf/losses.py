"""The three HARR losses, as plain `keras.ops` functions.

After Ma et al., "HARR: Learning Discriminative and High-quality Hash Codes for
Image Retrieval", ACM TOMM 2024, https://doi.org/10.1145/3627162 (DESIGN §2.4):

- `wta_contrastive_loss`: similarity preservation guided by WTA pair targets;
- `bit_correlation_loss`: bits agree across two views and decorrelate (Barlow
  Twins style);
- `quantization_loss`: pulls h towards sign(h) by cosine.

All compute in float32 (so they are safe under mixed precision) and return a
scalar.
"""

from __future__ import annotations

import math
from typing import Any

from keras import ops


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"`{name}` must be > 0. Received: {name}={value!r}")


def wta_contrastive_loss(
    h: Any,
    positive: Any,
    positive_weight: Any,
    negative_weight: Any,
    temperature: float = 0.1,
    include_self: bool = False,
    epsilon: float = 1e-8,
) -> Any:
    """WTA-guided contrastive loss L_sim.

    With z = h/‖h‖, l_ij = z_i·z_j / T and
    D_i = Σ_{k negative for i} w⁻_ik exp(l_ik) + ε,
    L = −Σ_{(i,j) positive} w⁺_ij (l_ij − log D_i) / #positive pairs.

    log D_i is a log-sum-exp over {l_ik + log w⁻_ik} ∪ {log ε}: exactly the
    formula, but finite for small T. The diagonal is never a negative; it is a
    positive only with `include_self`. No positive pair gives 0.

    Args:
        h: continuous codes, (batch, bits).
        positive: 1 where the pair is positive, (batch, batch).
        positive_weight: w⁺, zero off the positive mask, (batch, batch).
        negative_weight: w⁻, zero off the negative mask, (batch, batch).
        temperature: T > 0. Defaults to 0.1.
        include_self: count i = j as a positive pair. Defaults to False.
        epsilon: ε in D_i and the lower bound on ‖h‖. Defaults to 1e-8.
    """
    _check_positive("temperature", temperature)
    _check_positive("epsilon", epsilon)
    z = ops.normalize(ops.cast(h, "float32"), axis=-1, epsilon=epsilon)
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    batch = ops.shape(logits)[0]
    off_diagonal = 1.0 - ops.eye(batch, dtype="float32")
    positive = ops.cast(positive, "float32")
    positive_mask = positive if include_self else positive * off_diagonal
    negative_weight = ops.cast(negative_weight, "float32") * (1.0 - positive) * off_diagonal

    has_weight = negative_weight > 0
    log_weight = ops.log(ops.where(has_weight, negative_weight, 1.0))
    terms = ops.where(has_weight, logits + log_weight, -math.inf)
    terms = ops.concatenate([terms, ops.full((batch, 1), math.log(epsilon))], axis=1)
    log_denominator = ops.logsumexp(terms, axis=1, keepdims=True)

    weighted = positive_mask * ops.cast(positive_weight, "float32") * (logits - log_denominator)
    return -ops.sum(weighted) / ops.maximum(ops.sum(positive_mask), 1.0)


def bit_correlation_loss(
    h_a: Any, h_b: Any, off_diagonal_weight: float = 1.0, epsilon: float = 1e-8
) -> Any:
    """Bit correlation reduction L_bcr between two views.

    Columns are L2-normalised over the batch, C = ĥ_Aᵀ ĥ_B (bits, bits) and
    L = mean_i (C_ii − 1)² + λ · mean_{i≠j} C_ij²: each bit agrees across views,
    different bits are decorrelated.

    Args:
        h_a: continuous codes of view A, (batch, bits).
        h_b: continuous codes of view B, (batch, bits).
        off_diagonal_weight: λ. Defaults to 1.0.
        epsilon: lower bound on a column's norm. Defaults to 1e-8.
    """
    _check_positive("epsilon", epsilon)
    a = ops.normalize(ops.cast(h_a, "float32"), axis=0, epsilon=epsilon)
    b = ops.normalize(ops.cast(h_b, "float32"), axis=0, epsilon=epsilon)
    correlation = ops.matmul(ops.transpose(a), b)
    bits = ops.shape(correlation)[0]
    off_diagonal = 1.0 - ops.eye(bits, dtype="float32")
    on_term = ops.mean(ops.square(ops.diagonal(correlation) - 1.0))
    off_count = ops.maximum(ops.cast(bits * (bits - 1), "float32"), 1.0)
    off_term = ops.sum(ops.square(correlation) * off_diagonal) / off_count
    return on_term + off_diagonal_weight * off_term


def quantization_loss(h: Any, epsilon: float = 1e-8) -> Any:
    """Cosine quantization loss L_q = mean_i (1 − cos(h_i, sign(h_i))).

    Uses cos(h, sign(h)) = ‖h‖₁ / (√bits ‖h‖₂), differentiable in h directly.

    Args:
        h: continuous codes, (batch, bits).
        epsilon: lower bound on ‖h_i‖₂. Defaults to 1e-8.
    """
    _check_positive("epsilon", epsilon)
    h = ops.cast(h, "float32")
    bits = ops.cast(ops.shape(h)[-1], "float32")
    unit = ops.normalize(h, axis=-1, epsilon=epsilon)
    cosine = ops.sum(ops.abs(unit), axis=-1) / ops.sqrt(bits)
    return ops.mean(1.0 - cosine)


def instance_contrastive_loss(
    h_a: Any, h_b: Any, temperature: float = 0.1, epsilon: float = 1e-8
) -> Any:
    """Plain instance contrast (SimCLR's NT-Xent), the ablation of WTA guidance.

    The two views of an image are the only positive pair; every other image in the
    2·batch is a negative of weight 1. Computed by `wta_contrastive_loss` on the
    concatenated views, so the two losses differ only in their pair targets.

    Args:
        h_a: continuous codes of one view, (batch, bits).
        h_b: continuous codes of another view of the same images, (batch, bits).
        temperature: T > 0. Defaults to 0.1.
        epsilon: as in `wta_contrastive_loss`. Defaults to 1e-8.
    """
    batch = ops.shape(h_a)[0]
    same = ops.eye(batch)
    zeros = ops.zeros_like(same)
    positive = ops.concatenate(
        [ops.concatenate([zeros, same], axis=1), ops.concatenate([same, zeros], axis=1)], axis=0
    )
    negative = 1.0 - positive - ops.eye(2 * batch)
    return wta_contrastive_loss(
        ops.concatenate([h_a, h_b], axis=0),
        positive,
        positive,
        negative,
        temperature=temperature,
        epsilon=epsilon,
    )
