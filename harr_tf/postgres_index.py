"""`HammingIndex`'s twin over a PostgreSQL table: pgvector's `bit(n)` codes, ranked by `<~>`.

The same methods, arguments, answers and errors as the FAISS index, so the search command,
the page and `serving.ranking` take either: `build` then `save(uri)` writes a table whole
(an existing table of codes is replaced in one transaction), `load(uri)` opens it, and
`add` / `remove` commit at once, so several writers can share one table
(`harr_tf.postgres_writes`). Positions index `ids`, the table's ids in insertion order;
equal distances rank by it, as FAISS flat's do.
Kinds: "flat" (exact scan), "hnsw" and "ivf" (pgvector's indexes, `bit_hamming_ops`).
Search can also keep only rows whose text metadata columns equal given values.

>>> index = open_index("postgresql://me@/photos?host=/run/pg&table=harr_64")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import psycopg

from harr_tf import postgres_rows as rows_sql
from harr_tf import postgres_table as tables
from harr_tf.faiss_index_kinds import KIND_OPTIONS
from harr_tf.index import HammingIndex
from harr_tf.index_checks import check_build, search_overrides
from harr_tf.postgres_location import TableLocation, connect, is_database_uri, one_line, redacted
from harr_tf.postgres_table import TableInfo
from harr_tf.postgres_writes import SharedTableWrites

POSTGRES_KINDS = ("flat", "ivf", "hnsw")
_MAX_EF_SEARCH = 1000  # pgvector's limit


def open_index(location: str | Path) -> HammingIndex | PostgresIndex:
    """The index at `location`: a FAISS file path, or a postgresql:// URI of a table."""
    return index_class(location).load(location)


def index_class(location: str | Path) -> type[HammingIndex] | type[PostgresIndex]:
    return PostgresIndex if is_database_uri(location) else HammingIndex


@dataclasses.dataclass(frozen=True)
class _Rows:
    """Codes not yet in a table: what `build` holds until `save`."""

    packed: np.ndarray
    ids: list[str]
    metadata: dict[str, Sequence[str | None]]
    continuous: np.ndarray | None


class PostgresIndex(SharedTableWrites):
    """Top-k Hamming search over a table of packed codes, answering with ids (see the module).

    Args:
        location: the table.
        connection: an open autocommit connection to its database, or None before `save`.
        info: the table's bits, kind, options and metadata columns.
    """

    def __init__(
        self,
        location: TableLocation | None,
        connection: psycopg.Connection | None,
        info: TableInfo,
    ) -> None:
        self.location, self._connection, self._info = location, connection, info
        self.kind = info.kind
        self._staged: _Rows | None = None
        self._ids: list[str] | None = None
        self._position_of: dict[str, int] = {}
        self._progress = False
        self._lock = threading.RLock()  # one statement at a time on the connection

    @classmethod
    def build(
        cls,
        packed: np.ndarray,
        ids: Sequence[str],
        kind: str = "flat",
        *,
        seed: int = 0,
        progress: bool = False,
        metadata: Mapping[str, Sequence[str | None]] | None = None,
        continuous: np.ndarray | None = None,
        **options: int | None,
    ) -> PostgresIndex:
        """An index of `packed` (n, bits/8) uint8 codes under `ids`, written by `save`.

        As `HammingIndex.build`; pgvector samples IVF cells itself, so `seed` is unused.
        `metadata` maps column names to one text (or None) per id; `continuous` is (n, bits).
        """
        if kind not in POSTGRES_KINDS:
            raise ValueError(
                f"`kind` must be one of {POSTGRES_KINDS} for a PostgreSQL index. "
                f"Received: kind={kind!r}"
            )
        packed = check_build(packed, ids)
        rows = _Rows(packed, list(ids), tables.checked_metadata(metadata, len(ids)), continuous)
        info = TableInfo(
            packed.shape[1] * 8,
            kind,
            tables.resolved_options(kind, len(ids), options),
            tuple(rows.metadata),
            continuous is not None,
        )
        index = cls(None, None, info)
        index._staged, index._progress = rows, progress
        return index

    @classmethod
    def load(cls, location: str | Path) -> PostgresIndex:
        """The table at `location` (a postgresql:// URI)."""
        where = TableLocation.parse(str(location))
        connection = connect(where)
        info = tables.describe(connection, where)
        if info is None:
            connection.close()
            raise FileNotFoundError(
                f"No table {where.table} in {redacted(where.conninfo)}: expected a table "
                "written by `python -m serving.search build` or `serving.encode --index`."
            )
        return cls(where, connection, info)

    @classmethod
    @contextlib.contextmanager
    def updating(cls, path: str | Path, *, wait: bool = False) -> Iterator[PostgresIndex]:
        """As `HammingIndex.updating`: the table at `path`, for `add` and `remove`, each of
        which is one transaction (writers of one table wait for each other's)."""
        index = cls.load(path)
        try:
            yield index
            index._refresh_ids()  # so that `len` and `ids` answer after the block
        finally:
            index.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    @property
    def bits(self) -> int:
        return self._info.bits

    @property
    def metadata_columns(self) -> tuple[str, ...]:
        return self._info.metadata

    @property
    def exact_radius(self) -> int | None:
        """bits for "flat" (every neighbour is found), None for the approximate kinds."""
        return self.bits if self.kind == "flat" else None

    @property
    def search_option(self) -> int | None:
        """The saved search-time option: nprobe (ivf) or ef_search (hnsw); None for flat."""
        names = KIND_OPTIONS[self.kind]
        return self._info.options[names[-1]] if names else None

    @property
    def ids(self) -> list[str]:
        """The table's ids in insertion order (read once, and again after a change)."""
        if self._staged is not None:
            return self._staged.ids
        if self._ids is None:
            self._refresh_ids()
        return self._ids

    def __len__(self) -> int:
        return len(self.ids)

    check_queries = HammingIndex.check_queries  # the same check and message: it reads bits

    def search(
        self,
        packed_queries: np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        nflip: int | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As `HammingIndex.search`, plus `filters` {column: value}: only rows whose
        metadata equal every value are ranked (rows are padded with position -1)."""
        queries = self.check_queries(packed_queries)
        given = search_overrides(self.kind, k, nprobe=nprobe, ef_search=ef_search, nflip=nflip)
        filters = dict(filters or {})
        unknown = [name for name in filters if name not in self.metadata_columns]
        if unknown:
            raise ValueError(
                f"No metadata column {unknown[0]!r} in {self.location} to filter "
                f"on; its columns are {list(self.metadata_columns)}."
            )
        if len(self) == 0:
            self._refresh_ids()
            if len(self) == 0:
                raise ValueError(f"{self.location} holds no codes yet: encode or add some first.")
        depth = min(k, len(self))
        options = self._info.options
        ef_search = given.get("ef_search") or options.get("ef_search", 0)
        settings = {  # FAISS's HNSW searches at least k deep; pgvector stops at ef_search
            "ivfflat.probes": given.get("nprobe") or options.get("nprobe"),
            "hnsw.ef_search": min(_MAX_EF_SEARCH, max(depth, ef_search)),
        }
        with self._lock:
            found = rows_sql.nearest_rows(
                self._writable, self.location, self._info, queries, depth, filters, settings
            )
        if any(item not in self._position_of for _, item, _ in found):
            self._refresh_ids()  # another writer added rows since the ids were read
        return rows_sql.ranked_arrays(found, len(queries), depth, self._position_of)

    def codes(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The packed codes (m, bits/8) at `positions` (all of them when None)."""
        every = self.ids
        wanted = every if positions is None else [every[p] for p in np.asarray(positions)]
        if self._staged is not None:
            rows = self._staged.packed
            return rows.copy() if positions is None else rows[np.asarray(positions, np.int64)]
        with self._lock:
            found = rows_sql.codes_of(self._writable, self.location, wanted)
        gone = [item for item in wanted if item not in found]
        if gone:
            raise ValueError(
                f"{len(gone)} ids were removed from {self.location} meanwhile, e.g. {gone[:5]}"
            )
        return rows_sql.packed_codes([found[item] for item in wanted], self.bits)

    def save(self, path: str | Path, *, wait: bool = False, locked: bool = False) -> None:
        """Writes the index to the table at `path` in one transaction, replacing a table of
        codes already there (another kind of table is refused). Onto its own table this does
        nothing: `add` and `remove` have committed already. A second writer of the table
        waits for the first's transaction, so `wait` and `locked` change nothing here."""
        target = TableLocation.parse(str(path))
        if self._staged is None and target == self.location:
            return
        rows = self._staged or _Rows(self.codes(), list(self.ids), {}, None)
        connection = connect(target)
        try:
            rows_sql.replace_table(connection, target, self._info, rows, self._progress)
        except psycopg.Error as err:
            connection.close()
            raise ValueError(f"cannot write {target}: {one_line(err)}") from err
        except BaseException:
            connection.close()
            raise
        self.close()
        self.location, self._connection, self._staged = target, connection, None
        self._info = dataclasses.replace(self._info, metadata=tuple(rows.metadata))
        self._ids = None

    @property
    def _writable(self) -> psycopg.Connection:
        """The connection, or an error for an index `build` made and nothing saved yet."""
        if self._connection is None:
            raise ValueError("This index is not in a table yet: `save` it to one first.")
        return self._connection

    def _refresh_ids(self) -> None:
        with self._lock:
            self._ids = rows_sql.ids_in_order(self._writable, self.location)
        self._position_of = {item: position for position, item in enumerate(self._ids)}
