"""Hamming ranking and retrieval metrics: the one evaluation code behind every number.

DESIGN.md §3. The database is ranked by Hamming distance, ties broken by database index
(lower first), so no metric depends on how a sort leaves equal distances. An item is
relevant when it has the query's class (labels (n,)) or shares a label with it (multi-hot
labels (n, C)). Every metric averages over all queries, a query without a hit counting 0.
Work is chunked over queries, so memory stays near 64 MB whatever the database size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harr_tf.retrieval_checks import check_inputs, check_ns, check_top_k

DEFAULT_NS = (1, 10, 100, 500, 1000, 2000, 5000)
_CHUNK_BYTES = 64 * 2**20
# Bytes per (query, item) pair over a chunk's working arrays: float32 dot products,
# int32 distances, bool relevance, ranking keys and their partitioned copy, bin ids.
_BYTES_PER_PAIR = 32


def _distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    # ±1 dot products are small integers, exact in float32 BLAS up to 2**24 bits.
    dots = queries @ database.T
    np.subtract(queries.shape[1], dots, out=dots)
    dots *= 0.5
    return dots.astype(np.int32)


def hamming_distances(query_codes: np.ndarray, database_codes: np.ndarray) -> np.ndarray:
    """Hamming distances (nq, ndb) int32 between ±1 codes (nq, bits) and (ndb, bits).

    d = (bits − q·x) / 2, a matrix product rather than bit counting, so it runs in BLAS.
    The whole matrix is returned: call it on chunks of queries for large databases.
    """
    return _distances(*check_inputs(query_codes, database_codes))


def relevance(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """(q, n) bool: database item j is relevant to query i — the same class id, or for
    multi-hot labels at least one shared label."""
    if database_labels.ndim == 1:
        return query_labels[:, None] == database_labels
    return query_labels @ database_labels.T > 0


def average_precision(ranked: np.ndarray) -> np.ndarray:
    """AP (c,) of ranked relevance (c, K): (1/R) Σ_k P(k)·rel(k), 0 when R = 0."""
    hits = np.cumsum(ranked, axis=1)
    total = (hits / np.arange(1, ranked.shape[1] + 1) * ranked).sum(axis=1)
    found = hits[:, -1]
    return np.divide(total, found, out=np.zeros(len(ranked)), where=found > 0)


def _radius_rates(
    distances: np.ndarray, relevance: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall (c, bits+1) within each Hamming radius r = 0..bits.

    One bincount over (query, distance, relevant) bins, then cumulative sums over r:
    linear in the database, where sorting would not be.
    """
    rows, width = len(distances), 2 * (bits + 1)
    ids = 2 * distances + relevance + (width * np.arange(rows, dtype=np.int32))[:, None]
    counts = np.bincount(ids.ravel(), minlength=rows * width).reshape(rows, bits + 1, 2)
    counts = counts.cumsum(axis=1)
    retrieved, hits = counts.sum(axis=2), counts[:, :, 1]
    relevant = hits[:, -1:]
    precision = np.divide(hits, retrieved, out=np.zeros(hits.shape), where=retrieved > 0)
    recall = np.divide(hits, relevant, out=np.zeros(hits.shape), where=relevant > 0)
    return precision, recall


def _mean_metrics(
    inputs: tuple, top_k: int, cutoffs: list[int], curves: bool, chunk_size: int | None
) -> dict:
    """The one chunked pass behind every public metric; top_k=0 skips mAP."""
    queries, database, query_labels, database_labels = inputs
    (count, bits), size = queries.shape, len(database)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_BYTES // (_BYTES_PER_PAIR * size))
    elif chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer. Received: {chunk_size}")
    # Key = distance·ndb + index orders by distance, then by index. Keys are unique, so
    # partitioning them (not arg-partitioning) is exact, and each key names its item.
    key_type = np.int32 if (bits + 1) * size <= np.iinfo(np.int32).max else np.int64
    index, depth = np.arange(size, dtype=key_type), max([top_k, *cutoffs])
    ap, at_n = 0.0, np.zeros(len(cutoffs))
    precision, recall = np.zeros(bits + 1), np.zeros(bits + 1)
    for start in range(0, count, chunk_size):
        distances = _distances(queries[start : start + chunk_size], database)
        relevant = relevance(query_labels[start : start + chunk_size], database_labels)
        if depth:
            keys = distances.astype(key_type) * key_type(size) + index
            if depth < size:
                keys = np.partition(keys, depth - 1, axis=1)[:, :depth]
            keys.sort(axis=1)
            ranked = np.take_along_axis(relevant, keys % size, axis=1)  # (c, depth)
            ap += average_precision(ranked[:, :top_k]).sum() if top_k else 0.0
            if cutoffs:
                at_n += np.cumsum(ranked, axis=1)[:, np.array(cutoffs) - 1].sum(axis=0) / cutoffs
        if curves:
            chunk_precision, chunk_recall = _radius_rates(distances, relevant, bits)
            precision += chunk_precision.sum(axis=0)
            recall += chunk_recall.sum(axis=0)
    return {
        "map": float(ap / count),
        "precision_at_n": {n: float(p / count) for n, p in zip(cutoffs, at_n, strict=True)},
        "precision": precision / count,
        "recall": recall / count,
    }


def mean_average_precision(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    top_k: int | None = 1000,
    *,
    chunk_size: int | None = None,
) -> float:
    """mAP@top_k of queries (nq, bits) against a database (ndb, bits).

    Args:
        query_labels: (nq,) class ids or (nq, C) multi-hot; database_labels likewise.
        top_k: ranking depth K. `None` is the whole database; a K beyond it is clipped.
            Defaults to 1000.
        chunk_size: queries per chunk. Defaults to a size that keeps a chunk near 64 MB.
    """
    inputs = check_inputs(query_codes, database_codes, query_labels, database_labels)
    return _mean_metrics(inputs, check_top_k(top_k, len(inputs[1])), [], False, chunk_size)["map"]


def precision_at_n(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    ns: Sequence[int] = DEFAULT_NS,
    *,
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Mean precision in the top n of the ranking, {n: precision} for each n in `ns`.

    Cut-offs beyond the database size are dropped from the result, not clipped: a value
    under the key n must be the precision at n. Defaults to ns=DEFAULT_NS.
    """
    inputs = check_inputs(query_codes, database_codes, query_labels, database_labels)
    cutoffs = check_ns(ns, len(inputs[1]))
    return _mean_metrics(inputs, 0, cutoffs, False, chunk_size)["precision_at_n"]


def precision_recall_by_radius(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    *,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall (bits+1,) of retrieving every item within radius r.

    A query that retrieves nothing has precision 0 at that radius; one with no relevant
    item in the database has recall 0.
    """
    inputs = check_inputs(query_codes, database_codes, query_labels, database_labels)
    metrics = _mean_metrics(inputs, 0, [], True, chunk_size)
    return metrics["precision"], metrics["recall"]


def precision_at_radius(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    radius: int = 2,
    *,
    chunk_size: int | None = None,
) -> float:
    """Mean precision of retrieving every item within Hamming distance `radius`.

    The usual hash-lookup measure; a radius beyond `bits` retrieves the whole database.
    Defaults to radius=2.
    """
    if radius < 0:
        raise ValueError(f"`radius` must be a non-negative integer. Received: radius={radius}")
    precision, _ = precision_recall_by_radius(
        query_codes, database_codes, query_labels, database_labels, chunk_size=chunk_size
    )
    return float(precision[min(radius, len(precision) - 1)])


def evaluate(
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    top_k: int | None = 1000,
    ns: Sequence[int] = DEFAULT_NS,
    *,
    chunk_size: int | None = None,
) -> dict:
    """Every metric of DESIGN.md §3 in one pass, each chunk's distances computed once.

    Returns {"map", "precision_at_n": {n: p}, "precision_at_radius_2",
    "pr_curve": {"radius", "precision", "recall"}} in plain Python numbers and lists, so
    it serialises to JSON. `top_k` and `ns` mean what they mean in
    `mean_average_precision` and `precision_at_n`.
    """
    inputs = check_inputs(query_codes, database_codes, query_labels, database_labels)
    top_k = check_top_k(top_k, len(inputs[1]))
    metrics = _mean_metrics(inputs, top_k, check_ns(ns, len(inputs[1])), True, chunk_size)
    precision = metrics["precision"]
    return {
        "map": metrics["map"],
        "precision_at_n": metrics["precision_at_n"],
        "precision_at_radius_2": float(precision[min(2, len(precision) - 1)]),
        "pr_curve": {
            "radius": list(range(len(precision))),
            "precision": precision.tolist(),
            "recall": metrics["recall"].tolist(),
        },
    }


def _ordered_keys(scores: np.ndarray) -> np.ndarray:
    """int64 keys (c, n) whose ascending order is descending `scores`, then ascending index.

    A float32's bits, read as int32 and with the negative ones' magnitude bits flipped,
    order as the floats do; the index fills the low 32 bits, so keys are unique and a
    partition of them is exact, as with the Hamming keys of `_mean_metrics`.
    """
    negated = np.negative(scores.astype(np.float32)) + np.float32(0)  # -0.0 becomes 0.0
    bits = negated.view(np.int32)
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    return (ordered << 32) | np.arange(scores.shape[1], dtype=np.int64)


def asymmetric_mean_average_precision(
    query_continuous: np.ndarray,
    database_codes: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    top_k: int | None = 1000,
    *,
    chunk_size: int | None = None,
) -> float:
    """mAP@top_k of the asymmetric ranking: real-valued queries against binary items.

    The database is ranked by the inner product ⟨h_q, b_x⟩ of the query's continuous
    code h (the network's tanh output, before `sign`) with each item's ±1 code, largest
    first, ties broken by database index as the Hamming ranking's are. Only the query
    stays real-valued, so the database is stored and searched as binary codes.

    Args:
        query_continuous: (nq, bits) float continuous codes of the queries.
        database_codes: (ndb, bits) ±1 codes of the database.
        query_labels: (nq,) class ids or (nq, C) multi-hot; database_labels likewise.
        top_k: ranking depth K, as in `mean_average_precision`. Defaults to 1000.
        chunk_size: queries per chunk. Defaults to a size that keeps a chunk near 64 MB.
    """
    queries = np.asarray(query_continuous, dtype=np.float32)
    if queries.ndim != 2 or not np.all(np.isfinite(queries)):
        raise ValueError(
            "`query_continuous` must be finite real codes of shape (nq, bits). "
            f"Received: shape={queries.shape}"
        )
    signs = np.where(queries >= 0, 1, -1).astype(np.int8)  # only for the shape and label checks
    _, database, query_labels, database_labels = check_inputs(
        signs, database_codes, query_labels, database_labels
    )
    size = len(database)
    top_k = check_top_k(top_k, size)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_BYTES // (_BYTES_PER_PAIR * size))
    elif chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer. Received: {chunk_size}")
    ap = 0.0
    for start in range(0, len(queries), chunk_size):
        keys = _ordered_keys(queries[start : start + chunk_size] @ database.T)
        if top_k < size:
            keys = np.partition(keys, top_k - 1, axis=1)[:, :top_k]
        keys.sort(axis=1)
        relevant = relevance(query_labels[start : start + chunk_size], database_labels)
        ranked = np.take_along_axis(relevant, keys & np.int64(0xFFFFFFFF), axis=1)
        ap += average_precision(ranked).sum()
    return float(ap / len(queries))
