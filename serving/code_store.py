"""The codes file `serving.encode` writes, and the checkpoint beside it while it runs.

`codes.npz` holds `ids` (n,) str, `codes` (n, bits) int8 in {−1, +1}, `packed`
(n, bits / 8) uint8, `failed_ids` / `failed_reasons` (the items the server could not
decode), and `model`, `model_version`, `signature`. While a run goes on, every few
seconds the codes received so far go to a new `codes.npz.parts/part-N.npz`; at the end
all of it is merged into `codes.npz`, and the parts are removed. Every file is written
to a temporary name, synced and renamed, so a crash leaves whole files only.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from harr_tf.atomic import atomic_path, write_text_atomically

_CODES_KEYS = ("ids", "codes", "packed")
_META_FILE = "meta.json"


@dataclasses.dataclass(frozen=True)
class CodesOrigin:
    """Which model made a set of codes; codes of one file all share one origin."""

    model: str
    model_version: int
    signature: str
    bits: int


@dataclasses.dataclass(frozen=True, eq=False)
class StoredCodes:
    """Codes found on disk: (n,) ids with their (n, bits) codes and (n, bits / 8) packed rows."""

    ids: np.ndarray
    codes: np.ndarray
    packed: np.ndarray
    origin: CodesOrigin | None


def load_codes_file(path: str | Path) -> StoredCodes:
    """A codes file written by `serving.encode`, or a clear error (naming `path`) when
    its arrays are not ids with their ±1 codes and those codes packed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable codes file: {err}") from err
    missing = [key for key in _CODES_KEYS if key not in arrays]
    if missing:
        raise ValueError(
            f"{path} has no {missing} array(s); expected a codes file written by "
            f"`python -m serving.encode` (keys {list(_CODES_KEYS)})."
        )
    _check_codes(path, *(arrays[key] for key in _CODES_KEYS))
    origin = None
    if "model_version" in arrays:
        origin = CodesOrigin(
            str(arrays["model"]),
            int(arrays["model_version"]),
            str(arrays["signature"]),
            arrays["codes"].shape[1],
        )
    return StoredCodes(arrays["ids"], arrays["codes"], arrays["packed"], origin)


class CodeStore:
    """`out` and its checkpoint folder `out.parts/`.

    Args:
        out: the codes file to write, e.g. "codes.npz".
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.parts = self.out.with_name(f"{self.out.name}.parts")
        self._next_part = 0

    def has_progress(self) -> bool:
        """Whether a finished codes file or a checkpoint of an unfinished run exists."""
        return self.out.exists() or self.parts.exists()

    def clear(self) -> None:
        """Removes the codes file and any checkpoint."""
        self.out.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)

    def load(self) -> StoredCodes | None:
        """Everything encoded so far (the codes file, then the checkpoint), or None.

        Raises:
            ValueError: the pieces come from different models or versions.
        """
        found = [load_codes_file(self.out)] if self.out.exists() else []
        part_files = sorted(self.parts.glob("part-*.npz")) if self.parts.is_dir() else []
        found += [load_codes_file(part) for part in part_files]
        self._next_part = len(part_files)
        if not found:
            return None
        origins = {piece.origin for piece in found if piece.origin is not None}
        if (self.parts / _META_FILE).is_file():
            origins.add(CodesOrigin(**json.loads((self.parts / _META_FILE).read_text())))
        if len(origins) > 1:
            raise ValueError(
                f"{self.out} and its checkpoint {self.parts} come from different models: "
                f"{sorted(map(str, origins))}. Pass --overwrite to start over."
            )
        return StoredCodes(
            np.concatenate([piece.ids for piece in found]),
            np.concatenate([piece.codes for piece in found]),
            np.concatenate([piece.packed for piece in found]),
            origins.pop() if origins else None,
        )

    def begin(self, origin: CodesOrigin) -> None:
        """Starts (or continues) the checkpoint of a run by `origin`."""
        self.parts.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(dataclasses.asdict(origin))
        write_text_atomically(self.parts / _META_FILE, meta)

    def checkpoint(self, ids: list[str], codes: np.ndarray, packed: np.ndarray) -> None:
        """Saves one more part of codes; a later `load()` sees it."""
        if not ids:
            return
        name = f"part-{self._next_part:06d}.npz"
        _atomic_savez(self.parts / name, ids=np.array(ids, dtype=str), codes=codes, packed=packed)
        self._next_part += 1

    def finish(
        self,
        order: tuple[str, ...],
        encoded: StoredCodes,
        failures: dict[str, str],
        origin: CodesOrigin,
    ) -> int:
        """Writes the codes file: the ids of `order` that have codes, in that order, plus
        the failures; then drops the checkpoint. Returns how many codes it holds."""
        row_of = {item: row for row, item in enumerate(encoded.ids.tolist())}
        rows = np.array([row_of[item] for item in order if item in row_of], dtype=np.int64)
        failed = [item for item in order if item in failures]
        _atomic_savez(
            self.out,
            ids=encoded.ids[rows],
            codes=encoded.codes[rows],
            packed=encoded.packed[rows],
            failed_ids=np.array(failed, dtype=str),
            failed_reasons=np.array([failures[item] for item in failed], dtype=str),
            model=np.array(origin.model),
            model_version=np.array(origin.model_version),
            signature=np.array(origin.signature),
        )
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(rows)


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


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    # A file object, not a path: np.savez would append ".npz" to the temporary name.
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)
