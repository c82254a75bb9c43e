"""One way to build a command's flags, so that a flag means the same thing in every command.

A flag that sets a `TrainConfig` setting is made from the setting's field: its name
(`model.width` → `--width`), its type from the annotation (`int | None` → int,
`tuple[int, ...]` → comma-separated, `bool` → true/false), its default and its words
(`harr_tf.config_help`). Its value is stored under the dotted name and stays None unless
given (or defaulted by the command), so settings layer as train.py documents: the
dataclass's defaults < a YAML file < the flags given (`apply_settings`). The flags every
command spells alike (--run-dir, --config, --quiet, --verbose) and the positive-number
type of the serving commands are made here too.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from harr_tf.config import TrainConfig
from harr_tf.config_help import DEFAULT_HELP, SETTING_HELP

# The settings whose flag is not named after the field.
_FLAG_NAMES = {"wta.features": "--wta-features", "wta.num_permutations": "--permutations"}

# The words of the flags every command spells alike; a command adds what it does with them.
RUN_DIR_HELP = "run directory: the run's settings, checkpoints, logs and results"
CONFIG_HELP = "YAML file of settings (as in a run's config.yaml); flags given override it"
QUIET_HELP = "no progress bars"
VERBOSE_HELP = "keep TensorFlow's start-up log lines (CUDA, oneDNN)"


def code_lengths(text: str) -> tuple[int, ...]:
    """`"16,32,64"` → (16, 32, 64); `TrainConfig` checks each length."""
    return tuple(int(part) for part in text.split(","))


def count_or_all(text: str) -> int | str:
    """A number of items, or "all" of them."""
    return text if text == "all" else int(text)


def true_or_false(text: str) -> bool:
    """true/yes/1 or false/no/0, in any case; anything else is refused, not read as false."""
    word = text.lower()
    if word not in ("true", "yes", "1", "false", "no", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false. Received: {text!r}")
    return word in ("true", "yes", "1")


def positive(kind: type, allow_zero: bool = False) -> Callable[[str], int | float]:
    """An argparse type: `kind(text)`, which must be > 0 (or >= 0 with `allow_zero`)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a number. Received: {text!r}") from err
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be {bound}. Received: {text}")
        return value

    return parse


def command_name(module: str) -> str:
    """The name a command's usage line shows: the console script it was started as
    (`harr-export`), else `python -m module`."""
    script = os.path.basename(sys.argv[0])
    return script if script.startswith("harr-") else f"python -m {module}"


def setting_flag(setting: str) -> str:
    """The flag of a dotted setting name: `model.beta_growth` → `--beta-growth`."""
    return _FLAG_NAMES.get(setting, "--" + setting.rpartition(".")[2].replace("_", "-"))


def setting_field(setting: str) -> tuple[Any, Any]:
    """The type annotation and default of a dotted setting's `TrainConfig` field."""
    owner: Any = TrainConfig()
    *sections, name = setting.split(".")
    for section in sections:
        owner = getattr(owner, section)
    return typing.get_type_hints(type(owner))[name], getattr(owner, name)


def setting_type(annotation: Any) -> Callable[[str], Any]:
    """The argparse type of a field annotated `annotation`."""
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation) == (int, ...):
        return code_lengths
    kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
    kinds = kinds or [annotation]
    if kinds == [int, str]:
        return count_or_all
    if kinds == [bool]:
        return true_or_false
    if len(kinds) == 1 and kinds[0] in (int, float, str):
        return kinds[0]
    raise TypeError(f"No command-line type for a setting of type {annotation}.")


def add_settings(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: Iterable[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    notes: Mapping[str, str] | None = None,
) -> None:
    """Adds the flags of `settings` (dotted names of `SETTING_HELP`) to `parser`.

    A flag's value is None unless given, or the command's own `defaults[setting]`. Its
    help is the setting's words, then what the command adds (`notes[setting]`), then the
    default: the command's, else the field's (or what its None stands for).
    """
    defaults, notes = defaults or {}, notes or {}
    for setting in settings:
        annotation, field_default = setting_field(setting)
        default = defaults.get(setting)
        parser.add_argument(
            setting_flag(setting),
            dest=setting,
            metavar=setting.rpartition(".")[2].upper(),
            type=setting_type(annotation),
            default=default,
            help=_help(
                SETTING_HELP[setting],
                notes.get(setting),
                _shown(field_default if default is None else default) or DEFAULT_HELP.get(setting),
            ),
        )


def apply_settings(values: dict, args: argparse.Namespace, settings: Iterable[str]) -> dict:
    """A copy of `values` (nested, as `harr_tf.config.to_dict` gives) with each of
    `settings` that `args` holds a value for set to it; the others are left as they are."""
    values = copy.deepcopy(values)
    for setting in settings:
        given = getattr(args, setting)
        if given is None:
            continue
        *sections, name = setting.split(".")
        place = values
        for section in sections:
            place = place.setdefault(section, {})
        place[name] = given
    return values


def add_run_dir(
    parser: argparse.ArgumentParser,
    note: str,
    *,
    default: str | None = None,
    required: bool = False,
) -> None:
    """`--run-dir`; `note` says what the command does with it."""
    parser.add_argument(
        "--run-dir", default=default, required=required, help=_help(RUN_DIR_HELP, note, default)
    )


def add_config(parser: argparse.ArgumentParser, note: str | None = None) -> None:
    """`--config FILE.yaml`: settings between the defaults and the flags given."""
    parser.add_argument("--config", metavar="FILE", help=_help(CONFIG_HELP, note, None))


def add_quiet(parser: argparse.ArgumentParser, note: str | None = None) -> None:
    parser.add_argument("--quiet", action="store_true", help=_help(QUIET_HELP, note, None))


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: keep the start-up lines a command silences (`harr_tf.quiet`)."""
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _help(words: str, note: str | None, default: str | None) -> str:
    text = f"{words}; {note}" if note else words
    if default is not None:
        text += f" (default: {default})"
    return text.replace("%", "%%")  # argparse formats help with %


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)
