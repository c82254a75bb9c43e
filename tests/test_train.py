"""train.py end to end on a small real Fashion-MNIST subset: the run directory,
metrics.json, --help, bad flags, and resuming after `kill -9`."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import write_fashion_mnist_subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--train-size", "200", "--batch-size", "32", "--width", "4", "--quiet"]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """250 real images per class: 100 queries, 50 validation, 20 training, the rest database."""
    return write_fashion_mnist_subset(tmp_path_factory.mktemp("data"), 250)


def train(*args, check=True, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, os.path.join(ROOT, "train.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_help_lists_every_flag():
    out = train("--help").stdout
    flags = ("--dataset", "--bits", "--train-size", "--resume", "--config", "--window", "--pooling")
    for flag in flags:
        assert flag in out


@pytest.mark.slow
def test_short_run_writes_the_run_directory(subset, tmp_path):
    run_dir = tmp_path / "run"
    result = train(
        "--dataset",
        subset,
        "--bits",
        "8,16",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "3",
        "--run-dir",
        str(run_dir),
        *SMALL,
    )
    with open(run_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["top_k"] == 1000 and set(metrics["results"]) == {"8", "16"}
    for bits in ("8", "16"):
        result_bits = metrics["results"][bits]
        assert 0.0 < result_bits["map"] <= 1.0 and result_bits["train_seconds"] > 0
        assert 0.0 < result_bits["map_asymmetric"] <= 1.0
        assert set(metrics["baselines"]["itq"]) == {"8", "16"}
        assert os.path.exists(run_dir / f"bits_{bits}" / "encoder.keras")
        assert os.path.exists(run_dir / f"bits_{bits}" / "checkpoint" / "latest.weights.h5")
        assert os.listdir(run_dir / f"bits_{bits}" / "logs")
        for plot in ("pr_curve", "precision_at_n", "retrieval_grid"):
            assert os.path.getsize(run_dir / "plots" / f"{plot}_{bits}.png") > 1000
    with open(run_dir / "config.yaml") as f:
        assert yaml.safe_load(f)["model"]["width"] == 4
    wta = np.load(run_dir / "wta.npz")
    assert wta["codes"].shape == (200, 512) and 0 <= wta["tau"] <= 1
    split = np.load(run_dir / "split.npz")
    assert len(split["query"]) == 1000 and len(split["train"]) == 200
    assert "HARR" in result.stdout and "HARR-AS" in result.stdout and "ITQ" in result.stdout


@pytest.mark.slow
def test_resume_after_kill_continues_from_the_last_epoch(subset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", subset, "--bits", "8", "--epochs", "3", "--steps-per-epoch", "40"]
    args += ["--run-dir", str(run_dir), *SMALL]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = run_dir / "bits_8" / "checkpoint" / "training_metadata.json"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open(state) as f:
        killed_at = json.load(f)["epoch"]
    assert 1 <= killed_at < 3
    result = train("--run-dir", str(run_dir), "--resume", "--quiet")
    assert f"after epoch {killed_at}" in result.stderr
    with open(state) as f:
        assert json.load(f)["epoch"] == 3
    with open(run_dir / "metrics.json") as f:
        assert "8" in json.load(f)["results"]


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_epoch_and_writes_no_bad_checkpoint(subset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", subset, "--bits", "8", "--epochs", "2", "--steps-per-epoch", "3"]
    result = train(*args, "--learning-rate", "1e30", "--run-dir", str(run_dir), *SMALL, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "The 8-bit model's loss became NaN/inf in epoch 1." in result.stderr
    assert "no checkpoint" in result.stderr
    assert not (run_dir / "bits_8" / "checkpoint" / "latest.weights.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "12"], "multiple of 8"),
        (["--dataset", "nope"], "nope"),
        (["--resume", "--run-dir", "/nonexistent"], "--resume needs"),
        (["--config", "/nonexistent.yaml"], "no such file"),
        (["--pooling", "max"], "Expected one of ('grid', 'global'). Received: 'max'"),
        (["--wta-features", "hog"], "'hog'"),
    ],
)
def test_bad_input_gets_one_clear_error(args, message, tmp_path):
    result = train(*args, "--run-dir", str(tmp_path / "run"), check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.slow
def test_mirrored_mixed_precision_run_trains_and_evaluates(subset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", subset, "--bits", "8", "--epochs", "1", "--steps-per-epoch", "2"]
    result = train(
        *args,
        "--distribute",
        "mirrored",
        "--mixed-precision",
        "float16",
        "--run-dir",
        str(run_dir),
        *SMALL,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 < metrics["results"]["8"]["map"] <= 1.0
    assert "HARR" in result.stdout


@pytest.mark.slow
def test_multi_worker_without_tf_config_is_one_line(subset, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    args = ["--dataset", subset, "--run-dir", str(tmp_path / "run"), "--distribute"]
    result = train(*args, "multi-worker", check=False)
    assert result.returncode != 0 and "needs TF_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr
