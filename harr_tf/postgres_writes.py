"""Writing to a PostgreSQL table of codes that several processes share: every `add`,
`remove` and `write` is one transaction, so encoders filling one table at once neither
lose nor repeat an id, and a killed writer leaves the table as its last commit did.

`PostgresIndex` takes these methods from `SharedTableWrites`; they use its connection
(`_writable`), its statement lock (`_lock`), `location`, `metadata_columns` and
`check_queries`, and forget its ids (`_ids = None`) so that they are read again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

import numpy as np

from harr_tf import postgres_rows as rows_sql
from harr_tf import postgres_table as tables
from harr_tf.index_checks import check_ids
from harr_tf.postgres_location import TableLocation, connect


class SharedTableWrites:
    """The writes of `PostgresIndex` (see the module)."""

    @classmethod
    def open_for_writing(cls, location: str, bits: int) -> Self:
        """The table at `location`, created (flat, empty) if missing; refuses another length."""
        where = TableLocation.parse(location)
        connection = connect(where)
        info = tables.open_or_create(connection, where, bits)
        index = cls(where, connection, info)
        if info.bits != bits:
            index.close()
            raise ValueError(
                f"{where} holds {info.bits}-bit codes, not {bits}-bit ones: "
                "encode into another table, or with the model that made them."
            )
        return index

    def add(
        self,
        packed: np.ndarray,
        ids: Sequence[str],
        *,
        metadata: Mapping[str, Sequence[str | None]] | None = None,
        continuous: np.ndarray | None = None,
    ) -> None:
        """Appends codes under new `ids` in one transaction; refuses ids already in the
        table (by this or any other writer), changing nothing."""
        packed = self.check_queries(packed)
        check_ids(packed, ids)
        metadata = tables.checked_metadata(metadata, len(ids))
        extra = [name for name in metadata if name not in self.metadata_columns]
        if extra:
            raise ValueError(
                f"{self.location} has no metadata column {extra[0]!r}; its "
                f"columns are {list(self.metadata_columns)} (fixed by `build`)."
            )
        with self._lock:
            rows_sql.add_rows(self._writable, self.location, ids, packed, continuous, metadata)
        self._ids = None

    def remove(self, ids: Sequence[str]) -> None:
        """Drops the codes of `ids` in one transaction; refuses ids not in the table."""
        with self._lock:
            rows_sql.remove_rows(self._writable, self.location, list(dict.fromkeys(ids)))
        self._ids = None

    def write(
        self,
        ids: Sequence[str],
        packed: np.ndarray,
        continuous: np.ndarray | None = None,
        *,
        overwrite: bool = False,
    ) -> int:
        """Inserts codes, skipping ids already present (replacing them with `overwrite`,
        in place: they keep their rank among ties). Returns how many rows it wrote."""
        packed = self.check_queries(packed)
        with self._lock:
            written = rows_sql.upsert_rows(
                self._writable, self.location, ids, packed, continuous, overwrite
            )
        self._ids = None
        return written

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids of `ids` not in the table, in the given order."""
        with self._lock:
            present = rows_sql.present_ids(self._writable, self.location, ids)
        return [item for item in ids if item not in present]
