"""Table of the classical baselines (LSH, PCAH, ITQ): mAP@K per code length, and the
exact Euclidean ranking of the uncompressed features that codes are measured against.

    python benchmarks/baselines.py --dataset fashion_mnist --bits 16,32,64 --json baselines.json
    python benchmarks/baselines.py --features sqrt_smoothed_pixels   # on HARR's WTA features

Same protocol split and evaluation code as every HARR number (DESIGN §3). The feature
source is raw pixels by default (DESIGN's yardstick); `--features` takes any WTA feature
source instead, computed over all the dataset's images (no labels involved).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from harr_tf.baselines import METHODS, evaluate_baseline, exact_map
from harr_tf.data import get_protocol, load_dataset, make_split
from harr_tf.features import PIXEL_SOURCES, wta_features


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset spec (see README)")
    parser.add_argument("--data-dir", help="local IDX directory for fashion_mnist/mnist")
    parser.add_argument("--bits", default="16,32,64", help="comma-separated code lengths")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated baselines")
    parser.add_argument(
        "--features",
        default="pixels",
        choices=PIXEL_SOURCES,
        help="feature source the baselines hash (default: pixels)",
    )
    parser.add_argument("--protocol", default="standard", help="evaluation protocol name")
    parser.add_argument("--seed", type=int, default=0, help="split and projection seed")
    parser.add_argument("--json", help="write {method: {bits: mAP}, 'exact_l2': mAP} to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    bits_list = [int(b) for b in args.bits.split(",")]
    methods = args.methods.split(",")
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    if dataset.labels is None:
        raise SystemExit(f"{args.dataset} has no labels: the baselines table needs them.")
    protocol = get_protocol(args.protocol)
    split = make_split(dataset.labels, dataset.num_items, protocol, seed=args.seed)
    top_k = protocol.multi_label_top_k if dataset.multi_label else protocol.top_k
    features = wta_features(dataset.read(np.arange(dataset.num_items)), args.features)
    print(
        f"{dataset.name} ({dataset.source}): {len(split.query)} queries, "
        f"{len(split.database)} database, {len(split.train)} training images, "
        f"mAP@{top_k or 'all'}, {args.features} features"
    )
    results: dict[str, dict[str, float] | float] = {}
    header = f"{'method':<8}" + "".join(f"{b:>10} bits" for b in bits_list) + f"{'seconds':>10}"
    print(header)
    for method in methods:
        start = time.perf_counter()
        results[method] = {
            str(bits): evaluate_baseline(
                method, features, dataset.labels, split, bits, top_k, seed=args.seed
            )
            for bits in bits_list
        }
        seconds = time.perf_counter() - start
        row = "".join(f"{results[method][str(b)]:>15.3f}" for b in bits_list)
        print(f"{method:<8}{row}{seconds:>10.1f}")
    start = time.perf_counter()
    exact = exact_map(features, dataset.labels, split, top_k)
    seconds = time.perf_counter() - start
    print(f"exact L2 ranking of the uncompressed features: {exact:.3f} ({seconds:.1f} s)")
    results["exact_l2"] = exact
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
