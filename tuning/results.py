"""What a finished search reports: the table of its best trials and best.yaml, the
best trial's values applied to the base configuration so `train.py --config` takes it."""

from __future__ import annotations

import yaml


def best_config_yaml(config, trial, trial_config, path: str) -> str:
    """best.yaml: `config` (the base, at its own budget) with the trial's values."""
    from harr_tf.config import to_dict
    from tuning.space import with_values

    budget = ", ".join(
        f"{name} {getattr(trial_config, name)}"
        for name in ("epochs", "steps_per_epoch", "train_size")
    )
    header = (
        f"# Best trial {trial.trial_id}: val_map {trial.score:.4f} (trial budget: {budget}).\n"
        f"# Retrain at this file's budget: python train.py --config {path}\n"
    )
    best = with_values(config, trial.hyperparameters.values)
    return header + yaml.safe_dump(to_dict(best), sort_keys=False)


LABELS = {
    "bcr_weight": "eta1",
    "quantization_weight": "eta2",
    "temperature": "T",
    "positive_fraction": "rho",
    "window": "K",
    "num_permutations": "P",
    "learning_rate": "lr",
    "beta_growth": "beta_growth",
    "batch_size": "batch",
}


def trials_table(trials: list, count: int = 10) -> str:
    """The `count` best completed trials by val_map, one row each, and the failed ones."""
    done = sorted(
        (t for t in trials if t.status == "COMPLETED"), key=lambda t: t.score, reverse=True
    )
    lines = [f"{'trial':>6}{'val_map':>9}" + "".join(f"{label:>12}" for label in LABELS.values())]
    for trial in done[:count]:
        values = trial.hyperparameters.values
        cells = "".join(f"{_cell(values.get(name)):>12}" for name in LABELS)
        lines.append(f"{trial.trial_id:>6}{trial.score:>9.4f}{cells}")
    failed = [t.trial_id for t in trials if t.status in ("FAILED", "INVALID")]
    summary = f"{len(done)} completed, {len(failed)} failed"
    lines.append(summary + (f" (trials {', '.join(failed)})" if failed else ""))
    return "\n".join(lines)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4g}"
