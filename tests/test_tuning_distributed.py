"""Distributed tuning on KerasTuner's own chief/worker engine: a chief oracle and two
workers as separate processes on 127.0.0.1, and the errors of a worker without a chief."""

import os
import socket
import subprocess
import sys
import time

import pytest
import test_tuning
from test_tuning import ROOT, TINY, TINY_SPACE, trials_in, write_config

from harr_tf.train_command import parse_args, resolve_config

subset = test_tuning.subset  # the real-data fixture


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tuner_env(port: int, tuner_id: str) -> dict:
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
        "KERASTUNER_TUNER_ID": tuner_id,
    }


@pytest.mark.slow
def test_a_chief_and_two_workers_complete_every_trial(subset, tmp_path):
    config = write_config(tmp_path / "space.yaml", TINY_SPACE)
    out = tmp_path / "search"
    args = ["--tuner", "random", "--max-trials", "3", "--dataset", subset, "--config", config]
    args += ["--run-dir", str(out), "--quiet", *TINY]
    port = free_port()
    processes = {
        tuner_id: subprocess.Popen(
            [sys.executable, "-m", "tuning.search", *args],
            cwd=ROOT,
            env=tuner_env(port, tuner_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tuner_id in ("chief", "worker0", "worker1")
    }
    outputs = {}
    for tuner_id, process in processes.items():
        try:
            outputs[tuner_id] = process.communicate(timeout=420)
        finally:
            process.kill()
        assert process.returncode == 0, (tuner_id, outputs[tuner_id][1][-3000:])
    trials = trials_in(out / "harr")
    assert sorted(trials) == ["0", "1", "2"]
    assert all(trial["status"] == "COMPLETED" for trial in trials.values())
    assert "3 completed, 0 failed" in outputs["chief"][0]
    for worker in ("worker0", "worker1"):
        assert "the chief writes the results" in outputs[worker][0]
    best = resolve_config(parse_args(["--config", str(out / "best.yaml")]))
    assert best.bits == (16,) and best.wta.num_permutations == 32


def test_a_worker_without_a_reachable_chief_stops_with_a_clear_error(tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tuning.search", "--oracle-timeout", "2", "--run-dir", tmp_path],
        cwd=ROOT,
        env=tuner_env(free_port(), "worker0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Cannot reach the chief oracle at 127.0.0.1:" in result.stderr
    assert time.monotonic() - start < 60  # the timeout, not KerasTuner's hour-long wait


@pytest.mark.parametrize("missing", ["KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"])
def test_an_incomplete_distributed_setting_is_named(missing, tmp_path):
    env = tuner_env(free_port(), "worker0")
    del env[missing]
    command = [sys.executable, "-m", "tuning.search", "--run-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and missing in result.stderr
