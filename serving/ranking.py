"""The nearest items of a Hamming index to query codes, optionally re-ranked asymmetrically.

Shared by the search command line and the search page, so both rank the same way: Hamming
distance first, then (with `rerank`) the inner product of the query's continuous code with
each candidate's ±1 code, which breaks Hamming distance's many ties.
"""

from __future__ import annotations

import numpy as np

from harr_tf.index import HammingIndex


def nearest(
    index: HammingIndex,
    packed: np.ndarray,
    top_k: int,
    *,
    continuous: np.ndarray | None = None,
    rerank: int | None = None,
    **options: int | None,
) -> list[list[dict]]:
    """For each packed query code, its results [{"id", "distance"}], nearest first.

    With `rerank` (and the queries' `continuous` codes), the top `rerank` by Hamming
    distance are re-ranked by ⟨h_query, b_item⟩, largest first, ties by position, and
    each result also carries its "score". `options` are the index's search options.
    """
    if rerank is not None and (rerank < top_k or continuous is None):
        raise ValueError(
            f"`rerank` needs the queries' `continuous` codes and must be at least `top_k` "
            f"({top_k}). Received: rerank={rerank}"
        )
    distances, positions = index.search(packed, max(top_k, rerank or 0), **options)
    if rerank:  # every candidate's ±1 code, (nq, depth, bits), in one look-up
        candidates = index.codes(np.maximum(positions, 0).ravel())
        items = np.unpackbits(candidates, axis=1).reshape(*positions.shape, -1) * 2.0 - 1
        all_scores = np.einsum("qnb,qb->qn", items, np.asarray(continuous, np.float64))
    answers = []
    for row in range(len(packed)):
        found = positions[row] >= 0  # an approximate index pads with -1 when it finds fewer
        kept, kept_distances = positions[row, found], distances[row, found]
        scores = None
        if rerank:
            scores = all_scores[row, found]
            order = np.lexsort((kept, -scores))
            kept, kept_distances, scores = kept[order], kept_distances[order], scores[order]
        results = [
            {"id": index.ids[position], "distance": int(distance)}
            for position, distance in zip(kept[:top_k], kept_distances[:top_k], strict=True)
        ]
        if scores is not None:
            for result, score in zip(results, scores, strict=False):
                result["score"] = round(float(score), 5)
        answers.append(results)
    return answers
