"""A FAISS binary index over packed hash codes, with the item ids stored beside it.

Codes are packed in numpy `packbits` order (DESIGN §2.5); FAISS compares them by the
popcount of their XOR, so the bit order inside a byte does not change any distance.
Four kinds (`harr_tf.faiss_index_kinds`): `flat` is exact; `ivf`, `hnsw` and `multihash` are
approximate (`multihash` is exact up to its `exact_radius`).

The index and its ids are one file (`harr_tf.index_file`), written whole by one writer
at a time: `save` and `updating` hold the file's lock (`harr_tf.locks`). Positions are
always 0..n-1 in the order of `ids`: `add` appends, `remove` rebuilds from the kept codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from harr_tf.faiss_index_kinds import check_kind, new_faiss_index, search_option_holder
from harr_tf.index_checks import check_build, check_ids, check_packed, search_overrides
from harr_tf.index_file import read_index_file, write_index_file
from harr_tf.locks import exclusive

_ADD_CHUNK = 65536


class HammingIndex:
    """Top-k Hamming search over packed codes (n, bits/8) uint8, answering with ids.

    Example:

    >>> packed = np.packbits(np.random.default_rng(0).integers(0, 2, (100, 64)), axis=1)
    >>> index = HammingIndex.build(packed, [f"item{i}" for i in range(100)])
    >>> distances, positions = index.search(packed[:2], k=1)
    >>> distances[:, 0].tolist(), [index.ids[p] for p in positions[:, 0]]
    ([0, 0], ['item0', 'item1'])

    Args:
        index: a FAISS binary index holding `len(ids)` codes.
        ids: the id of each indexed code, in the order they were added.
        kind: one of `INDEX_KINDS`, what `index` is.
    """

    def __init__(self, index: faiss.IndexBinary, ids: Sequence[str], kind: str) -> None:
        check_kind(kind)
        if index.ntotal != len(ids):
            raise ValueError(f"The index holds {index.ntotal} codes but {len(ids)} ids were given.")
        if kind == "flat":
            # FAISS's counting top-k instead of a heap per query: also exact, and faster
            # for short codes (0.87 s against 1.13 s for 1,000 queries over 10^6 64-bit
            # codes on one core). Not saved with the index, so set on every load too.
            index.use_heap = False
        self.index, self.ids, self.kind = index, list(ids), kind

    @classmethod
    def build(
        cls,
        packed: np.ndarray,
        ids: Sequence[str],
        kind: str = "flat",
        *,
        seed: int = 0,
        progress: bool = False,
        **options: int | None,
    ) -> HammingIndex:
        """Index `packed` (n, bits/8) uint8 codes under `ids`.

        Args:
            kind: one of `INDEX_KINDS`. Defaults to "flat".
            seed: for "ivf", seeds the training sample. Defaults to 0.
            progress: show a progress bar while adding codes. Defaults to False.
            **options: the kind's `KIND_OPTIONS`, each None for its default: ivf `nlist`
                (`default_nlist(n)`) and `nprobe` (nlist / 16); hnsw `neighbours` (16)
                and `ef_search` (64); multihash `nhash` (`default_nhash(n, bits)`) and
                `nflip` (1).
        """
        check_kind(kind)
        packed = check_build(packed, ids)
        index = new_faiss_index(kind, packed, seed, **options)
        _add_chunks(index, packed, progress)
        return cls(index, ids, kind)

    @property
    def bits(self) -> int:
        return self.index.d

    @property
    def exact_radius(self) -> int | None:
        """The radius within which every neighbour is found: bits for "flat", the
        pigeonhole bound for "multihash", None (no guarantee) for the others."""
        if self.kind == "flat":
            return self.bits
        if self.kind == "multihash":
            return self.index.nhash * (self.index.nflip + 1) - 1
        return None

    def __len__(self) -> int:
        return self.index.ntotal

    def search(
        self,
        packed_queries: np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        nflip: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances (nq, k) int32 and positions (nq, k) int64 of the k nearest codes.

        Rows are ordered by distance, then by position, so equal distances come out in
        one order. `k` is clipped to the index size; an approximate index may find fewer
        than k codes, and pads with position -1. `nprobe` (ivf), `ef_search` (hnsw) or
        `nflip` (multihash) override the saved search option, for this search only.
        """
        queries = self.check_queries(packed_queries)
        given = search_overrides(self.kind, k, nprobe=nprobe, ef_search=ef_search, nflip=nflip)
        saved = self.search_option
        try:
            for value in given.values():
                self.search_option = value
            distances, positions = self.index.search(queries, min(k, len(self)))
        finally:
            if saved is not None:
                self.search_option = saved
        # Missing results (position -1) come last, then by distance, then by position.
        missing = positions < 0
        order = np.lexsort((positions, distances, missing), axis=1)
        return (
            np.take_along_axis(distances, order, axis=1).astype(np.int32),
            np.take_along_axis(positions, order, axis=1),
        )

    @property
    def search_option(self) -> int | None:
        """The saved search-time option: nprobe, ef_search or nflip; None for "flat"."""
        holder, name = search_option_holder(self.index, self.kind)
        return None if holder is None else getattr(holder, name)

    @search_option.setter
    def search_option(self, value: int) -> None:
        holder, name = search_option_holder(self.index, self.kind)
        setattr(holder, name, value)

    def check_queries(self, packed_queries: np.ndarray) -> np.ndarray:
        """`packed_queries` as contiguous uint8, or an error if their length differs."""
        queries = check_packed(packed_queries, "packed_queries")
        if queries.shape[1] * 8 != self.bits:
            raise ValueError(
                f"Codes of {queries.shape[1] * 8} bits but the index holds {self.bits}-bit "
                "codes: encode them with the model that encoded the collection."
            )
        return queries

    def codes(self, positions: np.ndarray | None = None) -> np.ndarray:
        """A copy of the packed codes (m, bits/8) at `positions` (all of them when None)."""
        if self.kind == "ivf":  # its codes are spread over the cells' lists
            every = self.index.reconstruct_n(0, len(self))
        else:  # a view of the flat code array, without copying all of it
            storage = self.index
            if self.kind in ("hnsw", "multihash"):
                storage = faiss.downcast_IndexBinary(self.index.storage)
            size = len(self) * storage.code_size
            every = faiss.rev_swig_ptr(storage.xb.data(), size).reshape(len(self), -1)
        return every.copy() if positions is None else every[np.asarray(positions, np.int64)]

    def add(self, packed: np.ndarray, ids: Sequence[str]) -> None:
        """Appends codes under new `ids`; refuses ids already indexed, changing nothing."""
        packed = self.check_queries(packed)
        check_ids(packed, ids)
        present = set(self.ids).intersection(ids)
        if present:
            raise ValueError(
                f"{len(present)} of the ids are already in the index, e.g. "
                f"{sorted(present)[:5]}: remove them first, or add only new ids."
            )
        _add_chunks(self.index, packed, progress=False)
        self.ids.extend(ids)

    def remove(self, ids: Sequence[str]) -> None:
        """Drops the codes of `ids`; refuses ids not indexed, changing nothing.

        The kept codes are re-added in order, so positions stay 0..n-1 (an "ivf" index
        keeps its trained cells; an "hnsw" graph is rebuilt, which takes the build's time).
        """
        unknown = set(ids).difference(self.ids)
        if unknown:
            raise ValueError(f"{len(unknown)} ids are not in the index, e.g. {sorted(unknown)[:5]}")
        dropped = set(ids)
        keep = np.array([item not in dropped for item in self.ids])
        if keep.all():
            return
        if not keep.any():
            raise ValueError("Cannot remove every code: an index holds at least one.")
        kept = self.codes()[keep]
        self.index.reset()
        _add_chunks(self.index, kept, progress=False)
        self.ids = [item for item, kept_it in zip(self.ids, keep, strict=True) if kept_it]

    def save(self, path: str | Path, *, wait: bool = False, locked: bool = False) -> None:
        """Writes the index and its ids to `path` as one file, whole or not at all (an
        error leaves the file as it was), holding the file's lock while it writes.

        Args:
            wait: wait for another writer of `path` to finish instead of raising.
            locked: the caller already holds `path`'s lock (`harr_tf.locks.exclusive`).

        Raises:
            harr_tf.locks.LockHeld: another process is writing `path` (unless `wait`).
        """
        with contextlib.nullcontext() if locked else exclusive(path, wait=wait):
            write_index_file(path, self.index, self.kind, self.ids)

    @classmethod
    def load(cls, path: str | Path) -> HammingIndex:
        """The index saved at `path`, with its ids, both from one write."""
        index, kind, ids = read_index_file(path)
        return cls(index, ids, kind)

    @classmethod
    @contextlib.contextmanager
    def updating(cls, path: str | Path, *, wait: bool = False) -> Iterator[HammingIndex]:
        """Loads the index at `path` under its lock and saves it when the block ends
        without an error, so that two processes changing one index (`add`, `remove`)
        each see the other's change instead of writing over it.

        Raises:
            harr_tf.locks.LockHeld: another process is writing `path` (unless `wait`).
        """
        with exclusive(path, wait=wait):
            index = cls.load(path)
            yield index
            index.save(path, locked=True)


def _add_chunks(index: faiss.IndexBinary, packed: np.ndarray, progress: bool) -> None:
    with tqdm(total=len(packed), desc="Indexing", unit="code", disable=not progress) as bar:
        for start in range(0, len(packed), _ADD_CHUNK):
            index.add(packed[start : start + _ADD_CHUNK])
            bar.update(len(packed[start : start + _ADD_CHUNK]))
