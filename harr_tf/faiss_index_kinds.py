"""The four kinds of FAISS binary index behind `harr_tf.index.HammingIndex`: their
options, the defaults that scale with the collection, and how each is made.

- `flat` (`IndexBinaryFlat`): exact Hamming ranking, linear in the collection.
- `ivf` (`IndexBinaryIVF`): binary k-means cells, `nprobe` of them scanned per query;
  approximate.
- `hnsw` (`IndexBinaryHNSW`): a graph of `neighbours` links per code, walked with a
  beam of `ef_search`; approximate.
- `multihash` (`IndexBinaryMultiHash`, multi-index hashing, Norouzi et al., CVPR 2012):
  `nhash` hash tables over disjoint substrings, each probed with up to `nflip` bits
  flipped. By the pigeonhole principle every code within `exact_radius` =
  nhash·(nflip+1) − 1 of the query is found, so results up to that radius are exact;
  farther neighbours may be missing (padded with position -1).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

INDEX_KINDS = ("flat", "ivf", "hnsw", "multihash")
# The build options of each kind; the search-time option (the last) is saved with the index.
KIND_OPTIONS = {
    "flat": (),
    "ivf": ("nlist", "nprobe"),
    "hnsw": ("neighbours", "ef_search"),
    "multihash": ("nhash", "nflip"),
}
# k-means wants at least 39 points per cell; more than 256 per cell buys little accuracy.
_MIN_POINTS_PER_CELL = 39
_TRAIN_POINTS_PER_CELL = 256


def default_nlist(count: int) -> int:
    """About √n cells, but never fewer than 39 training points per cell."""
    return max(1, min(round(math.sqrt(count)), count // _MIN_POINTS_PER_CELL))


def default_nhash(count: int, bits: int) -> int:
    """Substrings of about log2(n) bits (at least 8), so a bucket holds about one code."""
    return max(1, bits // max(8, round(math.log2(max(count, 2)))))


def new_faiss_index(
    kind: str, packed: np.ndarray, seed: int, **options: int | None
) -> faiss.IndexBinary:
    """An empty index of `kind` for codes like `packed` (trained on them for "ivf"), its
    options checked and set; see `HammingIndex.build` for the options' defaults."""
    for name, value in options.items():
        owner = [other for other, names in KIND_OPTIONS.items() if name in names]
        if not owner:
            raise TypeError(f"Unknown index option {name!r}; expected one of {KIND_OPTIONS}")
        if name not in KIND_OPTIONS[kind] and value is not None:
            raise ValueError(f"`{name}` applies to kind={owner[0]!r} only. Received: {kind=}")
        if value is not None and value < (0 if name == "nflip" else 1):
            raise ValueError(f"`{name}` must be a positive integer. Received: {value}")
    bits, count = packed.shape[1] * 8, len(packed)
    if kind == "flat":
        index = faiss.IndexBinaryFlat(bits)
    elif kind == "ivf":
        index = _trained_ivf(packed, bits, options.get("nlist") or default_nlist(count), seed)
        index.nprobe = options.get("nprobe") or max(1, index.nlist // 16)
    elif kind == "hnsw":
        index = faiss.IndexBinaryHNSW(bits, options.get("neighbours") or 16)
        index.hnsw.efSearch = options.get("ef_search") or 64
    else:
        nhash = options.get("nhash") or default_nhash(count, bits)
        if not 1 <= bits // nhash <= 64:  # FAISS reads each substring into a 64-bit word
            raise ValueError(
                f"`nhash` must give substrings of 1 to 64 bits: between "
                f"{math.ceil(bits / 64)} and {bits} for {bits}-bit codes. Received: {nhash}"
            )
        index = faiss.IndexBinaryMultiHash(bits, nhash, bits // nhash)
        nflip = options.get("nflip")
        index.nflip = 1 if nflip is None else nflip
    return index


def search_option_holder(index: faiss.IndexBinary, kind: str) -> tuple[object | None, str]:
    """The object and attribute of `kind`'s search-time option; (None, "") for "flat"."""
    if kind == "ivf":
        return index, "nprobe"
    if kind == "hnsw":
        return index.hnsw, "efSearch"
    if kind == "multihash":
        return index, "nflip"
    return None, ""


def check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise ValueError(f"`kind` must be one of {INDEX_KINDS}. Received: kind={kind!r}")


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
