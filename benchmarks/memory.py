"""Memory does not grow with the collection: peak RSS of `train.py` (one short epoch and
the full evaluation) on generated JPEG folders of several sizes, and images/s of the
input pipeline against the training step at the default image size.

    .venv/bin/python benchmarks/memory.py --sizes 2000,20000

The folders (10 classes, 256 x 256 JPEGs) are generated once under --root. Every run
trains on the same number of images (--train-size), so the runs differ by the
collection alone: what is encoded, hashed by the baselines and ranked.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10


def make_folder(root: Path, count: int, side: int) -> Path:
    """`count` JPEGs in `CLASSES` sub-folders (written once): a class colour, a
    gradient and noise, so that every file decodes to different pixels."""
    folder = root / f"jpeg_{count}_{side}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 80, side, dtype=np.float32)[None, :, None]
    colours = rng.uniform(40, 170, (CLASSES, 3)).astype(np.float32)
    for item in tqdm(range(count), desc=f"writing {folder.name}", unit="image"):
        label = item % CLASSES
        noise = rng.normal(0, 20, (side // 8, side // 8, 3)).astype(np.float32)
        noise = np.kron(noise, np.ones((8, 8, 1), np.float32))
        pixels = np.clip(colours[label] + ramp + noise, 0, 255).astype(np.uint8)
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"c{label}" / f"{item:06d}.jpg", quality=90)
    done.touch()
    return folder


def peak_rss(folder: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Peak RSS (GB) and seconds of one `train.py` run on `folder`."""
    run_dir = tempfile.mkdtemp(prefix="harr_memory_run_")
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *("--dataset", f"folder:{folder}", "--bits", "16", "--epochs", "1"),
        *("--steps-per-epoch", str(args.steps), "--train-size", str(args.train_size)),
        *("--run-dir", run_dir, "--quiet"),
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    errors = process.stderr.read().decode(errors="replace")
    if status != 0:
        raise SystemExit(f"train.py failed on {folder}:\n{errors[-3000:]}")
    return usage.ru_maxrss / 2**20, seconds  # ru_maxrss is in KiB on Linux


def pipeline_speed(folder: Path, batches: int) -> tuple[float, float]:
    """Images/s of the training input pipeline alone, and of the training step alone
    (on one cached batch), at the default image size of small_cnn."""
    import tensorflow as tf

    from harr_tf.config import TrainConfig
    from harr_tf.run import build_wta_structure, load_run_data, new_model, training_stream

    config = TrainConfig(dataset=f"folder:{folder}", bits=(16,), train_size=1000)
    data = load_run_data(config)
    wta = build_wta_structure(data.dataset, data.split.train, config)
    model = new_model(config, 16, data.dataset.image_shape, wta)
    stream, _ = training_stream(config, data, wta, model.views)
    iterator = iter(stream)
    next(iterator)  # warm up
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    pipeline = batches * config.batch_size / (time.perf_counter() - start)
    steady = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(steady, epochs=1, steps_per_epoch=2, verbose=0)  # compile the step
    start = time.perf_counter()
    model.fit(steady, epochs=1, steps_per_epoch=batches, verbose=0)
    step = batches * config.batch_size / (time.perf_counter() - start)
    return pipeline, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="comma-separated folder sizes")
    parser.add_argument("--side", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--root", default="/tmp/harr_memory", help="where folders are written")
    parser.add_argument("--steps", type=int, default=5, help="steps of the one training epoch")
    parser.add_argument("--train-size", type=int, default=1000, help="training images per run")
    parser.add_argument("--batches", type=int, default=10, help="batches timed for images/s")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    folders = [make_folder(Path(args.root), size, args.side) for size in sizes]
    rows = [(size, *peak_rss(folder, args)) for size, folder in zip(sizes, folders, strict=True)]
    print(f"\ntrain.py, {args.steps} steps + full evaluation, {args.side}-px JPEG folders")
    print(f"{'images':>8} {'peak RSS GB':>12} {'x smallest':>11} {'seconds':>8}")
    for size, rss, seconds in rows:
        print(f"{size:>8} {rss:>12.2f} {rss / rows[0][1]:>11.2f} {seconds:>8.0f}")
    pipeline, step = pipeline_speed(folders[0], args.batches)
    print(
        f"\ninput pipeline {pipeline:.0f} images/s, training step {step:.0f} images/s "
        f"(pipeline / step = {pipeline / step:.2f}; above 1 the step is the bottleneck)"
    )


if __name__ == "__main__":
    main()
