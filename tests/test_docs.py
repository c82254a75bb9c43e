"""Every command the README and docs/ show still parses: each `train.py`, `python -m
MODULE` and `benchmarks/*.py` line of their bash blocks is handed to that program's own
argument parser, which must accept its flags (or print --help)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.DOTALL)
_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_]\w*)=(.*)$")
_SEPARATORS = ("&&", "||", ";", "|", "&")
_PACKAGES = ("harr_tf.", "serving.", "tuning.")


class Parsed(Exception):
    """Raised by the patched parser once it has accepted the arguments."""


def commands(text: str) -> list[list[str]]:
    """Argument lists of the project's programs in `text`'s bash blocks, with the
    block's own variables expanded, continuation lines joined and redirections dropped."""
    found = []
    variables: dict[str, str] = {}  # a document's later blocks reuse its earlier ones'
    for block in _BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if len(words) == 1 and (match := _ASSIGNMENT.match(words[0])):
                variables[match.group(1)] = match.group(2)
                continue
            words = [part for word in words for part in _expand(word, variables)]
            for part in _split(words):
                program = _program(part)
                if program is not None:
                    found.append(program)
    return found


def _expand(word: str, variables: dict[str, str]) -> list[str]:
    """A word with the block's variables expanded; a word that held one is split on
    white space, as the shell splits an unquoted expansion. Other words stay whole, so a
    quoted argument with spaces stays one argument."""
    if "$" not in word:
        return [word]
    for name, value in variables.items():
        word = word.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return shlex.split(word)


def _split(words: list[str]) -> list[list[str]]:
    parts, current, target_follows = [], [], False
    for word in words:
        if target_follows:  # the file of a redirection
            target_follows = False
        elif word in _SEPARATORS:
            parts.append(current)
            current = []
        elif re.match(r"^\d?[<>]", word):
            target_follows = word in (">", ">>", "<", "2>", "1>")
        else:
            current.append(word)
    return [*parts, current]


def _program(words: list[str]) -> list[str] | None:
    """`[target, *args]` where target is "train.py", a module or a benchmark script."""
    while words and _ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words or not words[0].endswith(("python", "python3")):
        return None
    if len(words) > 2 and words[1] == "-m" and words[2].startswith(_PACKAGES):
        return [words[2], *words[3:]]
    if len(words) > 1 and (words[1] == "train.py" or words[1].startswith("benchmarks/")):
        return [words[1], *words[2:]]
    return None


def _run_parser(target: str, argv: list[str], monkeypatch) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [target, *argv])
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"doc_{Path(target).stem}", ROOT / target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        module.main(argv) if _takes_argv(module.main) else module.main()
    except Parsed:
        return
    except SystemExit as exit_:  # --help prints and exits 0; a bad flag exits 2
        assert exit_.code in (0, None), f"{target} {shlex.join(argv)}: exit {exit_.code}"
        return
    pytest.fail(f"{target} {shlex.join(argv)} ran without parsing its arguments")


def _takes_argv(function) -> bool:
    return function.__code__.co_argcount > 0


ALL = [(doc.name, command) for doc in DOCUMENTS for command in commands(doc.read_text())]


def test_the_documents_show_commands():
    targets = {command[0] for _, command in ALL}
    assert "train.py" in targets and len(ALL) >= 10, targets


@pytest.mark.parametrize(
    "document, command", ALL, ids=[f"{doc}:{' '.join(cmd)[:60]}" for doc, cmd in ALL]
)
def test_documented_command_parses(document, command, monkeypatch):
    target, *argv = command
    if any("$" in word for word in argv):
        pytest.skip(f"shell expansion in {shlex.join(argv)}")
    _run_parser(target, argv, monkeypatch)


def test_a_bad_flag_is_caught(monkeypatch):
    with pytest.raises(AssertionError, match="exit 2"):
        _run_parser("train.py", ["--no-such-flag"], monkeypatch)
