"""Training throughput: float32 against mixed precision, 1 against N devices, XLA
(`jit_compile`) off against on, and the HARR step against the bare backbone step, side
by side in one run.

    python benchmarks/throughput.py --batch-size 128 --steps 5
    python benchmarks/throughput.py --backbone resnet50 --image-size 224 --batch-size 64
    python benchmarks/throughput.py --precisions none --xla off,on --steps 20

Devices are the visible GPUs, or without GPUs `--cpu-devices` logical CPU devices made
from the one CPU (they share its cores: the rows show the overhead of the replicas, not
a speed-up). The bare step runs views A and B through the encoder and back-propagates
a trivial loss; the HARR step (L_bcr on, so views A, B and W) all-gathers the codes
across replicas, builds the WTA pair targets and computes the three losses. Images/s
counts training images, not views. Precisions and device counts are timed in turn, so
machine noise hits all alike; the ratios are the numbers to read.
"""

from __future__ import annotations

import argparse
import os
import time

import tensorflow as tf


def configure_devices(cpu_devices: int) -> list[str]:
    """The devices to replicate over (before TensorFlow starts): GPUs, else logical CPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return [f"/gpu:{i}" for i in range(len(gpus))]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
    )
    return [f"/cpu:{i}" for i in range(cpu_devices)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=32, help="small_cnn width")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    parser.add_argument("--cpu-devices", type=int, default=2, help="without GPUs")
    parser.add_argument("--precisions", default="none,float16,bfloat16")
    parser.add_argument("--xla", default="off", help="jit_compile of the steps: off,on")
    args = parser.parse_args()
    devices = configure_devices(args.cpu_devices)

    import keras
    import numpy as np

    from harr_tf.config import ModelConfig
    from harr_tf.distribute import synchronize_batch_norm
    from harr_tf.encoder import build_encoder
    from harr_tf.model import HarrModel
    from harr_tf.precision import set_precision
    from harr_tf.wta import WTASimilarity

    class BareStep(keras.Model):
        """Views A and B through the encoder, mean(h) as the loss: the floor of any step."""

        def __init__(self, encoder: keras.Model) -> None:
            super().__init__()
            self.encoder = encoder
            self.built = True  # the encoder exists; fit under a strategy expects this

        def train_step(self, batch: dict) -> dict:
            with tf.GradientTape() as tape:
                h = self.encoder(tf.concat([batch["a"], batch["b"]], axis=0), training=True)
                loss = tf.reduce_mean(tf.cast(h, tf.float32))
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                scaled = self.optimizer.scale_loss(loss / replicas)
            variables = self.encoder.trainable_variables
            gradients = tape.gradient(scaled, variables)
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            return {"loss": loss}

    shape = (args.image_size, args.image_size, args.channels)
    rng = np.random.default_rng(0)
    batch = {k: rng.uniform(0, 255, (args.batch_size, *shape)).astype("float32") for k in "abw"}
    batch["wta"] = rng.integers(0, 8, (args.batch_size, 512)).astype("uint8")
    dataset = tf.data.Dataset.from_tensors(batch).repeat().prefetch(2)
    config = ModelConfig(backbone=args.backbone, weights="none", width=args.width)

    # One strategy per device count for the whole process: a second MirroredStrategy over
    # the same devices can collide with the first one's collective instance keys.
    strategies = {1: tf.distribute.get_strategy()}
    if len(devices) > 1:
        strategies[len(devices)] = tf.distribute.MirroredStrategy(devices)

    def timed(precision: str, replicas: int, kind: str, xla: bool) -> float:
        set_precision(precision, args.backbone)
        strategy = strategies[replicas]
        with strategy.scope():
            encoder = build_encoder(shape, args.bits, config)
            if replicas > 1:
                synchronize_batch_norm(encoder)
            if kind == "bare":
                model = BareStep(encoder)
            else:
                similarity = WTASimilarity(tau=0.3, s_max=0.9, s_min=0.0, window=8)
                model = HarrModel(encoder, similarity)
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
            model.compile(optimizer=optimizer, jit_compile=xla)
        model.fit(dataset, steps_per_epoch=2, verbose=0)  # trace and warm up
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=args.steps, verbose=0)
        seconds = time.perf_counter() - start
        keras.mixed_precision.set_global_policy("float32")
        return args.batch_size * args.steps / seconds

    counts = sorted(strategies)
    print(
        f"{args.backbone} {shape[0]}x{shape[1]}x{shape[2]}, global batch {args.batch_size}, "
        f"{args.bits} bits, {args.steps} steps; devices: {', '.join(devices)}; "
        f"{os.cpu_count()} CPU cores"
    )
    header = f"{'precision':<10}{'devices':>8}{'XLA':>5}{'bare img/s':>12}{'HARR img/s':>12}"
    print(f"{header}{'HARR/bare':>10}{'HARR vs row 1':>15}")
    reference = None
    for precision in args.precisions.split(","):
        for replicas in counts:
            for xla in args.xla.split(","):
                bare = timed(precision, replicas, "bare", xla == "on")
                harr = timed(precision, replicas, "harr", xla == "on")
                reference = reference or harr
                row = f"{precision:<10}{replicas:>8}{xla:>5}{bare:>12.0f}{harr:>12.0f}"
                print(f"{row}{harr / bare:>10.2f}{harr / reference:>15.2f}")


if __name__ == "__main__":
    main()
