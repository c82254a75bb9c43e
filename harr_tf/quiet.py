"""TensorFlow's start-up noise kept out of the command lines' output.

On a machine without a GPU, importing TensorFlow prints CUDA and absl lines ("Could not
find cuda drivers", "failed call to cuInit: UNKNOWN ERROR (303)") before a command says
anything of its own. They are not errors of the user's run, so the entry points call
`quiet_tensorflow` before TensorFlow is first imported; `--verbose`, or any
`TF_CPP_MIN_LOG_LEVEL` the user set, keeps them.
"""

from __future__ import annotations

import logging
import os
import sys


def quiet_tensorflow(verbose: bool = False) -> None:
    """Imports TensorFlow with its C++ start-up lines silenced, unless `verbose`.

    Only what TensorFlow writes to the process's stderr while it loads is dropped (the
    CUDA stub lines come from C++, before Python's logging exists); a failed import
    still raises, and Python errors and warnings later on are shown as usual.
    """
    if verbose or "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    # TFDS and TensorFlow's Python side log through these at WARNING level.
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def command_module() -> list[str]:
    """`[MODULE, *args]` while Python starts `python -m MODULE args` (a package's
    `__init__` runs then); `[]` for a library import or a script."""
    if sys.argv[:1] != ["-m"] or "-m" not in sys.orig_argv:
        return []
    return sys.orig_argv[sys.orig_argv.index("-m") + 1 :]


def quiet_module_command_line(package: str, needs_tensorflow: bool = True) -> None:
    """`quiet_tensorflow` for a `python -m PACKAGE.MODULE ...` command whose module
    imports TensorFlow at import time, before it can parse `--verbose`: called from the
    package's `__init__`, it acts only while Python is starting such a command."""
    command = command_module()
    if not command or not command[0].startswith(f"{package}.") or not needs_tensorflow:
        return
    quiet_tensorflow(verbose="--verbose" in command)
