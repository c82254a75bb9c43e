"""A gRPC client for the exported encoder, whether TensorFlow Serving or `serving.server` serves it.

It speaks only the public API of `tensorflow-serving-api` (`PredictionServiceStub`,
`GetModelMetadata`, `tf.make_tensor_proto` / `tf.make_ndarray`), so it cannot tell the two
servers apart. Transient failures (UNAVAILABLE: the server restarting; DEADLINE_EXCEEDED:
a slow answer) are retried with capped exponential backoff (`serving.retrying_calls`). A
batch the server rejects with INVALID_ARGUMENT is split in halves until the images at fault
are alone: one bad file costs a few extra requests and never the rest of its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from serving import IMAGES_SIGNATURE
from serving.retrying_calls import RequestFailed, RetryingStub

CODE_OUTPUTS = ("codes", "packed")
CONTINUOUS_OUTPUT = "continuous"


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """What the served signature takes and gives: its one string input and the code length."""

    version: int
    input_name: str
    bits: int
    outputs: tuple[str, ...] = CODE_OUTPUTS


@dataclasses.dataclass(frozen=True, eq=False)
class BatchCodes:
    """Codes of a batch of images; the images the server could not decode are left out.

    Attributes:
        codes: (n_ok, bits) int8 in {−1, +1}, in the order of `positions`.
        packed: (n_ok, bits / 8) uint8, `np.packbits` order.
        positions: (n_ok,) positions in the submitted batch of the images encoded.
        failures: {position in the batch: the server's message} for the others.
        continuous: (n_ok, bits) float32, the codes before `sign`, when asked for.
    """

    codes: np.ndarray
    packed: np.ndarray
    positions: np.ndarray
    failures: dict[int, str]
    continuous: np.ndarray | None = None


class ServingClient:
    """Codes for encoded images (JPEG, PNG, ...) from a served HARR model over gRPC.

    Safe to share between threads; `close()` cancels the requests in flight.

    Args:
        server: "HOST:PORT" of the gRPC endpoint (TF Serving's default port is 8500).
        model: the model name it serves. Defaults to "harr".
        signature: a signature taking encoded images (tf.string). Defaults to
            "serving_default".
        version: the model version to ask for; None asks for the latest. Defaults to None.
        deadline: seconds one request may take before it is retried. Defaults to 60.
        retries: retries of a request after UNAVAILABLE or DEADLINE_EXCEEDED. Defaults to 8.
        backoff: seconds before the first retry, doubled for each next one (capped at 10 s,
            with jitter). Defaults to 0.5.
    """

    def __init__(
        self,
        server: str,
        model: str = "harr",
        signature: str = IMAGES_SIGNATURE,
        *,
        version: int | None = None,
        deadline: float = 60.0,
        retries: int = 8,
        backoff: float = 0.5,
    ) -> None:
        self._calls = RetryingStub(server, deadline=deadline, retries=retries, backoff=backoff)
        self.server, self.model, self.signature, self.version = server, model, signature, version
        self._info: SignatureInfo | None = None

    def describe(self) -> SignatureInfo:
        """The served version and the signature's string input, from `GetModelMetadata`.

        Raises:
            RequestFailed: no such model, version or signature, or the signature does not
                take one tf.string input and give `codes` and `packed`.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_model_spec(request.model_spec)
        response = self._calls.call("GetModelMetadata", request, self._what("GetModelMetadata"))
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if self.signature not in signatures.signature_def:
            raise RequestFailed(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no signature {self.signature!r}; the model has "
                f"{sorted(signatures.signature_def)}",
                self._what("GetModelMetadata"),
            )
        signature = signatures.signature_def[self.signature]
        strings = [name for name, info in signature.inputs.items() if info.dtype == tf.string]
        missing = [name for name in CODE_OUTPUTS if name not in signature.outputs]
        if len(signature.inputs) != 1 or len(strings) != 1 or missing:
            raise RequestFailed(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"signature {self.signature!r} must take one tf.string input (encoded images) "
                f"and give {list(CODE_OUTPUTS)}; it takes {sorted(signature.inputs)} and gives "
                f"{sorted(signature.outputs)}",
                self._what("GetModelMetadata"),
            )
        bits = signature.outputs["codes"].tensor_shape.dim[-1].size
        self._info = SignatureInfo(
            response.model_spec.version.value, strings[0], bits, tuple(sorted(signature.outputs))
        )
        return self._info

    def predict(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Codes (n, bits) int8 and packed codes (n, bits / 8) uint8 of one batch.

        Raises:
            RequestFailed: the server refused the batch (INVALID_ARGUMENT when an image
                does not decode), or it kept failing after every retry.
        """
        codes, packed = self._predict_outputs(images, CODE_OUTPUTS)
        return codes, packed

    def encode(self, images: Sequence[bytes], *, continuous: bool = False) -> BatchCodes:
        """Codes of `images`, leaving out (and naming) the ones the server cannot decode.

        With `continuous`, also the signature's `continuous` output (the codes before
        `sign`, for asymmetric re-ranking); a signature without it is refused.
        """
        if self._info is None:
            self.describe()
        names = CODE_OUTPUTS
        if continuous:
            if CONTINUOUS_OUTPUT not in self._info.outputs:
                raise RequestFailed(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"signature {self.signature!r} gives no {CONTINUOUS_OUTPUT!r} output; it "
                    f"gives {list(self._info.outputs)}",
                    self._what("GetModelMetadata"),
                )
            names = (*CODE_OUTPUTS, CONTINUOUS_OUTPUT)
        found: list[tuple[int, list[np.ndarray]]] = []
        failures: dict[int, str] = {}
        self._encode_span(images, 0, len(images), names, found, failures)
        found.sort(key=lambda item: item[0])
        bits = self._info.bits
        empty = [np.zeros((0, bits), np.int8), np.zeros((0, bits // 8), np.uint8)]
        empty = [*empty, np.zeros((0, bits), np.float32)][: len(names)]
        outputs = [
            np.concatenate([piece] + [item[1][k] for item in found])
            for k, piece in enumerate(empty)
        ]
        positions = [np.arange(start, start + len(item[0])) for start, item in found]
        return BatchCodes(
            codes=outputs[0],
            packed=outputs[1],
            positions=np.concatenate([np.zeros(0, np.int64), *positions]),
            failures=failures,
            continuous=outputs[2] if continuous else None,
        )

    def close(self) -> None:
        """Cancels requests in flight and stops retries; the client is unusable after."""
        self._calls.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _predict_outputs(self, images: Sequence[bytes], names: tuple[str, ...]) -> list:
        """The outputs `names` of one batch, each with one row per image."""
        if self._info is None:
            self.describe()
        request = predict_pb2.PredictRequest(output_filter=names)
        self._fill_model_spec(request.model_spec)
        request.inputs[self._info.input_name].CopyFrom(
            tf.make_tensor_proto(np.array(images, dtype=object), dtype=tf.string)
        )
        response = self._calls.call("Predict", request, self._what("Predict"))
        outputs = [tf.make_ndarray(response.outputs[name]) for name in names]
        if any(len(output) != len(images) for output in outputs):
            raise RequestFailed(
                grpc.StatusCode.INTERNAL,
                f"answered {len(outputs[0])} codes for {len(images)} images",
                self._what("Predict"),
            )
        return outputs

    def _encode_span(
        self, images, start: int, stop: int, names: tuple, found: list, failures: dict
    ) -> None:
        """Encodes images[start:stop], halving the span on INVALID_ARGUMENT."""
        if start == stop:
            return
        try:
            outputs = self._predict_outputs(images[start:stop], names)
        except RequestFailed as error:
            if error.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            if stop - start == 1:
                failures[start] = error.details
                return
            middle = (start + stop) // 2
            self._encode_span(images, start, middle, names, found, failures)
            self._encode_span(images, middle, stop, names, found, failures)
            return
        found.append((start, outputs))

    def _fill_model_spec(self, model_spec) -> None:
        model_spec.name = self.model
        model_spec.signature_name = self.signature
        if self.version is not None:
            model_spec.version.value = self.version

    def _what(self, method: str) -> str:
        version = "latest" if self.version is None else self.version
        return f"{method} on {self.server} (model {self.model!r}, version {version})"


def map_concurrently(
    function: Callable, items: Iterable, concurrency: int
) -> Iterator[tuple[object, object]]:
    """`(item, function(item))` pairs in completion order, `concurrency` calls at a time.

    Items are drawn lazily, so memory holds only the calls in flight. The first exception
    stops new calls and propagates once those in flight end.
    """
    if concurrency < 1:
        raise ValueError(f"`concurrency` must be >= 1. Received: concurrency={concurrency}")
    pending: dict[futures.Future, object] = {}
    iterator = iter(items)
    executor = futures.ThreadPoolExecutor(concurrency, thread_name_prefix="grpc-request")
    try:
        while True:
            for item in iterator:
                pending[executor.submit(function, item)] = item
                if len(pending) >= concurrency:
                    break
            if not pending:
                return
            done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
    finally:
        # Does not wait for the calls in flight: the caller may be about to cancel them.
        executor.shutdown(wait=False, cancel_futures=True)
