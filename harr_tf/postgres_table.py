"""The SQL of a PostgreSQL index: the table's layout, writing rows, ranking them.

A table of codes holds `id` (text, the primary key), `seq` (insertion order:
equal distances rank by it, as FAISS flat ranks by position), `code` bit(bits), the
optional continuous code `continuous` vector(bits), and text metadata columns. Its kind and
options are one row of `harr_tf_indexes`, beside it. Names go into SQL as quoted
identifiers only, and every id, code and value as a bound parameter.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence

import psycopg
from psycopg import sql

from harr_tf.faiss_index_kinds import KIND_OPTIONS, default_nlist
from harr_tf.postgres_location import TableLocation, one_line, redacted

CATALOG = "harr_tf_indexes"
FIXED_COLUMNS = ("id", "seq", "code", "continuous")


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """What a table of codes is: its length, kind, options, metadata columns."""

    bits: int
    kind: str
    options: dict
    metadata: tuple[str, ...]
    has_continuous: bool


def describe(connection: psycopg.Connection, location: TableLocation) -> TableInfo | None:
    """The table's layout, None if there is no such table, or an error when it exists but
    is not a table of codes (other columns, or not registered in `harr_tf_indexes`)."""
    found = connection.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypmod "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass(quote_ident(%s)) "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [location.table],
    ).fetchall()
    if not found:
        return None
    columns = {name: (kind, size) for name, kind, size in found}
    bits = columns.get("code", ("", 0))[1]
    expected = {"id": "text", "seq": "bigint", "code": f"bit({bits})"}
    wrong = [name for name, kind in expected.items() if columns.get(name, ("",))[0] != kind]
    if "continuous" in columns and columns["continuous"][0] != f"vector({bits})":
        wrong.append("continuous")
    metadata = tuple(name for name in columns if name not in FIXED_COLUMNS)
    if not wrong and not [
        kind for name, (kind, _) in columns.items() if name in metadata and kind != "text"
    ]:
        row = _catalog_row(connection, location.table)
        if row is not None:
            kind, options = row
            return TableInfo(bits, kind, options, metadata, "continuous" in columns)
    listed = ", ".join(f"{name} {kind}" for name, (kind, _) in columns.items())
    raise ValueError(
        f"{location} exists with other columns ({listed}): it is not a table of codes "
        f"written by harr-tf; name another table with ?table=NAME."
    )


def _catalog_row(connection: psycopg.Connection, table: str) -> tuple[str, dict] | None:
    if connection.execute("SELECT to_regclass(%s)", [CATALOG]).fetchone()[0] is None:
        return None
    query = sql.SQL("SELECT kind, options FROM {} WHERE name = %s").format(sql.Identifier(CATALOG))
    return connection.execute(query, [table]).fetchone()


def require_vector(connection: psycopg.Connection, location: TableLocation) -> None:
    """Creates pgvector's extension where it is missing, or says who must."""
    try:
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as err:
        raise ValueError(
            f"{redacted(location.conninfo)} lacks the pgvector extension and it cannot be "
            f"created here ({one_line(err)}): run CREATE EXTENSION vector in that database "
            "as its owner or a superuser."
        ) from err


def create_table(
    connection: psycopg.Connection,
    location: TableLocation,
    bits: int,
    kind: str,
    options: dict,
    metadata: Sequence[str] = (),
) -> None:
    """Creates the table and registers it; call inside a transaction."""
    table = sql.Identifier(location.table)
    columns = [sql.SQL("{} text").format(sql.Identifier(name)) for name in metadata]
    connection.execute(
        sql.SQL(
            "CREATE TABLE {} (id text PRIMARY KEY, seq bigint GENERATED ALWAYS AS IDENTITY, "
            "code bit({}) NOT NULL, continuous vector({}){})"
        ).format(
            table,
            sql.Literal(int(bits)),
            sql.Literal(int(bits)),
            sql.SQL("").join(sql.SQL(", ") + column for column in columns),
        )
    )
    connection.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, kind text NOT NULL, "
            "options jsonb NOT NULL)"
        ).format(sql.Identifier(CATALOG))
    )
    connection.execute(
        sql.SQL(
            "INSERT INTO {} VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE "
            "SET kind = EXCLUDED.kind, options = EXCLUDED.options"
        ).format(sql.Identifier(CATALOG)),
        [location.table, kind, json.dumps(options)],
    )


def drop_table(connection: psycopg.Connection, location: TableLocation) -> None:
    connection.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(location.table)))


def create_search_index(
    connection: psycopg.Connection, location: TableLocation, kind: str, options: dict
) -> None:
    """pgvector's HNSW or IVFFlat index on the codes, by Hamming distance; none for flat."""
    if kind == "flat":
        return
    method, setting = ("hnsw", "m") if kind == "hnsw" else ("ivfflat", "lists")
    size = options["neighbours"] if kind == "hnsw" else options["nlist"]
    connection.execute("SELECT set_config('maintenance_work_mem', '512MB', true)")
    connection.execute(
        sql.SQL("CREATE INDEX ON {} USING {} (code bit_hamming_ops) WITH ({} = {})").format(
            sql.Identifier(location.table),
            sql.SQL(method),
            sql.SQL(setting),
            sql.Literal(int(size)),
        )
    )


def lock_table_name(connection: psycopg.Connection, location: TableLocation) -> None:
    """Serialises writers that create or replace this table (until the transaction ends)."""
    connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [location.table])


def resolved_options(kind: str, count: int, options: dict) -> dict:
    """`kind`'s options with the defaults of FAISS's (`HammingIndex.build`): hnsw
    neighbours 16 (pgvector's m) and ef_search 64; ivf nlist (lists) and nprobe (probes)."""
    for name, value in options.items():
        if name not in {option for names in KIND_OPTIONS.values() for option in names}:
            raise TypeError(f"Unknown index option {name!r}; expected one of {KIND_OPTIONS}")
        if value is not None and name not in KIND_OPTIONS[kind]:
            raise ValueError(f"`{name}` does not apply to a {kind!r} PostgreSQL index.")
        if value is not None and value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {value}")
    if kind == "hnsw":
        return {
            "neighbours": options.get("neighbours") or 16,
            "ef_search": options.get("ef_search") or 64,
        }
    if kind == "ivf":
        nlist = options.get("nlist") or default_nlist(count)
        if nlist > count:
            raise ValueError(
                f"`nlist` must be between 1 and the number of codes ({count}). "
                f"Received: nlist={nlist}"
            )
        return {"nlist": nlist, "nprobe": options.get("nprobe") or max(1, nlist // 16)}
    return {}


def metadata_from_csv(path: str, ids: Sequence[str]) -> dict[str, list[str | None]]:
    """The text columns of a CSV file (a header row, one `id` column) for `ids`, in their
    order; an id the file lacks gets None (NULL), rows of other ids are ignored."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a header row naming an `id` column.")
        rows: dict[str, dict] = {}
        for row in reader:
            if row["id"] in rows:
                raise ValueError(f"{path}: id {row['id']!r} is on two rows; expected one each.")
            rows[row["id"]] = row
    columns = [name for name in reader.fieldnames if name != "id"]
    return {name: [rows.get(item, {}).get(name) for item in ids] for name in columns}


def checked_metadata(metadata, count: int) -> dict[str, list[str | None]]:
    """`metadata` {column: one text or None per id} as lists, its names and sizes checked."""
    checked = {str(name): list(values) for name, values in (metadata or {}).items()}
    for name, values in checked.items():
        if name in FIXED_COLUMNS or not name or len(name.encode()) > 63:
            raise ValueError(
                f"Metadata column {name!r}: expected a name of 1 to 63 bytes other "
                f"than {list(FIXED_COLUMNS)}."
            )
        if len(values) != count:
            raise ValueError(f"Metadata column {name!r} has {len(values)} values for {count} ids.")
    return checked


def open_or_create(connection: psycopg.Connection, location: TableLocation, bits: int) -> TableInfo:
    """The table's layout, after creating it (flat, empty) where it is missing."""
    with connection.transaction():
        lock_table_name(connection, location)
        info = describe(connection, location)
        if info is None:
            require_vector(connection, location)
            create_table(connection, location, bits, "flat", {})
            info = TableInfo(bits, "flat", {}, (), True)
    return info
