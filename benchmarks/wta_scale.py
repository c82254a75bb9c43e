"""Time and memory of the WTA structure as N grows (synthetic features, P = 512).

    python benchmarks/wta_scale.py --sizes 10000,100000,1000000

Each size runs in a fresh process; memory is that process's peak resident size
above what it held once the features existed and TensorFlow had started, so it counts the codes, the
threshold estimate and one batch's similarity — everything the structure adds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

FEATURE_DIM = 128


def measure(size: int, permutations: int, window: int, batch: int) -> dict:
    import numpy as np

    from harr_tf.wta import (
        batch_similarity,
        encode_wta,
        estimate_thresholds,
        make_permutation_table,
    )

    # float32 from the start: a float64 draw would set the peak before the structure exists.
    features = np.random.default_rng(0).standard_normal((size, FEATURE_DIM), dtype=np.float32)
    table = make_permutation_table(FEATURE_DIM, permutations, window, seed=0)
    # Start TensorFlow's runtime first: its one-off arena is not the structure's memory.
    warm = encode_wta(features[:4096], table)
    batch_similarity(warm[:batch], warm[:batch], window)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    codes = encode_wta(features, table)
    encoded = time.perf_counter()
    estimate_thresholds(codes, window, rho=0.1, max_pairs=1_000_000, seed=0)
    thresholded = time.perf_counter()
    batch_similarity(codes[:batch], codes[:batch], window)  # warm-up
    tick = time.perf_counter()
    for _ in range(10):
        batch_similarity(codes[:batch], codes[:batch], window)
    similarity_ms = (time.perf_counter() - tick) / 10 * 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "n": size,
        "encode_s": encoded - start,
        "thresholds_s": thresholded - encoded,
        "batch_similarity_ms": similarity_ms,
        "codes_mb": codes.nbytes / 2**20,
        "peak_mb": max(peak - baseline, 0) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated N")
    parser.add_argument("--permutations", type=int, default=512, help="P")
    parser.add_argument("--window", type=int, default=8, help="K")
    parser.add_argument("--batch", type=int, default=128, help="batch of the similarity")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.permutations, args.window, args.batch)))
        return
    print(
        f"{'N':>9} {'encode s':>9} {'thresholds s':>13} {'batch sim ms':>13} "
        f"{'codes MB':>9} {'peak MB':>8} {'peak MB / 10k':>14}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, __file__, "--one", str(size)]
        command += ["--permutations", str(args.permutations), "--window", str(args.window)]
        command += ["--batch", str(args.batch)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        output = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        row = json.loads(output.stdout.strip().splitlines()[-1])
        print(
            f"{row['n']:>9} {row['encode_s']:>9.2f} {row['thresholds_s']:>13.2f} "
            f"{row['batch_similarity_ms']:>13.2f} {row['codes_mb']:>9.1f} "
            f"{row['peak_mb']:>8.1f} {row['peak_mb'] / row['n'] * 1e4:>14.2f}"
        )


if __name__ == "__main__":
    main()
