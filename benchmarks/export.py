"""Throughput of the exported SavedModel next to the in-memory Keras encoder.

    python benchmarks/export.py --run-dir runs/default --bits 64 --batch-sizes 1,64,256

On the same images of the run's dataset, at each batch size: `model.predict`
of the Keras encoder over all of them, and batch by batch the SavedModel's
`encode_pixels` signature (same float pixels; loaded by TF2's `tf.saved_model.load`,
and by TF Serving's session loader, `serving.session_bundle`) and its `serving_default`
signature (PNG bytes, decoded and resized in the graph). The methods take turns,
repeat by repeat, so machine noise hits them alike; each cell is the median of the
repeats, and the codes of all are compared.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from harr_tf.layers import sign_codes
from harr_tf.trained_run import Run
from serving import IMAGES_INPUT, IMAGES_SIGNATURE, PIXELS_INPUT, PIXELS_SIGNATURE
from serving.export import export_encoder
from serving.session_bundle import SessionBundle


def batched(signature, name: str):
    """Codes of every image, calling the SavedModel `signature` batch by batch."""

    def call(data, batch_size: int) -> np.ndarray:
        parts = [
            signature(**{name: tf.constant(data[start : start + batch_size])})["codes"].numpy()
            for start in range(0, len(data), batch_size)
        ]
        return np.concatenate(parts)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/default", help="run directory of train.py")
    parser.add_argument("--bits", type=int, default=64, help="code length of the run to export")
    parser.add_argument(
        "--batch-sizes", default="1,64,256", help="comma-separated batch sizes to time"
    )
    parser.add_argument(
        "--images", type=int, default=4096, help="images per timing (a quarter at batch 1)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell")
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]

    run = Run.load(args.run_dir)
    encoder, dataset = run.encoder(args.bits), run.dataset()  # read as the run reads it
    images = dataset.read(np.arange(min(args.images, dataset.num_items)))
    pixels = images.astype(np.float32)
    encoded = [tf.io.encode_png(image).numpy() for image in images]
    with tempfile.TemporaryDirectory() as base:
        version_dir = export_encoder(encoder, base, config=run.config)
        model = tf.saved_model.load(str(version_dir))
        bundle = SessionBundle(version_dir)
        from_pixels = model.signatures[PIXELS_SIGNATURE]
        from_bytes = model.signatures[IMAGES_SIGNATURE]
        methods = {
            "model.predict": lambda data, batch_size: np.asarray(
                sign_codes(encoder.predict(data, batch_size=batch_size, verbose=0))
            ),
            "SavedModel encode_pixels": batched(from_pixels, PIXELS_INPUT),
            "session encode_pixels": lambda data, batch_size: np.concatenate(
                [
                    bundle.run(PIXELS_SIGNATURE, {PIXELS_INPUT: data[start : start + batch_size]})[
                        "codes"
                    ]
                    for start in range(0, len(data), batch_size)
                ]
            ),
            "SavedModel serving_default (PNG)": batched(from_bytes, IMAGES_INPUT),
        }
        inputs = {name: encoded if "PNG" in name else pixels for name in methods}
        rates = {name: {} for name in methods}
        differing = dict.fromkeys(methods, 0)  # code bits unlike model.predict's
        progress = tqdm(total=len(batch_sizes) * args.repeats * len(methods), desc="timing")
        for batch_size in batch_sizes:
            count = len(images) if batch_size > 1 else len(images) // 4
            seconds = {name: [] for name in methods}
            codes = {}
            for name, call in methods.items():  # warm up: trace, allocate
                codes[name] = call(inputs[name][:count], batch_size)
            for name, found in codes.items():
                differing[name] += int(np.sum(found != codes["model.predict"]))
            for _ in range(args.repeats):
                for name, call in methods.items():
                    start = time.perf_counter()
                    call(inputs[name][:count], batch_size)
                    seconds[name].append(time.perf_counter() - start)
                    progress.update()
            for name in methods:
                rates[name][batch_size] = count / float(np.median(seconds[name]))
        progress.close()

    print(f"\n{args.run_dir} bits_{args.bits}: {len(images)} images of {dataset.image_shape}")
    for name, count in list(differing.items())[1:]:
        print(f"  {name}: {count} code bits differ from model.predict's")
    header = "| batch | " + " | ".join(f"{name} (img/s)" for name in methods)
    print(header + " | encode_pixels / predict |")
    print("|---:" * (len(methods) + 2) + "|")
    for batch_size in batch_sizes:
        cells = " | ".join(f"{rates[name][batch_size]:,.0f}" for name in methods)
        ratio = rates["SavedModel encode_pixels"][batch_size] / rates["model.predict"][batch_size]
        print(f"| {batch_size} | {cells} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
