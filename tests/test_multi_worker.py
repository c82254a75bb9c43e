"""Two `train.py` workers under MultiWorkerMirroredStrategy on 127.0.0.1: only the chief
writes the run directory, and after both are killed they resume from the chief's
checkpoint in the shared `--run-dir`, not from epoch 0."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import test_train
from test_train import ROOT, SMALL

subset = test_train.subset  # the real-data fixture

EPOCHS = 3
RUN = ["--bits", "8", "--epochs", str(EPOCHS), "--steps-per-epoch", "3"]
RUN += ["--queries-per-class", "10", "--validation-per-class", "5"]  # a quick evaluation


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def start_workers(run_dir, logs, name: str, *args: str) -> list[subprocess.Popen]:
    """Workers 0 (the chief) and 1, each writing its output to `logs/NAME-I.txt`."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in (0, 1):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(task)}
        with open(logs / f"{name}-{index}.txt", "w") as out:
            command = [sys.executable, os.path.join(ROOT, "train.py"), "--distribute"]
            command += ["multi-worker", "--run-dir", str(run_dir), *args]
            processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=out))
    return processes


def finish(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    """Return codes; a worker still running after `timeout` seconds is killed (-9)."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        return [p.returncode if p.poll() is not None else -9 for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def epochs_logged(run_dir) -> list[list[int]]:
    """The epochs in each TensorBoard train log of the chief, oldest first."""
    import tensorflow as tf

    runs = []
    for path in sorted(glob.glob(str(run_dir / "bits_8" / "logs" / "train" / "events.*"))):
        events = tf.compat.v1.train.summary_iterator(path)
        runs.append(
            sorted(
                event.step
                for event in events
                for value in event.summary.value
                if value.tag == "epoch_loss"
            )
        )
    return runs


@pytest.mark.slow
def test_killed_workers_resume_from_the_chiefs_checkpoint(subset, tmp_path):
    run_dir, logs = tmp_path / "run", tmp_path
    processes = start_workers(run_dir, logs, "first", "--dataset", subset, *RUN, *SMALL)
    metadata = run_dir / "bits_8" / "checkpoint" / "training_metadata.json"
    deadline = time.monotonic() + 150
    while not metadata.exists() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), (logs / "first-0.txt").read_text()
        time.sleep(0.2)
    assert metadata.exists(), (logs / "first-0.txt").read_text()[-3000:]
    processes[1].send_signal(signal.SIGKILL)  # the worker dies; the chief would then wait
    processes[0].send_signal(signal.SIGKILL)  # in a collective, so it is stopped too
    finish(processes, timeout=30)
    killed_at = json.loads(metadata.read_text())["epoch"]
    assert 1 <= killed_at < EPOCHS
    assert not (run_dir / "metrics.json").exists()

    codes = finish(start_workers(run_dir, logs, "resumed", "--resume", "--quiet"), timeout=240)
    outputs = [(logs / f"resumed-{index}.txt").read_text() for index in (0, 1)]
    assert codes == [0, 0], [output[-3000:] for output in outputs]
    for output in outputs:  # the worker, too, restored the chief's checkpoint
        assert f"Resuming 8-bit model after epoch {killed_at}" in output
    assert f"Run directory: {run_dir}" in outputs[0]
    assert "Run directory: /" in outputs[1] and "harr-worker-" in outputs[1]
    assert json.loads(metadata.read_text())["epoch"] == EPOCHS
    assert "8" in json.loads((run_dir / "metrics.json").read_text())["results"]
    assert epochs_logged(run_dir)[-1] == list(range(killed_at, EPOCHS))
