"""A resumed run keeps its data, split, code lengths, WTA structure and model:
`--resume` refuses settings that would change them, and never rewrites the run's files."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_fashion_mnist_subset

from harr_tf.config import LossConfig, TrainConfig, WTAConfig
from harr_tf.data.splits import ProtocolSplit
from harr_tf.resume import changed_settings, check_resumable, check_same_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_budget_may_change_but_data_codes_and_structure_may_not():
    saved = TrainConfig(bits=(16,))
    assert changed_settings(saved, TrainConfig(bits=(16,), epochs=60, eval_every=5)) == {}
    assert changed_settings(saved, TrainConfig(bits=(16,), memory_budget=4.0)) == {}
    changed = TrainConfig(
        dataset="mnist",
        bits=(32,),
        seed=3,
        wta=WTAConfig(window=8),
        loss=LossConfig(temperature=0.2),
    )
    assert list(changed_settings(saved, changed)) == [
        "bits",
        "dataset",
        "loss.temperature",
        "seed",
        "wta.window",
    ]
    with pytest.raises(ValueError, match=r"bits: \[16\] -> \[32\]"):
        check_resumable(saved, TrainConfig(bits=(32,)))


def split(query, train):
    everything = np.arange(10)
    return ProtocolSplit(
        query=np.array(query),
        database=np.setdiff1d(everything, query),
        train=np.array(train),
        validation=np.array([], np.int64),
        protocol="standard",
        seed=0,
    )


def test_a_split_that_changed_is_refused_and_kept(tmp_path):
    path = tmp_path / "split.npz"
    check_same_split(str(path), split([0, 1], [2, 3]))  # nothing saved yet: fine
    split([0, 1], [2, 3]).save(path)
    check_same_split(str(path), split([0, 1], [2, 3]))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="another split"):
        check_same_split(str(path), split([0, 2], [3, 4]))
    assert path.read_bytes() == before


def train(*args):
    command = [sys.executable, os.path.join(ROOT, "train.py"), *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch 8-bit run on real Fashion-MNIST images."""
    data = write_fashion_mnist_subset(tmp_path_factory.mktemp("data"), 160)
    run_dir = tmp_path_factory.mktemp("run") / "run"
    small = ["--train-size", "100", "--batch-size", "16", "--width", "4", "--quiet"]
    args = ["--dataset", data, "--bits", "8", "--epochs", "1", "--steps-per-epoch", "2"]
    result = train(*args, "--run-dir", str(run_dir), *small)
    assert result.returncode == 0, result.stderr[-3000:]
    return data, run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--dataset", "mnist"], "dataset"),
        (["--bits", "16"], "bits"),
        (["--window", "8"], "wta.window"),
        (["--seed", "1"], "seed"),
    ],
)
def test_resume_with_other_settings_is_refused_and_loses_nothing(finished_run, flags, named):
    _, run_dir = finished_run
    files = ("config.yaml", "split.npz", "wta.npz", "metrics.json")
    before = {name: (run_dir / name).read_bytes() for name in files}
    result = train("--run-dir", str(run_dir), "--resume", *flags)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert named in message and "Traceback" not in result.stderr
    assert {name: (run_dir / name).read_bytes() for name in files} == before


@pytest.mark.slow
def test_resume_with_more_epochs_is_accepted(finished_run):
    _, run_dir = finished_run
    result = train("--run-dir", str(run_dir), "--resume", "--epochs", "2", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epochs: 2" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_an_unwritable_run_directory_is_refused_before_training(finished_run, tmp_path):
    data, _ = finished_run
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    unwritable = [blocker / "run"]  # below a file: no user can create it
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        unwritable.append(locked / "run")
    for run_dir in unwritable:
        result = train("--dataset", data, "--run-dir", str(run_dir), "--bits", "8")
        assert result.returncode != 0 and "is not writable" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_resume_that_leaves_settings_to_the_run_keeps_what_the_run_resolved():
    """harr_tf.train(config, run_dir, resume=True) with the config the run began from:
    the batch, image size, backbone and teacher the run chose are kept, not refused."""
    from harr_tf.config import ModelConfig, TrainConfig, WTAConfig
    from harr_tf.resume import check_resumable, with_resolved_settings

    lite0 = ModelConfig(backbone="efficientnet_lite0", weights="imagenet")
    saved = TrainConfig(
        batch_size=256, image_size=224, model=lite0, wta=WTAConfig(features="backbone")
    )
    resumed = with_resolved_settings(saved, TrainConfig(epochs=3))
    assert resumed == dataclasses.replace(saved, epochs=3)
    check_resumable(saved, resumed)
    chosen = TrainConfig(model=ModelConfig(backbone="small_cnn"))  # set, not left
    with pytest.raises(ValueError, match="model.backbone: 'efficientnet_lite0' -> 'small_cnn'"):
        check_resumable(saved, with_resolved_settings(saved, chosen))
