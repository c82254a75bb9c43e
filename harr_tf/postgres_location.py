"""Where a PostgreSQL index lives: its URI and the connection to it.

    postgresql://user@/db?host=/run/pg&table=harr_64      (unix socket)
    postgresql://user:password@db.example.com:5432/db?table=harr_64

The URI is libpq's, plus `table` (default "harr_codes"), which is taken out before
connecting. Messages never show the password.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

DEFAULT_TABLE = "harr_codes"
_SCHEMES = ("postgresql://", "postgres://")
_MAX_IDENTIFIER_BYTES = 63


def is_database_uri(location: object) -> bool:
    """Whether `location` names a PostgreSQL table rather than a FAISS file."""
    return isinstance(location, str) and location.startswith(_SCHEMES)


@dataclasses.dataclass(frozen=True)
class TableLocation:
    """A table in a database: `conninfo` for libpq, `table` the table's name."""

    conninfo: str
    table: str

    @classmethod
    def parse(cls, uri: str) -> TableLocation:
        if not is_database_uri(uri):
            raise ValueError(f"{uri!r} is not a PostgreSQL URI: expected postgresql://...")
        parts = urlsplit(uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
        tables = [value for key, value in query if key == "table"]
        table = tables[-1] if tables else DEFAULT_TABLE
        if not table or len(table.encode()) > _MAX_IDENTIFIER_BYTES or "\0" in table:
            raise ValueError(
                f"table={table!r} in {redacted(uri)}: expected a table name of 1 to "
                f"{_MAX_IDENTIFIER_BYTES} bytes."
            )
        rest = urlencode([(key, value) for key, value in query if key != "table"], safe="/")
        return cls(urlunsplit(parts._replace(query=rest)), table)

    def __str__(self) -> str:
        return f"{redacted(self.conninfo)} table {self.table}"


def redacted(uri: str) -> str:
    """`uri` without its password, for messages."""
    return re.sub(r"(://[^:/?#@]*):[^@/?#]*@", r"\1:***@", uri)


def connect(location: TableLocation) -> psycopg.Connection:
    """An autocommit connection (transactions are explicit), or one line saying why not."""
    try:
        return psycopg.connect(location.conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as err:
        raise ConnectionError(
            f"cannot connect to {redacted(location.conninfo)}: {one_line(err)}"
        ) from err


def one_line(err: Exception) -> str:
    """The server's message without libpq's "connection to server at ... failed:" prefix."""
    text = " ".join(str(err).split())
    return re.sub(r"^.*?failed: (FATAL: )?", "", text) if "failed:" in text else text
