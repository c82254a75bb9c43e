"""An index and its ids are one file, written whole by one writer at a time: checked with
real processes writing while this one reads, and with a lock held by another process."""

import json
import os
import subprocess
import sys
import zipfile

import faiss
import numpy as np
import pytest

from harr_tf.index import HammingIndex
from harr_tf.index_file import IDS_MEMBER, INDEX_MEMBER, legacy_ids_path
from harr_tf.locks import LockHeld, exclusive

COUNT, BITS = 20_000, 64


def state(seed: int) -> tuple[list[str], np.ndarray]:
    """Ids and packed codes of one state of the index; states differ in every id and code."""
    codes = np.random.default_rng(seed).integers(0, 256, (COUNT, BITS // 8), dtype=np.uint8)
    return [f"state{seed}/{i}" for i in range(COUNT)], codes


REWRITE = """
import sys
from harr_tf.index import HammingIndex
from test_index_file import state
path, rounds = sys.argv[1], int(sys.argv[2])
indexes = [HammingIndex.build(state(seed)[1], state(seed)[0]) for seed in (0, 1)]
for round in range(rounds):
    indexes[round % 2].save(path, wait=True)
"""


def small_index(count: int = 10) -> HammingIndex:
    codes = np.random.default_rng(count).integers(0, 256, (count, 2), dtype=np.uint8)
    return HammingIndex.build(codes, [f"item{i}" for i in range(count)])


def test_a_reader_sees_one_whole_write_while_another_process_rewrites_the_index(tmp_path):
    path = tmp_path / "harr.faiss"
    expected = {seed: state(seed) for seed in (0, 1)}
    HammingIndex.build(expected[0][1], expected[0][0]).save(path)
    writer = subprocess.Popen(
        [sys.executable, "-c", REWRITE, str(path), "60"],
        env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)},
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, loads = set(), 0
    while writer.poll() is None:
        index = HammingIndex.load(path)
        seed = int(index.ids[0].removeprefix("state").split("/")[0])
        ids, codes = expected[seed]
        assert index.ids == ids  # the ids of one write ...
        np.testing.assert_array_equal(index.codes(), codes)  # ... with its own codes
        seen.add(seed)
        loads += 1
    assert writer.returncode == 0, writer.stderr.read()
    assert loads > 5 and seen == {0, 1}  # the reads did overlap the rewrites


def test_the_file_is_a_zip_of_the_faiss_index_and_its_ids(tmp_path):
    path = tmp_path / "harr.faiss"
    index = small_index()
    index.save(path)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted([INDEX_MEMBER, IDS_MEMBER])
        archive.extract(INDEX_MEMBER, tmp_path / "unzipped")
        assert json.loads(archive.read(IDS_MEMBER)) == {"kind": "flat", "ids": index.ids}
    plain = faiss.read_index_binary(str(tmp_path / "unzipped" / INDEX_MEMBER))
    assert (plain.ntotal, plain.d) == (10, 16)


def test_an_index_of_the_earlier_two_file_layout_loads_and_is_rewritten_as_one(tmp_path):
    path = tmp_path / "old.faiss"
    index = small_index()
    faiss.write_index_binary(index.index, str(path))
    legacy_ids_path(path).write_text(json.dumps({"kind": "flat", "ids": index.ids}))
    loaded = HammingIndex.load(path)
    assert loaded.ids == index.ids
    np.testing.assert_array_equal(loaded.codes(), index.codes())
    with HammingIndex.updating(path) as updated:
        updated.remove(["item3"])
    assert not legacy_ids_path(path).exists() and zipfile.is_zipfile(path)
    assert HammingIndex.load(path).ids == [i for i in index.ids if i != "item3"]


def test_damaged_or_mismatched_files_are_refused_with_one_line(tmp_path):
    path = tmp_path / "harr.faiss"
    small_index().save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}

    def rewrite(**changed):
        with zipfile.ZipFile(path, "w") as archive:
            for name, contents in {**members, **changed}.items():
                if contents is not None:
                    archive.writestr(name, contents)

    rewrite(**{IDS_MEMBER: json.dumps({"kind": "flat", "ids": ["a", "b"]})})
    with pytest.raises(ValueError, match="holds 10 codes but .*ids.json.* names 2.*rebuild"):
        HammingIndex.load(path)
    rewrite(**{IDS_MEMBER: None})
    with pytest.raises(ValueError, match="is not an index file.*ids.json.*rebuild"):
        HammingIndex.load(path)
    rewrite(**{INDEX_MEMBER: b"not faiss"})
    with pytest.raises(ValueError, match="holds no FAISS binary index.*rebuild") as refused:
        HammingIndex.load(path)
    assert "\n" not in str(refused.value)
    path.write_bytes(b"neither a zip nor a FAISS file")
    with pytest.raises(FileNotFoundError, match="no ids file .*harr.faiss.ids.json"):
        HammingIndex.load(path)
    legacy_ids_path(path).write_text(json.dumps({"kind": "flat", "ids": []}))
    with pytest.raises(ValueError, match="is not a FAISS binary index"):
        HammingIndex.load(path)
    with pytest.raises(FileNotFoundError, match="No index file .*missing.faiss"):
        HammingIndex.load(tmp_path / "missing.faiss")


def test_a_failed_save_leaves_the_saved_index_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "harr.faiss"
    index = small_index(20)
    index.save(path)
    before = path.read_bytes()
    index.add(np.zeros((5, 2), np.uint8), list("abcde"))

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("harr_tf.index_file.faiss.write_index_binary", full_disk)
        with pytest.raises(OSError, match="No space"):
            index.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["harr.faiss", "harr.faiss.lock"]
    killed = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    leftover = tmp_path / f".tmp{int(killed.stdout)}.harr.faiss"  # a writer killed mid-write
    leftover.write_bytes(b"half an index")
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["harr.faiss", "harr.faiss.lock"]


HOLD = """
import sys, time
from harr_tf.locks import exclusive
lock = exclusive(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(30)
"""


def test_writers_are_refused_while_another_process_holds_the_lock(tmp_path):
    path = tmp_path / "harr.faiss"
    small_index().save(path)
    before = path.read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"process {holder.pid}"):
            small_index(12).save(path)
        with (
            pytest.raises(LockHeld, match=f"process {holder.pid}"),
            HammingIndex.updating(path) as index,
        ):
            index.remove(["item1"])
    finally:
        holder.kill()
        holder.wait()
    assert path.read_bytes() == before
    with pytest.raises(RuntimeError, match="stop"), HammingIndex.updating(path) as index:
        index.remove(["item1"])
        raise RuntimeError("stop")  # a failed update saves nothing
    assert path.read_bytes() == before
    with exclusive(path):  # the lock is free again
        pass
