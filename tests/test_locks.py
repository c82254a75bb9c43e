"""harr_tf.locks between two real processes: the second writer is refused naming the
holder's pid, or waits; a killed holder's lock is free at once."""

import os
import signal
import subprocess
import sys
import time

import pytest

from harr_tf.locks import LockHeld, exclusive, lock_path, read_holder

HOLD = """
import sys, time
from harr_tf.locks import exclusive
lock = exclusive(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold(path, seconds: float) -> subprocess.Popen:
    """A child process that takes the lock on `path` and keeps it `seconds`."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_lock_file_names(tmp_path):
    assert lock_path(tmp_path) == tmp_path / ".lock"
    assert lock_path(tmp_path / "index.faiss") == tmp_path / "index.faiss.lock"
    assert lock_path(f"{tmp_path}/new_run/") == tmp_path / "new_run" / ".lock"


def test_second_process_is_refused_naming_the_holder(tmp_path):
    child = hold(tmp_path, 30)
    try:
        assert read_holder(lock_path(tmp_path))["pid"] == child.pid
        with pytest.raises(LockHeld) as refused:
            exclusive(tmp_path).acquire()
        message = str(refused.value)
        assert "\n" not in message and f"process {child.pid}" in message
        assert str(tmp_path) in message
    finally:
        child.kill()
        child.wait()


def test_a_killed_holder_releases_the_lock(tmp_path):
    child = hold(tmp_path / "index.faiss", 30)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with exclusive(tmp_path / "index.faiss") as lock:
        assert lock.held
        assert read_holder(lock_path(tmp_path / "index.faiss"))["pid"] == os.getpid()
    assert not lock.held


def test_wait_takes_the_lock_when_the_holder_ends(tmp_path):
    start = time.monotonic()
    child = hold(tmp_path, 1.5)
    with exclusive(tmp_path, wait=True, timeout=60):
        held_from = time.monotonic() - start
        assert child.wait(timeout=10) == 0  # the holder had ended
    assert held_from >= 1.5


def test_wait_gives_up_after_the_timeout(tmp_path):
    child = hold(tmp_path, 30)
    try:
        start = time.monotonic()
        with pytest.raises(LockHeld, match="after waiting 0.5 s"):
            exclusive(tmp_path, wait=True, timeout=0.5).acquire()
        assert time.monotonic() - start < 5
    finally:
        child.kill()
        child.wait()


def test_released_lock_can_be_taken_by_another_process(tmp_path):
    with exclusive(tmp_path):
        pass
    child = hold(tmp_path, 0)
    assert child.wait() == 0
