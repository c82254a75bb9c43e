"""The versions of each served model, loaded as TensorFlow Serving loads them.

Each version is a `SessionBundle` (its own graph and session, variables restored by
the SavedModel's restore op) whose warm-up requests have been replayed; a version
that fails either never serves. Base paths are polled: the versions a model's
version policy wants (latest N, all, or specific ones) are loaded while the current
ones keep answering, then swapped in, and the others unloaded. Lookups fail with
TF Serving's status codes and messages.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import IMAGES_SIGNATURE, WARMUP_FILE
from serving.layout import servable_versions
from serving.model_config import aspired_versions
from serving.session_bundle import SessionBundle, op_message

logger = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State


class ServingError(Exception):
    """A request that fails with a gRPC status code and TF Serving's message for it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _servable_not_found(name: str, version: int | None) -> ServingError:
    wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedVersion:
    """One loaded SavedModel version: its session and its `SignatureDef` protos."""

    version: int
    path: Path
    bundle: SessionBundle

    @property
    def signature_defs(self) -> dict:
        return self.bundle.signature_defs

    @classmethod
    def load(cls, version: int, path: Path) -> LoadedVersion:
        """Loads `path` and replays its warm-up requests, as TF Serving does before serving."""
        loaded = cls(version=version, path=path, bundle=SessionBundle(path))
        try:
            loaded.replay_warmup()
        except BaseException:
            loaded.bundle.close()
            raise
        return loaded

    def replay_warmup(self) -> int:
        """Runs every `PredictionLog` of `assets.extra/`; returns how many ran."""
        warmup = self.path / WARMUP_FILE
        if not warmup.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator():
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            self.bundle.run(request.model_spec.signature_name or IMAGES_SIGNATURE, inputs)
            count += 1
        return count

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        return self.bundle.run(signature_name, inputs, outputs)


class ModelRegistry:
    """Serves the versions of model `name` under `base_path` that `policy` wants.

    Args:
        name: the model name requests must use.
        base_path: the TF Serving model base path (`base_path/<version>/`).
        policy: a `model_version_policy` (ServableVersionPolicy) proto; the latest
            version when None. Defaults to None.
        on_available: called with each version once it serves. Defaults to None.
    """

    def __init__(
        self,
        name: str,
        base_path: str | Path,
        policy=None,
        on_available: Callable[[str, LoadedVersion], None] | None = None,
    ) -> None:
        self.name = name
        self.base_path = Path(base_path)
        self.policy = policy or model_server_config_pb2.ModelConfig().model_version_policy
        self._on_available = on_available
        self._loaded: dict[int, LoadedVersion] = {}
        self._states: dict[int, tuple[int, str]] = {}  # version → (State, error message)
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    def poll(self) -> dict[int, LoadedVersion]:
        """Loads the wanted versions not loaded yet, then unloads the unwanted ones (so a
        version that fails to load leaves the serving ones in place); returns what serves."""
        on_disk = servable_versions(self.base_path)
        while True:
            wanted = aspired_versions(self.policy, [v for v in on_disk if v not in self._failed])
            missing = sorted(wanted - set(self._loaded), reverse=True)
            if not missing:
                break
            for version in missing:
                self._load(version, on_disk[version])
        with self._lock:
            for version in set(self._loaded) - wanted:
                self._states[version] = (State.END, "")
            # A new dict, not an edit: requests read `_loaded` without the lock. An
            # unloaded version's session closes once no request holds it.
            self._loaded = {v: loaded for v, loaded in self._loaded.items() if v in wanted}
            return self._loaded

    def _load(self, version: int, path: Path) -> None:
        self._set_state(version, State.LOADING)
        try:
            loaded = LoadedVersion.load(version, path)
        except Exception as error:  # a broken version must not stop the served ones
            message = f"{type(error).__name__}: {op_message(str(error))}".splitlines()[0]
            logger.error("Loading version %d of %s failed: %s", version, self.name, message)
            self._failed.add(version)
            self._set_state(version, State.END, message)
            return
        with self._lock:
            self._loaded = {**self._loaded, version: loaded}
            self._states[version] = (State.AVAILABLE, "")
        if self._on_available is not None:
            self._on_available(self.name, loaded)

    def resolve(self, version: int | None) -> LoadedVersion:
        """The loaded version a request names (the highest when None), or NOT_FOUND."""
        loaded = self._loaded
        chosen = max(loaded, default=None) if version is None else version
        if chosen not in loaded:
            raise _servable_not_found(self.name, version)
        return loaded[chosen]

    def version_states(self) -> dict[int, tuple[int, str]]:
        with self._lock:
            return dict(self._states)

    def _set_state(self, version: int, state: int, error: str = "") -> None:
        with self._lock:
            self._states[version] = (state, error)


class ModelServer:
    """Several `ModelRegistry`s behind one lookup, polled together on one thread."""

    def __init__(self, registries: list[ModelRegistry]) -> None:
        self.registries = {registry.name: registry for registry in registries}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        for registry in self.registries.values():
            registry.poll()

    def wait_until_available(self, seconds: float) -> bool:
        """Polls until every model serves a version (TF Serving waits for them at start)
        or `stop()`; returns whether they all serve."""
        while not self._stop.is_set():
            waiting = [r for r in self.registries.values() if not r.poll()]
            if not waiting:
                return True
            for registry in waiting:
                logger.warning(
                    "No versions of servable %s found under base path %s",
                    registry.name,
                    registry.base_path,
                )
            self._stop.wait(seconds)
        return False

    def start_polling(self, seconds: float) -> None:
        """Polls every `seconds` on a daemon thread until `stop()`."""

        def loop() -> None:
            while not self._stop.wait(seconds):
                self.poll()

        self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def resolve(self, name: str, version: int | None, label: str = "") -> LoadedVersion:
        """The loaded version a request names, or TF Serving's error for it."""
        if label:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
            )
        registry = self.registries.get(name)
        if registry is None:
            raise _servable_not_found(name, version)
        return registry.resolve(version)

    def version_states(self, name: str, version: int | None) -> dict[int, tuple[int, str]]:
        """`{version: (State, error message)}` for GetModelStatus, or its NOT_FOUND error."""
        registry = self.registries.get(name)
        states = registry.version_states() if registry is not None else {}
        if version is None:
            if not states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
                )
            return states
        if version not in states:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}"
            )
        return {version: states[version]}
