"""TensorFlow's start-up lines stay out of a command's output unless asked for."""

import os
import subprocess
import sys

import pytest

SCRIPT = (
    "import sys; from harr_tf.quiet import quiet_tensorflow; "
    "quiet_tensorflow(verbose=sys.argv[1] == 'verbose'); "
    "import tensorflow as tf; tf.constant(1.0) + 1.0; print('result')"
)


def run(mode: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env)
    command = [sys.executable, "-c", SCRIPT, mode]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)


def test_start_up_lines_are_silenced_unless_verbose():
    noisy = run("verbose")
    assert noisy.returncode == 0 and noisy.stdout.strip() == "result"
    if not noisy.stderr.strip():
        pytest.skip("this machine's TensorFlow prints nothing at start-up")
    quiet = run("quiet")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "result"
    assert quiet.stderr.strip() == "", quiet.stderr
    # A level the user set is theirs: nothing is silenced.
    assert run("quiet", TF_CPP_MIN_LOG_LEVEL="0").stderr.strip() != ""


def test_a_serving_command_says_only_its_own_words():
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "serving.export", "--run-dir", "/nonexistent-run"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: --run-dir /nonexistent-run is not a run directory: expected "
        "/nonexistent-run/config.yaml, which train.py writes."
    ]
