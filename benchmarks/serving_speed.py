"""Code generation over gRPC next to the in-process SavedModel, and Hamming search speed.

    python benchmarks/serving_speed.py --run-dir runs/default --bits 64

1. Throughput (images/s) of the `serving_default` signature on PNG bytes of the run's
   dataset: run in this process (loaded as the server and TF Serving load it: own graph and
   session, `serving.session_bundle`), batch by batch, and through `python -m serving.server`
   with `serving.client` at each batch size and concurrency. The methods take turns, repeat
   by repeat, so machine noise hits them alike; each cell is the median of the repeats.
2. Latency (p50 / p99) of one-image requests, sequential, next to one in-process call.
3. Search: queries over random packed codes at each --codes size (or, with --codes-file,
   held-out real codes over the rest) with every kind of `harr_tf.index`: flat (exact),
   ivf at several nprobe, hnsw at several ef_search, multihash at several nflip. Build
   time, search time, memory (the serialized index) and recall@10 against exact.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from harr_tf.index import HammingIndex

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_LINE = re.compile(r"serving model \S+ version \d+ on (?P<address>\S+)")


def start_server(base: Path, model: str) -> tuple[subprocess.Popen, str]:
    """`python -m serving.server` on a free port; returns the process and its address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model-base-path", str(base)]
        + ["--model-name", model, "--port", "0"],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if match := READY_LINE.search(line):
            # Keep reading its output, or the pipe fills and the server blocks.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, match["address"]
    raise RuntimeError(f"the server exited ({process.wait()}) before serving")


def grpc_tables(args: argparse.Namespace) -> None:
    import tensorflow as tf

    from harr_tf.trained_run import Run
    from serving import IMAGES_INPUT, IMAGES_SIGNATURE
    from serving.client import ServingClient, map_concurrently
    from serving.export import export_encoder
    from serving.session_bundle import SessionBundle

    run = Run.load(args.run_dir)
    encoder, dataset = run.encoder(args.bits), run.dataset()  # read as the run reads it
    images = dataset.read(np.arange(min(args.images, dataset.num_items)))
    encoded = [tf.io.encode_png(image).numpy() for image in images]
    temporary = tempfile.TemporaryDirectory()
    base = Path(temporary.name) / args.model
    version_dir = export_encoder(encoder, base, config=run.config)
    # In process, the SavedModel loaded the way the server (and TF Serving) loads it.
    bundle = SessionBundle(version_dir)

    def signature(batch: list[bytes]) -> np.ndarray:
        inputs = {IMAGES_INPUT: np.array(batch, object)}
        return bundle.run(IMAGES_SIGNATURE, inputs, ["codes"])["codes"]

    process, address = start_server(base, args.model)
    client = ServingClient(address, args.model)
    client.describe()

    def in_process(data, size, _):
        return np.concatenate(
            [signature(data[start : start + size]) for start in range(0, len(data), size)]
        )

    def over_grpc(data, batch_size, concurrency):
        starts = range(0, len(data), batch_size)
        answers = dict(
            map_concurrently(
                lambda start: client.predict(data[start : start + batch_size])[0],
                starts,
                concurrency,
            )
        )
        return np.concatenate([answers[start] for start in starts])

    methods = {"in-process": (in_process, 1)}
    methods.update({f"gRPC c={c}": (over_grpc, c) for c in args.concurrency})
    rates = {name: {} for name in methods}
    try:
        for batch_size in args.batch_sizes:
            data = encoded if batch_size > 1 else encoded[: len(encoded) // 8]
            reference = in_process(data, batch_size, 1)  # warm-up of every method, and a check
            for name, (call, concurrency) in methods.items():
                if not np.array_equal(call(data, batch_size, concurrency), reference):
                    raise AssertionError(f"{name} gave other codes than the in-process model")
            seconds = {name: [] for name in methods}
            for _ in range(args.repeats):
                for name, (call, concurrency) in methods.items():
                    start = time.perf_counter()
                    call(data, batch_size, concurrency)
                    seconds[name].append(time.perf_counter() - start)
            for name in methods:
                rates[name][batch_size] = len(data) / float(np.median(seconds[name]))
        one_image = {"in-process": [], "gRPC": []}
        for image in encoded[: args.latency_requests]:
            start = time.perf_counter()
            signature([image])
            one_image["in-process"].append(time.perf_counter() - start)
            start = time.perf_counter()
            client.predict([image])
            one_image["gRPC"].append(time.perf_counter() - start)
    finally:
        client.close()
        process.terminate()
        process.wait()
        temporary.cleanup()

    print(f"\n{args.run_dir} bits_{args.bits}: PNG images {images.shape[1:]}, codes checked equal")
    names = list(methods)
    print("| batch | " + " | ".join(f"{name} (img/s)" for name in names), end=" | ")
    print(" | ".join(f"{name} / in-process" for name in names[1:]) + " |")
    print("|---:" * (2 * len(names)) + "|")
    for batch_size in args.batch_sizes:
        cells = [f"{rates[name][batch_size]:,.0f}" for name in names]
        cells += [
            f"{rates[name][batch_size] / rates[names[0]][batch_size]:.2f}" for name in names[1:]
        ]
        print(f"| {batch_size} | " + " | ".join(cells) + " |")
    print(f"\nOne-image requests ({args.latency_requests}, sequential):")
    print("| | p50 (ms) | p99 (ms) |\n|---|---:|---:|")
    for name, seconds in one_image.items():
        p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
        print(f"| {name} | {p50:.2f} | {p99:.2f} |")


def search_table(args: argparse.Namespace) -> None:
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    if args.codes_file:  # real codes: held-out items of the collection query the rest
        with np.load(args.codes_file) as archive:
            packed = archive["packed"][rng.permutation(len(archive["packed"]))]
        cases = [(packed[args.queries :], packed[: args.queries], f"codes of {args.codes_file}")]
    else:
        queries = rng.integers(0, 256, (args.queries, args.code_bits // 8), dtype=np.uint8)
        cases = [
            (rng.integers(0, 256, (count, args.code_bits // 8), dtype=np.uint8), queries, "random")
            for count in args.codes
        ]
    for database, queries, described in cases:
        print(
            f"\nSearch: {len(queries):,} queries, top 10, over {len(database):,} "
            f"{database.shape[1] * 8}-bit {described}, {args.threads} FAISS threads"
        )
        print("| index | build (s) | search (s) | memory (MB) | recall@10 (ids) |", end=" ")
        print("recall@10 (distance) |\n|---|---:|---:|---:|---:|---:|")
        for row in search_rows(args, database, queries):
            print("| {} | {:.1f} | {:.3f} | {:.1f} | {:.3f} | {:.3f} |".format(*row))
        sys.stdout.flush()


def search_rows(args: argparse.Namespace, database: np.ndarray, queries: np.ndarray):
    """(name, build s, search s, MB, recall by ids, recall by distance) of each index kind
    and search option, the exact flat index first (its own reference)."""
    ids = [str(index) for index in range(len(database))]
    sweeps = [
        ("flat", {}, "", [None]),
        ("ivf", {"nlist": args.nlist}, "nprobe", args.nprobe),
        ("hnsw", {}, "ef_search", args.ef_search),
        ("multihash", {}, "nflip", args.nflip),
    ]
    exact_d = exact_p = None
    for kind, options, knob, values in sweeps:
        if kind != "flat" and kind not in args.kinds:
            continue
        if kind == "hnsw" and len(database) > args.hnsw_max_codes:
            print(f"(hnsw skipped: more than --hnsw-max-codes {args.hnsw_max_codes:,} codes)")
            continue
        start = time.perf_counter()
        index = HammingIndex.build(database, ids, kind, **options)
        built = time.perf_counter() - start
        megabytes = faiss.serialize_index_binary(index.index).nbytes / 2**20
        for value in values:
            search_options = {knob: value} if knob else {}
            index.search(queries[:10], 10, **search_options)  # warm-up
            timings = []
            for _ in range(args.repeats):  # the median: the machine may be shared
                start = time.perf_counter()
                found_d, found_p = index.search(queries, 10, **search_options)
                timings.append(time.perf_counter() - start)
            seconds = float(np.median(timings))
            if exact_d is None:
                exact_d, exact_p = found_d, found_p
            same_ids = np.mean(
                [len(set(a) & set(b)) / 10 for a, b in zip(exact_p, found_p, strict=True)]
            )
            # Random codes tie a lot at the 10th distance: any code found at most that far
            # is as near as an exact neighbour.
            as_near = np.mean((found_d <= exact_d[:, -1:]) & (found_p >= 0))
            names = {
                "flat": "flat (exact)",
                "ivf": f"ivf nlist={getattr(index.index, 'nlist', '')} nprobe={value}",
                "hnsw": f"hnsw ef_search={value}",
                "multihash": f"multihash nhash={getattr(index.index, 'nhash', 0)} nflip={value}"
                f" (exact <= {getattr(index.index, 'nhash', 0) * ((value or 0) + 1) - 1})",
            }
            yield names[kind], built, seconds, megabytes, same_ids, as_near
        del index


def main() -> None:
    def numbers(text: str) -> list[int]:
        return [int(part) for part in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/default", help="run directory of train.py")
    parser.add_argument("--bits", type=int, default=64, help="code length of the run to export")
    parser.add_argument("--model", default="harr", help="model name to serve under")
    parser.add_argument(
        "--images", type=int, default=2048, help="images per timing (1/8 at batch 1)"
    )
    parser.add_argument("--batch-sizes", type=numbers, default=[1, 16, 64], help="e.g. 1,16,64")
    parser.add_argument("--concurrency", type=numbers, default=[1, 4], help="e.g. 1,4")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (median)")
    parser.add_argument("--latency-requests", type=int, default=300, help="one-image requests")
    parser.add_argument(
        "--codes", type=numbers, default=[1_000_000], help="random codes indexed, e.g. 10000,100000"
    )
    parser.add_argument("--code-bits", type=int, default=64, help="bits of the random codes")
    parser.add_argument("--queries", type=int, default=1000, help="search queries")
    parser.add_argument(
        "--codes-file",
        help="search real codes (a codes.npz of serving.encode) instead of random ones",
    )
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads (cores)")
    parser.add_argument("--nlist", type=int, default=None, help="ivf cells (default: about √n)")
    parser.add_argument("--nprobe", type=numbers, default=[8, 32, 128], help="ivf cells scanned")
    parser.add_argument("--ef-search", type=numbers, default=[16, 64, 256], help="hnsw beam widths")
    parser.add_argument("--nflip", type=numbers, default=[0, 1, 2], help="multihash bits flipped")
    parser.add_argument(
        "--hnsw-max-codes", type=int, default=1_000_000, help="skip hnsw above this many codes"
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: text.split(","),
        default=["ivf", "hnsw", "multihash"],
        help="index kinds besides flat (the reference), e.g. ivf,multihash",
    )
    parser.add_argument(
        "--only", choices=["grpc", "search"], help="run one part only (default: both)"
    )
    args = parser.parse_args()
    if args.only != "search":
        grpc_tables(args)
    if args.only != "grpc":
        search_table(args)


if __name__ == "__main__":
    main()
