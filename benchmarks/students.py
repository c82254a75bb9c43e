"""Teachers and students side by side on one collection: today's pixel teacher with
small_cnn, and the pretrained EfficientNet-Lite0 teacher with each student (frozen,
distilled, fine-tuned), each a whole `train.py` run timed from start to end, next to
PCAH/ITQ on the pixels and on the same Lite0 features and those features ranked by cosine.

    python benchmarks/students.py --dataset folder:/usr/share/openclipart/png \\
        --work-dir runs/students
    python benchmarks/students.py --dataset fashion_mnist --variants pixels,frozen \\
        --train-flags "--image-size 96"

A variant whose run directory holds metrics.json is read, not run again, so a long table
can be filled over several sessions (delete the directory to rerun it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from harr_tf.run_directory import RunDirectory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LITE0 = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--wta-features", "backbone"]
VARIANTS = {
    "pixels": ["--backbone", "small_cnn", "--wta-features", "sqrt_smoothed_pixels"],
    "frozen": [*LITE0, "--student", "frozen"],
    "distilled": [*LITE0, "--student", "distilled"],
    "fine_tuned": [*LITE0, "--student", "fine_tuned"],
}
DESCRIPTIONS = {
    "pixels": "pixel teacher, small_cnn",
    "frozen": "Lite0 teacher, frozen student",
    "distilled": "Lite0 teacher, distilled small_cnn",
    "fine_tuned": "Lite0 teacher, fine-tuned Lite0",
}
# The yardsticks a frozen run reports, and the pixel ones every run reports.
BASELINES = {
    "pcah": "PCAH on pixels",
    "itq": "ITQ on pixels",
    "pcah_features": "PCAH on Lite0 features",
    "itq_features": "ITQ on Lite0 features",
    "exact_cosine": "Lite0 features, cosine (exact)",
}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """The variant's metrics.json (running train.py first unless it is there) and the
    run's wall seconds."""
    run_dir = os.path.join(args.work_dir, name)
    metrics_path = RunDirectory(run_dir).metrics_file
    timing_path = os.path.join(run_dir, "wall_seconds.txt")
    if not os.path.exists(metrics_path):
        flags = [*VARIANTS[name], *shlex.split(args.train_flags)]
        if name == "fine_tuned":
            flags += shlex.split(args.fine_tune_flags)
        command = [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--dataset",
            args.dataset,
            "--bits",
            args.bits,
            "--run-dir",
            run_dir,
            "--quiet",
            *flags,
        ]
        print("$", shlex.join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        with open(timing_path, "w") as f:
            f.write(f"{time.perf_counter() - start:.0f}\n")
    with open(metrics_path) as f:
        metrics = json.load(f)
    seconds = None
    if os.path.exists(timing_path):
        with open(timing_path) as f:
            seconds = float(f.read())
    return {"metrics": metrics, "seconds": seconds}


def table(found: dict, bits: list[str]) -> str:
    """Markdown: one row per variant and per yardstick, mAP at each code length."""
    header = "| | wall time | " + " | ".join(f"{b} bits" for b in bits) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(bits)]
    for name, result in found.items():
        maps = result["metrics"]["results"]
        cells = " | ".join(f"{maps[b]['map']:.3f}" if b in maps else "" for b in bits)
        wall = f"{result['seconds'] / 60:.1f} min" if result["seconds"] else ""
        lines.append(f"| HARR, {DESCRIPTIONS[name]} | {wall} | {cells} |")
    baselines = {}
    for result in found.values():
        for method, maps in result["metrics"]["baselines"].items():
            baselines.setdefault(method, maps)
    for method, label in BASELINES.items():
        if method in baselines:
            maps = baselines[method]
            cells = " | ".join(f"{maps[b]:.3f}" if b in maps else "" for b in bits)
            lines.append(f"| {label} | | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="folder:/usr/share/openclipart/png")
    parser.add_argument("--bits", default="16,32,64", help="comma-separated code lengths")
    parser.add_argument("--work-dir", default="runs/students", help="one run directory each")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, some of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--train-flags", default="", help="more train.py flags for every run")
    parser.add_argument(
        "--fine-tune-flags",
        default="--bits 64 --steps 60",
        help="train.py flags of the fine-tuned run only (a small budget on a CPU)",
    )
    args = parser.parse_args()
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}; expected some of {list(VARIANTS)}")
    found = {name: run_variant(name, args) for name in chosen}
    print(table(found, args.bits.split(",")))


if __name__ == "__main__":
    main()
