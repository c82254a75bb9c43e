"""Files written beside and renamed: a failed or cut-off write never replaces the good
file, leftovers of killed writers are removed, and a full disk is an OSError(ENOSPC)
(checked on a small tmpfs) where h5py would crash the process."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from harr_tf.atomic import atomic_path, remove_leftovers, write_json_atomically
from harr_tf.callbacks import LastGoodCheckpoint, checkpoint_bytes
from harr_tf.config import ModelConfig
from harr_tf.encoder import build_encoder
from harr_tf.model import HarrModel
from harr_tf.wta import WTASimilarity


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_model():
    model = HarrModel(
        build_encoder((8, 8, 1), 8, ModelConfig(width=4)),
        WTASimilarity(tau=0.5, s_max=0.9, s_min=0.1, window=4),
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01, momentum=0.9))
    return model


def batches(count):
    rng = np.random.default_rng(0)
    views = {k: rng.uniform(0, 255, (count, 8, 8, 8, 1)).astype("float32") for k in "abw"}
    views["wta"] = rng.integers(0, 4, (count, 8, 16)).astype("uint8")
    return tf.data.Dataset.from_tensor_slices(views)


def mount_tmpfs(disk, size: str):
    """A tmpfs of `size` at `disk` (mounting needs root: CI runs as root; elsewhere the
    test skips). The caller unmounts it."""
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        reason = f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return disk


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs."""
    disk = mount_tmpfs(tmp_path / "disk", "4m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, leave: int) -> None:
    """Fills `disk` until `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomically(path, {"map": 0.5})
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text('{"map": 0.')  # cut off
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"map": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_the_temporary_keeps_the_extension(tmp_path):
    with atomic_path(tmp_path / "wta.npz") as temporary:
        assert temporary.name.endswith(".wta.npz") and temporary.parent == tmp_path
        np.savez(temporary, a=np.arange(3))  # numpy adds no second .npz
    np.testing.assert_array_equal(np.load(tmp_path / "wta.npz")["a"], np.arange(3))


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead, live = dead_pid(), os.getpid()
    names = [
        f".tmp{dead}.latest.weights.h5",
        f".saving{dead}.weights.h5",  # train.py before
        f".saving-{dead}.weights.h5",  # pretrain before
        f".metrics.json.tmp{dead}",  # atomic_path before
    ]
    for name in [*names, f".tmp{live}.latest.weights.h5", "latest.weights.h5", ".tmp.txt"]:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_leftovers(tmp_path)
    assert sorted(path.name for path in removed) == sorted(names)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [".tmp.txt", f".tmp{live}.latest.weights.h5", "latest.weights.h5"]
    )


def test_a_cut_off_checkpoint_never_replaces_the_good_one(tmp_path, monkeypatch):
    model = make_model()
    checkpoint = LastGoodCheckpoint(str(tmp_path))
    model.fit(batches(2), epochs=1, steps_per_epoch=2, callbacks=[checkpoint], verbose=0)
    good = (tmp_path / "latest.weights.h5").read_bytes()
    # A leftover of a writer killed mid-save, as a kill -9 leaves it.
    (tmp_path / f".saving{dead_pid()}.weights.h5").write_bytes(good[: len(good) // 2])

    def cut_off(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(good[:100])
        raise OSError("killed mid-save")

    monkeypatch.setattr(model, "save_weights", cut_off)
    with pytest.raises(OSError, match="killed mid-save"):
        model.fit(batches(4), epochs=2, steps_per_epoch=2, callbacks=[checkpoint], verbose=0)
    assert (tmp_path / "latest.weights.h5").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["latest.weights.h5", "training_metadata.json"]
    assert LastGoodCheckpoint.completed_epochs(str(tmp_path)) == 1
    # The kept checkpoint restores.
    fresh = make_model()
    history = fresh.fit(
        batches(4), epochs=2, steps_per_epoch=2, callbacks=[LastGoodCheckpoint(str(tmp_path))]
    )
    assert len(history.history["loss"]) == 1


def test_checkpoint_bytes_is_about_the_file_size(tmp_path):
    model = make_model()
    model.fit(batches(1), epochs=1, steps_per_epoch=1, verbose=0)
    model.save_weights(tmp_path / "w.weights.h5")
    size = os.path.getsize(tmp_path / "w.weights.h5")
    assert size <= checkpoint_bytes(model) <= 4 * size


def test_a_full_disk_is_enospc_and_keeps_what_was_written(small_disk):
    write_json_atomically(small_disk / "metrics.json", {"map": 0.5})
    fill(small_disk, leave=4096)
    with pytest.raises(OSError) as full:
        write_json_atomically(small_disk / "metrics.json", {"map": list(range(10_000))})
    assert full.value.errno == errno.ENOSPC
    assert json.loads((small_disk / "metrics.json").read_text()) == {"map": 0.5}
    assert sorted(os.listdir(small_disk)) == ["filler", "metrics.json"]


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_is_enospc_not_a_crash(small_disk):
    # In a child process: were the check missing, h5py would crash it (segfault).
    script = f"""
import errno, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_atomic import batches, make_model
from harr_tf.callbacks import LastGoodCheckpoint
model = make_model()
try:
    model.fit(batches(2), epochs=1, steps_per_epoch=2,
              callbacks=[LastGoodCheckpoint({str(small_disk)!r})], verbose=0)
except OSError as error:
    print("ENOSPC" if error.errno == errno.ENOSPC else error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ENOSPC"
    assert os.listdir(small_disk) == []
