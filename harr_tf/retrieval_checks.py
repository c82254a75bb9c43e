"""What valid codes, labels and cut-offs look like for `harr_tf.retrieval`: every metric
checks its inputs here, so each mistake gets the same one-line error whichever metric
was called.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_codes(codes: np.ndarray, name: str) -> np.ndarray:
    """`codes` (n, bits) of ±1 as float32, the dtype the BLAS distances use."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array of shape (n, bits). Received: shape={codes.shape}"
        )
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(
            f"`{name}` must hold at least one code of at least one bit. "
            f"Received: shape={codes.shape}"
        )
    if not np.all((codes == 1) | (codes == -1)):
        bad = np.unique(codes[(codes != 1) & (codes != -1)])[:5].tolist()
        raise ValueError(f"`{name}` must contain only -1 and +1. Received values: {bad}")
    return codes.astype(np.float32)


def check_labels(labels: np.ndarray, num_codes: int, name: str) -> np.ndarray:
    """Class ids (n,) as given, or multi-hot (n, C) as float32 for their dot products."""
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2):
        raise ValueError(
            f"`{name}` must be class ids of shape (n,) or multi-hot labels of shape (n, C). "
            f"Received: shape={labels.shape}"
        )
    if len(labels) != num_codes:
        raise ValueError(
            f"`{name}` must have one row per code ({num_codes}). Received: shape={labels.shape}"
        )
    # Multi-hot rows share a label exactly when their dot product is positive.
    return labels.astype(np.float32) if labels.ndim == 2 else labels


def check_inputs(query_codes, database_codes, query_labels=None, database_labels=None):
    """The validated codes as float32 (and labels, multi-hot as float32), or a clear error."""
    queries = check_codes(query_codes, "query_codes")
    database = check_codes(database_codes, "database_codes")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            "`query_codes` and `database_codes` must have the same number of bits. "
            f"Received: {queries.shape[1]} and {database.shape[1]}"
        )
    if query_labels is None:
        return queries, database
    query_labels = check_labels(query_labels, len(queries), "query_labels")
    database_labels = check_labels(database_labels, len(database), "database_labels")
    if query_labels.shape[1:] != database_labels.shape[1:]:
        raise ValueError(
            "`query_labels` and `database_labels` must be of the same kind: both (n,) class "
            "ids or both (n, C) multi-hot with the same C. "
            f"Received: shapes {query_labels.shape} and {database_labels.shape}"
        )
    return queries, database, query_labels, database_labels


def check_top_k(top_k: int | None, database_size: int) -> int:
    """`None` means the whole database; a `top_k` beyond the database is clipped to it."""
    if top_k is None:
        return database_size
    if top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer or None. Received: top_k={top_k}")
    return min(top_k, database_size)


def check_ns(ns: Sequence[int], database_size: int) -> list[int]:
    """Drops the cut-offs beyond the database: precision@n is undefined there."""
    if any(n < 1 for n in ns):
        raise ValueError(f"Every cut-off in `ns` must be a positive integer. Received: ns={ns}")
    return sorted({int(n) for n in ns if n <= database_size})
