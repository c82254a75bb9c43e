"""Winner-Take-All (WTA) similarity structure that guides HARR's contrastive loss.

Each feature vector f is summarised by P small integers: for permutation p, the
position (in [0, K)) of the largest of the K features ``f[table[p]]``. Two images
are similar in proportion to how many of these winners agree,
``s_ij = #{p : c_i[p] = c_j[p]} / P``. Only the (N, P) codes are stored; pairwise
similarities are computed per batch, so memory stays O(N·P) (DESIGN §2.1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
from keras import ops

# Upper bound on the temporary byte arrays built while estimating thresholds.
_CHUNK_BYTES = 1 << 25


def make_permutation_table(
    feature_dim: int, num_permutations: int = 512, window: int = 8, seed: int = 0
) -> np.ndarray:
    """First `window` indices of `num_permutations` seeded random permutations.

    Returns an int32 array of shape (num_permutations, window); saving it with a run
    makes the similarity structure reproducible.
    """
    if not 2 <= window <= min(feature_dim, 256):
        raise ValueError(
            "`window` must be in [2, min(feature_dim, 256)] (codes are stored as uint8). "
            f"Received: window={window}, feature_dim={feature_dim}"
        )
    if num_permutations < 1:
        raise ValueError(f"`num_permutations` must be >= 1. Received: {num_permutations}")
    rng = np.random.default_rng(seed)
    indices = np.broadcast_to(np.arange(feature_dim), (num_permutations, feature_dim))
    return rng.permuted(indices, axis=1)[:, :window].astype(np.int32)


def wta_codes(features: Any, table: Any) -> Any:
    """WTA codes of a batch: features (batch, d), table (P, K) -> int32 (batch, P).

    A tie goes to the first of the tied positions on every device: `argmax` leaves
    ties unspecified (a GPU may pick another), so it is taken over distinct scores,
    K - k where position k holds the window's maximum and 0 elsewhere.
    """
    windows = ops.take(features, table, axis=1)
    window = ops.shape(windows)[-1]
    is_max = ops.equal(windows, ops.max(windows, axis=-1, keepdims=True))
    first_wins = ops.where(is_max, ops.arange(window, 0, -1, dtype="int32"), 0)
    return ops.cast(ops.argmax(first_wins, axis=-1), "int32")


def encode_wta(features: np.ndarray, table: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """WTA codes of a whole dataset in chunks: (N, d) -> uint8 (N, P)."""
    features = np.asarray(features)
    table = np.asarray(table)
    if features.ndim != 2:
        raise ValueError(f"`features` must have shape (N, d). Received: shape={features.shape}")
    if table.max() >= features.shape[1]:
        raise ValueError(
            f"The permutation table indexes feature {table.max()}, but `features` has "
            f"d={features.shape[1]}"
        )
    codes = np.empty((features.shape[0], table.shape[0]), dtype=np.uint8)
    for start in range(0, features.shape[0], batch_size):
        chunk = features[start : start + batch_size]
        codes[start : start + batch_size] = ops.convert_to_numpy(wta_codes(chunk, table))
    return codes


def batch_similarity(codes_a: Any, codes_b: Any, window: int) -> Any:
    """WTA similarity s = one_hot(a)·one_hot(b) / P: (Ba, P), (Bb, P) -> float32 (Ba, Bb)."""
    num_permutations = ops.shape(codes_a)[-1]
    flat_a = ops.reshape(ops.one_hot(codes_a, window), (-1, num_permutations * window))
    flat_b = ops.reshape(ops.one_hot(codes_b, window), (-1, num_permutations * window))
    return ops.matmul(flat_a, ops.transpose(flat_b)) / ops.cast(num_permutations, "float32")


@dataclasses.dataclass(frozen=True)
class WTAThresholds:
    """Positive threshold τ and the extremes of s over pairs i ≠ j."""

    tau: float
    s_max: float
    s_min: float


def _all_pair_matches(codes: np.ndarray) -> np.ndarray:
    """Matching-code counts of every unordered pair i < j, in row blocks."""
    n, p = codes.shape
    rows = max(1, _CHUNK_BYTES // (n * p))
    counts = []
    for start in range(0, n - 1, rows):
        stop = min(start + rows, n - 1)
        equal = codes[start:stop, None, :] == codes[None, start + 1 :, :]
        block = np.count_nonzero(equal, axis=2)
        upper = np.arange(start + 1, n)[None, :] > np.arange(start, stop)[:, None]
        counts.append(block[upper])
    return np.concatenate(counts)


def _sampled_pair_matches(codes: np.ndarray, num_pairs: int, seed: int) -> np.ndarray:
    """Matching-code counts of `num_pairs` seeded uniform random pairs i ≠ j."""
    n, p = codes.shape
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, size=num_pairs)
    second = rng.integers(0, n - 1, size=num_pairs)
    second += second >= first  # uniform over j ≠ i
    chunk = max(1, _CHUNK_BYTES // p)
    return np.concatenate(
        [
            np.count_nonzero(codes[first[s : s + chunk]] == codes[second[s : s + chunk]], axis=1)
            for s in range(0, num_pairs, chunk)
        ]
    )


def estimate_thresholds(
    codes: np.ndarray,
    window: int,
    rho: float = 0.3,
    max_pairs: int = 1_000_000,
    seed: int = 0,
) -> WTAThresholds:
    """τ = the (1 − rho) quantile of s_ij over pairs i ≠ j, plus s_max and s_min.

    Exact over all pairs when N(N−1)/2 <= max_pairs, else from `max_pairs` seeded
    random pairs, so memory is O(N·P + max_pairs) and never N×N.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise ValueError(f"`codes` must have shape (N >= 2, P). Received: shape={codes.shape}")
    if not 0.0 < rho < 1.0:
        raise ValueError(f"`rho` must be in (0, 1). Received: rho={rho}")
    if max_pairs < 1:
        raise ValueError(f"`max_pairs` must be >= 1. Received: max_pairs={max_pairs}")
    if codes.max() >= window:
        raise ValueError(f"`codes` must lie in [0, window={window}). Found {codes.max()}")
    n, p = codes.shape
    if n * (n - 1) // 2 <= max_pairs:
        matches = _all_pair_matches(codes)
    else:
        matches = _sampled_pair_matches(codes, max_pairs, seed)
    similarity = matches / p
    return WTAThresholds(
        tau=float(np.quantile(similarity, 1.0 - rho)),
        s_max=float(similarity.max()),
        s_min=float(similarity.min()),
    )


def _ratio_or_one(numerator: Any, denominator: Any) -> Any:
    """numerator / denominator, or 1 where the denominator is not positive."""
    valid = denominator > 0
    return ops.where(valid, numerator / ops.where(valid, denominator, 1.0), 1.0)


def pair_targets(similarity: Any, tau: float, s_max: float, s_min: float) -> dict[str, Any]:
    """Pair labels and confidences from WTA similarity (any shape, usually (B, B)).

    Returns float32 `positive` (1 where s >= τ), `positive_weight`
    (s − τ)/(s_max − τ) and `negative_weight` (τ − s)/(τ − s_min), clipped at 0
    and zero outside their own mask. A zero denominator (s_max == τ or
    τ == s_min: the estimate saw no spread on that side) gives weight 1.
    """
    similarity = ops.cast(similarity, "float32")
    tau, s_max, s_min = (ops.cast(v, "float32") for v in (tau, s_max, s_min))
    positive = ops.cast(similarity >= tau, "float32")
    positive_weight = _ratio_or_one(similarity - tau, s_max - tau)
    negative_weight = _ratio_or_one(tau - similarity, tau - s_min)
    return {
        "positive": positive,
        "positive_weight": ops.maximum(positive_weight, 0.0) * positive,
        "negative_weight": ops.maximum(negative_weight, 0.0) * (1.0 - positive),
    }


@keras.saving.register_keras_serializable(package="harr_tf")
class WTAHash(keras.layers.Layer):
    """Maps features (batch, d) to WTA codes (batch, P), int32.

    The (P, K) table is a non-trainable int32 weight, so it saves with the model.

    Args:
        table: int array of shape (P, K), from `make_permutation_table`.
    """

    def __init__(self, table: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        table = np.asarray(table)
        if table.ndim != 2 or not np.issubdtype(table.dtype, np.integer) or table.min() < 0:
            raise ValueError(
                "`table` must be a non-negative integer array of shape (P, K). "
                f"Received: shape={table.shape}, dtype={table.dtype}"
            )
        self._table_max = int(table.max())
        self.table = self.add_weight(
            shape=table.shape,
            dtype="int32",
            initializer=keras.initializers.Constant(table.astype(np.int32)),
            trainable=False,
            name="table",
        )

    def build(self, input_shape: tuple) -> None:
        if input_shape[-1] is not None and self._table_max >= input_shape[-1]:
            raise ValueError(
                f"The WTA table indexes feature {self._table_max}, but inputs have "
                f"d={input_shape[-1]}. Received: input_shape={input_shape}"
            )

    def call(self, features: Any) -> Any:
        return wta_codes(features, self.table)

    def get_config(self) -> dict:
        return {**super().get_config(), "table": ops.convert_to_numpy(self.table).tolist()}


@keras.saving.register_keras_serializable(package="harr_tf")
class WTASimilarity(keras.layers.Layer):
    """Maps a batch's WTA codes (batch, P) to pair targets, each (batch, batch).

    Returns a dict with `similarity`, `positive`, `positive_weight` and
    `negative_weight` (see `pair_targets`).

    Args:
        tau: positive threshold, from `estimate_thresholds`.
        s_max: maximum pairwise similarity, from `estimate_thresholds`.
        s_min: minimum pairwise similarity, from `estimate_thresholds`.
        window: K, the number of values each code chooses among.
    """

    def __init__(self, tau: float, s_max: float, s_min: float, window: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.window = int(window)
        # Weights, not constants: `set_thresholds` can rebuild the structure during
        # training without retracing, and the current values save with the model.
        self.thresholds = {
            name: self.add_weight(shape=(), initializer="zeros", trainable=False, name=name)
            for name in ("tau", "s_max", "s_min")
        }
        self.set_thresholds(WTAThresholds(tau=tau, s_max=s_max, s_min=s_min))

    def set_thresholds(self, thresholds: WTAThresholds) -> None:
        """Replaces τ, s_max and s_min (e.g. after recomputing the WTA codes)."""
        tau, s_max, s_min = thresholds.tau, thresholds.s_max, thresholds.s_min
        if not 0.0 <= s_min <= tau <= s_max <= 1.0:
            raise ValueError(
                "Expected 0 <= s_min <= tau <= s_max <= 1. "
                f"Received: s_min={s_min}, tau={tau}, s_max={s_max}"
            )
        for name, value in dataclasses.asdict(thresholds).items():
            self.thresholds[name].assign(value)

    @property
    def tau(self) -> float:
        return float(ops.convert_to_numpy(self.thresholds["tau"]))

    @property
    def s_max(self) -> float:
        return float(ops.convert_to_numpy(self.thresholds["s_max"]))

    @property
    def s_min(self) -> float:
        return float(ops.convert_to_numpy(self.thresholds["s_min"]))

    def call(self, codes: Any) -> dict[str, Any]:
        similarity = batch_similarity(codes, codes, self.window)
        tau, s_max, s_min = (self.thresholds[n] for n in ("tau", "s_max", "s_min"))
        targets = pair_targets(similarity, tau, s_max, s_min)
        return {"similarity": similarity, **targets}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "tau": self.tau,
            "s_max": self.s_max,
            "s_min": self.s_min,
            "window": self.window,
        }
