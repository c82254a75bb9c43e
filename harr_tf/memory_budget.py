"""What a batch costs in memory, the budget it must fit (`--memory-budget`), and a
batch runner that halves its batch when a batch runs out of memory.

A batch's cost is what the network holds per image, not its pixels: the pretrained
backbones resize every image to 224 x 224 inside, so a 64-px image costs ResNet-50 as
much as a 224-px one (the teacher pass of 436 such images in one batch passed 24 GB).
The cost per image is estimated from the built Keras model (the float32 outputs of all
its layers, `activation_bytes`) times factors calibrated against peaks measured by
`benchmarks/memory.py` (docs/collections.md, "Per backbone").
"""

from __future__ import annotations

import functools
import logging
import os
import resource
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger("harr_tf")

GB = 2**30
# The default budget: a third of the machine's memory. The run shares the machine (on a
# 24 GB machine: 8 GB, the bound asked of a run there); the rest is the estimate's margin,
# the page cache that streamed images are read through, and other processes.
BUDGET_SHARE = 1 / 3
# Calibrated on 2 cores (docs/collections.md): a process's RSS before its first batch
# (TensorFlow, the dataset's ids and labels, the pipeline's buffers) ...
RUNTIME_BYTES = int(1.5 * GB)
# ... plus, per image of a batch, this many times `activation_bytes` of the network:
# an eager forward pass holds every layer's output until it ends (measured 1.05 x for
# ResNet-50 and EfficientNet-B0, 0.76 x for VGG16); a training step keeps three views'
# activations and their gradients (measured 2.84 x for EfficientNet-B0, 1.83 x for
# ResNet-50, from the peaks at batches 8 and 16; VGG16 at batch 16 needs the 3.3).
INFERENCE_FACTOR = 1.1
TRAINING_FACTOR = 3.3
# A training step also holds the weights' initial values, gradients and SGD momentum,
# and its traced step and three views' pipeline: 0.63 to 0.67 GB measured past the RSS
# before `fit` (itself up to 1.3 GB).
TRAINING_WEIGHT_COPIES = 4
TRAINING_BYTES = int(0.5 * GB)
_GROWTH = 64 * 2**20


class BatchDoesNotFit(MemoryError, ValueError):
    """Even the smallest batch of a stage does not fit in memory (a ValueError, so the
    command line reports it as one line)."""


def training_does_not_fit(network: str, bits: int, batch: int) -> BatchDoesNotFit:
    """The error of a training step that ran out of memory, saying what to try."""
    from harr_tf.config import MIN_BATCH_SIZE  # harr_tf.config imports this module's users

    advice = (
        f"pass --batch-size {batch // 2}"
        if batch // 2 >= MIN_BATCH_SIZE
        else "pass a smaller --image-size, or run on a machine with more memory"
    )
    return BatchDoesNotFit(
        f"Training the {bits}-bit model of {network} ran out of memory at batch {batch}: "
        f"{advice} (the checkpoint of the last whole epoch is kept; add --resume)."
    )


def machine_memory_bytes() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def default_budget_gb() -> float:
    """`BUDGET_SHARE` of `machine_memory_bytes`, in GB (one decimal)."""
    return round(machine_memory_bytes() * BUDGET_SHARE / GB, 1)


_budget_gb: list[float] = []  # the run's --memory-budget, once `set_budget` is called


def set_budget(gb: float) -> None:
    """Makes `gb` the process's budget, which the batch runners watch (as Keras's
    mixed-precision policy is the process's): a run sets its `--memory-budget` once."""
    _budget_gb[:] = [gb]


def budget_bytes(gb: float | None = None) -> int:
    """`gb` in bytes; None: the budget `set_budget` set, else `default_budget_gb`."""
    if gb is None:
        gb = _budget_gb[0] if _budget_gb else default_budget_gb()
    return int(gb * GB)


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started or since `reset_peak_rss`.

    Linux's VmHWM, not `getrusage`'s ru_maxrss: that survives `exec`, so a child of a
    large process (a test run) would report its parent's size as its own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Starts `peak_rss_bytes` again from the current resident memory (Linux ≥ 4.0), so
    one batch's peak is measured, not the process's history; a no-op where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def activation_bytes(model: keras.Model) -> int:
    """Bytes of float32 outputs of all of `model`'s layers, nested models included, for
    one image: what a forward pass writes per image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += activation_bytes(layer)
            continue
        outputs = layer.output if isinstance(layer.output, list | tuple) else [layer.output]
        total += 4 * sum(int(np.prod(output.shape[1:])) for output in outputs)
    return total


@functools.lru_cache(maxsize=32)
def network_cost(
    backbone: str, image_shape: tuple[int, ...], width: int = 32, pooling: str = "grid"
) -> tuple[int, int]:
    """`(activation bytes per image, weight bytes)` of `backbone` built for images of
    `image_shape` (with random weights: the cost does not depend on them)."""
    from harr_tf.backbones import build_backbone

    network = build_backbone(backbone, tuple(image_shape), "none", width, pooling)
    return activation_bytes(network), 4 * network.count_params()


def inference_cost(activations: int, weights: int) -> tuple[int, int]:
    """`(bytes per image, fixed bytes)` of running a network of `activations` bytes per
    image and `weights` bytes of weights on a batch."""
    return int(INFERENCE_FACTOR * activations), RUNTIME_BYTES + weights


def training_cost(activations: int, weights: int) -> tuple[int, int]:
    """`(bytes per image of the batch, fixed bytes)` of a training step of a network of
    `activations` bytes per image and `weights` bytes of weights."""
    fixed = RUNTIME_BYTES + TRAINING_BYTES + TRAINING_WEIGHT_COPIES * weights
    return int(TRAINING_FACTOR * activations), fixed


def largest_batch(per_image: int, fixed: int, budget: int, largest: int, smallest: int) -> int:
    """The largest power of two in [`smallest`, `largest`] whose batch costs at most
    `budget` bytes (`fixed + batch * per_image`); `smallest - 1` when none does."""
    fits = (budget - fixed) // max(per_image, 1)
    if fits < smallest:
        return smallest - 1
    return int(min(largest, 2 ** (int(fits).bit_length() - 1)))


def network_name(model: keras.Model) -> str:
    """The backbone inside `model` (an encoder or a backbone) and
    the image size it reads ("resnet50 at 64 px"), for messages."""
    names = [inner.name for inner in _nested_models(model) if inner.name != "backbone"]
    return f"{names[0] if names else 'small_cnn'} at {model.input_shape[1]} px"


def _nested_models(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield layer
            yield from _nested_models(layer)


class HalvingBatches:
    """Runs a function over batches in chunks of `size` images, halving `size` when a
    chunk runs out of memory (`tf.errors.ResourceExhaustedError`: the chunk is run again
    in halves) or pushes the process's peak RSS past `budget` (later chunks are halved),
    with one log line each time.

    Args:
        size: images per chunk to start with.
        stage: what runs, for the messages ("the WTA teacher pass").
        network: the backbone's name and the image size, for the messages ("resnet50 at
            64 px").
        budget: bytes the process's RSS should stay under (default: `budget_bytes()`).
    """

    def __init__(self, size: int, stage: str, network: str, budget: int | None = None) -> None:
        self.size, self.stage, self.network = size, stage, network
        self.budget = budget_bytes() if budget is None else budget

    def __call__(self, function: Callable[[np.ndarray], np.ndarray], batch) -> np.ndarray:
        """`function` of `batch` (n, ...), computed in chunks, concatenated: (n, ...)."""
        outputs, start = [], 0
        while start < len(batch):
            reset_peak_rss()
            before = peak_rss_bytes()
            chunk = batch[start : start + self.size]
            try:
                outputs.append(function(chunk))
            except tf.errors.ResourceExhaustedError:
                self._halve("ran out of memory", retry=True)
                continue
            start += len(chunk)
            peak = peak_rss_bytes()
            # A new peak past the budget, not the allocator's slow drift above it.
            crossed = before <= self.budget or peak - before > _GROWTH
            if peak > self.budget and crossed and self.size > 1:
                self._halve(f"took the process to {peak / GB:.1f} GB", retry=False)
        return np.concatenate(outputs)

    def _halve(self, what: str, retry: bool) -> None:
        if self.size <= 1:
            raise BatchDoesNotFit(
                f"{self.stage} of {self.network} ran out of memory at a batch of one image; "
                "lower --image-size or run on a machine with more memory."
            )
        budget = f"the memory budget of {self.budget / GB:.1f} GB"
        logger.warning(
            "%s of %s: a batch of %d %s (%s); %s with batches of %d.",
            self.stage,
            self.network,
            self.size,
            what,
            budget,
            "retrying" if retry else "continuing",
            self.size // 2,
        )
        self.size //= 2
