"""The checks a Hamming index applies to what it is given, shared by the FAISS index
(`harr_tf.index`) and its PostgreSQL twin (`harr_tf.postgres_index`) so that both refuse
the same input with the same message."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harr_tf.faiss_index_kinds import KIND_OPTIONS


def check_packed(packed: np.ndarray, name: str) -> np.ndarray:
    """`packed` as contiguous uint8 codes (n, bits/8), or an error naming `name`."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be packed codes, uint8 of shape (n, bits/8). "
            f"Received: dtype={packed.dtype}, shape={packed.shape}"
        )
    return np.ascontiguousarray(packed)


def check_ids(packed: np.ndarray, ids: Sequence[str]) -> None:
    """Refuses `ids` unless they are one unique id per code of `packed`."""
    if len(packed) != len(ids):
        raise ValueError(f"{len(packed)} codes but {len(ids)} ids: expected one id per code.")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = sorted({item for item in ids if item in seen or seen.add(item)})
        raise ValueError(f"Ids must be unique; repeated: {repeated[:5]}")


def check_build(packed: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """The codes a new index is built from, checked as `check_packed` and `check_ids`
    do; an index holds at least one code."""
    packed = check_packed(packed, "packed")
    check_ids(packed, ids)
    if len(packed) == 0:
        raise ValueError("Cannot build an index of zero codes.")
    return packed


def search_overrides(kind: str, k: int, **options: int | None) -> dict[str, int]:
    """The search options given (not None), after checking `k` and that each applies to
    an index of `kind` (`KIND_OPTIONS`)."""
    if k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k}")
    given = {name: value for name, value in options.items() if value is not None}
    wrong = [name for name in given if name not in KIND_OPTIONS[kind]]
    if wrong:
        raise ValueError(f"`{wrong[0]}` does not apply to a {kind!r} index.")
    return given
