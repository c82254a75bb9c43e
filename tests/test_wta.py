"""WTA structure against brute-force NumPy versions of DESIGN §2.1."""

import itertools
import time
import tracemalloc

import keras
import numpy as np
import pytest

from harr_tf import wta


def brute_codes(features, table):
    codes = np.zeros((len(features), len(table)), dtype=np.int64)
    for i, f in enumerate(features):
        for p, row in enumerate(table):
            codes[i, p] = max(range(len(row)), key=lambda k, f=f, row=row: (f[row[k]], -k))
    return codes


def brute_similarity(codes_a, codes_b):
    out = np.zeros((len(codes_a), len(codes_b)))
    for i, a in enumerate(codes_a):
        for j, b in enumerate(codes_b):
            out[i, j] = sum(int(x == y) for x, y in zip(a, b, strict=True)) / len(a)
    return out


def all_pair_similarities(codes):
    pairs = itertools.combinations(range(len(codes)), 2)
    return np.array([np.mean(codes[i] == codes[j]) for i, j in pairs])


def np_pair_targets(s, tau, s_max, s_min):
    pos = (s >= tau).astype(float)
    wp = np.zeros_like(s)
    wn = np.zeros_like(s)
    for idx in np.ndindex(s.shape):
        if pos[idx]:
            wp[idx] = max((s[idx] - tau) / (s_max - tau), 0) if s_max > tau else 1.0
        else:
            wn[idx] = max((tau - s[idx]) / (tau - s_min), 0) if tau > s_min else 1.0
    return pos, wp, wn


def test_permutation_table_rows_are_distinct_prefixes_and_seeded():
    table = wta.make_permutation_table(50, num_permutations=64, window=6, seed=3)
    assert table.shape == (64, 6) and table.dtype == np.int32
    assert table.min() >= 0 and table.max() < 50
    assert all(len(set(row)) == 6 for row in table)
    assert len({tuple(row) for row in table}) > 60
    np.testing.assert_array_equal(table, wta.make_permutation_table(50, 64, 6, seed=3))
    assert not np.array_equal(table, wta.make_permutation_table(50, 64, 6, seed=4))


@pytest.mark.parametrize("window", [1, 11, 300])
def test_permutation_table_rejects_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        wta.make_permutation_table(10, window=window)


def test_codes_match_brute_force_argmax():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(13, 20)).astype(np.float32)
    features[0, :] = 1.0  # all ties: argmax picks the first index
    table = wta.make_permutation_table(20, num_permutations=16, window=4, seed=1)
    expected = brute_codes(features, table)
    codes = keras.ops.convert_to_numpy(wta.wta_codes(features, table))
    np.testing.assert_array_equal(codes, expected)
    encoded = wta.encode_wta(features, table, batch_size=5)
    assert encoded.dtype == np.uint8 and encoded.shape == (13, 16)
    np.testing.assert_array_equal(encoded, expected)


def test_ties_go_to_the_first_position_eagerly_and_under_xla():
    """Quantised features tie in most windows; XLA (the GPU's compiler) must pick the
    same winner as the eager CPU kernel: the first of the tied positions."""
    import tensorflow as tf

    rng = np.random.default_rng(2)
    features = rng.integers(0, 3, size=(64, 30)).astype(np.float32)
    table = wta.make_permutation_table(30, num_permutations=64, window=8, seed=3)
    expected = brute_codes(features, table)
    compiled = tf.function(wta.wta_codes, jit_compile=True)
    for codes in (wta.wta_codes(features, table), compiled(features, table)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(codes), expected)


def test_encode_wta_rejects_mismatched_features():
    table = wta.make_permutation_table(20, num_permutations=4, window=4)
    with pytest.raises(ValueError, match="d=10"):
        wta.encode_wta(np.zeros((3, 10)), table)


def test_batch_similarity_matches_equal_code_count():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(7, 24))
    b = rng.integers(0, 4, size=(5, 24))
    b[0] = a[0]
    s = keras.ops.convert_to_numpy(wta.batch_similarity(a, b, window=4))
    assert s.dtype == np.float32 and s.shape == (7, 5)
    np.testing.assert_allclose(s, brute_similarity(a, b), atol=1e-7)
    assert s[0, 0] == 1.0


def test_thresholds_exact_for_small_n():
    codes = np.random.default_rng(2).integers(0, 4, size=(40, 32)).astype(np.uint8)
    s = all_pair_similarities(codes)
    got = wta.estimate_thresholds(codes, window=4, rho=0.2, max_pairs=len(s))
    assert got.tau == pytest.approx(np.quantile(s, 0.8))
    assert got.s_max == pytest.approx(s.max())
    assert got.s_min == pytest.approx(s.min())


def test_thresholds_sampled_close_to_exact_and_reproducible():
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 4, size=(5, 64))
    codes = centres[rng.integers(0, 5, size=400)]
    noise = rng.random(codes.shape) < 0.5
    codes = np.where(noise, rng.integers(0, 4, size=codes.shape), codes).astype(np.uint8)
    s = all_pair_similarities(codes)
    sampled = wta.estimate_thresholds(codes, window=4, rho=0.3, max_pairs=20_000, seed=7)
    assert abs(sampled.tau - np.quantile(s, 0.7)) <= 1.5 / 64
    assert s.min() <= sampled.s_min <= sampled.tau <= sampled.s_max <= s.max()
    assert sampled == wta.estimate_thresholds(codes, window=4, rho=0.3, max_pairs=20_000, seed=7)


def test_thresholds_sampling_never_builds_n_by_n():
    n = 20_000
    codes = np.random.default_rng(4).integers(0, 8, size=(n, 64)).astype(np.uint8)
    tracemalloc.start()
    start = time.perf_counter()
    got = wta.estimate_thresholds(codes, window=8, max_pairs=10_000)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.01 * n * n  # an N×N array of even one byte would be 400 MB
    assert elapsed < 5.0
    assert 0.0 <= got.s_min <= got.tau <= got.s_max <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.0}, "rho"),
        ({"max_pairs": 0}, "max_pairs"),
        ({"window": 2}, "window"),
    ],
)
def test_thresholds_validation(kwargs, match):
    codes = np.array([[0, 1], [2, 1], [3, 0]], dtype=np.uint8)
    with pytest.raises(ValueError, match=match):
        wta.estimate_thresholds(codes, **{"window": 4, **kwargs})


def test_thresholds_need_two_rows():
    with pytest.raises(ValueError, match="N >= 2"):
        wta.estimate_thresholds(np.zeros((1, 4), dtype=np.uint8), window=4)


@pytest.mark.parametrize(
    ("tau", "s_max", "s_min"), [(0.4, 0.9, 0.1), (0.5, 0.5, 0.1), (0.25, 0.8, 0.25)]
)
def test_pair_targets_match_numpy_and_guard_zero_denominators(tau, s_max, s_min):
    s = np.random.default_rng(5).integers(0, 17, size=(6, 6)) / 16
    got = wta.pair_targets(s, tau, s_max, s_min)
    got = {key: keras.ops.convert_to_numpy(value) for key, value in got.items()}
    for key, expected in zip(
        ["positive", "positive_weight", "negative_weight"],
        np_pair_targets(s, tau, s_max, s_min),
        strict=True,
    ):
        assert np.all(np.isfinite(got[key]))
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-7)


def test_wta_layers_match_functions():
    rng = np.random.default_rng(6)
    features = rng.normal(size=(9, 30)).astype(np.float32)
    table = wta.make_permutation_table(30, num_permutations=32, window=4, seed=2)
    hasher = wta.WTAHash(table)
    codes = hasher(features)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(codes), brute_codes(features, table))
    assert hasher.trainable_weights == [] and hasher.table.dtype == "int32"
    targets = wta.WTASimilarity(0.3, 0.9, 0.05, window=4)(codes)
    s = brute_similarity(*(2 * [keras.ops.convert_to_numpy(codes)]))
    keys = ["positive", "positive_weight", "negative_weight"]
    expected = dict(zip(keys, np_pair_targets(s, 0.3, 0.9, 0.05), strict=True))
    expected["similarity"] = s
    for key, value in expected.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(targets[key]), value, atol=1e-6)


def test_wta_hash_rejects_short_features():
    hasher = wta.WTAHash(wta.make_permutation_table(30, num_permutations=4, window=4))
    with pytest.raises(ValueError, match="d=10"):
        hasher(np.zeros((2, 10), dtype=np.float32))


def test_wta_similarity_config_round_trip():
    layer = wta.WTASimilarity(0.3, 0.9, 0.05, window=4, name="sim")
    clone = wta.WTASimilarity.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    codes = np.random.default_rng(7).integers(0, 4, size=(5, 16))
    for key, value in layer(codes).items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(codes)[key]), value)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, wta.WTASimilarity)
    assert restored.tau == pytest.approx(0.3)  # stored as a float32 weight


def test_wta_similarity_set_thresholds_changes_targets_and_validates():
    layer = wta.WTASimilarity(0.3, 0.9, 0.05, window=4)
    codes = np.random.default_rng(8).integers(0, 4, size=(6, 32))
    new = wta.WTAThresholds(tau=0.5, s_max=0.8, s_min=0.1)
    layer.set_thresholds(new)
    similarity = keras.ops.convert_to_numpy(wta.batch_similarity(codes, codes, 4))
    expected = wta.pair_targets(similarity, 0.5, 0.8, 0.1)
    for key, value in expected.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(codes)[key]), value, atol=1e-6)
    assert layer.get_config()["tau"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="s_min <= tau"):
        layer.set_thresholds(wta.WTAThresholds(tau=0.9, s_max=0.5, s_min=0.1))


def test_wta_similarity_rejects_inconsistent_thresholds():
    with pytest.raises(ValueError, match="s_min <= tau"):
        wta.WTASimilarity(tau=0.9, s_max=0.5, s_min=0.1, window=4)
