"""Serving test support shared by the export, server, encode and search tests.

conftest.py registers this module with `pytest_plugins`, so the fixtures below
are available to every test by name; import the helpers (`ServingProcess`,
`sample_images`, `encoded_images`, `predict_request`, `make_tiny_run`) with
`from serving_support import ...`. Nothing here trains: the tiny run holds a
seeded, untrained encoder, which is all serving needs to be tested exactly.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SHAPE = (28, 28, 1)
TINY_BITS = 16
MODEL_NAME = "harr"
READY_LINE = re.compile(r"serving model (?P<name>\S+) version (?P<version>\d+) on (?P<address>\S+)")
REST_LINE = re.compile(r"serving REST API on (?P<address>\S+)")


def sample_images(count: int, shape: tuple[int, int, int] = TINY_SHAPE, seed: int = 0):
    """`count` uint8 images of `shape` with large-scale structure (blurry blobs at
    random brightness), so that even an untrained encoder gives them different codes."""
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    coarse = rng.uniform(0, 1, (count, 4, 4, channels))
    blobs = np.kron(coarse, np.ones((1, -(-height // 4), -(-width // 4), 1)))[:, :height, :width]
    scale = rng.uniform(60, 255, (count, 1, 1, 1))
    noise = rng.normal(0, 8, (count, *shape))
    return np.clip(blobs * scale + noise, 0, 255).astype(np.uint8)


def encoded_images(images: np.ndarray, image_format: str = "PNG", **options) -> list[bytes]:
    """Each uint8 image (H, W, C) as a file in `image_format`, encoded by Pillow (not
    TensorFlow); `options` go to `Image.save` (e.g. `lossless=True` for WebP)."""
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        pillow_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        pillow_image.save(buffer, image_format, **options)
        encoded.append(buffer.getvalue())
    return encoded


def make_tiny_run(directory: Path, shape=TINY_SHAPE, bits: int = TINY_BITS, seed: int = 0) -> Path:
    """A run directory as train.py leaves it, for serving purposes: `config.yaml`
    (dataset `npz:` of 64 `sample_images` saved beside it) and `bits_N/encoder.keras`
    holding a seeded, untrained small-CNN encoder of width 4."""
    import keras

    from harr_tf.config import ModelConfig, TrainConfig
    from harr_tf.encoder import build_encoder
    from harr_tf.run_directory import RunDirectory

    run = RunDirectory(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = sample_images(64, shape, seed)
    np.savez(directory / "images.npz", images=images)
    config = TrainConfig(
        dataset=f"npz:{directory / 'images.npz'}", bits=(bits,), model=ModelConfig(width=4)
    )
    run.write_config(config)
    keras.utils.set_random_seed(seed)
    encoder = build_encoder(shape, bits, config.model)
    _spread_codes(encoder, images)
    run.length(bits).path.mkdir(exist_ok=True)
    encoder.save(run.length(bits).encoder)
    return directory


def _spread_codes(encoder, images: np.ndarray) -> None:
    """Standardises the hash head's pre-activations over `images`, so the untrained
    encoder's codes are balanced and far from 0 (a random-projection hash of its
    features) instead of nearly equal for every image."""
    features = np.asarray(encoder.get_layer("backbone")(images.astype(np.float32)))
    dense = encoder.get_layer("hash_head").dense
    kernel, _ = dense.get_weights()
    projected = features @ kernel
    spread = projected.std(axis=0) + 1e-6
    dense.set_weights([kernel / spread, -projected.mean(axis=0) / spread])


def predict_request(inputs: dict, model: str = MODEL_NAME, signature: str = "", version=None):
    """A `PredictRequest` with each array (or list of bytes) of `inputs` as a TensorProto."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


class ServingProcess:
    """`python -m serving.server` as a real child process on a free port.

    `start()` returns once it prints its ready line; `address` is then
    "127.0.0.1:PORT" (`start(wait=False)` returns at once, for a server that waits
    for its first version), and with `--rest-api-port` among the arguments
    `rest_address` the REST API's. `base_path` None leaves the models to the
    arguments (`--model-config-file`). `stop()` sends SIGTERM and returns the exit
    status. Output (stdout and stderr) is collected in `lines`.
    """

    def __init__(
        self, base_path: Path | None, *extra_args: str, model_name: str = MODEL_NAME
    ) -> None:
        models = [] if base_path is None else ["--model-base-path", str(base_path)]
        self.command = [
            sys.executable,
            "-m",
            "serving.server",
            *models,
            *(["--model-name", model_name] if base_path is not None else []),
            "--port",
            "0",
            *extra_args,
        ]
        self.lines: list[str] = []
        self.address: str | None = None
        self.rest_address: str | None = None
        self._process: subprocess.Popen | None = None
        self._reading = True
        self._changed = threading.Condition()

    @property
    def pid(self) -> int:
        return self._process.pid

    def start(self, timeout: float = 120.0, wait: bool = True) -> ServingProcess:
        """Starts the process; with `wait`, returns once it serves (`address` set)."""
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        if wait:
            self.address = self.wait_for(READY_LINE, timeout)["address"]
            if "--rest-api-port" in self.command:
                self.rest_address = self.wait_for(REST_LINE, timeout)["address"]
        return self

    def wait_for(self, pattern: re.Pattern, timeout: float = 60.0, after: int = 0) -> re.Match:
        """The first match of `pattern` in an output line (from line `after` on)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if match := pattern.search(line):
                        return match
                if self._process.poll() is not None and not self._reading:
                    output = "\n".join(self.lines[-30:])
                    raise RuntimeError(f"the server exited ({self._process.returncode}):\n{output}")
                if time.monotonic() > deadline:
                    output = "\n".join(self.lines[-30:])
                    raise TimeoutError(f"no line matching {pattern.pattern!r}:\n{output}")
                self._changed.wait(0.2)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status of a process that ends on its own (e.g. after an error)."""
        return self._process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (the process is killed if it does not exit)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise

    def _read_output(self) -> None:
        for line in self._process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._reading = False
            self._changed.notify_all()

    def __enter__(self) -> ServingProcess:
        return self if self._process is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        if self._process is not None and self._process.poll() is None:
            self.stop()


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """Yields the Path of a run directory made by `make_tiny_run`: a 16-bit encoder
    for 28×28×1 images, its config.yaml and its `npz:` dataset of 64 images."""
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def exported_base(tiny_run_dir, tmp_path_factory) -> Path:
    """Yields a model base path (…/harr) holding version 1: `tiny_run_dir` exported."""
    from serving.export import export

    base = tmp_path_factory.mktemp("models") / MODEL_NAME
    export(tiny_run_dir, None, base, version=1)
    return base


@pytest.fixture(scope="session")
def serving_process(exported_base):
    """Yields the running `ServingProcess` over `exported_base` (model "harr"), with
    its REST API on (`rest_address`), shared by the session; stopped with SIGTERM at
    the end, which must exit 0."""
    process = ServingProcess(exported_base, "--rest-api-port", "0").start()
    yield process
    assert process.stop() == 0, "\n".join(process.lines[-30:])


@pytest.fixture(scope="session")
def grpc_server(serving_process) -> str:
    """Yields "127.0.0.1:PORT" of `serving_process`: a real `python -m serving.server`."""
    return serving_process.address
