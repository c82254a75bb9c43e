"""A FAISS binary index over packed hash codes, with the item ids stored beside it.

Codes are packed in numpy `packbits` order (DESIGN §2.5); FAISS compares them by the
popcount of their XOR, so the bit order inside a byte does not change any distance.
Two kinds: `flat` (`IndexBinaryFlat`, exact Hamming ranking) and `ivf`
(`IndexBinaryIVF`, sub-linear: binary k-means cells, `nprobe` of them scanned per
query). The index is one FAISS file (`faiss.read_index_binary` opens it as is); the
ids and the kind go to `<index>.ids.json` beside it, and loading checks the two agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from harr_tf.atomic import atomic_path, write_text_atomically

INDEX_KINDS = ("flat", "ivf")
_ADD_CHUNK = 65536
# k-means wants at least 39 points per cell; more than 256 per cell buys little accuracy.
_MIN_POINTS_PER_CELL = 39
_TRAIN_POINTS_PER_CELL = 256


def ids_path(index_path: str | Path) -> Path:
    """Where the ids of the index at `index_path` are stored."""
    return Path(f"{index_path}.ids.json")


def default_nlist(count: int) -> int:
    """About √n cells, but never fewer than 39 training points per cell."""
    return max(1, min(round(math.sqrt(count)), count // _MIN_POINTS_PER_CELL))


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
        if kind not in INDEX_KINDS:
            raise ValueError(f"`kind` must be one of {INDEX_KINDS}. Received: kind={kind!r}")
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
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> HammingIndex:
        """Index `packed` (n, bits/8) uint8 codes under `ids`.

        Args:
            kind: "flat" (exact) or "ivf" (sub-linear). Defaults to "flat".
            nlist: for "ivf", the number of cells. Defaults to `default_nlist(n)`.
            nprobe: for "ivf", cells scanned per query (saved with the index, changeable
                per search). Defaults to nlist / 16.
            seed: for "ivf", seeds the training sample. Defaults to 0.
            progress: show a progress bar while adding codes. Defaults to False.
        """
        if kind not in INDEX_KINDS:
            raise ValueError(f"`kind` must be one of {INDEX_KINDS}. Received: kind={kind!r}")
        packed = _check_packed(packed, "packed")
        if len(packed) != len(ids):
            raise ValueError(f"{len(packed)} codes but {len(ids)} ids: expected one id per code.")
        if len(packed) == 0:
            raise ValueError("Cannot build an index of zero codes.")
        if kind != "ivf" and (nlist is not None or nprobe is not None):
            raise ValueError(f"`nlist` and `nprobe` apply to kind='ivf' only. Received: {kind=}")
        bits = packed.shape[1] * 8
        if kind == "flat":
            index = faiss.IndexBinaryFlat(bits)
        else:
            index = _trained_ivf(packed, bits, nlist or default_nlist(len(packed)), seed)
            index.nprobe = nprobe or max(1, index.nlist // 16)
        with tqdm(total=len(packed), desc="Indexing", unit="code", disable=not progress) as bar:
            for start in range(0, len(packed), _ADD_CHUNK):
                index.add(packed[start : start + _ADD_CHUNK])
                bar.update(len(packed[start : start + _ADD_CHUNK]))
        return cls(index, ids, kind)

    @property
    def bits(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def search(
        self, packed_queries: np.ndarray, k: int = 10, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances (nq, k) int32 and positions (nq, k) int64 of the k nearest codes.

        Rows are ordered by distance, then by position, so equal distances come out in
        one order. `k` is clipped to the index size; an "ivf" index may find fewer than
        k codes in the cells it scans, and pads with position -1. `nprobe` overrides the
        saved number of cells an "ivf" index scans, for this search only.
        """
        queries = _check_packed(packed_queries, "packed_queries")
        if queries.shape[1] * 8 != self.bits:
            raise ValueError(
                f"Queries have {queries.shape[1] * 8} bits but the index holds {self.bits}-bit "
                "codes: encode the queries with the model that encoded the collection."
            )
        if k < 1:
            raise ValueError(f"`k` must be a positive integer. Received: k={k}")
        if nprobe is not None and self.kind != "ivf":
            raise ValueError(f"`nprobe` applies to an 'ivf' index; this one is {self.kind!r}.")
        saved_nprobe = getattr(self.index, "nprobe", None)
        try:
            if nprobe is not None:
                self.index.nprobe = nprobe
            distances, positions = self.index.search(queries, min(k, len(self)))
        finally:
            if saved_nprobe is not None:
                self.index.nprobe = saved_nprobe
        # Missing results (position -1) come last, then by distance, then by position.
        missing = positions < 0
        order = np.lexsort((positions, distances, missing), axis=1)
        return (
            np.take_along_axis(distances, order, axis=1).astype(np.int32),
            np.take_along_axis(positions, order, axis=1),
        )

    def save(self, path: str | Path) -> None:
        """Write the index to `path` and its ids beside it, each atomically."""
        path = Path(path)
        write_text_atomically(ids_path(path), json.dumps({"kind": self.kind, "ids": self.ids}))
        with atomic_path(path) as temporary:
            faiss.write_index_binary(self.index, str(temporary))

    @classmethod
    def load(cls, path: str | Path) -> HammingIndex:
        """The index saved at `path`, with its ids."""
        path = Path(path)
        sidecar = ids_path(path)
        for needed in (path, sidecar):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"No index file {needed}: expected the index and its ids written by "
                    "`python -m serving.search build`."
                )
        try:
            index = faiss.read_index_binary(str(path))
        except RuntimeError as err:
            raise ValueError(f"{path} is not a FAISS binary index: {err}") from err
        try:
            stored = json.loads(sidecar.read_text())
            kind, ids = stored["kind"], stored["ids"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{sidecar} is not an index ids file: {err!r}") from err
        if index.ntotal != len(ids):
            raise ValueError(
                f"{path} holds {index.ntotal} codes but {sidecar} names {len(ids)}: they come "
                "from different builds; rebuild the index."
            )
        return cls(index, ids, kind)


def _check_packed(packed: np.ndarray, name: str) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be packed codes, uint8 of shape (n, bits/8). "
            f"Received: dtype={packed.dtype}, shape={packed.shape}"
        )
    return np.ascontiguousarray(packed)


def _trained_ivf(packed: np.ndarray, bits: int, nlist: int, seed: int) -> faiss.IndexBinaryIVF:
    """An empty IVF index whose cells are trained on a seeded sample of `packed`."""
    if not 1 <= nlist <= len(packed):
        raise ValueError(
            f"`nlist` must be between 1 and the number of codes ({len(packed)}). "
            f"Received: nlist={nlist}"
        )
    sample_size = min(len(packed), nlist * _TRAIN_POINTS_PER_CELL)
    sample = np.random.default_rng(seed).choice(len(packed), sample_size, replace=False)
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
    index.cp.seed = seed
    index.train(packed[np.sort(sample)])
    return index
