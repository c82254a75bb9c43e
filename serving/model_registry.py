"""The versions of one model under a base path, loaded as TensorFlow Serving would.

Latest-version policy: the highest integer version holding a SavedModel is served;
the base path is polled, a newer version is loaded (and its warm-up requests
replayed) while the current one keeps answering, then swapped in. Lookups fail
with TF Serving's status codes and messages.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

from serving import WARMUP_FILE
from serving.layout import SAVED_MODEL_FILE, servable_versions

logger = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State


class ServingError(Exception):
    """A request that fails with a gRPC status code and TF Serving's message for it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedVersion:
    """One loaded SavedModel: its callable signatures and their `SignatureDef` protos."""

    version: int
    path: Path
    signatures: dict[str, tf.types.experimental.ConcreteFunction]
    signature_defs: dict  # name → SignatureDef proto, every one of the MetaGraphDef
    saved_model: object  # keeps the loaded variables alive

    @classmethod
    def load(cls, version: int, path: Path) -> LoadedVersion:
        """Loads `path` and replays its warm-up requests, as TF Serving does before serving."""
        saved_model = tf.saved_model.load(str(path))
        proto = saved_model_pb2.SavedModel.FromString((path / SAVED_MODEL_FILE).read_bytes())
        loaded = cls(
            version=version,
            path=path,
            signatures=dict(saved_model.signatures),
            signature_defs=dict(proto.meta_graphs[0].signature_def),
            saved_model=saved_model,
        )
        loaded.replay_warmup()
        return loaded

    def replay_warmup(self) -> int:
        """Runs every `PredictionLog` of `assets.extra/`; returns how many ran."""
        warmup = self.path / WARMUP_FILE
        if not warmup.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator():
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            signature = self.signatures[request.model_spec.signature_name or "serving_default"]
            signature(**{name: tf.make_ndarray(proto) for name, proto in request.inputs.items()})
            count += 1
        return count


class ModelRegistry:
    """Serves the latest version of `name` under `base_path`, polling for new ones.

    Args:
        name: the model name requests must use.
        base_path: the TF Serving model base path (`base_path/<version>/`).
        on_available: called with each version once it serves. Defaults to None.
    """

    def __init__(
        self,
        name: str,
        base_path: str | Path,
        on_available: Callable[[LoadedVersion], None] | None = None,
    ) -> None:
        self.name = name
        self.base_path = Path(base_path)
        self._on_available = on_available
        self._current: LoadedVersion | None = None
        self._states: dict[int, tuple[int, str]] = {}  # version → (State, error message)
        self._failed: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> LoadedVersion | None:
        """Loads the highest version if it is new; returns what serves afterwards."""
        versions = servable_versions(self.base_path)
        candidates = [version for version in versions if version not in self._failed]
        latest = max(candidates, default=None)
        current = self._current
        if latest is None or (current is not None and latest == current.version):
            return current
        self._set_state(latest, State.LOADING)
        try:
            loaded = LoadedVersion.load(latest, versions[latest])
        except Exception as error:  # a broken version must not stop the served one
            logger.error("Loading version %d of %s failed: %s", latest, self.name, error)
            self._failed.add(latest)
            self._set_state(latest, State.END, f"{type(error).__name__}: {error}")
            return current
        with self._lock:
            self._current = loaded
            if current is not None:
                self._states[current.version] = (State.END, "")
            self._states[latest] = (State.AVAILABLE, "")
        if self._on_available is not None:
            self._on_available(loaded)
        return loaded

    def start_polling(self, seconds: float) -> None:
        """Polls every `seconds` on a daemon thread until `stop()`."""

        def loop() -> None:
            while not self._stop.wait(seconds):
                self.poll()

        self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._thread.start()

    def wait_until_available(self, seconds: float) -> LoadedVersion | None:
        """Polls until a version serves (TF Serving waits for it at start) or `stop()`."""
        while self._current is None and not self._stop.is_set():
            if self.poll() is None:
                logger.warning(
                    "No versions of servable %s found under base path %s",
                    self.name,
                    self.base_path,
                )
                self._stop.wait(seconds)
        return self._current

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def resolve(self, name: str, version: int | None, label: str = "") -> LoadedVersion:
        """The loaded version a request names, or TF Serving's NOT_FOUND error."""
        if label:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
            )
        current = self._current
        if name != self.name or current is None or version not in (None, current.version):
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}"
            )
        return current

    def version_states(self, name: str, version: int | None) -> dict[int, tuple[int, str]]:
        """`{version: (State, error message)}` for GetModelStatus, or its NOT_FOUND error."""
        with self._lock:
            states = dict(self._states) if name == self.name else {}
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

    def _set_state(self, version: int, state: int, error: str = "") -> None:
        with self._lock:
            self._states[version] = (state, error)
