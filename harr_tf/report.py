"""What a run shows: `metrics.json`, the results table, and plots as PNG (and in
TensorBoard): precision–recall over Hamming radii, precision@N, and a grid of
queries with their top-10 retrieved images."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from harr_tf.baselines import METHODS  # noqa: E402
from harr_tf.config import TrainConfig  # noqa: E402
from harr_tf.data import ProtocolSplit  # noqa: E402
from harr_tf.retrieval import hamming_distances, relevance  # noqa: E402
from harr_tf.run_directory import RunDirectory  # noqa: E402

# Frame colours of the retrieval grid: not relevant, relevant.
RELEVANCE_COLOURS = ("#d62728", "#2ca02c")


def read_metrics(path: str, config: TrainConfig, top_k: int | None) -> dict:
    """The run's metrics so far (a resumed run keeps earlier code lengths)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"dataset": config.dataset, "top_k": top_k, "results": {}, "baselines": {}}


# A frozen student's yardsticks (harr_tf.run.feature_baseline_maps): name and note.
FEATURE_ROWS = {
    "pcah_features": ("PCAH-F", "on the backbone's features"),
    "itq_features": ("ITQ-F", "on the backbone's features"),
    "exact_cosine": ("COSINE-F", "the backbone's features, uncompressed"),
}


def results_table(metrics: dict) -> str:
    """mAP@K of HARR next to the baselines, one column per code length."""
    bits = sorted(metrics["results"], key=int)
    k = metrics["top_k"] or "all"
    lines = [f"{'method':<8}" + "".join(f"{b + ' bits':>10}" for b in bits) + f"   (mAP@{k})"]
    lines.append(f"{'HARR':<8}" + "".join(f"{metrics['results'][b]['map']:>10.3f}" for b in bits))
    # The binary database ranked by its inner product with the queries' continuous codes.
    asymmetric = [metrics["results"][b].get("map_asymmetric") for b in bits]
    if any(value is not None for value in asymmetric):
        cells = "".join(f"{'-':>10}" if v is None else f"{v:>10.3f}" for v in asymmetric)
        lines.append(f"{'HARR-AS':<8}{cells}   (queries' continuous codes)")
    on_features = any(method in metrics["baselines"] for method in FEATURE_ROWS)
    pixels = "on pixels" if on_features else ""
    rows = [(method, method.upper(), pixels) for method in METHODS]
    rows += [(m, *row) for m, row in FEATURE_ROWS.items() if m in metrics["baselines"]]
    for method, name, note in rows:
        values = metrics["baselines"].get(method, {})
        cells = "".join(f"{values[b]:>10.3f}" if b in values else f"{'-':>10}" for b in bits)
        lines.append(f"{name:<8}{cells}" + (f"   ({note})" if note else ""))
    return "\n".join(lines)


def write_plots(
    run_dir: RunDirectory,
    bits: int,
    result: dict,
    read_images: Callable[[np.ndarray], np.ndarray],
    split: ProtocolSplit,
    query_codes: np.ndarray,
    database_codes: np.ndarray,
    labels: np.ndarray | None = None,
) -> None:
    """PNG plots under RUN/plots/ and the same images in RUN/bits_B/logs.

    `read_images(indices)` gives the `(n, H, W, C)` pixels of dataset items: the grid
    reads only the few it shows, framed by relevance when the dataset's `labels` are
    given."""
    run_dir.plots.mkdir(parents=True, exist_ok=True)
    figures = {
        "pr_curve": _pr_figure(result, bits),
        "precision_at_n": _precision_at_n_figure(result, bits),
        "retrieval_grid": _grid_figure(
            read_images, split, query_codes, database_codes, bits, labels
        ),
    }
    writer = tf.summary.create_file_writer(str(run_dir.length(bits).logs / "eval"))
    for name, figure in figures.items():
        path = run_dir.plot_file(name, bits)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        png = tf.io.decode_png(tf.io.read_file(str(path)), channels=4)
        with writer.as_default():
            tf.summary.image(name, png[None], step=0)
    writer.close()


def _pr_figure(result: dict, bits: int):
    figure, axis = plt.subplots(figsize=(4, 4))
    curve = result["pr_curve"]
    axis.plot(curve["recall"], curve["precision"], marker=".")
    axis.set(xlabel="recall", ylabel="precision", title=f"PR over Hamming radii, {bits} bits")
    return figure


def _precision_at_n_figure(result: dict, bits: int):
    figure, axis = plt.subplots(figsize=(4, 4))
    ns = sorted(result["precision_at_n"], key=int)
    axis.plot([int(n) for n in ns], [result["precision_at_n"][n] for n in ns], marker=".")
    axis.set(xscale="log", xlabel="N", ylabel="precision@N", title=f"precision@N, {bits} bits")
    return figure


def _grid_figure(
    read_images, split, query_codes, database_codes, bits, labels=None, queries=8, top=10
):
    """Each row: a query, then its top-10 database images by Hamming distance, each
    framed green when it is relevant to the query (shares a class) and red when not."""
    rows = np.linspace(0, len(query_codes) - 1, queries).astype(int)
    distances = hamming_distances(query_codes[rows], database_codes)
    ranked = np.argsort(distances, axis=1, kind="stable")[:, :top]
    figure, axes = plt.subplots(queries, top + 1, figsize=(top + 1, queries))
    shown = np.concatenate([split.query[rows], split.database[ranked.ravel()]])
    pixels = read_images(shown)
    images = dict(zip(shown.tolist(), pixels, strict=True))
    cmap = "gray" if pixels.shape[-1] == 1 else None
    for r, query in enumerate(rows):
        found = split.database[ranked[r]]
        row = [images[split.query[query]]] + [images[i] for i in found]
        relevant = None
        if labels is not None:
            relevant = relevance(labels[split.query[query : query + 1]], labels[found])[0]
        for c, image in enumerate(row):
            axis = axes[r, c]
            axis.imshow(image.squeeze(), cmap=cmap)
            axis.set_xticks([])
            axis.set_yticks([])
            frame = None if c == 0 or relevant is None else RELEVANCE_COLOURS[int(relevant[c - 1])]
            for spine in axis.spines.values():
                spine.set_visible(frame is not None)
                if frame is not None:
                    spine.set_edgecolor(frame)
                    spine.set_linewidth(3)
    axes[0, 0].set_title("query", fontsize=8)
    legend = ", framed green if relevant, red if not" if labels is not None else ""
    figure.suptitle(f"Top-{top} by Hamming distance, {bits} bits{legend}")
    return figure
