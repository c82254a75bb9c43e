"""`python -m serving.encode --index postgresql://...`: codes straight into a PostgreSQL table.

    python -m serving.encode --server replica0:8500 --input photos/ \\
        --index "postgresql://me@db/photos?table=harr_64" --shard 0/2

Every batch is written as it comes back, in its own statement: an id already in the table
is skipped (replaced with `--overwrite`, keeping its place among ties), so N encoders, each
with `--shard I/N` against its own server, fill one table at once without losing or
repeating an item, and a killed encoder loses at most its batches in flight. `--resume`
sends only the ids the table lacks. The table is created (flat, see
`harr_tf.postgres_index`) if missing; one of another code length is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from harr_tf.postgres_index import PostgresIndex
from serving.client import RequestFailed, ServingClient
from serving.code_store import CodesOrigin
from serving.collection import Collection, open_collection
from serving.collection_encoding import encode_collection, named_failures, stopped_encoding


def shard(collection: Collection, spec: str | None) -> Collection:
    """The items i of `collection` with i mod N = I, for `spec` "I/N" (all for None)."""
    if spec is None:
        return collection
    try:
        part, count = (int(number) for number in spec.split("/"))
    except ValueError:
        part, count = -1, 0
    if not 0 <= part < count:
        raise ValueError(f"--shard {spec}: expected I/N with 0 <= I < N, e.g. 0/2 and 1/2.")
    return _subset(collection, range(part, len(collection), count))


def _subset(collection: Collection, positions) -> Collection:
    positions = list(positions)
    return dataclasses.replace(
        collection,
        ids=tuple(collection.ids[position] for position in positions),
        read=lambda index: collection.read(positions[index]),
    )


@dataclasses.dataclass
class TableStore:
    """What `encode_collection` checkpoints into, writing each batch to the table."""

    index: PostgresIndex
    overwrite: bool
    written: int = 0

    def begin(self, origin: CodesOrigin) -> None:
        """Nothing to prepare: the table exists, and its length was checked."""

    def checkpoint(self, ids: list[str], codes: np.ndarray, packed: np.ndarray) -> None:
        if ids:
            self.written += self.index.write(ids, packed, overwrite=self.overwrite)


def run_into_table(args: argparse.Namespace) -> int:
    """`serving.encode` with `--index`; returns the exit status."""
    if args.index is None:
        raise SystemExit(
            "error: --shard needs --index postgresql://...: N encoders share a "
            "table, not a codes file."
        )
    try:
        collection = shard(open_collection(args.input), args.shard)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    client = ServingClient(
        args.server, args.model, args.signature, deadline=args.deadline, retries=args.retries
    )
    start = time.monotonic()
    with client:
        try:
            info = client.describe()
        except RequestFailed as err:
            raise SystemExit(f"error: {err}") from err
        client.version = info.version  # every code of this run from one version
        try:
            index = PostgresIndex.open_for_writing(args.index, info.bits)
            pending = collection
            if args.resume:
                missing = set(index.missing(collection.ids))
                pending = _subset(
                    collection,
                    [position for position, item in enumerate(collection.ids) if item in missing],
                )
        except (ValueError, OSError) as err:
            raise SystemExit(f"error: --index {args.index}: {err}") from err
        store = TableStore(index, args.overwrite)
        origin = CodesOrigin(args.model, info.version, args.signature, info.bits)
        try:
            _, failures = encode_collection(
                client,
                pending,
                store,
                origin,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                checkpoint_seconds=0.0,
                max_pixels=args.max_pixels,
            )
        except (RequestFailed, KeyboardInterrupt) as err:
            kept = f"The {store.written} codes received so far are in the table"
            return stopped_encoding(err, kept)
        finally:
            index.close()
    seconds = time.monotonic() - start
    print(
        f"Wrote {store.written} codes of {len(pending)} items sent ({len(collection)} in this "
        f"shard, {store.written / seconds:.0f} images/s) from {args.model} version "
        f"{info.version} into {index.location}."
    )
    if failures:
        lines = "\n".join(named_failures(failures))
        print(
            f"Skipped {len(failures)} items that could not be read or decoded:\n{lines}",
            file=sys.stderr,
        )
    return 0
