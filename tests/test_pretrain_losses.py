"""The self-supervised pretraining losses against NumPy versions of their papers' formulas."""

import numpy as np
import pytest

from harr_tf.pretrain_losses import barlow_twins_loss, simclr_loss, vicreg_loss


def views(seed=0, batch=16, dim=8):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, dim)).astype(np.float32)
    return a, (a + 0.3 * rng.normal(size=(batch, dim))).astype(np.float32)


def np_barlow(a, b, lam, eps=1e-5):
    za = (a - a.mean(0)) / np.sqrt(a.var(0) + eps)
    zb = (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    c = za.T @ zb / len(a)
    d = c.shape[0]
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lam * off


def np_vicreg(a, b, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    def variance(z):
        return np.mean(np.maximum(0.0, 1.0 - np.sqrt(z.var(0, ddof=1) + eps)))

    def covariance(z):
        c = np.cov(z, rowvar=False)
        d = c.shape[0]
        return sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    invariance = np.mean((a - b) ** 2)
    return (
        lam * invariance + mu * (variance(a) + variance(b)) + nu * (covariance(a) + covariance(b))
    )


def np_nt_xent(a, b, t):
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = z @ z.T / t
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i and k != j]
        denominator = 1e-8 + sum(np.exp(logits[i, k]) for k in others)
        total += logits[i, j] - np.log(denominator)
    return -total / (2 * n)


@pytest.mark.parametrize("seed", [0, 1])
def test_barlow_twins_matches_numpy(seed):
    a, b = views(seed)
    expected = np_barlow(a, b, 5e-3)
    assert float(barlow_twins_loss(a, b)) == pytest.approx(expected, rel=1e-4)
    assert float(barlow_twins_loss(a, b, off_diagonal_weight=1.0)) == pytest.approx(
        np_barlow(a, b, 1.0), rel=1e-4
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_vicreg_matches_numpy(seed):
    a, b = views(seed)
    assert float(vicreg_loss(a, b)) == pytest.approx(np_vicreg(a, b), rel=1e-4)
    # Collapsed embeddings pay the variance hinge in full: both views identical, constant.
    constant = np.ones((16, 8), np.float32)
    assert float(vicreg_loss(constant, constant)) == pytest.approx(
        25.0 * 2 * (1 - np.sqrt(1e-4)), rel=1e-4
    )


def test_simclr_is_nt_xent_over_both_views():
    a, b = views(2, batch=6)
    # SimCLR's negatives exclude only the anchor itself and its positive.
    assert float(simclr_loss(a, b, temperature=0.5)) == pytest.approx(
        np_nt_xent(a, b, 0.5), rel=1e-4
    )
