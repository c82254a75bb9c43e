"""`serving.search build|add|remove`: an index written from the codes files of
`serving.encode`, whole or not at all, holding the index's lock (a FAISS file) or in one
transaction (a PostgreSQL table); what stops a write is one line, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import numpy as np

from harr_tf.index import HammingIndex
from harr_tf.locks import LockHeld, exclusive
from harr_tf.postgres_index import index_class
from harr_tf.postgres_location import is_database_uri, redacted
from harr_tf.postgres_table import metadata_from_csv
from serving.code_store import StoredCodes, load_codes_file

_BUILD_OPTIONS = ("nlist", "nprobe", "neighbours", "ef_search", "nhash", "nflip")


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


def _load_codes(path: str) -> StoredCodes:
    try:
        stored = load_codes_file(path)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: --codes {path}: {err}") from err
    if len(stored.ids) == 0:
        raise SystemExit(f"error: --codes {path} holds no codes; nothing to index.")
    return stored
