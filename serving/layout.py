"""TensorFlow Serving's model directory layout: `BASE/<version>/saved_model.pb`.

Only directories named by a non-negative integer are versions; anything else
(the exporter's temporary directory among them) is invisible to a server.
"""

from __future__ import annotations

from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"


def version_directories(base_path: str | Path) -> dict[int, Path]:
    """`{version: directory}` of every integer-named directory under `base_path`."""
    base = Path(base_path)
    if not base.is_dir():
        return {}
    return {
        int(entry.name): entry
        for entry in base.iterdir()
        if entry.name.isdigit() and entry.name.isascii() and entry.is_dir()
    }


def servable_versions(base_path: str | Path) -> dict[int, Path]:
    """The versions that hold a SavedModel, as a server would see them."""
    return {
        version: directory
        for version, directory in version_directories(base_path).items()
        if (directory / SAVED_MODEL_FILE).is_file()
    }


def next_version(base_path: str | Path) -> int:
    """One more than the highest version directory, or 1 for an empty base path."""
    return max(version_directories(base_path), default=0) + 1
