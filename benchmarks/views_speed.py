"""Cost of the training views: milliseconds (wall and process CPU) per batch of the
`tf.data` stream that makes views W, A, B and all three, side by side in one run.

    .venv/bin/python benchmarks/views_speed.py --batches 15 --repeats 2

On 2 cores this work competes with the training step itself, so CPU time is the
number to read; wall time shows what `tf.data`'s parallelism hides.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harr_tf.data import load_dataset
from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.pipeline import training_dataset

VIEW_SETS = (("w",), ("a",), ("b",), ("a", "b", "w"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset spec (train.py's)")
    parser.add_argument("--train-size", type=int, default=5000, help="images streamed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=15, help="timed batches per row")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the view sets")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    indices = np.arange(min(args.train_size, dataset.num_items))
    print(f"{dataset.name} {dataset.image_shape}, batch {args.batch_size}")
    print(f"{'round':<7}{'views':<8}{'wall ms/batch':>15}{'CPU ms/batch':>14}")
    for round_ in range(args.repeats):
        for views in VIEW_SETS:
            augmenter = ViewAugmenter(dataset.image_shape, seed=0, views=views)
            stream = iter(training_dataset(dataset, indices, augmenter, args.batch_size))
            for _ in range(3):  # trace and fill the prefetch buffers
                next(stream)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.batches):
                next(stream)
            wall = (time.perf_counter() - wall) / args.batches * 1000
            cpu = (time.process_time() - cpu) / args.batches * 1000
            print(f"{round_ + 1:<7}{'+'.join(views):<8}{wall:>15.0f}{cpu:>14.0f}", flush=True)


if __name__ == "__main__":
    main()
