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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from harr_tf.index import HammingIndex
from harr_tf.index_kinds import INDEX_KINDS, KIND_OPTIONS
from harr_tf.locks import LockHeld, exclusive
from harr_tf.postgres_index import index_class
from harr_tf.postgres_location import is_database_uri, redacted
from harr_tf.postgres_table import metadata_from_csv
from serving.cli import add_endpoint_arguments, add_retry_arguments, add_verbose_argument, positive
from serving.code_store import StoredCodes, load_codes_file
from serving.nearest import nearest

_QUERY_BATCH = 64
_BUILD_OPTIONS = ("nlist", "nprobe", "neighbours", "ef_search", "nhash", "nflip")
_SEARCH_OPTIONS = ("nprobe", "ef_search", "nflip")


def build(args: argparse.Namespace) -> int:
    stored = _load_codes(args.codes)
    start = time.monotonic()
    options = {name: getattr(args, name) for name in _BUILD_OPTIONS}
    database = is_database_uri(args.index)  # a table: its transaction is the lock
    lock = contextlib.nullcontext() if database else exclusive(args.index, wait=args.wait)
    with _writing(args.index), lock:
        try:
            options.update(_metadata(args, stored.ids.tolist()))
            index = index_class(args.index).build(
                stored.packed, stored.ids.tolist(), args.kind, progress=True, **options
            )
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err
        index.save(args.index, locked=True)
    print(
        f"Indexed {len(index)} {index.bits}-bit codes ({args.kind}) into {args.index} "
        f"in {time.monotonic() - start:.1f} s."
    )
    return 0


def add(args: argparse.Namespace) -> int:
    stored = _load_codes(args.codes)
    updating = index_class(args.index).updating
    with _writing(args.index), updating(args.index, wait=args.wait) as index:
        new = _add_codes(index, stored, args)
    print(
        f"Added {int(new.sum())} codes ({len(new) - int(new.sum())} already indexed) to "
        f"{args.index}, which holds {len(index)}."
    )
    return 0


def _add_codes(index: HammingIndex, stored: StoredCodes, args: argparse.Namespace) -> np.ndarray:
    """Adds the codes of `stored` to `index` (only its new ids with --new-only); returns
    which rows were added."""
    ids = stored.ids.tolist()
    present = {item: position for position, item in enumerate(index.ids)}
    new = np.array([item not in present for item in ids], dtype=bool)
    if not args.new_only:
        new[:] = True  # ids already indexed are refused by `index.add`
    elif not new.all():
        shared = np.flatnonzero(~new)
        old = index.codes(np.array([present[ids[row]] for row in shared]))
        differ = (old != stored.packed[shared]).any(axis=1)
        if differ.any():
            examples = [ids[row] for row in shared[differ][:5]]
            raise SystemExit(
                f"error: --codes {args.codes}: {int(differ.sum())} ids already in {args.index} "
                f"have other codes there, e.g. {examples}: the codes come from another model; "
                "rebuild the index from one codes file."
            )
    added = [ids[row] for row in np.flatnonzero(new)]
    try:
        index.add(stored.packed[new], added, **_metadata(args, added))
    except ValueError as err:
        hint = (
            " Pass --new-only to add only the ids the index lacks." if "already" in str(err) else ""
        )
        raise SystemExit(f"error: --codes {args.codes}: {err}{hint}") from err
    return new


def remove(args: argparse.Namespace) -> int:
    updating = index_class(args.index).updating
    with _writing(args.index), updating(args.index, wait=args.wait) as index:
        try:
            index.remove(args.ids)
        except ValueError as err:
            raise SystemExit(f"error: --ids: {err}") from err
    print(f"Removed {len(set(args.ids))} codes from {args.index}, which holds {len(index)}.")
    return 0


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


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    """Turns what stops a write of the index at `path` into one line: another writer
    holding its lock, an unreadable index, a full disk (the index is then as it was)."""
    try:
        yield
    except (LockHeld, ValueError, FileNotFoundError, ConnectionError) as err:
        raise SystemExit(f"error: --index {redacted(path)}: {err}") from err
    except OSError as err:
        raise SystemExit(
            f"error: --index {path}: cannot write it ({err.strerror or err}); the index is as "
            "it was before this command."
        ) from err


def _load_index(path: str) -> HammingIndex:
    try:
        return index_class(path).load(path)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        raise SystemExit(f"error: --index {redacted(path)}: {err}") from err


def _metadata(args: argparse.Namespace, ids: list[str]) -> dict:
    """{"metadata": columns} from --metadata for a table's `ids`; {} without it."""
    if getattr(args, "metadata", None) is None:
        return {}
    if not is_database_uri(args.index):
        raise SystemExit("error: --metadata needs a PostgreSQL --index: a FAISS file has none.")
    try:
        return {"metadata": metadata_from_csv(args.metadata, ids)}
    except (OSError, ValueError, UnicodeError) as err:
        raise SystemExit(f"error: --metadata {args.metadata}: {err}") from err


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


def _load_codes(path: str) -> StoredCodes:
    try:
        stored = load_codes_file(path)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: --codes {path}: {err}") from err
    if len(stored.ids) == 0:
        raise SystemExit(f"error: --codes {path} holds no codes; nothing to index.")
    return stored


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
    add_verbose_argument(query_parser)
    args = parser.parse_args(argv)
    commands = {"build": build, "add": add, "remove": remove, "query": query}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
