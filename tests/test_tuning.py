"""Tuning: the search space's defaults and overrides, bad input, and `python -m
tuning.search` end to end (a diverging trial, best.yaml, HParams logs, resume after kill)
on a small real Fashion-MNIST subset."""

import glob
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import keras
import keras_tuner
import numpy as np
import pytest
import yaml
from conftest import write_fashion_mnist_subset

from harr_tf.config import ModelConfig, TrainConfig
from harr_tf.features import wta_features
from harr_tf.train_command import parse_args, resolve_config  # train.py's config parsing
from harr_tf.training import with_batch_size
from harr_tf.wta import encode_wta, estimate_thresholds, make_permutation_table
from tuning.hypermodel import HarrHyperModel
from tuning.space import SETTINGS, config_value, parse_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A trial in a few seconds: 200 training images, 2 batches of 32, 16 bits, width 4.
TINY = ["--bits", "16", "--epochs", "1", "--steps-per-epoch", "2", "--train-size", "200"]
TINY_SPACE = {"num_permutations": 32, "batch_size": 32, "window": 4}


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """200 real images per class: 100 queries, 50 validation, 20 training, 30 more database."""
    return write_fashion_mnist_subset(tmp_path_factory.mktemp("data"), 200)


def tiny_config(subset, **changes):
    values = {"dataset": subset, "bits": (16,), "train_size": 200, "epochs": 1}
    return TrainConfig(**{**values, "model": ModelConfig(width=4), **changes})


def search(*args, check=True, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "tuning.search", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, **kwargs)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def write_config(path, search_space, **settings):
    with open(path, "w") as f:
        yaml.safe_dump({"model": {"width": 4}, **settings, "search_space": search_space}, f)
    return str(path)


def tiny_args(subset, config, out):
    return ["--dataset", subset, "--config", config, "--run-dir", str(out), "--quiet", *TINY]


def trials_in(project_dir):
    trials = {}
    for path in glob.glob(os.path.join(project_dir, "trial_*", "trial.json")):
        with open(path) as f:
            trial = json.load(f)
        trials[trial["trial_id"]] = trial
    return trials


def test_build_defaults_are_train_py_defaults(subset):
    # train.py resolves the batch by image size: 128 for Fashion-MNIST's 28 x 28.
    defaults = with_batch_size(resolve_config(parse_args([])), (28, 28, 1))
    hypermodel = HarrHyperModel(tiny_config(subset))
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert set(hp.values) == set(SETTINGS)
    for name in SETTINGS:
        assert hp.values[name] == config_value(defaults, name), name
    assert model.temperature == defaults.loss.temperature
    assert model.bcr_weight == defaults.loss.bcr_weight
    assert model.quantization_weight == defaults.loss.quantization_weight
    assert model.similarity.window == defaults.wta.window
    learning_rate = keras.ops.convert_to_numpy(model.optimizer.learning_rate)
    assert np.isclose(learning_rate, defaults.learning_rate)


@pytest.mark.slow
def test_fixed_values_reach_the_model_and_fit(subset):
    fixed = {
        "temperature": 0.2,
        "bcr_weight": 2.0,
        "quantization_weight": 0.25,
        "positive_fraction": 0.2,
        "window": 4,
        "num_permutations": 64,
        "learning_rate": 0.01,
        "batch_size": 40,
    }
    hypermodel = HarrHyperModel(tiny_config(subset), fixed)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert {name: hp.values[name] for name in fixed} == fixed
    assert (model.temperature, model.bcr_weight, model.quantization_weight) == (0.2, 2.0, 0.25)
    learning_rate = keras.ops.convert_to_numpy(model.optimizer.learning_rate)
    assert np.isclose(learning_rate, 0.01)
    # The WTA structure is the one of P = 64, K = 4, ρ = 0.2 on the training images.
    data = hypermodel.data
    source = hypermodel.config.wta.features
    features = wta_features(data.dataset.read(data.split.train), source)
    codes = encode_wta(features, make_permutation_table(features.shape[1], 64, 4, seed=0))
    assert model.similarity.window == 4
    assert np.isclose(model.similarity.tau, estimate_thresholds(codes, 4, rho=0.2).tau)
    result = hypermodel.fit(hp, model, verbose=0)
    # One epoch is one pass over the 200 training images in batches of 40: 5 steps.
    assert int(model.optimizer.iterations) == 200 // 40
    assert 0.0 < result["val_map"] <= 1.0 and np.isfinite(result["loss"])


def test_a_config_narrows_ranges_and_choices(subset):
    hypermodel = HarrHyperModel(
        tiny_config(subset),
        {
            "learning_rate": {"min": 0.01, "max": 0.02},
            "window": {"min": 8, "max": 16},
            "num_permutations": [32, 64],
        },
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    space = {p.name: p for p in hp.space}
    rate = space["learning_rate"]
    assert (rate.min_value, rate.max_value, rate.sampling) == (0.01, 0.02, "log")
    assert hp.values["learning_rate"] == 0.02  # the default 0.05, clipped into the range
    assert list(space["window"].values) == [8, 16]
    assert hp.values["window"] == 8  # the nearest to the default K = 4
    assert list(space["num_permutations"].values) == [32, 64]
    assert hp.values["num_permutations"] == 64  # the nearest to the default 512


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"eta": 1.0}, "Unknown hyperparameter(s) ['eta']"),
        ({"temperature": {"min": 0.5, "max": 0.1}}, "inverted range"),
        ({"temperature": {"min": 0.1, "max": 0.1}}, "empty range"),
        ({"window": []}, "empty list"),
        ({"window": 4.5}, "expected an integer"),
        ({"bcr_weight": "high"}, "expected a number"),
        ({"temperature": {"min": 0.1}}, "exactly `min` and `max`"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_search_space_gets_a_clear_error(section, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_overrides(section)


def test_a_log_range_from_zero_is_rejected_when_declared(subset):
    hypermodel = HarrHyperModel(tiny_config(subset), {"temperature": {"min": 0.0, "max": 0.5}})
    with pytest.raises(ValueError, match="log-scaled"):
        hypermodel.build(keras_tuner.HyperParameters())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tuner", "grid"], "invalid choice: 'grid'"),
        (["--max-trials", "0"], "--max-trials: must be > 0. Received: 0"),
        (["--bits", "16,32"], "--bits: a search tunes one code length. Received: 16,32"),
    ],
)
def test_bad_flags_get_a_clear_error(args, message):
    result = search(*args, check=False)
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.slow
def test_unknown_hyperparameter_in_config_file(subset, tmp_path):
    config = write_config(tmp_path / "space.yaml", {"eta": 1.0})
    result = search(
        "--dataset", subset, "--config", config, "--run-dir", str(tmp_path), *TINY, check=False
    )
    assert result.returncode != 0 and "Unknown hyperparameter(s) ['eta']" in result.stderr


@pytest.mark.slow
def test_search_end_to_end_with_a_diverging_trial(subset, tmp_path):
    # Everything fixed but the learning rate, so the two trials are exactly its two values.
    space = {
        **TINY_SPACE,
        "learning_rate": [1.0e30, 0.02],
        "temperature": 0.1,
        "bcr_weight": 1.0,
        "quantization_weight": 0.5,
        "positive_fraction": 0.05,
        "beta_growth": 0.0,
    }
    config = write_config(tmp_path / "space.yaml", space)
    out = tmp_path / "search"
    result = search("--tuner", "random", "--max-trials", "2", *tiny_args(subset, config, out))
    trials = trials_in(out / "harr")
    assert len(trials) == 2
    by_rate = {t["hyperparameters"]["values"]["learning_rate"]: t for t in trials.values()}
    assert by_rate[1.0e30]["status"] == "FAILED" and "NaN" in by_rate[1.0e30]["message"]
    good = by_rate[0.02]
    assert good["status"] == "COMPLETED" and 0.0 < good["score"] <= 1.0
    assert "1 completed, 1 failed" in result.stdout
    # best.yaml is what train.py's --config accepts as is: the base at its full budget.
    best = resolve_config(parse_args(["--config", str(out / "best.yaml")]))
    assert best.learning_rate == 0.02 and best.wta.num_permutations == 32
    assert best.bits == (16,) and best.epochs == TrainConfig().epochs
    assert best.model.width == 4 and best.dataset == subset
    # TensorBoard: one log directory per trial, with the HParams plugin's summary.
    for trial_id in trials:
        events = glob.glob(
            str(out / "harr" / "logs" / trial_id / "execution0" / "**" / "events*"), recursive=True
        )
        assert any(b"hparams" in pathlib.Path(path).read_bytes() for path in events), trial_id


@pytest.mark.slow
def test_an_interrupted_search_resumes(subset, tmp_path):
    config = write_config(tmp_path / "space.yaml", {**TINY_SPACE, "learning_rate": 0.02})
    out = tmp_path / "search"
    # Bayesian, with its Gaussian process from the second trial on.
    args = ["--tuner", "bayesian", "--initial-points", "1", "--max-trials", "2"]
    args += tiny_args(subset, config, out)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuning.search", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = out / "harr" / "trial_1" / "trial.json"
    deadline = time.time() + 240
    while not second.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(1)  # let the oracle record trial 1 as running; training it takes longer
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = trials_in(out / "harr")
    assert before["0"]["status"] == "COMPLETED"
    result = search(*args)
    assert "Reloading Tuner" in result.stdout
    after = trials_in(out / "harr")
    assert sorted(after) == ["0", "1"]
    assert all(trial["status"] == "COMPLETED" for trial in after.values())
    assert after["0"]["score"] == before["0"]["score"]  # not run again
    assert (out / "best.yaml").exists()
    # Other trial settings than the ones it started with are refused, naming them.
    changed = search(*args, "--epochs", "2", check=False)
    assert changed.returncode != 0 and "trials.epochs" in changed.stderr
