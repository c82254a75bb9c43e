"""HARR losses against plain NumPy versions of the DESIGN §2.4 formulas."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from harr_tf import wta
from harr_tf.losses import (
    bit_correlation_loss,
    instance_contrastive_loss,
    quantization_loss,
    wta_contrastive_loss,
)


def np_contrastive(h, pos, wp, wn, temperature, include_self, eps=1e-8):
    z = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), eps)
    logits = z @ z.T / temperature
    total, count = 0.0, 0
    for i in range(len(h)):
        d = eps + sum(
            wn[i, k] * math.exp(logits[i, k]) for k in range(len(h)) if k != i and not pos[i, k]
        )
        for j in range(len(h)):
            if pos[i, j] and (include_self or i != j):
                total += wp[i, j] * math.log(math.exp(logits[i, j]) / d)
                count += 1
    return -total / count if count else 0.0


def np_bit_correlation(h_a, h_b, lam, eps=1e-8):
    a = h_a / np.maximum(np.linalg.norm(h_a, axis=0), eps)
    b = h_b / np.maximum(np.linalg.norm(h_b, axis=0), eps)
    c = a.T @ b
    bits = c.shape[0]
    on = np.mean([(c[i, i] - 1) ** 2 for i in range(bits)])
    off = np.mean([c[i, j] ** 2 for i in range(bits) for j in range(bits) if i != j])
    return on + lam * off


def np_quantization(h):
    b = np.where(h >= 0, 1.0, -1.0)
    cos = [hi @ bi / (np.linalg.norm(hi) * np.linalg.norm(bi)) for hi, bi in zip(h, b, strict=True)]
    return np.mean(1 - np.array(cos))


def wta_batch(seed, batch=12, bits=16, rho=0.3):
    """Continuous codes and WTA pair targets of a random batch, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    h = np.tanh(rng.normal(size=(batch, bits))).astype(np.float32)
    codes = rng.integers(0, 4, size=(batch, 32))
    codes[1::3] = codes[0::3][: len(codes[1::3])]  # some near-duplicates: high similarity
    t = wta.estimate_thresholds(codes.astype(np.uint8), window=4, rho=rho)
    targets = wta.pair_targets(wta.batch_similarity(codes, codes, 4), t.tau, t.s_max, t.s_min)
    return h, {k: keras.ops.convert_to_numpy(v) for k, v in targets.items()}


def contrastive_and_grad(h, targets, **kwargs):
    h = tf.Variable(h)
    with tf.GradientTape() as tape:
        loss = wta_contrastive_loss(h, **targets, **kwargs)
    return float(loss), tape.gradient(loss, h).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("include_self", [False, True])
def test_contrastive_matches_numpy(seed, include_self):
    h, t = wta_batch(seed)
    args = (t["positive"], t["positive_weight"], t["negative_weight"])
    expected = np_contrastive(h.astype(np.float64), *args, 0.1, include_self)
    loss, grad = contrastive_and_grad(h, t, temperature=0.1, include_self=include_self)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert np.all(np.isfinite(grad))


def test_contrastive_small_temperature_is_stable():
    h, t = wta_batch(3)
    args = (t["positive"], t["positive_weight"], t["negative_weight"])
    expected = np_contrastive(h.astype(np.float64), *args, 0.01, False)
    loss, grad = contrastive_and_grad(h, t, temperature=0.01)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert np.all(np.isfinite(grad))
    loss, grad = contrastive_and_grad(h, t, temperature=1e-4)  # exp(1e4) overflows any float
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_contrastive_without_positive_pairs_is_zero():
    h, _ = wta_batch(4, batch=5)
    eye = np.eye(5, dtype=np.float32)
    t = {"positive": eye, "positive_weight": eye, "negative_weight": 1 - eye}
    loss, grad = contrastive_and_grad(h, t)
    assert loss == 0.0 and np.all(grad == 0.0)
    loss, _ = contrastive_and_grad(h, t, include_self=True)
    assert loss == pytest.approx(np_contrastive(h, eye, eye, 1 - eye, 0.1, True), rel=1e-5)


def test_contrastive_all_equal_codes_uses_epsilon_only():
    h, _ = wta_batch(5, batch=6)
    codes = np.zeros((6, 32), dtype=np.uint8)
    th = wta.estimate_thresholds(codes, window=4)
    assert th.tau == th.s_max == th.s_min == 1.0
    t = wta.pair_targets(wta.batch_similarity(codes, codes, 4), th.tau, th.s_max, th.s_min)
    t = {k: keras.ops.convert_to_numpy(v) for k, v in t.items()}
    assert np.all(t["positive"] == 1) and np.all(t["positive_weight"] == 1)
    loss, grad = contrastive_and_grad(h, t)
    args = (t["positive"], t["positive_weight"], t["negative_weight"])
    expected = np_contrastive(h.astype(np.float64), *args, 0.1, False)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert np.all(np.isfinite(grad))


def test_contrastive_batch_of_two():
    h = np.array([[0.5, -0.2, 0.1, 0.9], [0.4, 0.3, -0.8, 0.1]], dtype=np.float32)
    pos = np.array([[1, 1], [1, 1]], dtype=np.float32)
    wp = np.array([[1.0, 0.6], [0.6, 1.0]], dtype=np.float32)
    t = {"positive": pos, "positive_weight": wp, "negative_weight": np.zeros_like(pos)}
    loss, grad = contrastive_and_grad(h, t)
    assert loss == pytest.approx(np_contrastive(h, pos, wp, 0 * pos, 0.1, False), rel=1e-5)
    assert np.all(np.isfinite(grad))
    neg = {"positive": np.eye(2), "positive_weight": np.eye(2), "negative_weight": 1 - np.eye(2)}
    assert contrastive_and_grad(h, neg)[0] == 0.0


def test_contrastive_rejects_non_positive_temperature():
    h, t = wta_batch(6)
    with pytest.raises(ValueError, match="temperature"):
        wta_contrastive_loss(h, **t, temperature=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lam", [1.0, 0.05])
def test_bit_correlation_matches_numpy(seed, lam):
    rng = np.random.default_rng(seed)
    h_a, h_b = (np.tanh(rng.normal(size=(20, 16))).astype(np.float32) for _ in range(2))
    loss = bit_correlation_loss(h_a, h_b, off_diagonal_weight=lam)
    assert float(loss) == pytest.approx(np_bit_correlation(h_a, h_b, lam), rel=1e-5)


def test_bit_correlation_is_zero_for_identical_orthogonal_bits():
    h = np.linalg.qr(np.random.default_rng(7).normal(size=(32, 8)))[0].astype(np.float32)
    assert float(bit_correlation_loss(h, h)) == pytest.approx(0.0, abs=1e-6)


def test_bit_correlation_gradient_finite_with_a_dead_bit():
    h = tf.Variable(np.tanh(np.random.default_rng(8).normal(size=(2, 8))).astype(np.float32))
    h[:, 3].assign([0.0, 0.0])
    with tf.GradientTape() as tape:
        loss = bit_correlation_loss(h, h * 0.5)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(tape.gradient(loss, h).numpy()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantization_matches_numpy(seed):
    h = np.tanh(np.random.default_rng(seed).normal(size=(10, 32))).astype(np.float32)
    h[0, 0] = 0.0
    assert float(quantization_loss(h)) == pytest.approx(np_quantization(h), rel=1e-5)


def test_quantization_edge_cases():
    binary = np.where(np.random.default_rng(9).random((4, 16)) < 0.5, -1.0, 1.0).astype(np.float32)
    assert float(quantization_loss(binary)) == pytest.approx(0.0, abs=1e-6)
    h = tf.Variable(np.zeros((2, 8), dtype=np.float32))
    with tf.GradientTape() as tape:
        loss = quantization_loss(h)
    assert float(loss) == pytest.approx(1.0)
    assert np.all(np.isfinite(tape.gradient(loss, h).numpy()))


def numpy_nt_xent(h_a, h_b, temperature, epsilon=1e-8):
    """Instance contrast written plainly: each of the 2B views has one positive, its twin."""
    z = np.concatenate([h_a, h_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    logits = z @ z.T / temperature
    n, total = len(h_a), 0.0
    for i in range(2 * n):
        twin = (i + n) % (2 * n)
        negatives = sum(np.exp(logits[i, k]) for k in range(2 * n) if k not in (i, twin))
        total += -(logits[i, twin] - np.log(negatives + epsilon))
    return total / (2 * n)


@pytest.mark.parametrize("seed", [0, 1])
def test_instance_contrastive_loss_matches_numpy_nt_xent(seed):
    rng = np.random.default_rng(seed)
    h_a, h_b = rng.normal(size=(2, 5, 8)).astype(np.float32)
    value = instance_contrastive_loss(h_a, h_b, temperature=0.5)
    np.testing.assert_allclose(float(value), numpy_nt_xent(h_a, h_b, 0.5), rtol=1e-4)
