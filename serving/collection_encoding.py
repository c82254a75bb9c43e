"""Encoding a collection through a served model, batch by batch, several requests at a
time: what `serving.encode` does into a codes file and `serving.encode_table` into a
PostgreSQL table. Unreadable files, images over the pixel budget (never sent) and images
the server cannot decode are left out with their reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from harr_tf.config import MAX_IMAGE_PIXELS
from harr_tf.data.image_header import TooManyPixels, check_pixels
from serving.client import RequestFailed, ServingClient, map_concurrently
from serving.code_store import CodesOrigin, CodeStore, StoredCodes
from serving.collection import Collection

_CHECKPOINT_SECONDS = 5.0
_NAMED_FAILURES = 20


def encode_collection(
    client: ServingClient,
    collection: Collection,
    store: CodeStore,
    origin: CodesOrigin,
    *,
    previous: StoredCodes | None = None,
    batch_size: int = 64,
    concurrency: int = 4,
    progress: bool = True,
    checkpoint_seconds: float = _CHECKPOINT_SECONDS,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[StoredCodes, dict[str, str]]:
    """Encodes the items of `collection` not in `previous`, checkpointing into `store`
    every `checkpoint_seconds` (a table of `serving.encode_table`: every batch).

    Returns every code (previous ones first) and `{id: reason}` of the items skipped
    (among them those declaring more than `max_pixels` pixels, which are not sent).
    On an error or interrupt, what was received is checkpointed before it propagates.
    """
    done = set(previous.ids.tolist()) if previous is not None else set()
    pending = [position for position, item in enumerate(collection.ids) if item not in done]
    batches = [pending[start : start + batch_size] for start in range(0, len(pending), batch_size)]
    received: list[tuple[list[str], np.ndarray, np.ndarray]] = []
    failures: dict[str, str] = {}
    store.begin(origin)
    saved, last_save = 0, time.monotonic()

    def request(positions: list[int]):
        return _encode_batch(client, collection, positions, max_pixels)

    bar = tqdm(total=len(pending), desc="Encoding", unit="image", disable=not progress)
    try:
        for _, (ids, codes, packed, failed) in map_concurrently(request, batches, concurrency):
            received.append((ids, codes, packed))
            failures.update(failed)
            bar.update(len(ids) + len(failed))
            if failures:
                bar.set_postfix(skipped=len(failures))
            if time.monotonic() - last_save >= checkpoint_seconds:
                saved, last_save = _checkpoint(store, received, saved), time.monotonic()
    finally:
        bar.close()
        _checkpoint(store, received, saved)
    pieces = (
        [(list(previous.ids), previous.codes, previous.packed)] if previous else []
    ) + received
    return _merged(pieces, origin.bits), failures


def _encode_batch(
    client: ServingClient, collection: Collection, positions: list[int], max_pixels: int
):
    """(ids, codes, packed, {id: reason}) of one batch: unreadable files, images over
    `max_pixels` and images the server cannot decode are left out with their reason."""
    images, readable, failures = [], [], {}
    for position in positions:
        try:
            contents = collection.read(position)
            check_pixels(contents, max_pixels, "the image")
        except OSError as err:
            failures[collection.ids[position]] = f"cannot read the file: {err.strerror or err}"
        except TooManyPixels as err:
            failures[collection.ids[position]] = str(err)
        else:
            images.append(contents)
            readable.append(position)
    batch = client.encode(images)
    for index, message in batch.failures.items():
        failures[collection.ids[readable[index]]] = message.strip().splitlines()[0]
    ids = [collection.ids[readable[index]] for index in batch.positions]
    return ids, batch.codes, batch.packed, failures


def _checkpoint(store: CodeStore, received: list, saved: int) -> int:
    """Saves `received[saved:]` as one checkpoint part; returns the new count saved."""
    if saved < len(received):
        ids = [item for piece in received[saved:] for item in piece[0]]
        codes, packed = (np.concatenate([piece[k] for piece in received[saved:]]) for k in (1, 2))
        store.checkpoint(ids, codes, packed)
    return len(received)


def _merged(pieces: list, bits: int) -> StoredCodes:
    ids = [item for piece in pieces for item in piece[0]]
    codes = [np.zeros((0, bits), np.int8)] + [piece[1] for piece in pieces]
    packed = [np.zeros((0, bits // 8), np.uint8)] + [piece[2] for piece in pieces]
    return StoredCodes(
        np.array(ids, dtype=str), np.concatenate(codes), np.concatenate(packed), None
    )


def named_failures(failures: dict[str, str]) -> Iterator[str]:
    for item, reason in list(failures.items())[:_NAMED_FAILURES]:
        yield f"  {item}: {reason}"
    if len(failures) > _NAMED_FAILURES:
        yield f"  ... and {len(failures) - _NAMED_FAILURES} more"


def stopped_encoding(err: RequestFailed | KeyboardInterrupt, kept: str) -> int:
    """One line for an encoding run stopped by Ctrl-C, SIGTERM or a request that failed
    its retries, after `kept` (where the codes received so far are), and the exit status:
    130 for a stop, 1 for a failure. `--resume` continues from what was kept."""
    reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"error: {err}"
    print(f"{reason}. {kept}; run the same command with --resume to continue.", file=sys.stderr)
    return 130 if isinstance(err, KeyboardInterrupt) else 1
