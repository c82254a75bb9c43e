"""Self-supervised pretraining of a backbone on the unlabeled images, for a WTA teacher
where no pretrained weights can be had (an offline machine, a domain ImageNet does not
cover).

    python -m harr_tf.pretrain --method barlow_twins --minutes 15 --run-dir runs/pre
    python train.py --weights runs/pre/backbone.weights.h5 --wta-features backbone

Trains `backbone → projector` on two views of each training image (HARR's views A and B)
with SimCLR, Barlow Twins or VICReg (`harr_tf.pretrain_losses`), from the protocol's
training split or every database image (`--images database`); the query set never. The
run directory holds `pretrain.yaml` (what was pretrained on what), TensorBoard logs,
the last epoch's checkpoint in `backup/` (`LastGoodCheckpoint`, as train.py's: a killed run
resumes from its last epoch with the same command) and, at the end, `backbone.weights.h5`.
A finished run is not trained again; one process at a time works in a directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from typing import Any

from harr_tf.config import TrainConfig, from_dict
from harr_tf.flags import (
    add_quiet,
    add_run_dir,
    add_settings,
    add_verbose,
    apply_settings,
    command_name,
)
from harr_tf.pretrain_record import PRETRAIN_FILE

WEIGHTS_FILE = "backbone.weights.h5"
METHODS = ("simclr", "barlow_twins", "vicreg")
# What a pretraining run is bound to: resuming or reusing it with other values is refused.
IDENTITY = ("dataset", "image_shape", "backbone", "width", "pooling", "method", "images")
_RESUME = "The last epoch's checkpoint is kept: the same command resumes from it."

# The TrainConfig settings pretraining takes: what it reads, at what size, with which network.
PRETRAIN_SETTINGS = (
    "dataset",
    "data_dir",
    "train_size",
    "steps_per_epoch",
    "image_size",
    "seed",
    "model.backbone",
    "model.width",
    "model.pooling",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("harr_tf.pretrain"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add_settings(parser, PRETRAIN_SETTINGS)
    add(
        "--method",
        choices=METHODS,
        default="barlow_twins",
        help="self-supervised loss (default: %(default)s)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="train for this long (wall time, in all)")
    add_settings(budget, ["epochs"], notes={"epochs": "or --minutes"})
    add(
        "--images",
        choices=("train", "database"),
        default="train",
        help="the protocol's training split, or every database image (never the queries)",
    )
    add_run_dir(parser, "a stopped pretraining resumes with the same command", required=True)
    add(
        "--projector-dim",
        type=int,
        default=512,
        help="width of the projector's layers (default: %(default)s)",
    )
    add_settings(
        parser,
        ["batch_size", "learning_rate"],
        defaults={"batch_size": 256},
        notes={
            "learning_rate": "vicreg's default is 0.005 (its loss is ~25x larger and "
            "diverged at 0.05)"
        },
    )
    add_quiet(parser)
    add_verbose(parser)
    args = parser.parse_args(argv)
    if args.minutes is None and args.epochs is None:
        parser.error("give the budget: --minutes M or --epochs E")
    if args.minutes is not None and not 0 < args.minutes < math.inf:
        parser.error(f"--minutes must be > 0 and finite. Received: {args.minutes:g}")
    for name in ("epochs", "steps_per_epoch", "train_size", "batch_size", "projector_dim"):
        value = getattr(args, name)
        if isinstance(value, int) and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. Received: {value}")
    if args.learning_rate is None:
        args.learning_rate = 0.005 if args.method == "vicreg" else 0.05
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0. Received: {args.learning_rate:g}")
    if args.batch_size < 8:
        parser.error(
            f"--batch-size must be >= 8 (the losses need a batch). Received: {args.batch_size}"
        )
    return args


def make_model(backbone: Any, projector_dim: int, method: str) -> Any:
    """A `PretrainModel` over `backbone` with a two-layer projector."""
    import keras

    from harr_tf.pretrain_model import PretrainModel

    projector = keras.Sequential(
        [
            keras.layers.Dense(projector_dim, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(projector_dim),
        ],
        name="projector",
    )
    return PretrainModel(backbone, projector, method=method)


def check_identity(path: str, identity: dict) -> None:
    """Refuses a pretraining run directory made for another dataset, size or network."""
    import yaml

    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    changed = [key for key in IDENTITY if saved.get(key) != identity.get(key)]
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {identity.get(k)!r}" for k in changed)
        raise SystemExit(
            f"{path} belongs to another pretraining ({details}); use another --run-dir, or the "
            "flags it was started with."
        )


def run(args: argparse.Namespace, config: TrainConfig) -> str:
    """Pretrains (or resumes) in `args.run_dir` on `config`'s data, at its image size,
    with its network; returns the path of the backbone's weights."""
    import keras
    import yaml

    from harr_tf.atomic import atomic_path, write_text_atomically
    from harr_tf.backbones import build_backbone
    from harr_tf.callbacks import LastGoodCheckpoint, checkpoint_bytes
    from harr_tf.collection_defaults import GREY_BACKBONE
    from harr_tf.data.augment import ViewAugmenter
    from harr_tf.data.pipeline import training_dataset
    from harr_tf.pretrain_model import PretrainBudget
    from harr_tf.run_data import load_run_data

    if config.model.backbone is None:  # a teacher learnt from scratch: small_cnn unless told
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, backbone=GREY_BACKBONE)
        )
    data = load_run_data(config)
    indices = data.split.train if args.images == "train" else data.split.database
    shape = tuple(int(d) for d in data.dataset.image_shape)
    identity = {
        "dataset": config.dataset,
        "image_shape": list(shape),
        "backbone": config.model.backbone,
        "width": config.model.width,
        "pooling": config.model.pooling,
        "method": args.method,
        "images": args.images,
    }
    os.makedirs(args.run_dir, exist_ok=True)
    lock_directory(args.run_dir)
    described = os.path.join(args.run_dir, PRETRAIN_FILE)
    check_identity(described, identity)
    weights = os.path.join(args.run_dir, WEIGHTS_FILE)
    if os.path.exists(weights):
        logging.getLogger("harr_tf").info("%s is finished: %s", args.run_dir, weights)
        return weights
    write_text_atomically(described, yaml.safe_dump({**identity, "seed": config.seed}))

    keras.utils.set_random_seed(config.seed)
    network = config.model
    backbone = build_backbone(network.backbone, shape, "none", network.width, network.pooling)
    model = make_model(backbone, args.projector_dim, args.method)
    steps = config.steps_per_epoch or max(1, len(indices) // args.batch_size)
    budget = PretrainBudget(
        os.path.join(args.run_dir, "progress.json"),
        args.learning_rate,
        minutes=args.minutes,
        epochs=args.epochs,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(budget.learning_rate, momentum=0.9, weight_decay=1e-5)
    )
    augmenter = ViewAugmenter(shape, seed=config.seed, views=("a", "b"))
    backup = os.path.join(args.run_dir, "backup")
    done = LastGoodCheckpoint.completed_epochs(backup)
    stream = training_dataset(
        data.dataset, indices, augmenter, args.batch_size, seed=config.seed, start_step=done * steps
    )
    history = model.fit(
        stream,
        epochs=args.epochs or 10**6,  # a time budget stops it
        steps_per_epoch=steps,
        callbacks=[
            LastGoodCheckpoint(backup),
            budget,  # before TensorBoard, which then logs the learning rate it set
            keras.callbacks.TensorBoard(os.path.join(args.run_dir, "logs")),
            keras.callbacks.TerminateOnNaN(),
        ],
        shuffle=False,  # the stream shuffles itself
        verbose=0 if args.quiet else 1,
    )
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise ValueError(
            f"The {args.method} loss became NaN/inf; nothing was written as {WEIGHTS_FILE}. "
            "Lower --learning-rate and run again with another --run-dir."
        )
    with atomic_path(weights, checkpoint_bytes(backbone)) as temporary:
        backbone.save_weights(temporary)
    return weights


def lock_directory(run_dir: str) -> None:
    """Makes this process the only one pretraining in `run_dir` until it ends."""
    from harr_tf.atomic import remove_leftovers
    from harr_tf.locks import LockHeld, exclusive

    try:
        exclusive(run_dir).acquire()
    except LockHeld as held:
        raise SystemExit(f"{held} Wait for it to end, or stop it.") from None
    remove_leftovers(run_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from harr_tf.quiet import log_to_stderr, quiet_tensorflow

    log_to_stderr()
    quiet_tensorflow(args.verbose)
    from harr_tf.interrupts import stop_on_sigterm, stopped_exit_status

    stop_on_sigterm()
    try:
        config = from_dict(TrainConfig, apply_settings({}, args, PRETRAIN_SETTINGS))
        weights = run(args, config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, OSError) as error:
        return stopped_exit_status(error, _RESUME)
    print(f"Pretrained backbone: {weights}")
    print(
        f"Use it as the WTA teacher: python train.py --dataset {config.dataset} "
        f"--weights {weights} --wta-features backbone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
