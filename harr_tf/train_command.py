"""Train HARR hash codes without labels, evaluate them, and compare with LSH/PCAH/ITQ.

With no arguments: the default configuration on Fashion-MNIST (TFDS, or the local
IDX files when TFDS cannot download), 16/32/64 bits, ending with the mAP table.
Precedence: built-in defaults < --config FILE.yaml (or the saved config of the run
being resumed) < flags given on the command line.

Run as `python train.py` or `harr-train`; the flags are built from `TrainConfig`'s fields
(`harr_tf.flags`), and the training itself is `harr_tf.train`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from harr_tf.config_help import SETTING_HELP
from harr_tf.flags import (
    add_config,
    add_quiet,
    add_run_dir,
    add_settings,
    add_verbose,
    apply_settings,
)

# train.py sets every setting that has words in `SETTING_HELP`.
TRAIN_SETTINGS = tuple(SETTING_HELP)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings(
        parser,
        TRAIN_SETTINGS,
        notes={
            "epochs": "instead of --steps",
            "learning_rate": "the hash head's; a pretrained backbone's is 0.01 times it",
        },
    )
    add_config(parser)
    add_run_dir(parser, "when not given, a new runs/<date-time>")
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
    add_quiet(parser)
    add_verbose(parser)
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
    values = apply_settings(to_dict(saved), args, TRAIN_SETTINGS)
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
    """The command `python train.py` (and `harr-train`): its exit status."""
    try:
        return train_from_flags(parse_args(argv))
    except KeyboardInterrupt:  # while starting, before the run began: nothing written
        print("Stopped by Ctrl-C before training began.", file=sys.stderr)
        return 130


def train_from_flags(args: argparse.Namespace) -> int:
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
        precision.set_precision(args.mixed_precision, config.model.network)
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
