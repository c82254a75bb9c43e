"""What a resumed run may change: its budget, not its data, split, codes or model.

A run directory's checkpoints, split and WTA structure belong to the settings that made
them. Resuming with another dataset, seed, code length, WTA setting or network would
silently rewrite `split.npz`, `wta.npz` and `config.yaml` for other data and score the
old checkpoints on it, so `--resume` refuses such settings, naming them.
"""

from __future__ import annotations

import os
import shlex

import numpy as np

from harr_tf.callbacks import LastGoodCheckpoint
from harr_tf.config import from_dict, to_dict
from harr_tf.data.splits import ProtocolSplit
from harr_tf.run_directory import RunDirectory

# Settings a resumed run may change: how long it trains, how often it evaluates, and
# where the same data files are found.
# A diverged run is resumed from its last good checkpoint with a lower learning rate or
# loss weights (the advice it prints), so those may change too.
RESUMABLE_SETTINGS = (
    "epochs",
    "steps",
    "eval_every",
    "data_dir",
    "encode_batch_size",
    "steps_per_execution",
    "memory_budget",  # sizes batches; the training batch trained at stays as saved
    "learning_rate",
    "loss.bcr_weight",
    "loss.quantization_weight",
)


# Settings a run resolves when they are left to it, with the value that leaves them (the
# run stores what it resolved: the batch, the image size, the backbone and the teacher the
# collection chose); a resume that leaves them again keeps the run's.
LEFT_TO_THE_RUN = {
    "batch_size": None,
    "image_size": None,
    "model.backbone": None,
    "model.weights": "none",
    "wta.features": "sqrt_smoothed_pixels",
}


def with_resolved_settings(saved, config):
    """`config` with each setting it leaves to the run (`LEFT_TO_THE_RUN`) as the run
    `saved` resolved it: a resume continues with the run's batch, size and teacher."""
    values, old = to_dict(config), to_dict(saved)
    for name, left in LEFT_TO_THE_RUN.items():
        *sections, key = name.split(".")
        new_section, old_section = values, old
        for section in sections:
            new_section, old_section = new_section[section], old_section[section]
        if new_section.get(key) == left:
            new_section[key] = old_section.get(key)
    return from_dict(type(config), values)


def changed_settings(saved, config) -> dict[str, tuple]:
    """`{dotted name: (saved value, new value)}` of the settings, beyond
    `RESUMABLE_SETTINGS`, that differ."""
    old, new = flatten_settings(to_dict(saved)), flatten_settings(to_dict(config))
    return {
        name: (old.get(name), new.get(name))
        for name in sorted(old.keys() | new.keys())
        if name not in RESUMABLE_SETTINGS and old.get(name) != new.get(name)
    }


def check_resumable(saved, config) -> None:
    """Raises ValueError naming each setting that would change the resumed run."""
    changed = changed_settings(saved, config)
    if changed:
        details = ", ".join(f"{name}: {a!r} -> {b!r}" for name, (a, b) in changed.items())
        raise ValueError(
            f"--resume continues a run with its own data, split, code lengths, WTA structure "
            f"and model; these settings differ from the run's config.yaml: {details}. Only "
            f"{', '.join(RESUMABLE_SETTINGS)} may change; start a new --run-dir for the rest."
        )


def check_same_split(path: str, split: ProtocolSplit) -> None:
    """Raises ValueError when the split saved at `path` differs from `split` (the data
    under the same settings changed, e.g. files were added), instead of overwriting it."""
    if not os.path.exists(path):
        return
    saved = ProtocolSplit.load(path)
    fields = ("query", "database", "train", "validation")
    if saved.protocol != split.protocol or not all(
        np.array_equal(getattr(saved, name), getattr(split, name)) for name in fields
    ):
        raise ValueError(
            f"{path} holds another split than the data give now (same settings): the "
            "dataset changed since the run started. Restore the data, or start a new --run-dir."
        )


def flatten_settings(values: dict, prefix: str = "") -> dict:
    """`{"wta": {"window": 4}}` → `{"wta.window": 4}`: nested settings by dotted name."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_advice(run_dir: str) -> str:
    """What a stopped run kept and the command that continues it, in one line."""
    run = RunDirectory(run_dir)
    if not run.is_run():
        return "Nothing was written yet: run the same command again."
    kept = []
    for bits in run.started_bits():
        if run.length(bits).encoder.exists():
            kept.append(f"{bits} bits: trained")
            continue
        try:
            epochs = LastGoodCheckpoint.completed_epochs(str(run.length(bits).checkpoint))
        except (OSError, ValueError, KeyError):
            continue
        if epochs:
            kept.append(f"{bits} bits: checkpoint after epoch {epochs}")
    what = f"Kept: {'; '.join(kept)}." if kept else "No epoch had ended yet."
    return f"{what} Continue with: python train.py --run-dir {shlex.quote(run_dir)} --resume"
