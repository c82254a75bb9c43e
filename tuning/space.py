"""The tuning search space: which `TrainConfig` setting each hyperparameter sets, and how
a YAML `search_space:` section fixes or narrows it.

In the YAML section, each entry is one of
    NAME: VALUE            fixed (hp.Fixed)
    NAME: [V1, V2, ...]    these values only (hp.Choice)
    NAME: {min: A, max: B} a narrower (or other) range; for a choice, the choices in [A, B]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras_tuner

from harr_tf.config import TrainConfig

# Hyperparameter name: (TrainConfig section or None for the top level, field, value type).
SETTINGS: dict[str, tuple[str | None, str, type]] = {
    "bcr_weight": ("loss", "bcr_weight", float),
    "quantization_weight": ("loss", "quantization_weight", float),
    "temperature": ("loss", "temperature", float),
    "positive_fraction": ("wta", "positive_fraction", float),
    "window": ("wta", "window", int),
    "num_permutations": ("wta", "num_permutations", int),
    "learning_rate": (None, "learning_rate", float),
    "beta_growth": ("model", "beta_growth", float),
    "batch_size": (None, "batch_size", int),
}


@dataclasses.dataclass(frozen=True)
class Fixed:
    value: float | int


@dataclasses.dataclass(frozen=True)
class Choices:
    values: tuple


@dataclasses.dataclass(frozen=True)
class Range:
    min_value: float
    max_value: float


Override = Fixed | Choices | Range


def config_value(config: TrainConfig, name: str) -> Any:
    """The value of hyperparameter `name` in `config`."""
    section, field, _ = SETTINGS[name]
    return getattr(getattr(config, section) if section else config, field)


def with_values(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`config` with the settings of the hyperparameters in `values` replaced
    (other keys, such as Hyperband's `tuner/epochs`, are ignored)."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in SETTINGS:
            section, field, kind = SETTINGS[name]
            (sections.setdefault(section, {}) if section else top)[field] = kind(value)
    for section, fields in sections.items():
        top[section] = dataclasses.replace(getattr(config, section), **fields)
    return dataclasses.replace(config, **top)


def parse_overrides(section: Any) -> dict[str, Override]:
    """Validates a `search_space:` mapping; raises ValueError naming the entry."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(
            f"search_space must be a mapping of hyperparameter names. Received: {section!r}"
        )
    unknown = sorted(set(section) - set(SETTINGS))
    if unknown:
        raise ValueError(
            f"Unknown hyperparameter(s) {unknown} in search_space. "
            f"Expected some of {sorted(SETTINGS)}."
        )
    return {
        name: _parse_entry(name, entry, f"search_space.{name}") for name, entry in section.items()
    }


def _parse_entry(name: str, entry: Any, where: str) -> Override:
    kind = SETTINGS[name][2]
    if isinstance(entry, list):
        if not entry:
            raise ValueError(f"{where}: empty list of values. Give at least one value.")
        return Choices(tuple(_number(value, kind, where) for value in entry))
    if isinstance(entry, dict):
        if set(entry) != {"min", "max"}:
            raise ValueError(f"{where}: a range needs exactly `min` and `max`. Received: {entry}")
        low, high = (_number(entry[key], kind, where) for key in ("min", "max"))
        if low > high:
            raise ValueError(f"{where}: inverted range, min {low} > max {high}.")
        if low == high:
            raise ValueError(
                f"{where}: empty range [{low}, {high}]; to fix it write `{name}: {low}`."
            )
        return Range(low, high)
    return Fixed(_number(entry, kind, where))


def _number(value: Any, kind: type, where: str) -> float | int:
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not integral)
    ):
        raise ValueError(
            f"{where}: expected {'an integer' if kind is int else 'a number'}. Received: {value!r}"
        )
    return kind(value)


class SpaceDeclarer:
    """Declares hyperparameters on `hp` with the base config's value as default and
    the config file's override, if any, in place of the built-in range.

    Args:
        hp: the trial's `keras_tuner.HyperParameters`.
        config: the base configuration; its values are the defaults.
        overrides: from `parse_overrides`.
    """

    def __init__(
        self, hp: keras_tuner.HyperParameters, config: TrainConfig, overrides: dict[str, Override]
    ) -> None:
        self.hp, self.config, self.overrides = hp, config, overrides

    def float(self, name: str, min_value: float, max_value: float, log: bool = False) -> float:
        override = self.overrides.get(name)
        if isinstance(override, Range):
            min_value, max_value = override.min_value, override.max_value
            if log and min_value <= 0:
                raise ValueError(
                    f"search_space.{name}: this range is log-scaled, so min must be "
                    f"> 0. Received: min {min_value}"
                )
        elif override is not None:
            return self._fixed_or_choice(name, override)
        default = min(max(config_value(self.config, name), min_value), max_value)
        sampling = "log" if log else "linear"
        return self.hp.Float(name, min_value, max_value, sampling=sampling, default=default)

    def choice(self, name: str, values: list) -> Any:
        override = self.overrides.get(name)
        if isinstance(override, Range):
            values = [v for v in values if override.min_value <= v <= override.max_value]
            if not values:
                raise ValueError(
                    f"search_space.{name}: no built-in choice lies in "
                    f"[{override.min_value}, {override.max_value}]; list the values."
                )
        elif override is not None:
            return self._fixed_or_choice(name, override)
        return self.hp.Choice(name, values, default=self._nearest(name, values))

    def _fixed_or_choice(self, name: str, override: Fixed | Choices) -> Any:
        if isinstance(override, Fixed):
            return self.hp.Fixed(name, override.value)
        values = list(override.values)
        return self.hp.Choice(name, values, default=self._nearest(name, values))

    def _nearest(self, name: str, values: list) -> Any:
        base = config_value(self.config, name)
        return min(values, key=lambda value: abs(value - base))
