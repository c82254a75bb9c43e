"""Classical hashing baselines — LSH, PCAH and ITQ — built from FAISS transforms.

They give every HARR number its yardstick: the same feature source, the same split
and the same evaluation code (`harr_tf.retrieval`).

- LSH: random orthogonal projection of the centred features (Charikar, STOC 2002).
- PCAH: the top-`bits` principal directions (Wang et al., CVPR 2010).
- ITQ: PCA followed by the rotation that minimises quantisation error
  (Gong & Lazebnik, CVPR 2011, https://doi.org/10.1109/CVPR.2011.5995432): 50
  alternations of B = sign(VR) and the orthogonal Procrustes update of R. FAISS's
  `ITQMatrix` stops far from that optimum (Fashion-MNIST pixels, 5,000 training images,
  64 bits: ‖B − VR‖² 98,300 against 70,600; mAP@1000 0.673 against 0.718), so the
  rotation is the textbook iteration in NumPy, on FAISS's PCA.

`exact_map` is the yardstick that codes are measured against: the uncompressed features
ranked by Euclidean distance (DESIGN's "exact L2 on pixels").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import faiss
import numpy as np

from harr_tf.data.splits import ProtocolSplit
from harr_tf.retrieval import average_precision, mean_average_precision, relevance

METHODS = ("lsh", "pcah", "itq")


def train_hasher(
    method: str, train_features: np.ndarray, bits: int, seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """Fits a baseline on (N, d) features; returns its projection (n, d) → (n, bits).

    The signs of the projection are the method's hash bits (see `hash_codes`).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown baseline. Expected one of {METHODS}. Received: {method!r}")
    features = np.ascontiguousarray(train_features, dtype=np.float32)
    dim = features.shape[1]
    if not 1 <= bits <= dim:
        raise ValueError(
            f"`bits` must be between 1 and the feature dimension ({dim}). Received: bits={bits}"
        )
    if method == "lsh":
        # Hyperplanes through the data's mean, not through the origin beside it.
        mean = features.mean(axis=0)
        rotation = faiss.RandomRotationMatrix(dim, bits)
        rotation.init(seed)
        return lambda x: rotation.apply(np.ascontiguousarray(x - mean, dtype=np.float32))
    if method == "pcah":
        pca = faiss.PCAMatrix(dim, bits)
        pca.train(features)
        return lambda x: pca.apply(np.ascontiguousarray(x, dtype=np.float32))
    weights, bias = itq_linear(features, bits, seed)
    return lambda x: np.asarray(x, np.float32) @ weights + bias


def itq_linear(
    train_features: np.ndarray, bits: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """ITQ as one affine map x ↦ x W + b, W (d, bits), b (bits,): FAISS's PCA (centring
    and the top `bits` directions), then `itq_rotation`. A dense layer with these
    weights hashes exactly as ITQ does (the frozen student's head starts there)."""
    features = np.ascontiguousarray(train_features, dtype=np.float32)
    pca = faiss.PCAMatrix(features.shape[1], bits)
    pca.train(features)
    projection = faiss.vector_to_array(pca.A).reshape(bits, -1).T  # (d, bits)
    offset = faiss.vector_to_array(pca.b)
    rotation = itq_rotation(features @ projection + offset, seed=seed)
    return (projection @ rotation).astype(np.float32), (offset @ rotation).astype(np.float32)


def itq_rotation(projected: np.ndarray, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """ITQ's rotation R (bits, bits) of PCA-projected training features (n, bits).

    From a seeded random orthogonal R, alternates B = sign(VR) and the R minimising
    ‖B − VR‖² for that B (orthogonal Procrustes: R = U Wᵀ from the SVD U Σ Wᵀ of VᵀB),
    as Gong & Lazebnik's Algorithm 1; each step can only lower the quantisation error.
    """
    projected = np.asarray(projected, dtype=np.float64)
    bits = projected.shape[1]
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(bits, bits)))
    for _ in range(iterations):
        codes = np.where(projected @ rotation >= 0, 1.0, -1.0)
        left, _, right = np.linalg.svd(projected.T @ codes)
        rotation = left @ right
    return rotation


def hash_codes(project: Callable[[np.ndarray], np.ndarray], features: np.ndarray) -> np.ndarray:
    """±1 int8 codes (n, bits): the sign of the projected features, 0 → +1."""
    return np.where(project(features) >= 0, 1, -1).astype(np.int8)


def evaluate_baseline(
    method: str,
    features: np.ndarray,
    labels: np.ndarray,
    split: ProtocolSplit,
    bits: int,
    top_k: int | None,
    seed: int = 0,
) -> float:
    """mAP@top_k of one baseline: fitted on the training split, queries vs database."""
    found = evaluate_baselines(
        lambda rows: [features[rows]], labels, split, (bits,), top_k, seed, methods=(method,)
    )
    return found[method][bits]


def evaluate_baselines(
    features: Callable[[np.ndarray], Iterable[np.ndarray]],
    labels: np.ndarray,
    split: ProtocolSplit,
    bits: Sequence[int],
    top_k: int | None,
    seed: int = 0,
    methods: Sequence[str] = METHODS,
) -> dict[str, dict[int, float]]:
    """mAP@top_k of each baseline of `methods` at each code length, `{method: {bits: mAP}}`.

    `features(indices)` yields the (n, d) features of `indices` in order, chunk by
    chunk: the baselines are fitted on the training split's, then the queries and the
    database are hashed one chunk at a time, so only codes are held for the collection.
    """
    train = np.concatenate(list(features(split.train)))
    hashers = {(m, b): train_hasher(m, train, b, seed) for m in methods for b in bits}
    del train
    codes = {}
    for part in ("query", "database"):
        parts = {key: [] for key in hashers}
        for chunk in features(getattr(split, part)):
            for key, project in hashers.items():
                parts[key].append(hash_codes(project, chunk))
        codes[part] = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    return {
        method: {
            b: mean_average_precision(
                codes["query"][method, b],
                codes["database"][method, b],
                labels[split.query],
                labels[split.database],
                top_k=top_k,
            )
            for b in bits
        }
        for method in methods
    }


def exact_map(
    features: np.ndarray,
    labels: np.ndarray,
    split: ProtocolSplit,
    top_k: int | None,
    chunk_size: int = 64,
) -> float:
    """mAP@top_k of the queries' features ranked against the database's by exact
    Euclidean distance, ties broken by database index, as in the Hamming ranking."""
    database = np.asarray(features[split.database], dtype=np.float32)
    database_labels = labels[split.database]
    squared_norms = (database**2).sum(axis=1)
    depth = len(database) if top_k is None else min(top_k, len(database))
    total = 0.0
    for start in range(0, len(split.query), chunk_size):
        rows = split.query[start : start + chunk_size]
        queries = np.asarray(features[rows], dtype=np.float32)
        # ‖q − x‖² up to the query's own norm, which does not change its ranking.
        distances = squared_norms - 2.0 * queries @ database.T
        ranking = np.argsort(distances, axis=1, kind="stable")[:, :depth]
        relevant = relevance(labels[rows], database_labels)
        total += average_precision(np.take_along_axis(relevant, ranking, axis=1)).sum()
    return float(total / len(split.query))
