"""`serving.search query`: images sent to the served model for their codes, the same way
the collection was encoded, and the nearest ids of the index printed with their Hamming
distances (or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harr_tf.faiss_index_kinds import KIND_OPTIONS
from harr_tf.index import HammingIndex
from harr_tf.postgres_index import index_class
from harr_tf.postgres_location import redacted
from serving.ranking import nearest

_QUERY_BATCH = 64
_SEARCH_OPTIONS = ("nprobe", "ef_search", "nflip")


def query(args: argparse.Namespace) -> int:
    # Imported here: the client loads TensorFlow, which `build` does not need.
    from serving.client import RequestFailed, ServingClient

    index = _load_index(args.index)
    if args.rerank is not None and args.rerank < args.top_k:
        raise SystemExit(f"error: --rerank {args.rerank} must be at least --top-k {args.top_k}.")
    if len(index) == 0:
        raise SystemExit(f"error: --index {args.index} holds no codes yet: nothing to search.")
    options = {name: getattr(args, name) for name in _SEARCH_OPTIONS}
    for name, value in options.items():
        if value is not None and name not in KIND_OPTIONS[index.kind]:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(f"error: {flag} does not apply to {args.index}, a {index.kind} index.")
    options.update(_filters(args, index))
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
                batch = client.encode(
                    [contents for _, contents in chunk], continuous=bool(args.rerank)
                )
                for position, message in batch.failures.items():
                    name = chunk[position][0]
                    answers[name] = {"query": name, "error": message.strip().splitlines()[0]}
                if not len(batch.positions):
                    continue
                found = nearest(
                    index,
                    batch.packed,
                    args.top_k,
                    continuous=batch.continuous,
                    rerank=args.rerank,
                    **options,
                )
                for position, results in zip(batch.positions, found, strict=True):
                    name = chunk[position][0]
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
            score = f"  {result['score']:>8.3f}" if "score" in result else ""
            print(f"  {rank:>4}  {result['distance']:>4}{score}  {result['id']}")


def _load_index(path: str) -> HammingIndex:
    try:
        return index_class(path).load(path)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        raise SystemExit(f"error: --index {redacted(path)}: {err}") from err


def _filters(args: argparse.Namespace, index) -> dict:
    """{"filters": {column: value}} from --filter KEY=VALUE; {} without it."""
    if not args.filter:
        return {}
    columns = getattr(index, "metadata_columns", ())
    filters = dict(item.partition("=")[::2] for item in args.filter)
    wrong = [key for key in filters if key not in columns]
    if wrong or not all("=" in item for item in args.filter):
        raise SystemExit(
            f"error: --filter {args.filter}: expected KEY=VALUE with KEY a metadata column "
            f"of --index; its columns are {list(columns)}."
        )
    return {"filters": filters}
