"""How good a teacher each WTA feature source is: among the pairs of training images the
WTA structure calls positive (the top ρ of all pairs), the share that really share a
class, and the precision of each image's 100 most WTA-similar images.

Labels are read here only to score the teacher; training never sees them.

    .venv/bin/python benchmarks/wta_teacher.py --windows 4,8
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

from harr_tf.data import get_protocol, load_dataset, make_split
from harr_tf.features import FEATURE_SOURCES, wta_features
from harr_tf.wta import batch_similarity, encode_wta, make_permutation_table

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
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    split = make_split(dataset.labels, dataset.num_items, get_protocol("standard"), seed=args.seed)
    images, labels = dataset.images[split.train], dataset.labels[split.train]
    rows = []
    runs = [(s, int(k)) for s in FEATURE_SOURCES for k in args.windows.split(",")]
    for source, window in tqdm(runs, desc="feature sources"):
        features = wta_features(images, source)
        table = make_permutation_table(features.shape[1], args.permutations, window, args.seed)
        rows.append((source, window, teacher_quality(encode_wta(features, table), labels, window)))
    print(f"{dataset.name}: {len(images)} training images, P = {args.permutations}")
    columns = list(rows[0][2])
    print(f"{'feature source':22s} {'K':>3s} " + " ".join(f"{c:>9s}" for c in columns))
    for source, window, result in rows:
        print(f"{source:22s} {window:3d} " + " ".join(f"{result[c]:9.3f}" for c in columns))


if __name__ == "__main__":
    main()
