"""The tuning experiment of the README: a finished search's best configuration next to
the default one, scored the same two ways.

    python -m tuning.search --tuner bayesian --initial-points 6 --max-trials 12 \\
        --epochs 10 --bits 32 --dir runs/tuning_fmnist
    python benchmarks/tuned_vs_default.py --search-dir runs/tuning_fmnist

1. val_map at the search's trial budget: the best trial's, and the default
   configuration's trained by the same hypermodel with the same seed;
2. mAP@K on the query set after retraining each at the full budget of the search's
   base configuration: `train.py --config DIR/best.yaml` next to the base itself
   (`train.py --bits B` when the search had no --config), in --work-dir.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import keras_tuner
import yaml

from harr_tf.config import TrainConfig, from_dict
from harr_tf.run import run
from harr_tf.training import DEFAULT_STEPS
from tuning.hypermodel import HarrHyperModel


def best_trial_score(project_dir: str) -> tuple[str, float, int]:
    """The best completed trial's id and val_map, and how many trials completed."""
    scores = {}
    for path in glob.glob(os.path.join(project_dir, "trial_*", "trial.json")):
        with open(path) as f:
            trial = json.load(f)
        if trial["status"] == "COMPLETED":
            scores[trial["trial_id"]] = trial["score"]
    if not scores:
        raise SystemExit(f"No completed trial in {project_dir}.")
    best = max(scores, key=scores.get)
    return best, scores[best], len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-dir", required=True, help="--dir of a finished search")
    parser.add_argument("--project-name", default="harr", help="--project-name of the search")
    parser.add_argument("--work-dir", help="retrain runs go here (default: SEARCH_DIR/retrain)")
    parser.add_argument("--json", help="also write the table's numbers here")
    args = parser.parse_args()
    project_dir = os.path.join(args.search_dir, args.project_name)
    with open(os.path.join(project_dir, "search.yaml")) as f:
        settings = yaml.safe_load(f)
    with open(os.path.join(args.search_dir, "best.yaml")) as f:
        tuned = from_dict(TrainConfig, yaml.safe_load(f))
    base = from_dict(TrainConfig, settings["base"])
    trial_id, tuned_val_map, completed = best_trial_score(project_dir)

    # The default values (no search_space overrides) at the trials' budget.
    hypermodel = HarrHyperModel(from_dict(TrainConfig, settings["trials"]))
    hp = keras_tuner.HyperParameters()
    default_val_map = hypermodel.fit(hp, hypermodel.build(hp), verbose=0)["val_map"]
    print(f"default at the trial budget: val_map {default_val_map:.4f}", flush=True)

    work_dir = args.work_dir or os.path.join(args.search_dir, "retrain")
    results = {}
    for name, config, val_map in (
        ("default", base, default_val_map),
        (f"tuned (trial {trial_id})", tuned, tuned_val_map),
    ):
        metrics = run(config, os.path.join(work_dir, name.split()[0]), verbose=0)
        result = metrics["results"][str(config.bits[0])]
        results[name] = {"val_map": val_map, "map": result["map"], "top_k": metrics["top_k"]}
        print(f"{name}: mAP@{metrics['top_k']} {result['map']:.4f}", flush=True)

    trials = settings["trials"]
    print(
        f"\n{completed} completed trials of {trials['epochs']} epochs "
        f"(steps_per_epoch {trials['steps_per_epoch']}, train_size {trials['train_size']}), "
        f"{base.bits[0]} bits; retrained for "
        + (f"{base.epochs} epochs" if base.epochs else f"{base.steps or DEFAULT_STEPS} steps")
    )
    k = next(iter(results.values()))["top_k"] or "all"
    print(f"{'configuration':<22}{'val_map (trial budget)':>24}{f'mAP@{k} (retrained)':>22}")
    for name, result in results.items():
        print(f"{name:<22}{result['val_map']:>24.4f}{result['map']:>22.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
