"""Configuration of a HARR run as frozen dataclasses (DESIGN §2 defaults).

`train.py` maps flags and an optional YAML file onto these; nothing reads
module-level globals. `to_dict`/`from_dict` give the resolved config saved with a run.
The module imports no TensorFlow or Keras: the names a config is checked against
(poolings, feature sources, code lengths, the pixel budget) are defined here, and the
modules that build from them import them from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import yaml

from harr_tf.augment_config import AugmentConfig

POOLINGS = ("grid", "global")
PIXEL_SOURCES = ("sqrt_smoothed_pixels", "smoothed_pixels", "pixels")
FEATURE_SOURCES = (*PIXEL_SOURCES, "backbone")  # and "file:PATH"
# Larger images are skipped unread: decoding one (20,990 x 29,700 px) takes 1.9 GB.
MAX_IMAGE_PIXELS = 40_000_000


def validate_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling. Expected one of {POOLINGS}. Received: {pooling!r}")


def validate_feature_source(source: str) -> None:
    if source in FEATURE_SOURCES or (source.startswith("file:") and len(source) > 5):
        return
    raise ValueError(
        f"Unknown WTA feature source {source!r}. Expected one of {FEATURE_SOURCES} "
        "or file:FEATURES.npz."
    )


def validate_bits(bits: Any) -> int:
    """`bits` when it is a code length the project can pack to bytes, else a clear error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 8 or bits % 8:
        raise ValueError(
            "`bits` must be a positive multiple of 8 (codes are packed to bytes). "
            f"Received: bits={bits!r}"
        )
    return bits


@dataclasses.dataclass(frozen=True)
class WTAConfig:
    """The similarity structure: P permutations of window K over a feature source,
    positive fraction ρ."""

    features: str = "sqrt_smoothed_pixels"  # one of FEATURE_SOURCES
    num_permutations: int = 512
    window: int = 4
    positive_fraction: float = 0.05
    max_pairs: int = 1_000_000
    refresh_every: int = 0  # epochs between rebuilds from the backbone's features; 0 = never

    def __post_init__(self) -> None:
        validate_feature_source(self.features)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss weights: L = L_sim + η₁·L_bcr + η₂·L_q, with temperature T in L_sim."""

    temperature: float = 0.1
    bcr_weight: float = 1.0
    quantization_weight: float = 0.5
    off_diagonal_weight: float = 1.0
    include_self: bool = True
    similarity_weight: float = 1.0
    guidance: str = "wta"  # or "instance": plain instance contrast (ablation)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Backbone and hash head."""

    # None: chosen from the collection when a run opens its images
    # (harr_tf.collection_defaults: efficientnet_lite0 for three channels, small_cnn for one);
    # small_cnn for a model built without a collection.
    backbone: str | None = None
    weights: str = "none"
    width: int = 16
    pooling: str = "grid"  # small_cnn: "grid" (3×3 regions) or "global"
    beta: float = 1.0
    beta_growth: float = 0.0
    backbone_lr_multiplier: float = 0.01
    # The student's backbone starts from `weights` (as the WTA teacher does) or from
    # seeded random weights, so a pretrained teacher can be measured with and without.
    init_from_teacher: bool = True
    # How a pretrained `backbone` is used (DESIGN §5 "Students"): "frozen" trains the
    # head on its cached features, "fine_tuned" trains it too (the paper; for GPUs),
    # "distilled" trains small_cnn (width, pooling) from its WTA structure. None: the
    # backbone's default (`default_student`).
    student: str | None = None
    feature_rounds: int = 1  # frozen: rounds of cached views (A, B, W) per training image

    def __post_init__(self) -> None:
        validate_pooling(self.pooling)
        if self.student is not None and self.student not in STUDENTS:
            raise ValueError(
                f"Unknown student. Expected one of {STUDENTS}. Received: student={self.student!r}"
            )
        if self.backbone == "small_cnn" and self.student not in (None, "fine_tuned"):
            raise ValueError(
                f"--student {self.student} needs a pretrained --backbone (e.g. "
                "efficientnet_lite0 --weights imagenet); small_cnn is always trained whole."
            )
        if self.feature_rounds < 1:
            raise ValueError(
                f"`feature_rounds` must be >= 1. Received: feature_rounds={self.feature_rounds}"
            )

    @property
    def student_mode(self) -> str:
        """`student`, or the backbone's default when None."""
        return self.student or default_student(self.backbone)

    @property
    def network(self) -> str:
        """`backbone`, or small_cnn while no collection has chosen one."""
        return self.backbone or "small_cnn"

    @property
    def trained_backbone(self) -> str:
        """The network the run trains and exports: small_cnn for a distilled student."""
        return "small_cnn" if self.student_mode == "distilled" else self.network

    @property
    def student_weights(self) -> str:
        """The weights the trained network starts from: `weights`, or "none"."""
        if self.student_mode == "distilled":
            return "none"
        return self.weights if self.init_from_teacher else "none"


STUDENTS = ("frozen", "fine_tuned", "distilled")


def default_student(backbone: str | None) -> str:
    """small_cnn trains whole; a pretrained backbone stays frozen, since fine-tuning it
    costs a CPU about a hundred times more per step (docs/experiments.md)."""
    return "fine_tuned" if backbone in (None, "small_cnn") else "frozen"


# The contrastive loss needs several negatives per image in each batch.
MIN_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; the run directory stores it resolved."""

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    protocol: str = "standard"
    bits: tuple[int, ...] = (16, 32, 64)
    epochs: int | None = None  # None: as many as `steps` needs
    steps: int | None = None  # None: harr_tf.training.DEFAULT_STEPS (1,170) unless epochs is set
    steps_per_epoch: int | None = None
    batch_size: int | None = None  # None: harr_tf.data.image_size's default (128 up to 96 px)
    train_size: int | str | None = None  # None: the protocol's; "all": the whole database
    queries_per_class: int | None = None  # None: the protocol's
    validation_per_class: int | None = None  # None: the protocol's
    image_size: int | None = None  # None: harr_tf.data.image_size's default for the backbone
    max_pixels: int = MAX_IMAGE_PIXELS  # images declaring more are skipped unread
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    eval_every: int = 10
    encode_batch_size: int | None = None  # None: harr_tf.data.image_size's default
    # GB the batches are sized for (harr_tf.memory_budget); None: a third of the machine's.
    memory_budget: float | None = None
    # Training steps per call into the compiled loop: Keras reads the logs on the host
    # after each call, so on a GPU more steps per call mean fewer waits.
    steps_per_execution: int = 1
    validation_database_size: int = 10_000
    seed: int = 0
    wta: WTAConfig = WTAConfig()
    loss: LossConfig = LossConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()

    def __post_init__(self) -> None:
        distilled = self.model.student == "distilled"
        if distilled and self.model.backbone is not None and self.wta.features != "backbone":
            raise ValueError(
                "--student distilled learns from the pretrained backbone's WTA structure: "
                f"pass --wta-features backbone. Received: wta features={self.wta.features!r}"
            )
        for bits in self.bits:
            validate_bits(bits)
        if len(set(self.bits)) != len(self.bits):
            raise ValueError(f"`bits` must not repeat a code length. Received: bits={self.bits}")
        if not (self.train_size in (None, "all") or isinstance(self.train_size, int)):
            raise ValueError(
                f"`train_size` must be an integer or 'all'. "
                f"Received: train_size={self.train_size!r}"
            )
        for name in (
            "epochs",
            "eval_every",
            "steps",
            "image_size",
            "encode_batch_size",
            "steps_per_execution",
            "max_pixels",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={getattr(self, name)}")
        if self.image_size is not None and self.image_size**2 > self.max_pixels:
            raise ValueError(
                f"`image_size` {self.image_size} means {self.image_size**2 / 1e6:.0f} MP per "
                f"image ({self.image_size**2 * 12 / 2**30:.1f} GiB per float32 RGB view), over "
                f"the budget of {self.max_pixels / 1e6:.0f} MP. Expected image_size <= "
                f"{math.isqrt(self.max_pixels)}. Received: image_size={self.image_size}"
            )
        if self.epochs is not None and self.steps is not None:
            raise ValueError(
                "`epochs` and `steps` both set the training length: give one. "
                f"Received: epochs={self.epochs}, steps={self.steps}"
            )
        for name in ("queries_per_class", "validation_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(
                f"`steps_per_epoch` must be >= 1. Received: steps_per_epoch={self.steps_per_epoch}"
            )
        if self.memory_budget is not None and not self.memory_budget > 0:
            raise ValueError(
                f"`memory_budget` must be > 0 (GB). Received: memory_budget={self.memory_budget}"
            )
        if self.batch_size is not None and self.batch_size < MIN_BATCH_SIZE:
            raise ValueError(
                f"`batch_size` must be >= {MIN_BATCH_SIZE}: the contrastive loss contrasts each "
                f"image with the others of its batch, and with fewer it trains to chance level. "
                f"Received: batch_size={self.batch_size}"
            )
        if not self.learning_rate > 0:
            raise ValueError(
                f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate}"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(
                f"`weight_decay` must be >= 0. Received: weight_decay={self.weight_decay}"
            )


def to_dict(config: Any) -> dict:
    """A plain dict (tuples as lists) for YAML/JSON."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type, values: dict) -> Any:
    """Builds `cls` from a (possibly partial) nested dict, rejecting unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"Unknown {cls.__name__} setting(s): {unknown}. Expected some of {sorted(fields)}."
        )
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value or {})
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def read_settings_file(path: str, flag: str = "--config") -> dict:
    """The mapping of settings in a YAML file (a run's config.yaml, best.yaml, ...).

    Raises ValueError naming `flag` and the file when it is missing, unreadable or not a
    mapping; a command turns it into its one-line exit.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{flag}: no such file. Received: {path}")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ValueError(f"{flag} {path} is not valid YAML{line}: {problem}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{flag} {path} cannot be read: {error}.") from None
    if not isinstance(values, dict):
        raise ValueError(f"{flag} {path} must hold a mapping of settings.")
    return values
