"""A development gRPC server with TensorFlow Serving's API over its directory layout.

    python -m serving.server --model-base-path models/harr --model-name harr --port 8500

TensorFlow Serving's binary cannot be installed everywhere; this server answers
`PredictionService.Predict`, `PredictionService.GetModelMetadata` and
`ModelService.GetModelStatus` like it does (same status codes and messages), so a
client written against it works unchanged against `tensorflow/serving`. It binds
127.0.0.1 unless told otherwise and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from serving import IMAGES_SIGNATURE
from serving.model_registry import LoadedVersion, ModelRegistry, ServingError
from serving.predict import input_arrays, output_aliases, run_signature

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
# A port in use must fail to bind, as it does for TF Serving, not be silently shared.
_SERVER_OPTIONS = (*GRPC_OPTIONS, ("grpc.so_reuseport", 0))
_WORKER_THREADS = 16
_SHUTDOWN_GRACE_SECONDS = 5.0
_SIGNATURE_DEF_FIELD = "signature_def"


def _requested_version(model_spec) -> int | None:
    return model_spec.version.value if model_spec.HasField("version") else None


def _missing_model_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`Predict` and `GetModelMetadata` over a `ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, max_batch_size: int | None) -> None:
        self.registry = registry
        self.max_batch_size = max_batch_size

    def Predict(self, request, context):  # noqa: N802 (the gRPC method name)
        try:
            return self._predict(request)
        except ServingError as error:
            context.abort(error.code, error.message)

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            return self._metadata(request)
        except ServingError as error:
            context.abort(error.code, error.message)

    def _resolve(self, model_spec) -> LoadedVersion:
        return self.registry.resolve(
            model_spec.name, _requested_version(model_spec), model_spec.version_label
        )

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        _missing_model_spec(request)
        loaded = self._resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or IMAGES_SIGNATURE
        signature = loaded.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{signature_name}" not found.',
            )
        arrays = input_arrays(request, signature, self.max_batch_size)
        aliases = output_aliases(request, signature)
        outputs = run_signature(signature, arrays)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.registry.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
        return response

    def _metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        _missing_model_spec(request)
        if not request.metadata_field:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GetModelMetadataRequest must specify at least one metadata_field",
            )
        for field in request.metadata_field:
            if field != _SIGNATURE_DEF_FIELD:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported"
                )
        loaded = self._resolve(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in loaded.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.registry.name
        response.model_spec.version.value = loaded.version
        response.metadata[_SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """`GetModelStatus`: every version seen, with its state (AVAILABLE, END, ...)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802
        try:
            _missing_model_spec(request)
            states = self.registry.version_states(
                request.model_spec.name, _requested_version(request.model_spec)
            )
        except ServingError as error:
            context.abort(error.code, error.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, (state, message) in sorted(states.items()):
            status = status_pb2.StatusProto(error_message=message)
            status.error_code = grpc.StatusCode.UNKNOWN.value[0] if message else 0
            response.model_version_status.add(version=version, state=state, status=status)
        return response


def build_server(
    registry: ModelRegistry, host: str, port: int, max_batch_size: int | None
) -> tuple[grpc.Server, int]:
    """The gRPC server with both services (not started yet) and the port it bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=_WORKER_THREADS), options=_SERVER_OPTIONS
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry, max_batch_size), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(registry), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        raise OSError(f"--host {host} --port {port}: cannot bind this address (in use?)") from error
    return server, bound


def serve(args: argparse.Namespace) -> int:
    """Runs until SIGTERM or SIGINT; returns the exit status."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    address: list[str] = []  # filled once the port is bound

    def announce(loaded: LoadedVersion) -> None:
        if address:
            print(f"serving model {args.model_name} version {loaded.version} on {address[0]}")
            sys.stdout.flush()

    registry = ModelRegistry(args.model_name, args.model_base_path, on_available=announce)
    # Like TF Serving, answer nothing until the first version has loaded.
    waiter = threading.Thread(target=registry.wait_until_available, args=(args.poll_seconds,))
    waiter.start()
    while waiter.is_alive() and not stopping.wait(0.1):
        pass
    if stopping.is_set():
        registry.stop()
        waiter.join()
        return 0
    server, port = build_server(registry, args.host, args.port, args.max_batch_size)
    server.start()
    address.append(f"{args.host}:{port}")
    announce(registry.resolve(args.model_name, None))
    registry.start_polling(args.poll_seconds)
    stopping.wait()
    print("shutting down", flush=True)
    server.stop(_SHUTDOWN_GRACE_SECONDS).wait()
    registry.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Serve exported HARR SavedModels over TensorFlow Serving's gRPC API "
        "(development stand-in for tensorflow/serving).",
    )
    parser.add_argument(
        "--model-base-path",
        required=True,
        help="base path holding integer version folders, as TF Serving's --model_base_path",
    )
    parser.add_argument(
        "--model-name", default="harr", help="name clients put in model_spec (default: harr)"
    )
    parser.add_argument(
        "--port", type=int, default=8500, help="gRPC port; 0 picks a free one (default: 8500)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; 0.0.0.0 exposes the server to the network (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="largest batch one request may carry; larger ones get INVALID_ARGUMENT "
        "(default: 1024)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="how often to look for new versions, as TF Serving's "
        "--file_system_poll_wait_seconds (default: 1)",
    )
    args = parser.parse_args(argv)
    if args.max_batch_size < 1:
        parser.error(f"--max-batch-size must be >= 1. Received: {args.max_batch_size}")
    if args.poll_seconds <= 0:
        parser.error(f"--poll-seconds must be > 0. Received: {args.poll_seconds}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535. Received: {args.port}")
    if not os.path.isdir(args.model_base_path):
        parser.error(f"--model-base-path {args.model_base_path}: no such directory")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return serve(args)
    except OSError as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    raise SystemExit(main())
