"""The run directory: the one module that knows where a run's files are (DESIGN §5).

    RUN/config.yaml            the resolved `TrainConfig`
    RUN/split.npz              the protocol split
    RUN/wta.npz                the WTA table, codes and thresholds
    RUN/metrics.json           mAP per code length, baselines, timings
    RUN/plots/NAME_B.png       PR curve, precision@N, retrieval grid per code length
    RUN/features/              a frozen student's cached backbone features
    RUN/damaged_items.txt      items that could not be decoded
    RUN/bits_B/encoder.keras   the trained encoder of each code length B
    RUN/bits_B/checkpoint/     its weights and optimizer state, for resuming
    RUN/bits_B/logs/           its TensorBoard logs
    RUN/.lock                  held by the one process that writes the run

Every other module asks this one for a path instead of spelling it, so the layout can
change in one place. Nothing here loads TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from harr_tf.atomic import write_text_atomically
from harr_tf.config import TrainConfig, from_dict, read_settings_file, to_dict
from harr_tf.locks import exclusive

_LENGTH_PREFIX = "bits_"


@dataclasses.dataclass(frozen=True)
class LengthDirectory:
    """`RUN/bits_B/`: the files of one code length."""

    path: Path

    @property
    def encoder(self) -> Path:
        return self.path / "encoder.keras"

    @property
    def checkpoint(self) -> Path:
        """The folder `harr_tf.callbacks.LastGoodCheckpoint` writes and restores."""
        return self.path / "checkpoint"

    @property
    def logs(self) -> Path:
        """TensorBoard's folder: training under it, the evaluation's images in `eval/`."""
        return self.path / "logs"


class RunDirectory:
    """The files of the run in `path` (see the module docstring).

    Args:
        path: the run directory; it need not exist yet.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split_file(self) -> Path:
        return self.path / "split.npz"

    @property
    def wta_file(self) -> Path:
        return self.path / "wta.npz"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def damaged_items_file(self) -> Path:
        return self.path / "damaged_items.txt"

    @property
    def features(self) -> Path:
        """The folder of a frozen student's cached features (`harr_tf.frozen`)."""
        return self.path / "features"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def plot_file(self, name: str, bits: int) -> Path:
        return self.plots / f"{name}_{bits}.png"

    def length(self, bits: int) -> LengthDirectory:
        """The files of the `bits`-bit model."""
        return LengthDirectory(self.path / f"{_LENGTH_PREFIX}{bits}")

    def is_run(self) -> bool:
        """Whether a run was started here (its config is written first)."""
        return self.config_file.is_file()

    def started_bits(self) -> list[int]:
        """The code lengths with a folder here, trained or not, sorted."""
        found = []
        for entry in self.path.glob(f"{_LENGTH_PREFIX}*"):
            suffix = entry.name.removeprefix(_LENGTH_PREFIX)
            if suffix.isdigit() and entry.is_dir():
                found.append(int(suffix))
        return sorted(found)

    def trained_bits(self) -> list[int]:
        """The code lengths whose encoder is saved, sorted."""
        return [bits for bits in self.started_bits() if self.length(bits).encoder.is_file()]

    def read_config(self) -> TrainConfig:
        """The run's `config.yaml` as a `TrainConfig`.

        Raises:
            FileNotFoundError: this is not a run directory.
            ValueError: the file is not a valid configuration.
        """
        if not self.is_run():
            raise FileNotFoundError(
                f"{self.path} is not a run directory: expected {self.config_file}, which "
                "train.py writes."
            )
        return from_dict(TrainConfig, read_settings_file(str(self.config_file), "--run-dir"))

    def write_config(self, config: TrainConfig) -> None:
        """Writes `config` as `config.yaml`, whole or not at all."""
        self.path.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(to_dict(config), sort_keys=False)
        write_text_atomically(self.config_file, text)

    def lock(self, wait: bool = False) -> exclusive:
        """The lock every writer of this run holds (`harr_tf.locks`), not yet taken:
        `with run_directory.lock():` raises `LockHeld` while another process holds it,
        or with `wait` waits for it."""
        return exclusive(f"{self.path}{os.sep}", wait=wait)
