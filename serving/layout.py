"""TensorFlow Serving's model directory layout: `BASE/<version>/saved_model.pb`.

Only directories named by a non-negative integer are versions; anything else
(the exporter's staging directory `.export-HOST-PID-*` among them) is invisible to a
server.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"
STAGING_PREFIX = ".export-"
# A staging directory of another host (whose exporter cannot be asked) is taken as
# abandoned once this old; a day is far longer than any export takes.
STALE_STAGING_SECONDS = 24 * 3600


def version_directories(base_path: str | Path) -> dict[int, Path]:
    """`{version: directory}` of every integer-named directory under `base_path`."""
    base = Path(base_path)
    if not base.is_dir():
        return {}
    return {
        int(entry.name): entry
        for entry in base.iterdir()
        if entry.name.isdigit() and entry.name.isascii() and entry.is_dir()
    }


def servable_versions(base_path: str | Path) -> dict[int, Path]:
    """The versions that hold a SavedModel, as a server would see them."""
    return {
        version: directory
        for version, directory in version_directories(base_path).items()
        if (directory / SAVED_MODEL_FILE).is_file()
    }


def next_version(base_path: str | Path) -> int:
    """One more than the highest version directory, or 1 for an empty base path."""
    return max(version_directories(base_path), default=0) + 1


def staging_prefix() -> str:
    """The name prefix of this process's staging directories: it names host and pid."""
    return f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def _staging_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the exporter that named a staging directory, if the name says."""
    host, _, rest = name.removeprefix(STAGING_PREFIX).rpartition("-")[0].rpartition("-")
    return (host, int(rest)) if host and rest.isdigit() else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_staging(base_path: str | Path) -> list[Path]:
    """Removes the staging directories under `base_path` that no exporter is writing:
    those of a dead process on this host, and any older than `STALE_STAGING_SECONDS`
    (another host's, or unnamed). Returns what it removed."""
    removed = []
    for entry in Path(base_path).glob(f"{STAGING_PREFIX}*"):
        owner = _staging_owner(entry.name)
        if owner is not None and owner[0] == socket.gethostname():
            stale = not _process_alive(owner[1])
        else:
            stale = time.time() - entry.stat().st_mtime > STALE_STAGING_SECONDS
        if stale and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
