"""Cost of one HARR training step next to the bare two-view backbone step.

    python benchmarks/step_cost.py --batch-size 128 --width 32 --steps 20

Same encoder, same batch: the bare step runs views A and B through the encoder
and back-propagates a trivial loss; the HARR step runs A, B and W, builds the
WTA pair targets and computes the three losses; without L_bcr (η₁ = 0) it runs
view W alone. Timed in turn, so machine noise hits all alike; the ratios are the
numbers to read.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from harr_tf.config import ModelConfig
from harr_tf.encoder import build_encoder
from harr_tf.model import HarrModel
from harr_tf.wta import WTASimilarity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32, help="small_cnn width")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    args = parser.parse_args()

    shape = (28, 28, 1)
    rng = np.random.default_rng(0)
    pixels = (args.batch_size, *shape)
    batch = {k: tf.constant(rng.uniform(0, 255, pixels), tf.float32) for k in "abw"}
    batch["wta"] = tf.constant(rng.integers(0, 8, (args.batch_size, 512)), tf.uint8)
    encoder = build_encoder(shape, args.bits, ModelConfig(width=args.width))
    models = {}
    for bcr_weight in (1.0, 0.0):
        model = HarrModel(
            encoder, WTASimilarity(tau=0.3, s_max=0.9, s_min=0.0, window=8), bcr_weight=bcr_weight
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        models[bcr_weight] = model
    optimizer = models[1.0].optimizer

    @tf.function
    def bare_step():
        with tf.GradientTape() as tape:
            views = tf.concat([batch["a"], batch["b"]], axis=0)
            loss = tf.reduce_mean(encoder(views, training=True))
        variables = encoder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    steps = {
        "bare two-view step": bare_step,
        "HARR step": tf.function(lambda: models[1.0].train_step(batch)),
        "HARR without L_bcr": tf.function(lambda: models[0.0].train_step(batch)),
    }
    for step in steps.values():  # trace and warm up
        step()
        step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    bare = np.median(times["bare two-view step"])
    print(f"batch {args.batch_size}, small_cnn width {args.width}, {args.bits} bits")
    print(f"{'step':<20}{'median ms':>10}{'ratio':>8}")
    for name, values in times.items():
        median = np.median(values)
        print(f"{name:<20}{median * 1000:>10.1f}{median / bare:>8.2f}")


if __name__ == "__main__":
    main()
