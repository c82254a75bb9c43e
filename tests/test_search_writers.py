"""`python -m serving.search build|add|remove` as concurrent writers: real processes on one
index, a lock held by another process, and a full disk; nothing written is lost."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_atomic import mount_tmpfs

from harr_tf.index import HammingIndex
from harr_tf.locks import exclusive, lock_path
from serving.search import main as search_main

BITS = 64
ROOT = Path(__file__).resolve().parent.parent


def write_codes(path: Path, ids: list[str], seed: int) -> np.ndarray:
    """A codes file as `serving.encode` writes it; returns its packed codes."""
    codes = np.where(np.random.default_rng(seed).random((len(ids), BITS)) < 0.5, -1, 1)
    codes = codes.astype(np.int8)
    packed = np.packbits(codes > 0, axis=1)
    np.savez(path, ids=np.array(ids), codes=codes, packed=packed)
    return packed


def search_process(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.search", *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def waiting_on(process: subprocess.Popen, lock_file: Path) -> bool:
    """Whether `process` has the lock file open, i.e. is waiting for the lock."""
    fds = Path(f"/proc/{process.pid}/fd")
    try:
        return any(os.readlink(fd) == str(lock_file) for fd in fds.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def base_index(tmp_path):
    """An index of 5,000 codes; returns (its path, its ids, its packed codes)."""
    ids = [f"base/{i}" for i in range(5000)]
    packed = write_codes(tmp_path / "base.npz", ids, seed=0)
    index_file = tmp_path / "harr.faiss"
    assert (
        search_main(["build", "--codes", str(tmp_path / "base.npz"), "--index", str(index_file)])
        == 0
    )
    return index_file, ids, packed


def test_two_concurrent_adds_keep_both_runs_codes(base_index, tmp_path):
    index_file, ids, packed = base_index
    runs = {}
    for name, seed in (("a", 1), ("b", 2)):
        run_ids = [f"{name}/{i}" for i in range(1000)]
        runs[name] = (run_ids, write_codes(tmp_path / f"{name}.npz", run_ids, seed))
    # Both start while this process holds the lock, so their writes certainly overlap.
    with exclusive(index_file):
        adds = [
            search_process(
                "add",
                "--index",
                str(index_file),
                "--codes",
                str(tmp_path / f"{name}.npz"),
                "--wait",
            )
            for name in runs
        ]
        deadline = time.monotonic() + 120
        while not all(waiting_on(add, lock_path(index_file)) for add in adds):
            assert time.monotonic() < deadline and all(add.poll() is None for add in adds)
            time.sleep(0.05)
    for add in adds:
        out, err = add.communicate(timeout=120)
        assert add.returncode == 0, err
        assert "Added 1000 codes" in out
    index = HammingIndex.load(index_file)
    assert len(index) == 7000 and index.ids[:5000] == ids
    expected = {**dict(zip(ids, packed, strict=True))}
    for run_ids, run_packed in runs.values():
        expected.update(zip(run_ids, run_packed, strict=True))
    assert sorted(index.ids) == sorted(expected)
    np.testing.assert_array_equal(index.codes(), np.array([expected[i] for i in index.ids]))


def test_a_second_writer_stops_with_one_line_naming_the_holder(base_index, tmp_path):
    index_file, _, _ = base_index
    write_codes(tmp_path / "more.npz", ["new/0"], seed=3)
    before = index_file.read_bytes()
    commands = [
        ("add", "--index", str(index_file), "--codes", str(tmp_path / "more.npz")),
        ("remove", "--index", str(index_file), "--ids", "base/0"),
        ("build", "--index", str(index_file), "--codes", str(tmp_path / "more.npz")),
    ]
    with exclusive(index_file):
        for command in commands:
            process = search_process(*command)
            _, err = process.communicate(timeout=120)
            assert process.returncode == 1
            assert err.count("\n") == 1 and f"in use by process {os.getpid()}" in err, err
            assert err.startswith(f"error: --index {index_file}: ")
    assert index_file.read_bytes() == before


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, unmounted afterwards."""
    directory = tmp_path / "disk"
    mount_tmpfs(directory, "2m")
    yield directory
    subprocess.run(["umount", "-l", str(directory)], check=False)


def test_add_on_a_full_disk_is_one_line_and_keeps_the_index(small_disk, tmp_path):
    ids = [f"base/{i}" for i in range(1000)]
    write_codes(tmp_path / "base.npz", ids, seed=0)
    index_file = small_disk / "harr.faiss"
    assert (
        search_main(["build", "--codes", str(tmp_path / "base.npz"), "--index", str(index_file)])
        == 0
    )
    before = index_file.read_bytes()
    (small_disk / "filler").write_bytes(b"\0" * (2 * 2**20 - 3 * len(before) // 2))
    more = [f"more/{i}" for i in range(20_000)]  # ~0.5 MB more: does not fit
    write_codes(tmp_path / "more.npz", more, seed=1)
    process = search_process(
        "add", "--index", str(index_file), "--codes", str(tmp_path / "more.npz")
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert "the index is as it was" in err
    assert index_file.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == [
        "filler",
        "harr.faiss",
        "harr.faiss.lock",
    ]
