"""The frozen student's head alone, on a finished frozen run's cached features: how each
change of its training moves mAP from its ITQ start, in seconds per variant.

    python benchmarks/frozen_head.py --run-dir runs/clipart \\
        --dataset folder:/usr/share/openclipart/png --bits 32 --steps 300 \\
        --variants "lr=0" "lr=0.05" "lr=0.005,bcr=0" "lr=0.005,temperature=0.5"

A variant is comma-separated `name=value`: lr, steps, bcr, quantization, temperature,
window and rho (a new WTA structure of the cached training features with that window and
positive fraction). `lr=0` evaluates the ITQ start.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

from harr_tf.data import load_dataset
from harr_tf.frozen import feature_stream, head_codes, head_encoder, start_from_itq
from harr_tf.model import HarrModel
from harr_tf.retrieval import mean_average_precision
from harr_tf.wta import WTASimilarity, encode_wta, estimate_thresholds, make_permutation_table


def parse_variant(text: str) -> dict:
    values = {}
    for item in filter(None, text.split(",")):
        name, value = item.split("=")
        values[name.strip()] = float(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", required=True, help="a finished --student frozen run")
    parser.add_argument("--dataset", required=True, help="its --dataset (for the labels)")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=["lr=0", "lr=0.05"])
    args = parser.parse_args()
    features = {
        name: np.load(f"{args.run_dir}/features/{name}.npy")
        for name in ("train", "views", "query", "database")
    }
    saved = dict(np.load(f"{args.run_dir}/wta.npz"))
    split = np.load(f"{args.run_dir}/split.npz")
    labels = load_dataset(args.dataset).labels
    print("| variant | mAP@1000 |\n|---|---:|")
    for text in args.variants:
        variant = parse_variant(text)
        window, codes = 4, saved["codes"]
        thresholds = (float(saved["tau"]), float(saved["s_max"]), float(saved["s_min"]))
        if "window" in variant:
            window = int(variant["window"])
            table = make_permutation_table(features["train"].shape[1], 512, window, seed=0)
            codes = encode_wta(features["train"], table)
            found = estimate_thresholds(codes, window, rho=variant.get("rho", 0.05), seed=0)
            thresholds = (found.tau, found.s_max, found.s_min)
        head = head_encoder(features["train"].shape[1], args.bits)
        start_from_itq(head, features["train"], seed=0)
        lr = variant.get("lr", 0.05)
        if lr > 0:
            model = HarrModel(
                head,
                WTASimilarity(*thresholds, window),
                temperature=variant.get("temperature", 0.1),
                bcr_weight=variant.get("bcr", 1.0),
                quantization_weight=variant.get("quantization", 0.5),
                include_self=True,
            )
            steps = int(variant.get("steps", args.steps))
            schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
            model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
            stream = feature_stream(features["views"], codes, ("a", "b", "w"), args.batch_size, 0)
            model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)
        value = mean_average_precision(
            head_codes(head, features["query"], False),
            head_codes(head, features["database"], False),
            labels[split["query"]],
            labels[split["database"]],
            top_k=1000,
        )
        print(f"| {text} | {value:.3f} |", flush=True)


if __name__ == "__main__":
    main()
