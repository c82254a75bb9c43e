"""`--distribute none|mirrored|multi-worker`: the `tf.distribute` strategy training runs under.

`HarrModel` computes its losses on the global batch under any of them (the codes are
all-gathered across replicas), so the method does not change with the device count;
`synchronize_batch_norm` makes the batch-norm statistics global too. Build and compile
the model inside `strategy.scope()` and give `fit` the global batch. Under multi-worker
only the chief writes the run directory; the others restore its checkpoints
(`worker_run_dir`), and `work_around_keras_multi_worker` lets Keras 3's `fit` run at all.
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import tensorflow as tf

from harr_tf.run_directory import RunDirectory

STRATEGIES = ("none", "mirrored", "multi-worker")


def default_strategy_name() -> str:
    """`mirrored` when more than one GPU is visible, else `none`."""
    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"


def cluster_spec() -> dict:
    """The `TF_CONFIG` environment variable, checked: `cluster.worker` a non-empty list of
    "host:port" and `task` a worker of it. Raises ValueError naming what is missing."""
    raw = os.environ.get("TF_CONFIG")
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not raw:
        raise ValueError(
            f"--distribute multi-worker needs TF_CONFIG set on every worker, {example}"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}), {example}") from None
    workers = config.get("cluster", {}).get("worker") if isinstance(config, dict) else None
    if not isinstance(workers, list) or not workers or not all(":" in str(w) for w in workers):
        raise ValueError(f"TF_CONFIG needs cluster.worker, a list of 'host:port', {example}")
    task = config.get("task", {})
    index = task.get("index") if isinstance(task, dict) else None
    if task.get("type") not in ("worker", "chief") or not isinstance(index, int):
        raise ValueError(f"TF_CONFIG needs task.type 'worker' and an integer task.index, {example}")
    if task["type"] == "worker" and not 0 <= index < len(workers):
        raise ValueError(
            f"TF_CONFIG task.index must be in [0, {len(workers)}) for {len(workers)} "
            f"workers. Received: {index}"
        )
    return config


def make_strategy(name: str | None = None, timeout_seconds: float | None = None):
    """The strategy of a `--distribute` value (`None`: `default_strategy_name()`).

    `multi-worker` reads the cluster from `TF_CONFIG` and must be made before any other
    TensorFlow op runs; `timeout_seconds` bounds each collective, so a worker that cannot
    reach the others fails instead of waiting for ever.
    """
    name = default_strategy_name() if name is None else name
    if name not in STRATEGIES:
        raise ValueError(f"--distribute must be one of {STRATEGIES}. Received: {name!r}")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    cluster_spec()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory: always on one machine; under
    multi-worker, worker 0 (or the chief) only."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def worker_run_dir(shared: str, bits: tuple[int, ...]) -> str:
    """A temporary run directory for a worker that is not the chief. Only the chief writes
    `shared` (the `--run-dir`), but each `bits_B/checkpoint` here links to the chief's
    there, so a restarted worker restores what the chief saved: `shared` must be on
    storage every worker sees."""
    chief, worker = RunDirectory(shared), RunDirectory(tempfile.mkdtemp(prefix="harr-worker-"))
    for length in bits:
        worker.length(length).path.mkdir()
        os.symlink(chief.length(length).checkpoint.absolute(), worker.length(length).checkpoint)
    return str(worker)


def synchronize_batch_norm(model: keras.Layer) -> int:
    """Makes every `BatchNormalization` inside `model` compute its batch statistics over
    all replicas (the global batch); returns how many. Outside a strategy they behave as
    before. The flag saves with the model."""
    count = 0
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
        stack.extend(getattr(layer, "layers", []))
    return count


def work_around_keras_multi_worker(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Makes Keras 3's `fit` run `model` under `MultiWorkerMirroredStrategy`, which as
    released fails twice:

    - before training it averages one distributed batch over the workers to build the
      model, which fails for a dict batch (keras-team/keras#20329: "Attempt to convert a
      value ({'a': PerReplica: ...}) with an unsupported type (<class 'dict'>)"); a model
      built in its constructor, as `HarrModel` is, needs no such build;
    - it averages each step's logs with `strategy.reduce("MEAN", v, axis=0)`, which fails
      for scalars (tensorflow/tensorflow#72388: "Invalid reduction dimension 0 for input
      with 0 dimensions"); the step's logs are given as vectors of one value instead.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    step = model.train_step
    model.train_step = lambda batch: {
        name: tf.reshape(value, [1]) for name, value in step(batch).items()
    }
