"""Peak RSS of `train.py` (one short epoch and the full evaluation) on generated JPEG
folders, per collection size and per backbone; peak RSS of each stage (training, the
WTA teacher pass, encoding) per backbone and image size at the batches the memory
budget chooses; and images/s of the input pipeline against the training step.

    .venv/bin/python benchmarks/memory.py --sizes 2000,20000
    .venv/bin/python benchmarks/memory.py --sizes 2000 --backbones small_cnn,resnet50
    .venv/bin/python benchmarks/memory.py --sizes 256 --stages training,teacher --backbones vgg16

The folders (10 classes, 256 x 256 JPEGs) are generated once under --root. Every run
trains on the same number of images (--train-size), so the runs of one backbone differ
by the collection alone: what is encoded, hashed by the baselines and ranked. A run
whose RSS passes --max-rss-gb is stopped and reported as over that limit, so that a
backbone too large for the machine at the asked batch does not wake the OOM killer.
"""

from __future__ import annotations

import argparse
import json
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


def current_rss(pid: int) -> float:
    """Resident set size (GB) of process `pid` now; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20  # kB
    return 0.0


def watch(command: list[str], max_rss_gb: float) -> tuple[float, float, str, str]:
    """Peak RSS (GB), seconds, how it ended ("" when it finished, "over" when stopped for
    passing `max_rss_gb`, "out of memory" when an allocation failed, else "failed") and
    the stdout of `command`, whose stderr is printed when it fails."""
    with tempfile.TemporaryFile() as log, tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=log)
        stopped = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if not stopped and current_rss(process.pid) > max_rss_gb:
                process.kill()
                stopped = True
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        log.seek(0)
        errors = log.read().decode(errors="replace")
        out.seek(0)
        output = out.read().decode(errors="replace")
    rss = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    if stopped:
        return rss, seconds, "over", output
    if status != 0:
        print(f"{' '.join(command[1:])} failed:\n{errors[-3000:]}", file=sys.stderr)
        memory = any(sign in errors for sign in ("bad_alloc", "MemoryError", "OOM"))
        return rss, seconds, "out of memory" if memory else "failed", output
    return rss, seconds, "", output


def peak_rss(folder: Path, backbone: str, args: argparse.Namespace) -> tuple[float, float, str]:
    """Peak RSS (GB) and seconds of one `train.py` run of `backbone` on `folder`, and
    how it ended (`watch`)."""
    run_dir = tempfile.mkdtemp(prefix="harr_memory_run_")
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *("--dataset", f"folder:{folder}", "--bits", "16", "--epochs", "1"),
        *("--steps-per-epoch", str(args.steps), "--train-size", str(args.train_size)),
        *("--backbone", backbone, "--weights", "none"),
        *(("--batch-size", str(args.batch_size)) if args.batch_size else ()),
        *(("--image-size", str(args.image_size)) if args.image_size else ()),
        *("--run-dir", run_dir, "--quiet"),
    ]
    return watch(command, args.max_rss_gb)[:3]


def image_size(folder: Path, backbone: str, requested: int | None) -> int:
    """The side `train.py` reads `folder` at for `backbone` (its default when None)."""
    from harr_tf.data.image_size import resolve_image_size

    with Image.open(next(folder.glob("c0/*.jpg"))) as image:
        native = image.size[::-1]
    return resolve_image_size(requested, native, backbone) or max(native)


def pipeline_speed(folder: Path, batches: int) -> tuple[float, float]:
    """Images/s of the training input pipeline alone, and of the training step alone
    (on one cached batch), at the default image size of small_cnn."""
    import tensorflow as tf

    from harr_tf.config import TrainConfig
    from harr_tf.run_data import build_wta_structure, load_run_data
    from harr_tf.training import new_model, training_stream, with_batch_size

    config = TrainConfig(dataset=f"folder:{folder}", bits=(16,), train_size=1000)
    data = load_run_data(config)
    config = with_batch_size(data.config, data.dataset.image_shape)
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


def stage_table(folder: Path, backbones: list[str], args: argparse.Namespace) -> None:
    """Prints, per backbone, image size and stage, the batch the memory budget chose (or
    --batch-size), the RSS before the stage, its peak, the estimate the batch was chosen
    by, and the seconds."""
    print(f"\nstages of {args.images} images ({args.steps} training steps), {folder.name}")
    print(
        f"{'backbone':<15} {'image':>6} {'stage':<9} {'batch':>6} {'before GB':>10} "
        f"{'peak GB':>8} {'estimate GB':>12} {'seconds':>8}"
    )
    for backbone in backbones:
        sides = [
            image_size(folder, backbone, None if size == "default" else int(size))
            for size in args.image_sizes.split(",")
        ]
        for side in dict.fromkeys(sides):
            for stage in args.stages.split(","):
                command = [
                    sys.executable,
                    str(ROOT / "benchmarks" / "memory_stage.py"),
                    stage,
                    *("--folder", str(folder), "--backbone", backbone),
                    *("--image-size", str(side), "--images", str(args.images)),
                    *("--steps", str(args.steps)),
                    *(("--batch-size", str(args.batch_size)) if args.batch_size else ()),
                    *(("--memory-budget", str(args.memory_budget)) if args.memory_budget else ()),
                ]
                rss, seconds, ended, output = watch(command, args.max_rss_gb)
                if ended:
                    peak = {"over": f"> {args.max_rss_gb:.1f}"}.get(ended, ended)
                    print(f"{backbone:<15} {side:>6} {stage:<9} {'':>6} {'':>10} {peak:>8}")
                    continue
                found = json.loads(output.strip().splitlines()[-1])
                print(
                    f"{backbone:<15} {side:>6} {stage:<9} {found['batch']:>6} "
                    f"{found['before_gb']:>10.2f} {found['peak_gb']:>8.2f} "
                    f"{found['estimate_gb']:>12.2f} {seconds:>8.0f}",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="comma-separated folder sizes")
    parser.add_argument("--side", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--root", default="/tmp/harr_memory", help="where folders are written")
    parser.add_argument("--steps", type=int, default=5, help="steps of the one training epoch")
    parser.add_argument("--train-size", type=int, default=1000, help="training images per run")
    parser.add_argument(
        "--backbones",
        default="small_cnn",
        help="comma-separated backbones, each run with --weights none",
    )
    parser.add_argument(
        "--image-size", type=int, help="train.py --image-size (default: each backbone's)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="train.py --batch-size (default: train.py's)"
    )
    parser.add_argument(
        "--max-rss-gb", type=float, default=16.0, help="stop a run whose RSS passes this"
    )
    parser.add_argument(
        "--batches", type=int, default=10, help="batches timed for images/s (0: skip)"
    )
    parser.add_argument(
        "--stages",
        help="comma-separated stages of memory_stage.py (training,teacher,encoding): the "
        "peak RSS of each in its own process, per backbone and --image-sizes, on the first "
        "--sizes folder, instead of whole train.py runs",
    )
    parser.add_argument(
        "--image-sizes", default="default,64", help="with --stages: 'default' is the backbone's"
    )
    parser.add_argument(
        "--images", type=int, default=64, help="with --stages: images each stage reads"
    )
    parser.add_argument("--memory-budget", type=float, help="with --stages: GB (default: 1/3 RAM)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    backbones = args.backbones.split(",")
    folders = [make_folder(Path(args.root), size, args.side) for size in sizes]
    if args.stages:
        stage_table(folders[0], backbones, args)
        return
    print(f"\ntrain.py, {args.steps} steps + full evaluation, {args.side}-px JPEG folders")
    print(
        f"{'backbone':<15} {'image':>6} {'batch':>6} {'images':>8} {'peak RSS GB':>13} "
        f"{'x smallest':>11} {'seconds':>8}"
    )
    for backbone in backbones:
        side = image_size(folders[0], backbone, args.image_size)
        smallest = None
        for size, folder in zip(sizes, folders, strict=True):
            rss, seconds, ended = peak_rss(folder, backbone, args)
            smallest = smallest or (None if ended else rss)
            peak = {"": f"{rss:.2f}", "over": f"> {args.max_rss_gb:.1f}"}.get(ended, ended)
            ratio = f"{rss / smallest:.2f}" if smallest and not ended else "-"
            print(
                f"{backbone:<15} {side:>6} {args.batch_size or 'dflt':>6} {size:>8} {peak:>13} "
                f"{ratio:>11} {seconds:>8.0f}",
                flush=True,
            )
    if not args.batches:
        return
    pipeline, step = pipeline_speed(folders[0], args.batches)
    print(
        f"\ninput pipeline {pipeline:.0f} images/s, training step {step:.0f} images/s "
        f"(pipeline / step = {pipeline / step:.2f}; above 1 the step is the bottleneck)"
    )


if __name__ == "__main__":
    main()
