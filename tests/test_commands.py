"""One command-line convention: every console script answers --help, and a flag that
several commands take is built by `harr_tf.flags`, with the same words and type in each."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harr_tf import flags
from harr_tf.config_help import SETTING_HELP

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# A flag's words wherever a command takes it: the settings' and the common flags'.
VOCABULARY = {
    **{flags.setting_flag(name): SETTING_HELP[name] for name in SETTING_HELP},
    "--run-dir": flags.RUN_DIR_HELP,
    "--config": flags.CONFIG_HELP,
    "--quiet": flags.QUIET_HELP,
    "--verbose": flags.VERBOSE_HELP,
}
# Flags that name a setting but mean the serving command's own thing.
OWN_MEANING = {
    ("harr-export", "--bits"): "which of the run's trained code lengths to export",
    ("harr-encode", "--batch-size"): "images per request to the server",
    ("harr-export", "--max-pixels"): "the limit built into the served model",
    ("harr-encode", "--max-pixels"): "files skipped before they are sent",
    ("harr-app", "--max-pixels"): "uploads refused by the page",
}


class _Parsed(Exception):
    """Raised instead of parsing, once a command has built its parser."""


def command_parser(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser the console script `script` builds, caught before it parses."""
    module, _, function = SCRIPTS[script].partition(":")
    built = []

    def catch(self, args=None, namespace=None):
        built.append(self)
        raise _Parsed

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # a serving script's quiet start
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_Parsed):
        getattr(importlib.import_module(module), function)()
    return built[0]


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each option of `parser` and of its sub-commands' parsers."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(options(sub))
        found.update({option: action for option in action.option_strings})
    return found


def test_every_command_is_a_console_script():
    assert sorted(SCRIPTS) == sorted(
        f"harr-{name}"
        for name in ("train", "pretrain", "tune", "export", "serve", "encode", "search", "app")
    )


def test_shared_flags_have_the_same_words_and_type_in_every_command(monkeypatch):
    takers: dict[str, list[str]] = {}
    for script in sorted(SCRIPTS):
        for option, action in options(command_parser(script, monkeypatch)).items():
            if option not in VOCABULARY or (script, option) in OWN_MEANING:
                continue
            takers.setdefault(option, []).append(script)
            words = action.help.replace("%%", "%")
            assert words.startswith(VOCABULARY[option]), (script, option, words)
            setting = next((s for s in SETTING_HELP if flags.setting_flag(s) == option), None)
            if setting is not None:
                expected = flags.setting_type(flags.setting_field(setting)[0])
                assert action.type is expected, (script, option, action.type)
    # The shared vocabulary is shared: a run directory is --run-dir in every command
    # that has one, and the data, network and seed flags read alike in the training ones.
    assert sorted(takers["--run-dir"]) == [
        "harr-export",
        "harr-pretrain",
        "harr-train",
        "harr-tune",
    ]
    for option in ("--dataset", "--seed", "--train-size", "--steps-per-epoch", "--epochs"):
        assert sorted(takers[option]) == ["harr-pretrain", "harr-train", "harr-tune"], option
    assert len(takers["--verbose"]) == len(SCRIPTS)


def test_a_setting_flag_is_typed_by_its_field():
    assert flags.setting_flag("wta.num_permutations") == "--permutations"
    assert flags.setting_flag("model.beta_growth") == "--beta-growth"
    bits, train_size, include_self, width = (
        flags.setting_type(flags.setting_field(name)[0])
        for name in ("bits", "train_size", "loss.include_self", "model.width")
    )
    assert bits("8,16") == (8, 16) and width("4") == 4
    assert train_size("all") == "all" and train_size("200") == 200
    assert include_self("No") is False and include_self("TRUE") is True
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false"):
        include_self("maybe")


def test_flags_given_override_the_file_and_the_rest_stays():
    parser = argparse.ArgumentParser()
    names = ("dataset", "model.width", "wta.window", "seed")
    flags.add_settings(parser, names, defaults={"seed": 3})
    args = parser.parse_args(["--width", "4", "--window", "8"])
    values = {"dataset": "mnist", "model": {"width": 16, "pooling": "global"}}
    assert flags.apply_settings(values, args, names) == {
        "dataset": "mnist",
        "model": {"width": 4, "pooling": "global"},
        "wta": {"window": 8},
        "seed": 3,
    }
    assert values["model"]["width"] == 16  # the caller's dict is left alone


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_answers_help(script):
    path = Path(sys.executable).with_name(script)
    assert path.exists(), f"{path} is missing: install the project (pip install -e .)"
    # As a user starts it: without the TF_CPP_MIN_LOG_LEVEL the tests set, which a
    # command takes as asking for TensorFlow's lines.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [str(path), "--help"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {script}") and result.stderr == ""
