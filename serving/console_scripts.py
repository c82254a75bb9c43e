"""The serving commands as console scripts (`harr-export`, `harr-serve`, `harr-encode`,
`harr-app` in pyproject.toml).

Their modules import TensorFlow at the top, and a console script imports the module
before it calls `main`; so each script silences TensorFlow's start-up lines first, as
`python -m serving.X` does in its `__main__` block (`harr_tf.quiet`).
"""

from __future__ import annotations

import importlib

from harr_tf.quiet import quiet_command_start


def _run(module: str) -> int:
    quiet_command_start()
    return importlib.import_module(module).main()


def export() -> int:
    return _run("serving.export")


def serve() -> int:
    return _run("serving.server")


def encode() -> int:
    return _run("serving.encode")


def app() -> int:
    return _run("serving.app")
