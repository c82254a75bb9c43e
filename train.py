"""Train HARR hash codes without labels, evaluate them, and compare with LSH/PCAH/ITQ.

With no arguments: the default configuration on Fashion-MNIST (TFDS, or the local
IDX files when TFDS cannot download), 16/32/64 bits, ending with the mAP table.
Precedence: built-in defaults < --config FILE.yaml (or the saved config of the run
being resumed) < flags given on the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# (flag, config section or None, field, type, help)
FLAGS = [
    (
        "--dataset",
        None,
        "dataset",
        str,
        "fashion_mnist | mnist | cifar10 | tfds:NAME[:SPLIT] | idx:DIR | folder:DIR | "
        "tfrecord:PATTERN | npz:FILE (docs/collections.md)",
    ),
    (
        "--data-dir",
        None,
        "data_dir",
        str,
        "local IDX directory when TFDS cannot download "
        "(else $HARR_DATA_DIR, then /usr/share/datasets/fashion-mnist)",
    ),
    ("--protocol", None, "protocol", str, "evaluation protocol: standard | cifar10-i | authors"),
    (
        "--bits",
        None,
        "bits",
        lambda s: tuple(int(b) for b in s.split(",")),
        "comma-separated code lengths, one model each (multiples of 8)",
    ),
    ("--epochs", None, "epochs", int, "training epochs per model (instead of --steps)"),
    (
        "--steps",
        None,
        "steps",
        int,
        "training steps per model, rounded up to whole epochs (default: 1170, "
        "Fashion-MNIST's 30 epochs of 39 batches, whatever the dataset's size)",
    ),
    (
        "--steps-per-epoch",
        None,
        "steps_per_epoch",
        int,
        "batches per epoch (default: one pass over the training images)",
    ),
    (
        "--batch-size",
        None,
        "batch_size",
        int,
        "images per training batch (default: as many as the network's cost per image "
        "fits in --memory-budget, at most 128)",
    ),
    (
        "--train-size",
        None,
        "train_size",
        lambda s: s if s == "all" else int(s),
        "training images: N (spread evenly over classes) or 'all' of the database",
    ),
    (
        "--queries-per-class",
        None,
        "queries_per_class",
        int,
        "evaluation queries per class (default: the protocol's; a class too small for "
        "the protocol gives at most a tenth of its items)",
    ),
    (
        "--validation-per-class",
        None,
        "validation_per_class",
        int,
        "validation queries per class, from the database (default: the protocol's; "
        "at most a tenth of a small class)",
    ),
    (
        "--image-size",
        None,
        "image_size",
        int,
        "side of the square images the network sees (default: the native size of images "
        "up to 96 px, else 64 for small_cnn; 224 for pretrained backbones)",
    ),
    (
        "--max-pixels",
        None,
        "max_pixels",
        int,
        "images whose header declares more pixels are skipped unread, named in the log "
        "(default: 40,000,000)",
    ),
    (
        "--learning-rate",
        None,
        "learning_rate",
        float,
        "SGD learning rate of the head (cosine decay to 0)",
    ),
    ("--weight-decay", None, "weight_decay", float, "SGD weight decay"),
    ("--eval-every", None, "eval_every", int, "epochs between validation mAP evaluations"),
    (
        "--encode-batch-size",
        None,
        "encode_batch_size",
        int,
        "images per batch when encoding and extracting WTA features (default: as many "
        "as the network's cost per image fits in --memory-budget, at most 512)",
    ),
    (
        "--memory-budget",
        None,
        "memory_budget",
        float,
        "GB the default batches are sized to fit; a batch past it runs again in halves "
        "(default: a third of the machine's memory)",
    ),
    (
        "--steps-per-execution",
        None,
        "steps_per_execution",
        int,
        "training steps per call into the compiled loop (default 1); Keras reads the "
        "logs on the host after each call, so on a GPU 8-32 waits less",
    ),
    ("--seed", None, "seed", int, "seed of the split, WTA table, augmentation and weights"),
    (
        "--backbone",
        "model",
        "backbone",
        str,
        "small_cnn | vgg16 | resnet50 | efficientnetb0 | efficientnet_lite0",
    ),
    ("--weights", "model", "weights", str, "imagenet | none | PATH of a weights file"),
    (
        "--init-from-teacher",
        "model",
        "init_from_teacher",
        lambda s: s.lower() in ("1", "true", "yes"),
        "true (default): the trained backbone starts from --weights, as the WTA teacher "
        "does; false: from seeded random weights (the teacher keeps --weights)",
    ),
    (
        "--student",
        "model",
        "student",
        str,
        "how a pretrained --backbone is used: frozen (the hash head trains on the backbone's "
        "cached features; default for pretrained backbones, fast on a CPU) | fine_tuned "
        "(backbone and head train together, the paper; for GPUs) | distilled (small_cnn "
        "learns from the backbone's WTA structure; needs --wta-features backbone)",
    ),
    (
        "--feature-rounds",
        "model",
        "feature_rounds",
        int,
        "frozen student: rounds of augmented views (A, B, W) of each training image whose "
        "backbone features are cached (default 1)",
    ),
    ("--width", "model", "width", int, "small_cnn channels of the first stage"),
    (
        "--pooling",
        "model",
        "pooling",
        str,
        "small_cnn feature pooling: grid (averages over 3x3 regions, flattened) | global",
    ),
    ("--beta", "model", "beta", float, "initial tanh scale β of the hash head"),
    ("--beta-growth", "model", "beta_growth", float, "β grows by this fraction per epoch"),
    ("--temperature", "loss", "temperature", float, "contrastive temperature T"),
    ("--bcr-weight", "loss", "bcr_weight", float, "η₁, weight of the bit-correlation loss"),
    (
        "--quantization-weight",
        "loss",
        "quantization_weight",
        float,
        "η₂, weight of the quantization loss",
    ),
    (
        "--include-self",
        "loss",
        "include_self",
        lambda s: s.lower() in ("1", "true", "yes"),
        "count i = j as a positive pair (true/false)",
    ),
    (
        "--wta-features",
        "wta",
        "features",
        str,
        "what the WTA structure ranks: sqrt_smoothed_pixels (square roots of the "
        "intensities, then as smoothed_pixels) | smoothed_pixels (contrast-normalised, "
        "blurred, standardised) | pixels | backbone (the frozen backbone's pooled features, "
        "with --weights, the paper's teacher) | file:FEATURES.npz (arrays 'ids' and "
        "'features' computed elsewhere)",
    ),
    ("--permutations", "wta", "num_permutations", int, "P, number of WTA permutations"),
    ("--window", "wta", "window", int, "K, WTA window size"),
    (
        "--refresh-every",
        "wta",
        "refresh_every",
        int,
        "rebuild the WTA structure from the backbone's own features every N epochs (0: never)",
    ),
    (
        "--positive-fraction",
        "wta",
        "positive_fraction",
        float,
        "ρ, fraction of pairs treated as positive",
    ),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, _, field, kind, text in FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    parser.add_argument("--config", help="YAML file of settings (as in a run's config.yaml)")
    parser.add_argument("--run-dir", help="run directory (default: runs/<date-time>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its last epoch"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="when another process trains in --run-dir, wait for it instead of stopping",
    )
    parser.add_argument(
        "--nondeterministic",
        action="store_true",
        help="skip TensorFlow's op determinism (on for reproducible codes; a GPU op without "
        "a deterministic kernel then stops the run, naming this flag)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--verbose", action="store_true", help="keep TensorFlow's start-up log lines (CUDA, oneDNN)"
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("none", "float16", "bfloat16"),
        default="none",
        help="compute in float16 (dynamic loss scaling) or bfloat16 with float32 weights: "
        "for GPUs; on CPUs it is slower",
    )
    parser.add_argument(
        "--distribute",
        choices=("none", "mirrored", "multi-worker"),
        help="tf.distribute strategy: mirrored over this machine's GPUs, multi-worker over "
        "the machines TF_CONFIG names (default: mirrored when more than one GPU is visible)",
    )
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    """Defaults, then the YAML file (or the resumed run's config), then flags.

    A resumed run keeps its data, split, code lengths, WTA structure and model: a flag
    that would change them is refused (`harr_tf.resume`).
    """
    from harr_tf.config import TrainConfig, from_dict, read_settings_file, to_dict
    from harr_tf.resume import check_resumable
    from harr_tf.run_directory import RunDirectory

    values: dict = {}
    source, flag = args.config, "--config"
    if args.resume:
        if not args.run_dir or not RunDirectory(args.run_dir).is_run():
            raise SystemExit(
                f"--resume needs --run-dir of an existing run (with config.yaml). "
                f"Received: --run-dir {args.run_dir}"
            )
        source, flag = str(RunDirectory(args.run_dir).config_file), "--resume"
    if source:
        values = read_settings_file(source, flag)
    saved = from_dict(TrainConfig, values)
    values = to_dict(saved)
    for _, section, field, _, _ in FLAGS:
        given = getattr(args, field)
        if given is not None:
            (values[section] if section else values)[field] = given
    for given, other in (("epochs", "steps"), ("steps", "epochs")):  # the flag given wins
        if getattr(args, given) is not None and getattr(args, other) is None:
            values[other] = None
    config = from_dict(TrainConfig, values)
    if args.resume:
        check_resumable(saved, config)
    return config


def check_writable(run_dir: str) -> None:
    """Fails before any work when the run directory cannot be written."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise SystemExit(
            f"--run-dir {run_dir} is not writable ({error.strerror}); choose another --run-dir."
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from harr_tf.quiet import log_to_stderr, quiet_tensorflow

    log_to_stderr()
    quiet_tensorflow(args.verbose)
    import tensorflow as tf

    if not args.nondeterministic:  # the same seed and settings give the same codes
        tf.config.experimental.enable_op_determinism()
    from harr_tf import distribute, precision
    from harr_tf.backbones import WeightsUnavailableError
    from harr_tf.interrupts import stop_on_sigterm, stopped_exit_status
    from harr_tf.locks import LockHeld
    from harr_tf.report import results_table
    from harr_tf.resume import resume_advice
    from harr_tf.trained_run import RunExists, train
    from harr_tf.training import TrainingDiverged

    try:
        # Read before the strategy is made: a chief can only pass `make_strategy` once
        # every worker has, so no worker reads config.yaml while the chief rewrites it.
        config = resolve_config(args)
        # Multi-worker must be set up before any other TensorFlow op runs.
        strategy = distribute.make_strategy(args.distribute)
        precision.set_precision(args.mixed_precision, config.model.backbone)
    except ValueError as error:
        raise SystemExit(f"Invalid configuration: {error}") from None
    if args.distribute == "multi-worker" and not args.run_dir:
        raise SystemExit("--distribute multi-worker needs --run-dir, on storage every worker sees.")
    run_dir = args.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if not distribute.is_chief(strategy):
        run_dir = distribute.worker_run_dir(run_dir, config.bits)
    check_writable(run_dir)
    stop_on_sigterm()
    try:
        # With op determinism, the same seed and settings give the same codes on this machine.
        trained = train(
            config,
            run_dir,
            resume=args.resume,
            wait=args.wait,
            verbose=0 if args.quiet else 1,
            strategy=strategy,
        )
    except LockHeld as held:
        raise SystemExit(f"{held} Wait for it to end, or pass --wait.") from None
    except RunExists:
        raise SystemExit(
            f"{run_dir} already holds a run: pass --resume to continue it, or another --run-dir."
        ) from None
    except (TrainingDiverged, WeightsUnavailableError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except tf.errors.UnimplementedError as error:
        if "eterminis" not in error.message:
            raise
        first = error.message.splitlines()[0]
        print(f"error: {first} Rerun with --nondeterministic.", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, OSError) as error:
        return stopped_exit_status(error, resume_advice(run_dir))
    if trained.metrics.get("results"):
        print(results_table(trained.metrics))
    print(f"Run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while starting, before the run began: nothing written
        print("Stopped by Ctrl-C before training began.", file=sys.stderr)
        sys.exit(130)
