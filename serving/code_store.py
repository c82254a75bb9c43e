"""The codes file `serving.encode` writes, and the checkpoint beside it while it runs.

`codes.npz` is a codes file (`harr_tf.codes`: `ids`, `codes`, `packed`) with
`failed_ids` / `failed_reasons` (the items the server could not decode), and `model`,
`model_version`, `signature`. While a run goes on, every few seconds the codes received
so far go to a new `codes.npz.parts/part-N.npz`; at the end all of it is merged into
`codes.npz`, and the parts are removed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from harr_tf.atomic import write_text_atomically
from harr_tf.codes import read_codes_file, write_codes_file

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
    arrays = read_codes_file(path)
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
        write_codes_file(self.parts / name, ids, codes, packed)
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
        write_codes_file(
            self.out,
            encoded.ids[rows],
            encoded.codes[rows],
            encoded.packed[rows],
            failed_ids=np.array(failed, dtype=str),
            failed_reasons=np.array([failures[item] for item in failed], dtype=str),
            model=np.array(origin.model),
            model_version=np.array(origin.model_version),
            signature=np.array(origin.signature),
        )
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(rows)
