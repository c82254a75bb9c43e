"""A command says only its own words: TensorFlow's start-up lines (unless asked for) and
other libraries' INFO lines stay out of its output."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "line"),
    [
        # The module imports TensorFlow at its top: silenced above its imports.
        (["-m", "serving.export", "--run-dir", "/nonexistent-run"], "error: --run-dir"),
        # Started through a package whose names load lazily (harr_tf.data).
        (
            ["-m", "harr_tf.data.tfrecord", "convert", "--input", "/nonexistent", "--out", "x"],
            "error: --input /nonexistent: no such file",
        ),
        # Silenced in main, where only `query` loads TensorFlow.
        (
            ["-m", "serving.search", "query", "--index", "/nonexistent.faiss"]
            + ["--server", "localhost:1", "photo.jpg"],
            "error: --index /nonexistent.faiss",
        ),
        # Silenced in main; it loads FAISS, whose INFO lines are not the project's.
        (["train.py", "--config", "/nonexistent.yaml"], "Invalid configuration: --config"),
    ],
)
def test_a_command_says_only_its_own_words(command, line):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr


LOGGING = (
    "import logging; from harr_tf.quiet import log_to_stderr; log_to_stderr(); "
    "import faiss; "
    "assert not logging.getLogger('faiss.loader').isEnabledFor(logging.INFO); "
    "logging.getLogger('harr_tf.run').info('own line'); "
    "logging.getLogger('faiss.loader').warning('library warning')"
)


def test_a_commands_logging_shows_its_own_info_lines_only():
    result = subprocess.run(
        [sys.executable, "-c", LOGGING], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["own line", "library warning"]
