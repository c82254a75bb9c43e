"""The rows of a PostgreSQL index: writing them (COPY, upserts), reading, ranking them.

Every id, code and value travels as a bound parameter or COPY data, never as SQL text;
names go in as quoted identifiers (see `harr_tf.postgres_table` for the layout).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import psycopg
from psycopg import sql
from tqdm import tqdm

from harr_tf import postgres_table as tables
from harr_tf.postgres_location import TableLocation, one_line
from harr_tf.postgres_table import TableInfo

_PROGRESS_STEP = 65536


def replace_table(
    connection: psycopg.Connection, location: TableLocation, info: TableInfo, rows, progress: bool
) -> None:
    """Writes `rows` (ids, packed, continuous, metadata) as the whole table, in one
    transaction: a table of codes already there is replaced, any other table refused."""
    with connection.transaction():
        tables.lock_table_name(connection, location)
        tables.require_vector(connection, location)
        if tables.describe(connection, location) is not None:
            tables.drop_table(connection, location)
        metadata = tuple(rows.metadata)
        tables.create_table(connection, location, info.bits, info.kind, info.options, metadata)
        copy_rows(
            connection, location, rows.ids, rows.packed, rows.continuous, rows.metadata, progress
        )
        tables.create_search_index(connection, location, info.kind, info.options)


def add_rows(
    connection: psycopg.Connection,
    location: TableLocation,
    ids: Sequence[str],
    packed: np.ndarray,
    continuous: np.ndarray | None,
    metadata: dict[str, Sequence[str | None]],
) -> None:
    """Appends rows in one transaction; refuses ids already in the table (put there by
    any writer, even while this one runs), changing nothing."""
    try:
        with connection.transaction():
            present = present_ids(connection, location, ids)
            if present:
                raise ValueError(
                    f"{len(present)} of the ids are already in the index, e.g. "
                    f"{sorted(present)[:5]}: remove them first, or add only new ids."
                )
            copy_rows(connection, location, ids, packed, continuous, metadata)
    except psycopg.errors.UniqueViolation as err:
        raise ValueError(
            f"another writer added some of these ids meanwhile: {one_line(err)}"
        ) from err


def remove_rows(connection: psycopg.Connection, location: TableLocation, ids: list[str]) -> None:
    """Deletes the rows of `ids` in one transaction; refuses ids not in the table, and
    removing every row (as `HammingIndex.remove` does)."""
    with connection.transaction():
        found = present_ids(connection, location, ids, lock=True)
        unknown = set(ids) - found
        if unknown:
            raise ValueError(f"{len(unknown)} ids are not in the index, e.g. {sorted(unknown)[:5]}")
        if found and count_rows(connection, location) == len(found):
            raise ValueError("Cannot remove every code: an index holds at least one.")
        delete_rows(connection, location, ids)


def present_ids(
    connection: psycopg.Connection, location: TableLocation, ids: Sequence[str], lock=False
) -> set[str]:
    """The ids of `ids` in the table (locked until the transaction ends with `lock`)."""
    query = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)" + (" FOR UPDATE" if lock else ""))
    rows = connection.execute(query.format(sql.Identifier(location.table)), [list(ids)])
    return {row[0] for row in rows}


def count_rows(connection: psycopg.Connection, location: TableLocation) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(location.table))
    return connection.execute(query).fetchone()[0]


def delete_rows(connection: psycopg.Connection, location: TableLocation, ids: Sequence[str]):
    query = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(location.table))
    connection.execute(query, [list(ids)])


def ids_in_order(connection: psycopg.Connection, location: TableLocation) -> list[str]:
    """Every id, in insertion order."""
    query = sql.SQL("SELECT id FROM {} ORDER BY seq").format(sql.Identifier(location.table))
    return [row[0] for row in connection.execute(query)]


def codes_of(
    connection: psycopg.Connection, location: TableLocation, ids: Sequence[str]
) -> dict[str, str]:
    """{id: code as '0101...'} for the ids of `ids` in the table."""
    query = sql.SQL("SELECT id, code FROM {} WHERE id = ANY(%s)")
    found = connection.execute(query.format(sql.Identifier(location.table)), [list(set(ids))])
    return dict(found.fetchall())


def copy_rows(
    connection: psycopg.Connection,
    location: TableLocation,
    ids: Sequence[str],
    packed: np.ndarray,
    continuous: np.ndarray | None = None,
    metadata: dict[str, Sequence[str | None]] | None = None,
    progress: bool = False,
) -> None:
    """Appends rows with COPY (values travel as data, never as SQL)."""
    metadata = metadata or {}
    names = ["id", "code", "continuous", *metadata]
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(location.table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    codes, columns = bit_strings(packed), list(metadata.values())
    with (
        connection.cursor() as cursor,
        cursor.copy(copy) as writer,
        tqdm(total=len(ids), desc="Writing", unit="code", disable=not progress) as bar,
    ):
        for row, item in enumerate(ids):
            vector = None if continuous is None else vector_text(continuous[row])
            writer.write_row([item, codes[row], vector, *(column[row] for column in columns)])
            if row % _PROGRESS_STEP == _PROGRESS_STEP - 1:
                bar.update(_PROGRESS_STEP)
        bar.update(len(ids) % _PROGRESS_STEP)


def upsert_rows(
    connection: psycopg.Connection,
    location: TableLocation,
    ids: Sequence[str],
    packed: np.ndarray,
    continuous: np.ndarray | None,
    overwrite: bool,
) -> int:
    """Inserts rows, skipping ids present (or replacing their codes in place, keeping
    their insertion rank, with `overwrite`); returns how many rows were written."""
    conflict = (
        "DO UPDATE SET code = EXCLUDED.code, continuous = EXCLUDED.continuous"
        if overwrite
        else "DO NOTHING"
    )
    query = sql.SQL(
        "INSERT INTO {} (id, code, continuous) SELECT * FROM unnest(%s::text[], "
        "%s::varbit[], %s::text[]::vector[]) ON CONFLICT (id) " + conflict
    ).format(sql.Identifier(location.table))
    vectors = [None] * len(ids) if continuous is None else list(map(vector_text, continuous))
    return connection.execute(query, [list(ids), bit_strings(packed), vectors]).rowcount


def nearest_rows(
    connection: psycopg.Connection,
    location: TableLocation,
    info: TableInfo,
    queries: np.ndarray,
    depth: int,
    filters: dict[str, str],
    settings: dict[str, int | None],
) -> list[tuple[int, str, float]]:
    """(query number from 1, id, distance) of the `depth` nearest rows to each packed
    query, among those whose metadata equal `filters`; `settings` are pgvector's
    search options (`ivfflat.probes`, `hnsw.ef_search`), for this search only."""
    # Exact: a scan, ties by insertion order; otherwise pgvector's index orders by distance.
    order = "code <~> q.code, seq" if info.kind == "flat" else "code <~> q.code"
    where = sql.SQL(" AND ").join(
        [sql.SQL("TRUE")] + [sql.SQL("{} = %s").format(sql.Identifier(name)) for name in filters]
    )
    query = sql.SQL(
        "SELECT q.n, r.id, r.d FROM unnest(%s::varbit[]) WITH ORDINALITY q(code, n) "
        "CROSS JOIN LATERAL (SELECT id, seq, code <~> q.code AS d FROM {} WHERE {} "
        "ORDER BY " + order + " LIMIT %s) r"
    ).format(sql.Identifier(location.table), where)
    if filters:  # walk the index on until enough rows pass the filter
        settings = {**settings, "hnsw.iterative_scan": "strict_order"}
        settings["ivfflat.iterative_scan"] = "relaxed_order"
    with connection.transaction():
        for name, value in settings.items():
            if value:
                connection.execute("SELECT set_config(%s, %s, true)", [name, str(value)])
        return connection.execute(
            query, [bit_strings(queries), *filters.values(), depth]
        ).fetchall()


def ranked_arrays(
    found: list[tuple[int, str, float]], count: int, depth: int, position_of: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """`nearest_rows`' answer as `HammingIndex.search`'s: distances (count, depth) int32 and
    positions int64, by distance then position, padded with position -1."""
    distances = np.full((count, depth), np.iinfo(np.int32).max, np.int32)
    positions = np.full((count, depth), -1, np.int64)
    grouped: dict[int, list[tuple[int, int]]] = {}
    for number, item, distance in found:
        grouped.setdefault(number - 1, []).append((int(distance), position_of[item]))
    for query, ranked in grouped.items():
        ranked.sort()
        for column, (distance, position) in enumerate(ranked[:depth]):
            distances[query, column], positions[query, column] = distance, position
    return distances, positions


def bit_strings(packed: np.ndarray) -> list[str]:
    """'0101...' per row, most-significant bit first (numpy `packbits` order)."""
    characters = np.unpackbits(packed, axis=1) + ord("0")
    return characters.view(f"S{characters.shape[1]}").ravel().astype(str).tolist()


def packed_codes(texts: Sequence[str], bits: int) -> np.ndarray:
    """The inverse of `bit_strings`: (n, bits/8) uint8."""
    characters = np.frombuffer("".join(texts).encode(), np.uint8).reshape(-1, bits)
    return np.packbits(characters - ord("0"), axis=1)


def vector_text(row: np.ndarray) -> str:
    return json.dumps(np.asarray(row, np.float32).tolist())
