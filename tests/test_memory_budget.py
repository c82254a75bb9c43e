"""Batches sized by what the network costs within a memory budget, and the batch runner
that halves a batch that runs out of memory; every backbone's teacher pass and training
step measured in a subprocess under a ceiling."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harr_tf import memory_budget
from harr_tf.config import MIN_BATCH_SIZE, ModelConfig, TrainConfig
from harr_tf.data.image_size import default_batch_sizes, inference_batch_size
from harr_tf.memory_budget import (
    GB,
    BatchDoesNotFit,
    HalvingBatches,
    activation_bytes,
    budget_bytes,
    inference_cost,
    largest_batch,
    network_cost,
    peak_rss_bytes,
    reset_peak_rss,
    training_cost,
)
from harr_tf.training import with_batch_size

ROOT = Path(__file__).resolve().parent.parent


def test_activation_bytes_counts_every_layer_output_of_nested_models():
    inner_input = keras.Input((4, 4, 2))
    inner = keras.Model(inner_input, keras.layers.Flatten()(inner_input), name="inner")
    pixels = keras.Input((4, 4, 1))
    features = inner(keras.layers.Conv2D(2, 3, padding="same")(pixels))
    model = keras.Model(pixels, keras.layers.Dense(3)(features))
    # input 16, conv 32, the inner model's input 32 and flatten 32, dense 3: float32
    assert activation_bytes(model) == 4 * (16 + 32 + 32 + 32 + 3)


def test_largest_batch_is_the_largest_power_of_two_within_the_budget():
    for per_image, fixed, budget in [(10, 100, 1000), (7, 0, 64), (1, 5, 4), (300, 50, 2000)]:
        fitting = [
            b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b >= 2 and fixed + b * per_image <= budget
        ]
        expected = max(fitting) if fitting else 1
        assert largest_batch(per_image, fixed, budget, 128, 2) == expected


def test_defaults_keep_fashion_mnist_and_follow_the_network_elsewhere():
    small = ModelConfig(backbone="small_cnn")
    for budget in (4 * GB, 8 * GB, 100 * GB):  # results must not change on any machine
        assert default_batch_sizes((28, 28, 1), small, budget=budget) == (128, 512)
    resnet = ModelConfig(backbone="resnet50", weights="none", student="fine_tuned")
    # ResNet-50 resizes to 224 px inside: 64-px images cost what 224-px ones do.
    assert (
        network_cost("resnet50", (64, 64, 3))[0] > 0.95 * network_cost("resnet50", (224, 224, 3))[0]
    )
    for budget in (7 * GB, 8 * GB, 12 * GB):
        train, infer = default_batch_sizes((64, 64, 3), resnet, budget=budget)
        activations, weights = network_cost("resnet50", (64, 64, 3))
        per_image, fixed = inference_cost(activations, weights)
        assert fixed + infer * per_image <= budget < fixed + 2 * infer * per_image
        per_image, fixed = training_cost(activations, weights)
        assert fixed + train * per_image <= budget < fixed + 2 * train * per_image
        assert MIN_BATCH_SIZE <= train < 128 and infer < 512
    assert default_batch_sizes((64, 64, 3), resnet, 48, 7, budget=GB) == (48, 7)  # given: kept
    with pytest.raises(BatchDoesNotFit, match="Training resnet50 at 64 px needs about"):
        default_batch_sizes((64, 64, 3), resnet, budget=2 * GB)
    network = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    assert inference_batch_size(network, budget=int(0.1 * GB)) == 1  # under the runtime
    assert inference_batch_size(network, requested=3) == 3


def test_the_run_directory_config_records_the_budget_and_both_batches(monkeypatch):
    monkeypatch.setattr(memory_budget, "_budget_gb", [])  # the process's, restored after
    config = with_batch_size(
        TrainConfig(memory_budget=5.0, model=ModelConfig(backbone="small_cnn")), (28, 28, 1)
    )
    assert (config.memory_budget, config.batch_size, config.encode_batch_size) == (5.0, 128, 512)
    assert budget_bytes() == 5 * GB  # the run's budget is the process's
    config = with_batch_size(TrainConfig(model=ModelConfig(backbone="small_cnn")), (28, 28, 1))
    assert 0 < config.memory_budget < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with pytest.raises(ValueError, match="memory_budget=0"):
        TrainConfig(memory_budget=0)
    with pytest.raises(ValueError, match="encode_batch_size=0"):
        TrainConfig(encode_batch_size=0)


def test_a_batch_that_runs_out_of_memory_runs_again_in_halves(caplog):
    calls = []

    def double(chunk):
        calls.append(len(chunk))
        if len(chunk) > 3:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating")
        return 2 * chunk

    halving = HalvingBatches(16, "Encoding", "resnet50 at 64 px", budget=100 * GB)
    batch = np.arange(21)
    with caplog.at_level(logging.WARNING, logger="harr_tf"):
        np.testing.assert_array_equal(halving(double, batch), 2 * batch)
        np.testing.assert_array_equal(halving(double, batch[:5]), 2 * batch[:5])
    assert calls[:3] == [16, 8, 4] and set(calls[3:]) <= {1, 2}
    assert halving.size == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "Encoding of resnet50 at 64 px: a batch of 16 ran out" in lines[0]
    assert lines[2].endswith("retrying with batches of 2.")

    def never(chunk):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating")

    with pytest.raises(BatchDoesNotFit) as error:
        HalvingBatches(2, "The WTA teacher pass", "vgg16 at 224 px", budget=GB)(never, batch)
    assert str(error.value).startswith("The WTA teacher pass of vgg16 at 224 px ran out")
    assert "\n" not in str(error.value)


def test_a_batch_that_takes_the_process_past_the_budget_halves_the_next(caplog):
    reset_peak_rss()  # the budget from what the process holds now, not its history
    budget = peak_rss_bytes() + 100 * 2**20

    def touch(chunk):  # 8 MB a row, written so that it is resident
        return np.ones((len(chunk), 2**20)).sum(axis=1)

    halving = HalvingBatches(32, "Encoding", "small_cnn at 28 px", budget=budget)
    with caplog.at_level(logging.WARNING, logger="harr_tf"):
        result = halving(touch, np.arange(96))
    np.testing.assert_array_equal(result, np.full(96, 2.0**20))
    # Batches of 32 (256 MB) and 16 (128 MB) passed the budget; 8 (64 MB) stay under it.
    assert halving.size == 8
    assert "a batch of 32 took the process to" in caplog.text
    assert "continuing with batches of 16" in caplog.text
    assert "continuing with batches of 8" in caplog.text


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """200 colour JPEGs of 40 px in 5 classes (160 training images: small_cnn's batch
    of 128 fits)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for item in range(200):
        (root / f"c{item % 5}").mkdir(exist_ok=True)
        pixels = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"c{item % 5}" / f"{item}.jpg")
    return root


# The budget each backbone's teacher pass and training step run under at 32 px, in one
# process; the batches chosen must keep its peak RSS under it (the pretrained backbones
# resize to 224 px inside).
CEILINGS = {
    "small_cnn": 3.0,
    "efficientnet_lite0": 5.0,
    "efficientnetb0": 5.0,
    "resnet50": 7.0,
    "vgg16": 6.0,
}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(CEILINGS))
def test_each_backbone_stays_under_its_memory_ceiling(photos, backbone):
    ceiling = CEILINGS[backbone]
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "memory_stage.py"),
        "teacher,training",
        *("--folder", str(photos), "--backbone", backbone, "--image-size", "32"),
        *("--images", "8", "--steps", "1", "--memory-budget", str(ceiling)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    teacher, training = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert teacher["stage"] == "teacher" and teacher["batch"] >= 1
    assert training["stage"] == "training" and training["batch"] >= MIN_BATCH_SIZE
    for stage in (teacher, training):
        assert stage["estimate_gb"] <= ceiling  # what the batch was chosen by
    assert training["peak_gb"] < ceiling  # the process's peak, both stages
