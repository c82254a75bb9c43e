"""Files that appear whole or not at all, so that whoever reads them next (a resumed
run, a server polling a directory, the user's next command) never sees half of one.

A file is written beside its destination as `.tmp<pid>.<name>` (the name's extension
kept, for writers that insist on one), synced and renamed. A killed writer leaves the
temporary file; `remove_leftovers` deletes those of processes that no longer run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

# Leftovers of killed writes: `.tmp<pid>.<name>`, and the names earlier versions used
# (`.<name>.tmp<pid>`, `.saving<pid>.weights.h5`, `.saving-<pid>.weights.h5`).
_LEFTOVER = re.compile(r"^\.(?:tmp(\d+)\..+|.+\.tmp(\d+)|saving-?(\d+)\.weights\.h5)$")
# Room left beyond a write's own size: file-system metadata, and whatever else is writing.
DISK_MARGIN = 16 * 2**20


@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; on success the file is synced
    and renamed onto `path`, on failure removed.

    With `size` (the bytes about to be written), first checks the disk has room
    (`check_free_space`): h5py crashes the process when a write meets a full disk.
    """
    path = Path(path)
    if size is not None:
        check_free_space(path.parent, size, path)
    temporary = path.with_name(f".tmp{os.getpid()}.{path.name}")
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json_atomically(path: str | Path, value: dict) -> None:
    write_text_atomically(path, json.dumps(value, indent=2))


def check_free_space(directory: str | Path, size: int, path: str | Path) -> None:
    """Raises OSError(ENOSPC) naming `path` unless `directory` has `size` bytes free
    plus `DISK_MARGIN`."""
    free = shutil.disk_usage(directory).free
    if free < size + DISK_MARGIN:
        raise OSError(
            errno.ENOSPC,
            f"{_mib(free)} free on its disk, {path} needs {_mib(size + DISK_MARGIN)}",
        )


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Deletes the temporary files in `directory` of writers that no longer run (killed
    mid-write); returns what was deleted."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            match = _LEFTOVER.match(entry.name)
            if match and entry.is_file() and not _running(int(next(filter(None, match.groups())))):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
