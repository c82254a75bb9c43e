"""A command's stderr holds its own words: TensorFlow's start-up lines and other
libraries' INFO lines are kept out.

On a machine without a GPU, importing TensorFlow prints CUDA and absl lines ("Could not
find cuda drivers", "failed call to cuInit: UNKNOWN ERROR (303)") before a command says
anything of its own. They are not errors of the user's run, so each command calls
`quiet_tensorflow` before TensorFlow is first imported: in its `main` when its module
loads TensorFlow later, or through `quiet_command_start` in an
`if __name__ == "__main__":` block above its imports when the module imports TensorFlow
itself. `--verbose`, or any `TF_CPP_MIN_LOG_LEVEL` the user set, keeps the lines.
Importing a package does none of this.

`log_to_stderr` is a command's logging: the project's loggers at the command's level,
every other library's at Python's default (WARNING), so FAISS's INFO lines about which
CPU build it loads stay out.
"""

from __future__ import annotations

import logging
import os
import sys

# The project's loggers; "__main__" is a module's `getLogger(__name__)` while it is the
# command (`python -m serving.server`).
PROJECT_LOGGERS = ("harr_tf", "serving", "tuning", "__main__")


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


def quiet_command_start() -> None:
    """`quiet_tensorflow` for a command whose module imports TensorFlow at its top, before
    it parses its arguments: `--verbose` is looked for in `sys.argv`."""
    quiet_tensorflow(verbose="--verbose" in sys.argv[1:])


def log_to_stderr(level: int = logging.INFO, format: str = "%(message)s") -> None:
    """A command's log lines on stderr: the project's loggers from `level` up, other
    libraries' from WARNING (the root logger's level is left as it is)."""
    logging.basicConfig(format=format)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
