"""Hamming search over a collection's codes: build a FAISS index, grow it, query it.

    python -m serving.search build --codes codes.npz --index harr.faiss [--kind KIND]
    python -m serving.search add --index harr.faiss --codes more.npz [--new-only]
    python -m serving.search remove --index harr.faiss --ids photos/a.jpg photos/b.jpg
    python -m serving.search query --index harr.faiss --server localhost:8500 photo.jpg

`build` indexes the packed codes `serving.encode` wrote (see `harr_tf.index` for the
kinds). `add` appends the codes of new ids; with `--new-only` it takes the whole codes
file of `serving.encode --resume` and adds only the ids the index lacks. `remove` drops
ids. Each writes the index and its ids as one file, whole or not at all, holding the
index's lock: a second writer stops with one line naming the holder (or waits with
`--wait`) instead of writing over its codes. `query` sends the images to the served
model for their codes, the same way the collection was encoded, and prints the nearest ids
with their Hamming distances (or JSON with `--json`); `--rerank N` re-ranks the top N by
the inner product of the query's continuous code with each item's binary code.

This module is the command line; `serving.index_writes` holds build, add and remove,
`serving.image_query` the query.
"""

from __future__ import annotations

import argparse

from harr_tf.faiss_index_kinds import INDEX_KINDS
from harr_tf.flags import add_verbose, command_name, positive
from harr_tf.quiet import quiet_tensorflow
from serving.cli import add_endpoint_arguments, add_retry_arguments
from serving.image_query import query
from serving.index_writes import add, build, remove


def _add_search_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--nprobe", type=positive(int), help=f"ivf: cells scanned per query ({default})"
    )
    parser.add_argument(
        "--ef-search", type=positive(int), help=f"hnsw: search beam width ({default})"
    )
    parser.add_argument(
        "--nflip",
        type=positive(int, allow_zero=True),
        help=f"multihash: bits flipped per substring probe ({default})",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("serving.search"),
        description="Index a collection's binary codes with FAISS and search them with new "
        "images encoded by the served model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="index the codes of serving.encode")
    build_parser.add_argument(
        "--codes", required=True, help="codes file written by python -m serving.encode"
    )
    build_parser.add_argument(
        "--index",
        required=True,
        help="index file to write (the FAISS index and its ids), or a PostgreSQL table: "
        "postgresql://USER@HOST/DB?table=NAME (kinds flat, ivf, hnsw)",
    )
    build_parser.add_argument(
        "--kind",
        choices=INDEX_KINDS,
        default="flat",
        help="flat: exact Hamming ranking, linear in the collection; ivf: binary k-means "
        "cells, approximate; hnsw: a neighbour graph, approximate; multihash: multi-index "
        "hashing, exact within Hamming radius nhash*(nflip+1)-1 (default: flat)",
    )
    build_parser.add_argument(
        "--nlist", type=positive(int), help="ivf: number of cells (default: about sqrt(N))"
    )
    build_parser.add_argument(
        "--neighbours", type=positive(int), help="hnsw: links per code (default: 16)"
    )
    build_parser.add_argument(
        "--nhash",
        type=positive(int),
        help="multihash: hash tables, one per substring (default: substrings of about "
        "log2(N) bits)",
    )
    _add_search_options(build_parser, "saved with the index")
    query_parser = commands.add_parser("query", help="search the index with images")
    query_parser.add_argument("--index", required=True, help="index written by `build`")
    add_endpoint_arguments(query_parser)
    query_parser.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    query_parser.add_argument(
        "--top-k", type=positive(int), default=10, help="results per query (default: 10)"
    )
    _add_search_options(query_parser, "default: the index's own")
    query_parser.add_argument(
        "--rerank",
        type=positive(int),
        metavar="N",
        help="re-rank the N nearest by Hamming distance by the inner product of the "
        "query's continuous code with each item's binary code (asymmetric distance); "
        "results then carry a score",
    )
    query_parser.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="PostgreSQL index: rank only rows whose metadata column KEY equals VALUE "
        "(repeatable: all must hold)",
    )
    query_parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON: one {query, results: [{id, distance}]} per image, or {query, error} "
        "for an image that cannot be read or decoded",
    )
    add_retry_arguments(query_parser, deadline=30.0, retries=3)
    add_parser = commands.add_parser("add", help="add the codes of new ids to an index")
    add_parser.add_argument("--index", required=True, help="index written by `build`")
    add_parser.add_argument(
        "--codes", required=True, help="codes file written by python -m serving.encode"
    )
    add_parser.add_argument(
        "--new-only",
        action="store_true",
        help="add only the ids the index lacks (e.g. the codes file of serving.encode "
        "--resume after the collection grew); without it, ids already indexed are refused",
    )
    remove_parser = commands.add_parser("remove", help="remove ids from an index")
    remove_parser.add_argument("--index", required=True, help="index written by `build`")
    remove_parser.add_argument("--ids", required=True, nargs="+", help="ids to remove")
    for writer in (build_parser, add_parser):
        writer.add_argument(
            "--metadata",
            metavar="CSV",
            help="PostgreSQL index: text columns to store beside the codes, from a CSV file "
            "with a header row and an `id` column (for query --filter)",
        )
    for writer in (build_parser, add_parser, remove_parser):
        writer.add_argument(
            "--wait",
            action="store_true",
            help="if another process is writing the index, wait for it to finish instead "
            "of stopping",
        )
    add_verbose(query_parser)
    args = parser.parse_args(argv)
    if args.command == "query":  # the served model's client loads TensorFlow
        quiet_tensorflow(args.verbose)
    commands = {"build": build, "add": add, "remove": remove, "query": query}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
