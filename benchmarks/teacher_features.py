"""Two teachers in one: writes a frozen run's cached backbone features of every item as a
`--wta-features file:` archive, and beside it their concatenation with a pixel source,
so that `wta_teacher.py` can score and `train.py` can train on either.

    .venv/bin/python benchmarks/teacher_features.py --run-dir runs/fm_lite0_frozen --out /tmp/fm
    .venv/bin/python benchmarks/wta_teacher.py --windows 4 --sources \\
        sqrt_smoothed_pixels,file:/tmp/fm/backbone.npz,file:/tmp/fm/combined.npz
    .venv/bin/python train.py --wta-features file:/tmp/fm/combined.npz

The frozen run (`--student frozen`) has already passed every query and database item
through its backbone (`RUN/features/`), so nothing here runs the network. In the
concatenation both parts are standardised per dimension over the training images, as
the pixel source is, so that WTA's rank comparisons inside a window mix the two on one
scale; each part then weighs in proportion to its dimensions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
from tqdm import tqdm

from harr_tf.atomic import atomic_path
from harr_tf.features import normalised_pixels
from harr_tf.resume import check_same_split
from harr_tf.run_data import load_run_data
from harr_tf.run_directory import RunDirectory

_BATCH = 1024


def standardised(features: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each dimension centred and scaled by its mean and deviation over the rows `train`."""
    reference = features[train]
    return (features - reference.mean(axis=0)) / (reference.std(axis=0) + 1e-3)


def backbone_features_of_all(run: RunDirectory, split) -> np.ndarray:
    """(N, d): the run's cached features of its queries and database, in item order."""
    parts = [(split.query, "query.npy"), (split.database, "database.npy")]
    count = sum(len(indices) for indices, _ in parts)
    for _, name in parts:
        if not os.path.exists(run.features / name):
            raise SystemExit(f"{run.features / name} is missing: run the frozen student first.")
    dim = np.load(run.features / "query.npy", mmap_mode="r").shape[1]
    features = np.full((count, dim), np.nan, np.float32)
    for indices, name in parts:
        features[indices] = np.load(run.features / name)
    if np.isnan(features).any():
        raise SystemExit("The run's query and database are not all of the dataset's items.")
    return features


def pixel_source_of_all(dataset, source: str) -> np.ndarray:
    """(N, H·W·C): the per-image part of the pixel `source` of every item."""
    indices = np.arange(len(dataset.ids))
    batches = dataset.images(indices).batch(_BATCH).as_numpy_iterator()
    steps = -(-len(indices) // _BATCH)
    return np.concatenate(
        [normalised_pixels(b, source) for b in tqdm(batches, source, total=steps, unit="batch")]
    )


def save(path: str, ids, features: np.ndarray) -> None:
    with atomic_path(path) as partial, open(partial, "wb") as f:
        np.savez(f, ids=np.asarray(ids), features=features.astype(np.float32))
    print(f"wrote {path}: {features.shape[0]} items x {features.shape[1]} dimensions")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", required=True, help="a finished --student frozen run")
    parser.add_argument("--out", required=True, help="folder for backbone.npz and combined.npz")
    parser.add_argument("--pixel-source", default="sqrt_smoothed_pixels")
    parser.add_argument(
        "--pixel-image-size", type=int, help="side of the pixel source (default: small_cnn's)"
    )
    args = parser.parse_args()
    run = RunDirectory(args.run_dir)
    config = run.read_config()
    pixels_config = dataclasses.replace(
        config,
        image_size=args.pixel_image_size,
        model=dataclasses.replace(config.model, backbone="small_cnn", student=None),
    )
    data = load_run_data(pixels_config)
    try:
        check_same_split(str(run.split_file), data.split)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    train = data.split.train
    backbone = backbone_features_of_all(run, data.split)
    pixels = pixel_source_of_all(data.dataset, args.pixel_source)
    os.makedirs(args.out, exist_ok=True)
    save(os.path.join(args.out, "backbone.npz"), data.dataset.ids, backbone)
    combined = np.concatenate([standardised(pixels, train), standardised(backbone, train)], axis=1)
    save(os.path.join(args.out, "combined.npz"), data.dataset.ids, combined)


if __name__ == "__main__":
    main()
