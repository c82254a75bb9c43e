"""Binary codes with their item ids, and the codes file (`codes.npz`) that holds them.

A codes file holds `ids` (n,) str, `codes` (n, bits) int8 in {−1, +1} and `packed`
(n, bits / 8) uint8: the codes in `np.packbits` order, bit 1 for +1 (DESIGN §2.5).
`serving.encode` adds the items it skipped and the model that made the codes
(`serving.code_store`); `Codes.save` writes the three arrays only, and both are read
the same way. Every file is written to a temporary name, synced and renamed, so a
crash leaves whole files only.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harr_tf.atomic import atomic_path

CODES_KEYS = ("ids", "codes", "packed")


@dataclasses.dataclass(frozen=True, eq=False)
class Codes:
    """The binary codes of `n` items.

    Example:

    >>> codes = Codes.from_signs(["a", "b"], np.array([[1, -1] * 4, [-1, 1] * 4]))
    >>> codes.bits, codes.packed.tolist()
    (8, [[170], [85]])

    Args:
        ids: (n,) the items' ids.
        packed: (n, bits / 8) uint8, the codes in `np.packbits` order (1 ⇔ +1), as a
            `HammingIndex` takes them.
    """

    ids: np.ndarray
    packed: np.ndarray

    def __post_init__(self) -> None:
        ids, packed = np.asarray(self.ids, dtype=str), np.asarray(self.packed)
        if ids.ndim != 1 or packed.dtype != np.uint8 or packed.ndim != 2 or len(ids) != len(packed):
            raise ValueError(
                "Codes takes n ids and (n, bits / 8) uint8 packed codes. Received: "
                f"ids {ids.shape}, packed {packed.shape} {packed.dtype}"
            )
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "packed", packed)

    @classmethod
    def from_signs(cls, ids: Sequence[str], signs: np.ndarray) -> Codes:
        """Codes of ±1 (or positive / non-positive) values `signs` (n, bits)."""
        return cls(np.asarray(ids, dtype=str), np.packbits(np.asarray(signs) > 0, axis=1))

    @property
    def bits(self) -> int:
        return self.packed.shape[1] * 8

    @property
    def signs(self) -> np.ndarray:
        """(n, bits) int8 in {−1, +1}."""
        return np.unpackbits(self.packed, axis=1).astype(np.int8) * 2 - 1

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: str | Path) -> None:
        """Writes the codes file `path` (e.g. "codes.npz"), which `serving.search` and
        `Codes.load` read."""
        write_codes_file(path, self.ids, self.signs, self.packed)

    @classmethod
    def load(cls, path: str | Path) -> Codes:
        """The codes of a codes file, as `Codes.save` or `serving.encode` write it.

        Raises:
            ValueError: `path` is not a readable codes file (the message names it).
        """
        arrays = read_codes_file(path)
        return cls(arrays["ids"], arrays["packed"])


def read_codes_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the codes file `path`, or a clear error (naming `path`) when its
    arrays are not ids with their ±1 codes and those codes packed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable codes file: {err}") from err
    missing = [key for key in CODES_KEYS if key not in arrays]
    if missing:
        raise ValueError(
            f"{path} has no {missing} array(s); expected a codes file written by "
            f"`python -m serving.encode` (keys {list(CODES_KEYS)})."
        )
    _check_codes(path, *(arrays[key] for key in CODES_KEYS))
    return arrays


def write_codes_file(
    path: str | Path,
    ids: np.ndarray,
    codes: np.ndarray,
    packed: np.ndarray,
    **more: np.ndarray,
) -> None:
    """Writes `ids`, ±1 `codes`, `packed` and the arrays `more` as the codes file
    `path`, whole or not at all."""
    arrays = {"ids": np.asarray(ids, dtype=str), "codes": codes, "packed": packed, **more}
    # A file object, not a path: np.savez would append ".npz" to the temporary name.
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)


def _check_codes(path: Path, ids: np.ndarray, codes: np.ndarray, packed: np.ndarray) -> None:
    arrays = {"ids": ids, "codes": codes, "packed": packed}
    shapes = ", ".join(f"{name} {a.shape} {a.dtype}" for name, a in arrays.items())
    if not (
        ids.ndim == 1
        and ids.dtype.kind == "U"
        and codes.ndim == packed.ndim == 2
        and codes.dtype.kind in "iu"
        and packed.dtype == np.uint8
        and len(ids) == len(codes) == len(packed)
    ):
        raise ValueError(
            f"{path}: expected n string ids, (n, bits) integer codes and (n, bits/8) uint8 "
            f"packed codes. Received: {shapes}"
        )
    if packed.shape[1] * 8 != codes.shape[1]:
        raise ValueError(
            f"{path}: codes has {codes.shape[1]} columns but packed has {packed.shape[1]} bytes "
            f"({packed.shape[1] * 8} bits): expected bits/8 bytes per code, bits a multiple of 8."
        )
    if not np.isin(codes, (-1, 1)).all():
        raise ValueError(f"{path}: codes must be -1 or +1; it holds {np.unique(codes)[:5]}")
    differ = (np.packbits(codes > 0, axis=1) != packed).any(axis=1)
    if differ.any():
        raise ValueError(
            f"{path}: packed is not the codes packed (np.packbits(codes > 0)) in "
            f"{int(differ.sum())} rows, e.g. {ids[differ][:3].tolist()}"
        )
