"""How good a teacher each WTA feature source is: among the pairs of training images the
WTA structure calls positive (the top ρ of all pairs), the share that really share a
class, and the precision of each image's 100 most WTA-similar images.

Labels are read here only to score the teacher; training never sees them.

    .venv/bin/python benchmarks/wta_teacher.py --windows 4,8
    .venv/bin/python benchmarks/wta_teacher.py --dataset cifar10 --sources backbone \\
        --backbone resnet50 --weights imagenet
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from tqdm import tqdm

from harr_tf.config import FEATURE_SOURCES, ModelConfig, TrainConfig, WTAConfig
from harr_tf.run_data import build_wta_structure, load_run_data
from harr_tf.wta import batch_similarity

FRACTIONS = (0.01, 0.05, 0.1)


def teacher_quality(codes: np.ndarray, labels: np.ndarray, window: int) -> dict:
    """Same-class share among the top-ρ pairs (i ≠ j) for each ρ, and mean precision@100."""
    similarity = np.array(batch_similarity(codes, codes, window))
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    values = similarity[off_diagonal]
    result = {}
    for fraction in FRACTIONS:
        positive = (similarity >= np.quantile(values, 1.0 - fraction)) & off_diagonal
        result[f"top {fraction:g}"] = same[positive].mean()
    np.fill_diagonal(similarity, -1.0)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :100]
    result["P@100"] = (labels[nearest] == labels[:, None]).mean()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset spec (train.py's)")
    parser.add_argument("--windows", default="4,8", help="comma-separated WTA windows K")
    parser.add_argument("--permutations", type=int, default=512, help="P")
    parser.add_argument("--seed", type=int, default=0, help="split and permutation seed")
    parser.add_argument(
        "--sources",
        default=",".join(FEATURE_SOURCES),
        help="comma-separated feature sources (file:FEATURES.npz too)",
    )
    parser.add_argument("--backbone", default="small_cnn", help="network of the backbone source")
    parser.add_argument("--weights", default="none", help="its weights: imagenet | none | PATH")
    parser.add_argument("--image-size", type=int, help="train.py's --image-size")
    args = parser.parse_args()
    config = TrainConfig(
        dataset=args.dataset,
        seed=args.seed,
        image_size=args.image_size,
        model=ModelConfig(backbone=args.backbone, weights=args.weights),
    )
    data = load_run_data(config)
    labels = data.dataset.labels[data.split.train]
    rows = []
    runs = [(s, int(k)) for s in args.sources.split(",") for k in args.windows.split(",")]
    for source, window in tqdm(runs, desc="feature sources"):
        wta = WTAConfig(features=source, num_permutations=args.permutations, window=window)
        structure = build_wta_structure(
            data.dataset, data.split.train, dataclasses.replace(config, wta=wta)
        )
        rows.append((source, window, teacher_quality(structure.codes, labels, window)))
    print(f"{data.dataset.name}: {len(labels)} training images, P = {args.permutations}")
    columns = list(rows[0][2])
    print(f"{'feature source':22s} {'K':>3s} " + " ".join(f"{c:>9s}" for c in columns))
    for source, window, result in rows:
        print(f"{source:22s} {window:3d} " + " ".join(f"{result[c]:9.3f}" for c in columns))


if __name__ == "__main__":
    main()
