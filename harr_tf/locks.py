"""Exclusive writers: an OS lock on a file beside what is written (a run directory, an
index), held for a process's life or a `with` block.

The lock is `fcntl.flock` on `<path>.lock` (`<dir>/.lock` for a directory): the kernel
releases it when the holder exits or is killed, so a crash never leaves a stale lock
to delete by hand. The holder writes its pid, host and command into the lock file so
that a second writer can say who holds it.

    with exclusive("runs/r1"):          # raises LockHeld if another process holds it
        ...
    lock = exclusive("index.faiss", wait=True, timeout=60).acquire()  # held until exit
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

_POLL_SECONDS = 0.2


class LockHeld(RuntimeError):
    """Another process holds the lock; the message is one line naming the path and pid."""


def lock_path(path: str | Path) -> Path:
    """`<dir>/.lock` for a directory (existing, or named with a trailing slash), else
    `<path>.lock`."""
    directory = str(path).endswith(os.sep)
    path = Path(path)
    if directory or path.is_dir():
        return path / ".lock"
    return path.with_name(path.name + ".lock")


class exclusive:  # noqa: N801 - used like a function: `with exclusive(path):`
    """An exclusive lock on `path` (see `lock_path`).

    Args:
        path: what is written: a directory or a file (neither needs to exist yet; the
            parent directory is created).
        wait: wait for the holder to finish instead of raising `LockHeld`.
        timeout: with `wait`, raise `LockHeld` after this many seconds (None: forever).
    """

    def __init__(self, path: str | Path, wait: bool = False, timeout: float | None = None):
        self.path = Path(path)
        self.file = lock_path(path)
        self.wait, self.timeout = wait, timeout
        self._descriptor: int | None = None

    def acquire(self) -> exclusive:
        """Takes the lock (held until `release` or the process ends); returns self."""
        if self._descriptor is not None:
            return self
        self.file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait or (deadline is not None and time.monotonic() >= deadline):
                    os.close(descriptor)
                    raise LockHeld(self._held_message()) from None
                time.sleep(_POLL_SECONDS)
        # Only the holder writes the file, so a reader sees the current holder or, in
        # the instant between truncate and write, nothing.
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode() + b"\n", 0)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        """Lets the lock go (the lock file stays: deleting it would race the next holder)."""
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the only descriptor releases the flock
            self._descriptor = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def __enter__(self) -> exclusive:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _held_message(self) -> str:
        holder = read_holder(self.file)
        who = f"process {holder.get('pid', '?')}"
        if holder.get("host") and holder["host"] != socket.gethostname():
            who += f" on {holder['host']}"
        waited = f" after waiting {self.timeout:g} s" if self.wait else ""
        return f"{self.path} is in use by {who} (it holds the lock {self.file}){waited}."


def read_holder(file: str | Path) -> dict:
    """What the holder wrote into the lock file (`pid`, `host`, `command`), or {}."""
    try:
        return json.loads(Path(file).read_text() or "{}")
    except (OSError, ValueError):
        return {}
