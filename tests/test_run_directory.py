"""The run directory's layout: the names train.py's run directory has always had, the
code lengths found in it, its config read back as a TrainConfig, and its lock."""

import pytest

from harr_tf.config import ModelConfig, TrainConfig, WTAConfig
from harr_tf.locks import LockHeld
from harr_tf.run_directory import RunDirectory


def test_the_layout_keeps_its_names(tmp_path):
    run = RunDirectory(tmp_path)
    names = {
        run.config_file: "config.yaml",
        run.split_file: "split.npz",
        run.wta_file: "wta.npz",
        run.metrics_file: "metrics.json",
        run.damaged_items_file: "damaged_items.txt",
        run.features: "features",
        run.plot_file("pr_curve", 16): "plots/pr_curve_16.png",
        run.length(16).encoder: "bits_16/encoder.keras",
        run.length(16).checkpoint: "bits_16/checkpoint",
        run.length(16).logs: "bits_16/logs",
    }
    for path, name in names.items():
        assert path == tmp_path / name


def test_code_lengths_are_found_trained_or_not(tmp_path):
    run = RunDirectory(tmp_path)
    for bits in (64, 8, 16):
        run.length(bits).checkpoint.mkdir(parents=True)
    run.length(8).encoder.write_bytes(b"")
    run.length(64).encoder.write_bytes(b"")
    (tmp_path / "bits_x").mkdir()
    (tmp_path / "bits_32").write_text("a file, not a code length's folder")
    assert run.started_bits() == [8, 16, 64]
    assert run.trained_bits() == [8, 64]


def test_the_config_reads_back_as_written(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert not run.is_run()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        run.read_config()
    config = TrainConfig(bits=(8, 24), steps=7, wta=WTAConfig(window=3), model=ModelConfig(width=4))
    run.write_config(config)
    assert run.is_run() and run.read_config() == config
    run.config_file.write_text("bits: [8]\nwindow: 3\n")
    with pytest.raises(ValueError, match="Unknown TrainConfig setting"):
        run.read_config()


def test_one_writer_at_a_time(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with run.lock():
        assert (tmp_path / "run" / ".lock").is_file()
        with pytest.raises(LockHeld, match="run is in use by process"):
            run.lock().acquire()
    with run.lock():  # released when the first writer is done
        pass
