"""Self-supervised pretraining losses between two views' embeddings, as `keras.ops`
functions: the teacher a network learns first, where no pretrained weights can be had.

- `simclr_loss`: NT-Xent (Chen et al., ICML 2020, https://arxiv.org/abs/2002.05709),
  HARR's `instance_contrastive_loss`.
- `barlow_twins_loss`: the cross-correlation of the standardised embeddings pushed to
  the identity (Zbontar et al., ICML 2021, https://arxiv.org/abs/2103.03230).
- `vicreg_loss`: invariance, variance and covariance terms (Bardes et al., ICLR 2022,
  https://arxiv.org/abs/2105.04906).

Each takes (batch, dim) embeddings of the same images under two augmentations, computes
in float32 and returns a scalar.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from harr_tf.losses import instance_contrastive_loss


def simclr_loss(z_a: Any, z_b: Any, temperature: float = 0.2) -> Any:
    """NT-Xent: each image's other view is its positive among the 2·batch views."""
    return instance_contrastive_loss(z_a, z_b, temperature=temperature)


def barlow_twins_loss(
    z_a: Any, z_b: Any, off_diagonal_weight: float = 5e-3, epsilon: float = 1e-5
) -> Any:
    """L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², C = ẑ_Aᵀ ẑ_B / batch, ẑ standardised per
    dimension over the batch."""
    a, b = (_standardised(ops.cast(z, "float32"), epsilon) for z in (z_a, z_b))
    batch = ops.cast(ops.shape(a)[0], "float32")
    correlation = ops.matmul(ops.transpose(a), b) / batch
    diagonal = ops.diagonal(correlation)
    on = ops.sum(ops.square(1.0 - diagonal))
    off = ops.sum(ops.square(correlation)) - ops.sum(ops.square(diagonal))
    return on + off_diagonal_weight * off


def vicreg_loss(
    z_a: Any,
    z_b: Any,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    epsilon: float = 1e-4,
) -> Any:
    """λ·MSE(z_A, z_B) + μ·[v(z_A) + v(z_B)] + ν·[c(z_A) + c(z_B)], with
    v(z) = mean_j max(0, 1 − √(Var z_j + ε)) and c(z) = Σ_{i≠j} Cov(z)_ij² / dim."""
    a, b = ops.cast(z_a, "float32"), ops.cast(z_b, "float32")
    invariance = ops.mean(ops.square(a - b))
    variance = _variance_term(a, epsilon) + _variance_term(b, epsilon)
    covariance = _covariance_term(a) + _covariance_term(b)
    return (
        invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    )


def _standardised(z: Any, epsilon: float) -> Any:
    mean = ops.mean(z, axis=0, keepdims=True)
    std = ops.sqrt(ops.var(z, axis=0, keepdims=True) + epsilon)
    return (z - mean) / std


def _variance_term(z: Any, epsilon: float) -> Any:
    std = ops.sqrt(_unbiased_variance(z) + epsilon)
    return ops.mean(ops.relu(1.0 - std))


def _covariance_term(z: Any) -> Any:
    batch = ops.cast(ops.shape(z)[0], "float32")
    centred = z - ops.mean(z, axis=0, keepdims=True)
    covariance = ops.matmul(ops.transpose(centred), centred) / (batch - 1.0)
    dim = ops.cast(ops.shape(z)[1], "float32")
    off = ops.sum(ops.square(covariance)) - ops.sum(ops.square(ops.diagonal(covariance)))
    return off / dim


def _unbiased_variance(z: Any) -> Any:
    batch = ops.cast(ops.shape(z)[0], "float32")
    return ops.var(z, axis=0) * batch / (batch - 1.0)


PRETRAIN_LOSSES = {
    "simclr": simclr_loss,
    "barlow_twins": barlow_twins_loss,
    "vicreg": vicreg_loss,
}
