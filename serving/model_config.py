"""TensorFlow Serving's model config file: a `ModelServerConfig` text proto naming several
models, each with its base path and version policy.

    model_config_list {
      config { name: "harr_64" base_path: "/models/harr_64" model_platform: "tensorflow" }
      config {
        name: "harr_16" base_path: "/models/harr_16" model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
      }
    }

`tensorflow_model_server --model_config_file=F` and `python -m serving.server
--model-config-file F` read the same file; `serving.export --write-model-config F`
adds what it exported.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from harr_tf.atomic import write_text_atomically

PLATFORM = "tensorflow"


def read_model_config(path: str | Path) -> list[model_server_config_pb2.ModelConfig]:
    """The models of the config file at `path`, each checked to be servable here.

    Raises:
        ValueError: a one-line reason: the file is missing or not a ModelServerConfig,
            lists no model, names a model twice, or a base path that is not a directory.
    """
    config = _parse(path)
    models = list(config.model_config_list.config)
    if not models:
        raise ValueError(f"--model-config-file {path}: lists no model in model_config_list")
    seen = set()
    for model in models:
        if not model.name or model.name in seen:
            raise ValueError(
                f"--model-config-file {path}: every model needs a name of its own. "
                f"Received: name={model.name!r}"
            )
        seen.add(model.name)
        if model.model_platform not in ("", PLATFORM):
            raise ValueError(
                f"--model-config-file {path}: model {model.name}: only model_platform "
                f'"{PLATFORM}" is served. Received: {model.model_platform!r}'
            )
        if not Path(model.base_path).is_dir():
            raise ValueError(
                f"--model-config-file {path}: model {model.name}: base_path "
                f"{model.base_path!r} is not a directory"
            )
    return models


def aspired_versions(policy, versions: list[int]) -> set[int]:
    """The versions a `model_version_policy` wants served, among `versions` on disk:
    the latest `num_versions` (1 by default), all, or the specific ones present."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(versions)
    if kind == "specific":
        return set(policy.specific.versions) & set(versions)
    count = policy.latest.num_versions if kind == "latest" else 0
    return set(sorted(versions)[-max(count, 1) :]) if versions else set()


def add_model_to_config(path: str | Path, name: str, base_path: str | Path) -> None:
    """Adds model `name` at `base_path` (absolute) to the config file at `path`, created
    if missing; a model of that name already there keeps its version policy."""
    config = _parse(path) if Path(path).exists() else model_server_config_pb2.ModelServerConfig()
    models = config.model_config_list.config
    model = next((model for model in models if model.name == name), None) or models.add()
    model.name = name
    model.base_path = str(Path(base_path).resolve())
    model.model_platform = PLATFORM
    write_text_atomically(path, text_format.MessageToString(config))


def _parse(path: str | Path) -> model_server_config_pb2.ModelServerConfig:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"--model-config-file {path}: cannot read it ({error.strerror})") from None
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(
            f"--model-config-file {path}: not a ModelServerConfig text proto: {error}"
        ) from None
