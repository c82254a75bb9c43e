"""train.py as a user meets faults, with real processes on a small real Fashion-MNIST
subset: one writer per run directory, Ctrl-C and SIGTERM, a refused start, a diverged
run resumed with a lower learning rate, a full disk, and the same codes from the same seed."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml
from conftest import write_fashion_mnist_subset
from test_atomic import mount_tmpfs

from harr_tf.locks import lock_path, read_holder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--train-size", "100", "--batch-size", "16", "--width", "4", "--quiet"]
SMALL += ["--queries-per-class", "3", "--validation-per-class", "2", "--bits", "8"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """30 real images per class: 30 queries, 20 validation, 100 training."""
    return write_fashion_mnist_subset(tmp_path_factory.mktemp("data"), 30)


def command(*args):
    return [sys.executable, os.path.join(ROOT, "train.py"), *args]


def train(*args, check=True):
    result = subprocess.run(command(*args), capture_output=True, text=True, env=ENV, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def start(*args, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(command(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(condition, process, seconds=300):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the run ended before the test could act"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def checkpoint_epochs(run_dir) -> int:
    state = run_dir / "bits_8" / "checkpoint" / "training_metadata.json"
    return json.loads(state.read_text())["epoch"] if state.exists() else 0


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.slow
def test_one_writer_per_run_directory_and_sigterm_keeps_a_resumable_run(subset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", subset, "--epochs", "100", "--steps-per-epoch", "3", *SMALL]
    holder_log = tmp_path / "holder.txt"
    with open(holder_log, "w") as log:
        holder = start(*args, "--run-dir", str(run_dir), stderr=log)
    try:
        wait_for(lambda: read_holder(lock_path(run_dir)).get("pid") == holder.pid, holder)
        second = train(*args, "--run-dir", str(run_dir), "--resume", check=False)
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert f"in use by process {holder.pid}" in last_line(second.stderr)
        assert "--wait" in last_line(second.stderr)
        waiter_log = tmp_path / "waiter.txt"
        with open(waiter_log, "w") as log:
            waiter = start(*args, "--run-dir", str(run_dir), "--wait", stderr=log)
        wait_for(lambda: "Waiting for it" in waiter_log.read_text(), waiter)
        wait_for(lambda: checkpoint_epochs(run_dir) >= 1, holder)
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=120) == 130
    finally:
        holder.kill()
    stopped = holder_log.read_text()
    assert "Traceback" not in stopped
    kept = checkpoint_epochs(run_dir)
    assert last_line(stopped) == (
        f"Stopped by SIGTERM. Kept: 8 bits: checkpoint after epoch {kept}. "
        f"Continue with: python train.py --run-dir {run_dir} --resume"
    )
    # The waiter took the lock once the holder ended, and found its run.
    assert waiter.wait(timeout=120) != 0
    assert "already holds a run: pass --resume" in last_line(waiter_log.read_text())
    resumed = train("--run-dir", str(run_dir), "--resume", "--epochs", str(kept + 1), "--quiet")
    assert f"after epoch {kept}" in resumed.stderr
    assert checkpoint_epochs(run_dir) == kept + 1
    assert "8" in json.loads((run_dir / "metrics.json").read_text())["results"]


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_keeps_the_checkpoint(subset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", subset, "--epochs", "100", "--steps-per-epoch", "3", *SMALL]
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        process = start(*args, "--run-dir", str(run_dir), stderr=log)
    try:
        wait_for(lambda: checkpoint_epochs(run_dir) >= 1, process)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    log = log_path.read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    assert last_line(log).startswith("Stopped by Ctrl-C. Kept: 8 bits: checkpoint after epoch ")
    assert last_line(log).endswith(f"--run-dir {run_dir} --resume")
    assert (run_dir / "bits_8" / "checkpoint" / "latest.weights.h5").exists()
    assert not [name for name in os.listdir(run_dir / "bits_8" / "checkpoint") if ".tmp" in name]


@pytest.mark.slow
def test_a_start_refused_for_its_batch_size_writes_nothing(subset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", subset, "--epochs", "1", *SMALL, "--batch-size", "500"]
    result = train(*args, "--run-dir", str(run_dir), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "lower --batch-size. Received: batch_size=500" in last_line(result.stderr)
    assert sorted(os.listdir(run_dir)) == [".lock"]  # nothing that blocks the corrected rerun


@pytest.mark.slow
def test_a_diverged_run_resumes_with_a_lower_learning_rate(subset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", subset, "--epochs", "2", "--steps-per-epoch", "3", *SMALL]
    diverged = train(*args, "--learning-rate", "1e30", "--run-dir", str(run_dir), check=False)
    assert diverged.returncode == 1 and "run again with --resume" in diverged.stderr
    resumed = train("--run-dir", str(run_dir), "--resume", "--learning-rate", "0.05", "--quiet")
    assert "HARR" in resumed.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["learning_rate"] == 0.05


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_nothing(subset, tmp_path):
    disk = mount_tmpfs(tmp_path / "disk", "12m")  # below the checkpoint's free-space margin
    try:
        run_dir = disk / "run"
        args = ["--dataset", subset, "--epochs", "1", "--steps-per-epoch", "2", *SMALL]
        result = train(*args, "--run-dir", str(run_dir), check=False)
        assert result.returncode == 1, result.stderr[-2000:]  # not a crash (-11)
        assert "Traceback" not in result.stderr
        line = last_line(result.stderr)
        assert line.startswith("error: disk full (") and "Nothing written so far is lost" in line
        assert line.endswith(f"--run-dir {run_dir} --resume")
        for _, _, files in os.walk(run_dir):
            assert not [name for name in files if name.startswith(".tmp")]
        assert (run_dir / "config.yaml").exists() and (run_dir / "wta.npz").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def weights(path) -> dict:
    arrays = {}

    def read(name, item):
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path) as f:
        f.visititems(read)
    return arrays


@pytest.mark.slow
def test_the_same_seed_gives_the_same_codes_bit_for_bit(subset, tmp_path):
    args = ["--dataset", subset, "--epochs", "2", "--steps-per-epoch", "3", *SMALL]
    first, second = tmp_path / "first", tmp_path / "second"
    for run_dir in (first, second):
        train(*args, "--run-dir", str(run_dir))
    checkpoint = "bits_8/checkpoint/latest.weights.h5"
    a, b = weights(first / checkpoint), weights(second / checkpoint)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    import keras

    images = np.load(subset.removeprefix("npz:"))["images"][:64, ..., None].astype("float32")
    codes = [
        keras.saving.load_model(run_dir / "bits_8" / "encoder.keras").predict(images, verbose=0)
        for run_dir in (first, second)
    ]
    np.testing.assert_array_equal(codes[0], codes[1])
    maps = [json.loads((d / "metrics.json").read_text())["results"]["8"] for d in (first, second)]
    assert maps[0]["map"] == maps[1]["map"]


@pytest.mark.slow
def test_an_image_size_over_the_pixel_budget_is_one_line_before_any_allocation(tmp_path):
    result = train("--image-size", "10000", "--run-dir", str(tmp_path / "run"), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert last_line(result.stderr) == (
        "Invalid configuration: `image_size` 10000 means 100 MP per image (1.1 GiB per "
        "float32 RGB view), over the budget of 40 MP. Expected image_size <= 6324. "
        "Received: image_size=10000"
    )
    assert not (tmp_path / "run").exists()


def test_the_image_size_is_checked_against_the_runs_own_pixel_budget():
    from harr_tf.config import TrainConfig

    assert TrainConfig(image_size=1000, max_pixels=1_000_000).max_pixels == 1_000_000
    with pytest.raises(ValueError, match="over the budget of 1 MP. Expected image_size <= 1000"):
        TrainConfig(image_size=1001, max_pixels=1_000_000)
    with pytest.raises(ValueError, match="`max_pixels` must be >= 1"):
        TrainConfig(max_pixels=0)


def test_an_npz_with_an_object_array_is_an_error_naming_the_file(tmp_path):
    from harr_tf.data import load_dataset

    path = tmp_path / "objects.npz"
    images = np.empty(3, dtype=object)
    images[:] = [np.zeros((4, 4), np.uint8)] * 3
    np.savez(path, images=images)
    with pytest.raises(ValueError, match=f"npz:{path}: its arrays cannot be read") as error:
        load_dataset(f"npz:{path}")
    assert "Object arrays cannot be loaded" in str(error.value)


@pytest.mark.slow
def test_tfrecord_convert_refuses_zero_shards(tmp_path):
    command = [sys.executable, "-m", "harr_tf.data.tfrecord", "convert", "--input", str(tmp_path)]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "x-*.tfrecord"), "--shards", "0"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert result.returncode == 2 and "--shards must be >= 1. Received: 0" in result.stderr
    assert not list(tmp_path.glob("*.tfrecord"))
