"""Ablation: the full method, each of the three losses removed, and WTA guidance
replaced by plain instance contrast — same data, budget and seed.

    python benchmarks/ablation.py --bits 64 [--config FILE.yaml] [--json ablation.json]
    python benchmarks/ablation.py --variants "without L_bcr,without L_q"

Each variant is a complete `train.py` run (in --work-dir) evaluated on the query set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import yaml

from harr_tf.config import TrainConfig, from_dict
from harr_tf.run import run

VARIANTS = {
    "full HARR": {},
    "without L_sim": {"similarity_weight": 0.0},
    "without L_bcr": {"bcr_weight": 0.0},
    "without L_q": {"quantization_weight": 0.0},
    "instance contrast instead of WTA": {"guidance": "instance"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="base YAML settings (default: train.py's defaults)")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--work-dir", default="runs/ablation")
    parser.add_argument("--json", help="write {variant: mAP} here")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated variants to run (default: all of {', '.join(VARIANTS)})",
    )
    args = parser.parse_args()
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}; expected some of {list(VARIANTS)}")
    base = TrainConfig()
    if args.config:
        with open(args.config) as f:
            base = from_dict(TrainConfig, yaml.safe_load(f) or {})
    base = dataclasses.replace(base, bits=(args.bits,))
    results = {}
    for name in chosen:
        loss_changes = VARIANTS[name]
        config = dataclasses.replace(base, loss=dataclasses.replace(base.loss, **loss_changes))
        run_dir = os.path.join(args.work_dir, name.replace(" ", "_"))
        metrics = run(config, run_dir, verbose=0)
        result = metrics["results"][str(args.bits)]
        results[name] = {"map": result["map"], "train_seconds": result["train_seconds"]}
        print(f"{name}: mAP@{metrics['top_k']} {result['map']:.3f}", flush=True)
    print(f"\n{'variant':<36}{'mAP':>8}{'train s':>10}")
    for name, result in results.items():
        print(f"{name:<36}{result['map']:>8.3f}{result['train_seconds']:>10.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
