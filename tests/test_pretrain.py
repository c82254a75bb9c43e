"""Self-supervised pretraining end to end on real Fashion-MNIST images: the weights file,
the refusal of a run directory made for something else, and resume after `kill -9`."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import write_fashion_mnist_subset

from harr_tf.backbones import build_backbone
from harr_tf.locks import lock_path, read_holder
from harr_tf.pretrain_model import PretrainBudget

SMALL = ["--train-size", "200", "--batch-size", "32", "--width", "4"]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    return write_fashion_mnist_subset(tmp_path_factory.mktemp("data"), 250)


def command(*args):
    return [sys.executable, "-m", "harr_tf.pretrain", *args]


def pretrain(*args, check=True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command(*args), capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("minutes", ["0", "inf", "nan"])
def test_a_zero_or_endless_budget_is_refused(minutes):
    result = pretrain("--minutes", minutes, "--run-dir", "unused", check=False)
    assert result.returncode == 2 and "--minutes must be > 0 and finite" in result.stderr


def run_budget(budget, epoch_seconds, monkeypatch, epochs=20):
    """Drives `budget` through `fit`'s callback calls on a model of one weight, with
    epochs that take `epoch_seconds` on a fake clock; returns each epoch's learning rate."""
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(budget.learning_rate))
    budget.set_model(model)
    clock = iter(np.arange(0, 1000, epoch_seconds))  # read at each epoch's start and end
    monkeypatch.setattr("harr_tf.pretrain_model.time.perf_counter", lambda: next(clock))
    rates = []
    budget.on_train_begin()
    for epoch in range(epochs):
        if model.stop_training:
            break
        budget.on_epoch_begin(epoch)
        rates.append(float(model.optimizer.learning_rate))
        budget.on_epoch_end(epoch, {})
    return rates


def test_the_learning_rate_is_a_cosine_over_the_time_spent(tmp_path, monkeypatch):
    budget = PretrainBudget(str(tmp_path / "p.json"), 0.1, minutes=1, epochs=None)
    rates = run_budget(budget, 15, monkeypatch)  # four 15 s epochs fill the minute
    expected = [0.1 * 0.5 * (1 + np.cos(np.pi * spent / 60)) for spent in (0, 15, 30, 45)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert json.loads((tmp_path / "p.json").read_text()) == {"seconds": 60.0, "epochs": 4}
    # A resumed run goes on from the time it had spent, at the rate of that time.
    (tmp_path / "p.json").write_text(json.dumps({"seconds": 30.0, "epochs": 2}))
    resumed = PretrainBudget(str(tmp_path / "p.json"), 0.1, minutes=1, epochs=None)
    np.testing.assert_allclose(run_budget(resumed, 15, monkeypatch), expected[2:], rtol=1e-6)


def test_the_learning_rate_is_a_cosine_over_the_epochs(tmp_path, monkeypatch):
    budget = PretrainBudget(str(tmp_path / "p.json"), 0.1, minutes=None, epochs=5)
    rates = run_budget(budget, 1, monkeypatch)
    expected = [0.1 * 0.5 * (1 + np.cos(np.pi * epoch / 5)) for epoch in range(5)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


@pytest.mark.slow
def test_pretraining_writes_weights_the_backbone_loads(subset, tmp_path):
    out = tmp_path / "pre"
    args = ["--dataset", subset, "--epochs", "2", "--steps-per-epoch", "2", *SMALL]
    result = pretrain(*args, "--method", "vicreg", "--run-dir", str(out), "--quiet")
    weights = out / "backbone.weights.h5"
    assert str(weights) in result.stdout and weights.is_file()
    assert json.loads((out / "progress.json").read_text())["epochs"] == 2
    backbone = build_backbone("small_cnn", (28, 28, 1), str(weights), width=4, pooling="grid")
    fresh = build_backbone("small_cnn", (28, 28, 1), "none", width=4, pooling="grid")
    images = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 1)).astype("float32")
    assert not np.allclose(backbone.predict(images, verbose=0), fresh.predict(images, verbose=0))
    # The same directory for another network or method is refused, naming what differs.
    other = pretrain(*args, "--method", "simclr", "--run-dir", str(out), check=False)
    assert other.returncode != 0 and "method: 'vicreg' -> 'simclr'" in other.stderr
    assert "Traceback" not in other.stderr


@pytest.mark.slow
def test_a_killed_pretraining_resumes_from_its_last_epoch(subset, tmp_path):
    out = tmp_path / "pre"
    args = [
        "--dataset",
        subset,
        "--epochs",
        "6",
        "--steps-per-epoch",
        "6",
        *SMALL,
        "--run-dir",
        str(out),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        command(*args, "--quiet"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress = out / "progress.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["epochs"] >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "pretraining ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(progress.read_text())["epochs"]
    assert 2 <= killed_at < 6 and not (out / "backbone.weights.h5").exists()
    # What a kill mid-write leaves (written beside, never in place) is removed at the start.
    leftovers = [out / f".tmp{process.pid}.backbone.weights.h5"]
    leftovers.append(out / "backup" / f".tmp{process.pid}.latest.weights.h5")
    for leftover in leftovers:
        leftover.write_bytes(b"cut off")
    resumed = pretrain(*args)  # progress bars on: they show the epochs it ran
    assert "Epoch 1/6" not in resumed.stdout and "Epoch 6/6" in resumed.stdout
    assert json.loads(progress.read_text())["epochs"] == 6
    assert (out / "backbone.weights.h5").is_file()
    assert not any(leftover.exists() for leftover in leftovers)


@pytest.mark.slow
def test_a_second_pretraining_into_the_same_directory_stops_naming_the_first(subset, tmp_path):
    out = tmp_path / "pre"
    args = ["--dataset", subset, "--epochs", "50", "--steps-per-epoch", "6", *SMALL]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen(
        command(*args, "--run-dir", str(out), "--quiet"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while read_holder(lock_path(out)).get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = pretrain(*args, "--run-dir", str(out), check=False)
    finally:
        first.kill()
        first.wait()
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert f"in use by process {first.pid}" in second.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_train_refuses_weights_pretrained_at_another_image_size(subset, tmp_path):
    out = tmp_path / "pre"
    args = ["--dataset", subset, "--epochs", "1", "--steps-per-epoch", "1", *SMALL]
    pretrain(*args, "--image-size", "32", "--run-dir", str(out), "--quiet")
    weights = str(out / "backbone.weights.h5")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    train = [sys.executable, os.path.join(os.path.dirname(__file__), "..", "train.py")]
    flags = ["--dataset", subset, "--weights", weights, "--width", "4", "--bits", "8"]
    result = subprocess.run(
        [*train, *flags, "--run-dir", str(tmp_path / "run"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode != 0
    assert "was pretrained on" in result.stderr and "[32, 32, 1]" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_pretrained_weights_teach_and_start_the_student_or_not(subset, tmp_path):
    """`train.py --weights FILE --wta-features backbone`: the WTA codes are the pretrained
    backbone's, computed directly here; `--init-from-teacher` decides whether the student
    starts from the same weights or from seeded random ones."""
    from harr_tf.config import ModelConfig
    from harr_tf.data import load_dataset
    from harr_tf.data.splits import ProtocolSplit
    from harr_tf.encoder import build_encoder
    from harr_tf.wta import encode_wta

    out = tmp_path / "pre"
    args = ["--dataset", subset, "--epochs", "1", "--steps-per-epoch", "2", *SMALL]
    pretrain(*args, "--run-dir", str(out), "--quiet")
    weights = str(out / "backbone.weights.h5")
    teacher = build_backbone("small_cnn", (28, 28, 1), weights, width=4, pooling="grid")
    images = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 1)).astype("float32")
    for start in (True, False):
        student = build_encoder(
            (28, 28, 1), 8, ModelConfig(weights=weights, width=4, init_from_teacher=start)
        ).get_layer("backbone")
        same = np.allclose(student.predict(images, verbose=0), teacher.predict(images, verbose=0))
        assert same == start

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    train = [sys.executable, os.path.join(os.path.dirname(__file__), "..", "train.py")]
    flags = ["--dataset", subset, "--weights", weights, "--wta-features", "backbone"]
    flags += ["--init-from-teacher", "false", "--width", "4", "--bits", "8", "--steps", "2"]
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [*train, *flags, "--run-dir", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wta = np.load(run_dir / "wta.npz")
    train_items = ProtocolSplit.load(run_dir / "split.npz").train
    pixels = load_dataset(subset).read(train_items).astype("float32")
    features = teacher.predict(pixels, verbose=0).reshape(len(pixels), -1)
    expected = encode_wta(features, wta["table"])
    assert np.mean(wta["codes"] == expected) > 0.999  # bar float ties across batch sizes
