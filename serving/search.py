"""Hamming search over a collection's codes: build a FAISS index, query it with new images.

    python -m serving.search build --codes codes.npz --index harr.faiss [--kind flat|ivf]
    python -m serving.search query --index harr.faiss --server localhost:8500 photo.jpg

`build` indexes the packed codes `serving.encode` wrote (see `harr_tf.index`). `query`
sends the images to the served model for their codes, the same way the collection was
encoded, and prints the nearest ids with their Hamming distances (or JSON with `--json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harr_tf.index import INDEX_KINDS, HammingIndex, ids_path
from serving.cli import add_endpoint_arguments, add_retry_arguments, positive
from serving.code_store import load_codes_file

_QUERY_BATCH = 64


def build(args: argparse.Namespace) -> int:
    try:
        stored = load_codes_file(args.codes)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: --codes {args.codes}: {err}") from err
    if len(stored.ids) == 0:
        raise SystemExit(f"error: --codes {args.codes} holds no codes; nothing to index.")
    start = time.monotonic()
    try:
        index = HammingIndex.build(
            stored.packed,
            stored.ids.tolist(),
            args.kind,
            nlist=args.nlist,
            nprobe=args.nprobe,
            progress=True,
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    index.save(args.index)
    print(
        f"Indexed {len(index)} {index.bits}-bit codes ({args.kind}) into {args.index} and "
        f"{ids_path(args.index)} in {time.monotonic() - start:.1f} s."
    )
    return 0


def query(args: argparse.Namespace) -> int:
    # Imported here: the client loads TensorFlow, which `build` does not need.
    from serving.client import RequestFailed, ServingClient

    try:
        index = HammingIndex.load(args.index)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: --index {args.index}: {err}") from err
    if args.nprobe is not None and index.kind != "ivf":
        raise SystemExit(f"error: --nprobe applies to an ivf index; {args.index} is {index.kind}.")
    answers: dict[str, dict] = {}
    readable: list[tuple[str, bytes]] = []
    for image in args.images:
        try:
            readable.append((image, Path(image).read_bytes()))
        except OSError as err:
            answers[image] = {"query": image, "error": f"cannot read the file: {err.strerror}"}
    with ServingClient(
        args.server, args.model, args.signature, deadline=args.deadline, retries=args.retries
    ) as client:
        try:
            bits = client.describe().bits
            if bits != index.bits:
                raise SystemExit(
                    f"error: the served model gives {bits}-bit codes but {args.index} holds "
                    f"{index.bits}-bit codes: query with the model that encoded the collection."
                )
            for start in range(0, len(readable), _QUERY_BATCH):
                chunk = readable[start : start + _QUERY_BATCH]
                batch = client.encode([contents for _, contents in chunk])
                for position, message in batch.failures.items():
                    name = chunk[position][0]
                    answers[name] = {"query": name, "error": message.strip().splitlines()[0]}
                distances, positions = index.search(batch.packed, args.top_k, nprobe=args.nprobe)
                for row, position in enumerate(batch.positions):
                    name = chunk[position][0]
                    found = zip(positions[row], distances[row], strict=True)
                    results = [
                        {"id": index.ids[found_at], "distance": int(distance)}
                        for found_at, distance in found
                        if found_at >= 0  # an ivf index pads with -1 when it finds fewer
                    ]
                    answers[name] = {"query": name, "results": results}
        except RequestFailed as err:
            raise SystemExit(f"error: {err}") from err
    ordered = [answers[image] for image in dict.fromkeys(args.images)]
    if args.json:
        print(json.dumps(ordered, indent=2))
    else:
        _print_table(ordered)
    failed = [answer for answer in ordered if "error" in answer]
    for answer in failed:
        print(f"error: {answer['query']}: {answer['error']}", file=sys.stderr)
    return 1 if failed else 0


def _print_table(answers: list[dict]) -> None:
    for answer in answers:
        if "results" not in answer:
            continue
        print(answer["query"])
        for rank, result in enumerate(answer["results"], start=1):
            print(f"  {rank:>4}  {result['distance']:>4}  {result['id']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.search",
        description="Index a collection's binary codes with FAISS and search them with new "
        "images encoded by the served model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="index the codes of serving.encode")
    build_parser.add_argument(
        "--codes", required=True, help="codes file written by python -m serving.encode"
    )
    build_parser.add_argument(
        "--index", required=True, help="index file to write; ids go to INDEX.ids.json beside it"
    )
    build_parser.add_argument(
        "--kind",
        choices=INDEX_KINDS,
        default="flat",
        help="flat: exact Hamming ranking, linear in the collection; ivf: sub-linear "
        "(binary k-means cells), approximate (default: flat)",
    )
    build_parser.add_argument(
        "--nlist", type=positive(int), help="ivf: number of cells (default: about sqrt(N))"
    )
    build_parser.add_argument(
        "--nprobe",
        type=positive(int),
        help="ivf: cells scanned per query, saved with the index (default: nlist / 16)",
    )
    query_parser = commands.add_parser("query", help="search the index with images")
    query_parser.add_argument("--index", required=True, help="index written by `build`")
    add_endpoint_arguments(query_parser)
    query_parser.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    query_parser.add_argument(
        "--top-k", type=positive(int), default=10, help="results per query (default: 10)"
    )
    query_parser.add_argument(
        "--nprobe", type=positive(int), help="ivf: cells to scan (default: the index's own)"
    )
    query_parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON: one {query, results: [{id, distance}]} per image, or {query, error} "
        "for an image that cannot be read or decoded",
    )
    add_retry_arguments(query_parser, deadline=30.0, retries=3)
    args = parser.parse_args(argv)
    return build(args) if args.command == "build" else query(args)


if __name__ == "__main__":
    raise SystemExit(main())
