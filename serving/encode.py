"""Codes for a whole image collection from a served model, over gRPC.

    python -m serving.encode --server localhost:8500 --model harr --input photos/ --out codes.npz

Batches of encoded images go to TensorFlow Serving (or `serving.server`), several at a
time; the codes come back into `codes.npz` with the item ids (see `serving.code_store`).
Progress is checkpointed every few seconds, so an interrupted run continues with
`--resume`, which also encodes only the new items of a collection that grew. Every code of
one file comes from one model version: the first run pins the version the server serves.
Files the server cannot decode, and images whose header declares more than `--max-pixels`
pixels (never sent), are named, recorded in the file, and skipped. A full disk stops the
run with one line; the checkpoint keeps what was saved, for `--resume`.
"""

from __future__ import annotations

if __name__ == "__main__":  # a command: TensorFlow's start-up lines are not its output
    from harr_tf.quiet import quiet_command_start

    quiet_command_start()

import argparse
import logging
import signal
import sys
import time

from harr_tf.config import MAX_IMAGE_PIXELS
from harr_tf.flags import add_verbose, command_name, positive
from harr_tf.quiet import log_to_stderr
from serving.cli import add_endpoint_arguments, add_retry_arguments
from serving.client import RequestFailed, ServingClient
from serving.code_store import CodesOrigin, CodeStore
from serving.collection import INPUT_FORMS, open_collection
from serving.collection_encoding import encode_collection, named_failures, stopped_encoding

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """The CLI's work; returns the exit status."""
    store = CodeStore(args.out)
    if store.out.is_dir():
        raise SystemExit(f"error: --out {args.out} is a folder; expected a file, e.g. codes.npz.")
    if store.has_progress() and not (args.resume or args.overwrite):
        raise SystemExit(
            f"error: --out {args.out} (or its checkpoint {store.parts}) exists. Pass --resume "
            "to continue it (only items without codes are sent), or --overwrite to start over."
        )
    if args.overwrite:
        store.clear()
    try:
        collection = open_collection(args.input)
        previous = store.load()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    pinned = previous.origin.model_version if previous and previous.origin else None
    client = ServingClient(
        args.server,
        args.model,
        args.signature,
        version=pinned,
        deadline=args.deadline,
        retries=args.retries,
    )
    start = time.monotonic()
    with client:
        try:
            info = client.describe()
        except RequestFailed as err:
            hint = (
                f" The codes in {args.out} come from version {pinned}: encode into a new "
                "--out, or pass --overwrite."
                if pinned is not None
                else ""
            )
            raise SystemExit(f"error: {err}.{hint}") from err
        origin = CodesOrigin(args.model, info.version, args.signature, info.bits)
        if previous is not None and previous.origin not in (None, origin):
            raise SystemExit(
                f"error: {args.out} holds codes of {previous.origin}, not of {origin}. "
                "Encode into a new --out, or pass --overwrite."
            )
        client.version = info.version  # every code of this file from one version
        try:
            encoded, failures = encode_collection(
                client,
                collection,
                store,
                origin,
                previous=previous,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                max_pixels=args.max_pixels,
            )
        except OSError as err:  # the checkpoint could not be written: a full disk
            return _cannot_write(err, store)
        except (RequestFailed, KeyboardInterrupt) as err:
            return stopped_encoding(err, f"The codes received so far are saved in {store.parts}")
    try:
        count = store.finish(collection.ids, encoded, failures, origin)
    except OSError as err:
        return _cannot_write(err, store)
    seconds = time.monotonic() - start
    new = len(encoded.ids) - (len(previous.ids) if previous else 0)
    if previous is not None and (gone := set(previous.ids.tolist()) - set(collection.ids)):
        logger.warning(
            "%d codes of %s are of items no longer in --input %s; the new file leaves them out.",
            len(gone),
            args.out,
            args.input,
        )
    print(
        f"Wrote {count} codes of {len(collection)} items ({new} new, {new / seconds:.0f} "
        f"images/s) from {args.model} version {info.version} to {args.out}."
    )
    if failures:
        lines = "\n".join(named_failures(failures))
        print(
            f"Skipped {len(failures)} items that could not be read or decoded (listed in "
            f"failed_ids / failed_reasons of {args.out}):\n{lines}",
            file=sys.stderr,
        )
    return 0


def _cannot_write(err: OSError, store: CodeStore) -> int:
    print(
        f"error: cannot write {err.filename or store.out}: {err.strerror or err}. The codes "
        f"saved so far are in {store.parts}; make room, then run the same command with "
        "--resume to continue.",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("serving.encode"),
        description="Encode every image of a collection into binary codes through a "
        "TensorFlow Serving (or serving.server) gRPC endpoint.",
    )
    add_endpoint_arguments(parser)
    parser.add_argument("--input", required=True, help=f"the images: {INPUT_FORMS}")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="codes file to write, e.g. codes.npz (ids, codes, packed)")
    target.add_argument(
        "--index",
        help="or a PostgreSQL table to write the codes into as they come back: "
        "postgresql://USER@HOST/DB?table=NAME (see serving.encode_table)",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="with --index: encode only the I-th of N disjoint slices of the collection "
        "(I from 0), so N encoders fill one table at once",
    )
    parser.add_argument(
        "--batch-size", type=positive(int), default=64, help="images per request (default: 64)"
    )
    parser.add_argument(
        "--concurrency",
        type=positive(int),
        default=4,
        help="requests in flight at once (default: 4)",
    )
    add_retry_arguments(parser, deadline=60.0, retries=8)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run, or extend a finished --out with the collection's "
        "new items; only items without codes are sent",
    )
    resume.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an existing --out and its checkpoint (with --index: replace the codes "
        "of ids already in the table instead of skipping them)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive(int),
        default=MAX_IMAGE_PIXELS,
        help="files whose header declares more pixels are skipped, unsent (default: %(default)s)",
    )
    add_verbose(parser)
    args = parser.parse_args(argv)
    log_to_stderr(logging.WARNING, "%(levelname)s %(message)s")
    # SIGTERM ends the run as Ctrl-C does: checkpoint what was received, then exit.
    previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.index is not None or args.shard is not None:
            from serving.encode_table import run_into_table

            return run_into_table(args)
        return run(args)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    raise SystemExit(main())
