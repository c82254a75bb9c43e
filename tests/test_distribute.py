"""tf.distribute: a two-replica step equals the single-device step on the same global
batch; strategies by name, TF_CONFIG checked, batch norm synchronised."""

import json
import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from harr_tf.config import ModelConfig
from harr_tf.distribute import cluster_spec, is_chief, make_strategy, synchronize_batch_norm
from harr_tf.encoder import build_encoder

HELPER = os.path.join(os.path.dirname(__file__), "distributed_step.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_two_replicas_step_like_one_device_on_the_global_batch():
    # Two logical CPU devices must be made before TF starts: a process of its own.
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, HELPER, "wta", "instance"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    for guidance, step in json.loads(result.stdout.strip().splitlines()[-1]).items():
        assert step["replicas"] == 2, guidance
        single, mirrored = step["loss"]
        assert mirrored == pytest.approx(single, rel=1e-5), guidance
        # Two SGD steps moved the weights by up to ~0.1; the replicas' copy agrees to 1e-5
        # (with each replica's own slice in its losses it is off by ~0.03).
        assert step["weight_movement"] > 0.05
        assert step["weight_difference"] < 1e-5, guidance


def test_strategies_by_name():
    assert make_strategy("none") is tf.distribute.get_strategy()
    assert make_strategy(None) is tf.distribute.get_strategy()  # no GPUs here: one device
    assert isinstance(make_strategy("mirrored"), tf.distribute.MirroredStrategy)
    assert is_chief(make_strategy("mirrored"))
    with pytest.raises(ValueError, match="one of \\('none', 'mirrored', 'multi-worker'\\)"):
        make_strategy("tpu")


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "needs TF_CONFIG set on every worker"),
        ("{cluster", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "cluster.worker"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}', "integer task.index"),
        (
            '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
            "must be in \\[0, 2\\) for 2 workers. Received: 2",
        ),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        make_strategy("multi-worker")


def test_a_valid_tf_config_is_read(monkeypatch):
    config = {
        "cluster": {"worker": ["localhost:1", "localhost:2"]},
        "task": {"type": "worker", "index": 1},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert cluster_spec() == config


def test_synchronize_batch_norm_reaches_the_nested_backbone_and_saves(tmp_path):
    encoder = build_encoder((12, 12, 1), 8, ModelConfig(width=4))
    assert synchronize_batch_norm(encoder) == 6  # small_cnn: three stages of two blocks
    path = tmp_path / "encoder.keras"
    encoder.save(path)
    loaded = keras.saving.load_model(path)
    backbone = loaded.get_layer("backbone")
    norms = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) == 6 and all(layer.synchronized for layer in norms)
