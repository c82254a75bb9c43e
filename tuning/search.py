"""Search HARR's loss weights and WTA parameters with KerasTuner, alone or distributed.

    python -m tuning.search --tuner bayesian --max-trials 12 --epochs 10 --bits 32

Trials are scored by `val_map` (validation split, never the query set). At the end the
top trials are printed and RUN_DIR/best.yaml is written; retrain it at the full budget with
`python train.py --config RUN_DIR/best.yaml`. Rerunning the same command resumes an
interrupted search (--overwrite starts over). Distributed: run this command once with
KERASTUNER_TUNER_ID=chief and once per worker with KERASTUNER_TUNER_ID=workerN, all
with the same KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT, flags and --run-dir.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from harr_tf.atomic import write_text_atomically
from harr_tf.flags import (
    add_config,
    add_quiet,
    add_run_dir,
    add_settings,
    add_verbose,
    apply_settings,
    command_name,
    positive,
)

TUNERS = ("random", "bayesian", "hyperband")


# The TrainConfig settings a search takes from its command line, over --config's: those
# of the base (best.yaml's too) and those of the trials' budget only.
BASE_SETTINGS = ("dataset", "bits", "seed")
TRIAL_SETTINGS = ("epochs", "steps_per_epoch", "train_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("tuning.search"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--tuner",
        choices=TUNERS,
        default="bayesian",
        help="search algorithm (default: %(default)s)",
    )
    add(
        "--max-trials",
        type=positive(int),
        default=12,
        help="trials in all, counting those of a resumed search (random, bayesian; "
        "hyperband's count follows from --epochs) (default: %(default)s)",
    )
    add(
        "--initial-points",
        type=positive(int),
        help="bayesian: random trials before the Gaussian process is used "
        "(default: KerasTuner's, 3 x the number of tuned hyperparameters)",
    )
    add_settings(
        parser,
        BASE_SETTINGS + TRIAL_SETTINGS,
        defaults={"bits": (32,), "epochs": 10, "seed": 0},
        notes={
            "bits": "a search tunes one",
            "epochs": "a trial's (hyperband: the most)",
            "steps_per_epoch": "a trial's",
            "train_size": "a trial's",
            "seed": "and of the tuner",
        },
    )
    add_run_dir(
        parser,
        "the search's trials go in --project-name under it, the best settings in best.yaml",
        default="runs/tuning",
    )
    add(
        "--project-name",
        default="harr",
        help="sub-directory of --run-dir holding the trials (default: %(default)s)",
    )
    add("--overwrite", action="store_true", help="start over instead of resuming (chief only)")
    add_config(
        parser,
        "the base of every trial and of best.yaml, with an optional `search_space:` section "
        "fixing or narrowing hyperparameters",
    )
    add(
        "--oracle-timeout",
        type=positive(float),
        default=120.0,
        help="seconds a worker waits for the chief oracle before giving up (default: %(default)s)",
    )
    add(
        "--max-consecutive-failures",
        type=positive(int),
        default=3,
        help="stop the search after this many failed (e.g. NaN) trials in a row "
        "(default: %(default)s)",
    )
    add_verbose(parser)
    add_quiet(parser, "nor per-trial summaries; the final table stays")
    args = parser.parse_args(argv)
    if len(args.bits) != 1:
        lengths = ",".join(map(str, args.bits))
        parser.error(f"--bits: a search tunes one code length. Received: {lengths}")
    return args


def role() -> str:
    """'chief', 'worker' or 'alone', from KerasTuner's KERASTUNER_* variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "alone"
    missing = [
        name
        for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
        if not os.environ.get(name)
    ]
    if missing:
        raise SystemExit(
            f"KERASTUNER_ORACLE_IP is set, so distributed tuning also needs {missing}."
        )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def wait_for_chief(timeout: float) -> None:
    """Fails with a clear message, instead of KerasTuner's hour-long wait, when the chief
    oracle is not reachable within `timeout` seconds."""
    import grpc

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SystemExit(
                f"Cannot reach the chief oracle at {address} (KERASTUNER_ORACLE_IP:"
                f"KERASTUNER_ORACLE_PORT) within {timeout:g} s. Start the chief "
                "(KERASTUNER_TUNER_ID=chief) first, check the address, or raise --oracle-timeout."
            ) from None


def read_config(path: str | None) -> tuple[dict, dict | None]:
    """The train.py settings and the `search_space:` section of a YAML file."""
    from harr_tf.config import read_settings_file

    if not path:
        return {}, None
    values = read_settings_file(path)
    space = values.pop("search_space", None)
    return values, space


def run_search(args: argparse.Namespace) -> int:
    where = role()
    if where == "worker":
        wait_for_chief(args.oracle_timeout)
    from harr_tf.quiet import quiet_tensorflow

    quiet_tensorflow(args.verbose)
    import keras

    from harr_tf.config import to_dict
    from tuning.hypermodel import HarrHyperModel
    from tuning.results import best_config_yaml, trials_table

    config, trial_config, space = search_configs(args)
    project_dir = os.path.join(args.run_dir, args.project_name)
    settings = {
        "tuner": args.tuner,
        "trials": to_dict(trial_config),
        "search_space": space,
        "base": to_dict(config),  # of best.yaml
    }
    overwrite = args.overwrite and where != "worker"  # the chief owns the project
    if where != "worker" and not overwrite:
        check_resumable(os.path.join(project_dir, "search.yaml"), settings)
    try:
        features = os.path.join(args.run_dir, "features")  # a frozen student's, cached once
        tuner = make_tuner(args, HarrHyperModel(trial_config, space, features), overwrite)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"Invalid configuration: {error}") from error
    if where != "worker":
        with open(os.path.join(project_dir, "search.yaml"), "w") as f:
            yaml.safe_dump(settings, f, sort_keys=False)
    logs = keras.callbacks.TensorBoard(os.path.join(project_dir, "logs"))
    try:
        tuner.search(callbacks=[logs], verbose=0 if args.quiet else 1)
    except RuntimeError as error:  # e.g. too many failed trials in a row
        raise SystemExit(
            f"The search stopped: {error}\nTrials so far are kept in {project_dir}."
        ) from error
    except KeyboardInterrupt:
        raise SystemExit(f"Interrupted; rerun the same command to resume {project_dir}.") from None
    if where == "worker":
        print(f"Worker {os.environ['KERASTUNER_TUNER_ID']} finished; the chief writes the results.")
        return 0
    print(trials_table(list(tuner.oracle.trials.values())))
    best = tuner.oracle.get_best_trials(1)
    if not best or best[0].status != "COMPLETED":
        print(f"error: no trial completed; see {project_dir}/trial_*/trial.json", file=sys.stderr)
        return 1
    path = os.path.join(args.run_dir, "best.yaml")
    write_text_atomically(path, best_config_yaml(config, best[0], trial_config, path))
    print(f"Best configuration: {path}\nRetrain it: python train.py --config {path}")
    print(f"TensorBoard (HParams): tensorboard --logdir {os.path.join(project_dir, 'logs')}")
    return 0


def search_configs(args: argparse.Namespace) -> tuple:
    """The base config (of best.yaml: the file's settings and budget, with --dataset,
    --bits, --seed), the trials' config (the base at the search's budget), and the
    file's `search_space:` section."""
    from harr_tf.config import TrainConfig, from_dict, to_dict

    try:
        values, space = read_config(args.config)
        config = from_dict(TrainConfig, apply_settings(values, args, BASE_SETTINGS))
        # A trial's length is --epochs, whatever the config file says.
        trial = apply_settings({**to_dict(config), "steps": None}, args, TRIAL_SETTINGS)
        trial_config = from_dict(TrainConfig, trial)
    except ValueError as error:
        raise SystemExit(f"Invalid configuration: {error}") from error
    return config, trial_config, space


def make_tuner(args: argparse.Namespace, hypermodel, overwrite: bool):
    """KerasTuner's tuner of `--tuner`; it reloads the project unless `overwrite`."""
    import keras_tuner

    from tuning.hypermodel import OBJECTIVE

    common = {
        "objective": OBJECTIVE,
        "seed": args.seed,
        "directory": args.run_dir,
        "project_name": args.project_name,
        "overwrite": overwrite,
        "max_consecutive_failed_trials": args.max_consecutive_failures,
    }
    if args.tuner == "hyperband":
        return keras_tuner.Hyperband(hypermodel, max_epochs=args.epochs, **common)
    if args.tuner == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=args.max_trials, **common)
    return keras_tuner.BayesianOptimization(
        hypermodel, max_trials=args.max_trials, num_initial_points=args.initial_points, **common
    )


def check_resumable(path: str, settings: dict) -> None:
    """A resumed search must run its trials as it started them."""
    if not os.path.exists(path):
        return
    from harr_tf.resume import flatten_settings

    with open(path) as f:
        saved = flatten_settings(yaml.safe_load(f) or {})
    current = flatten_settings(settings)
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        raise SystemExit(
            f"{path} holds a search started with other settings ({', '.join(changed)}). "
            "Rerun it with the same flags and --config, pass --overwrite to start over, "
            "or use another --project-name."
        )


def main(argv: list[str] | None = None) -> int:
    return run_search(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
