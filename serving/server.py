"""A development server with TensorFlow Serving's gRPC and REST APIs over its layout.

    python -m serving.server --model-base-path models/harr --model-name harr --port 8500
    python -m serving.server --model-config-file models/models.config --rest-api-port 8501

TensorFlow Serving's binary cannot be installed everywhere; this server answers
`PredictionService.Predict`, `PredictionService.GetModelMetadata` and
`ModelService.GetModelStatus` (and, with `--rest-api-port`, their REST forms) like it
does, with the same status codes and messages, so a client written against it works
unchanged against `tensorflow/serving`. It loads each version as TF Serving does
(`serving.session_bundle`: own graph and session, the SavedModel's restore op), so
a SavedModel TF Serving cannot run fails here too. It binds 127.0.0.1 unless told
otherwise and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
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
from serving.cli import add_verbose_argument
from serving.model_config import read_model_config
from serving.model_registry import LoadedVersion, ModelRegistry, ModelServer, ServingError
from serving.predict import input_arrays, output_aliases, run_signature
from serving.rest import build_rest_server

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


class Handlers:
    """The three calls on a `ModelServer`, proto in and proto out (or `ServingError`),
    shared by the gRPC services and the REST API."""

    def __init__(self, models: ModelServer, max_batch_size: int | None) -> None:
        self.models = models
        self.max_batch_size = max_batch_size

    def _resolve(self, model_spec) -> LoadedVersion:
        return self.models.resolve(
            model_spec.name, _requested_version(model_spec), model_spec.version_label
        )

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        _missing_model_spec(request)
        loaded = self._resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or IMAGES_SIGNATURE
        signature_def = loaded.signature_defs.get(signature_name)
        if signature_def is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{signature_name}" not found.',
            )
        arrays = input_arrays(request, signature_def, self.max_batch_size)
        aliases = output_aliases(request, signature_def)
        outputs = run_signature(loaded, signature_name, arrays, aliases)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
        return response

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
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
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.metadata[_SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        _missing_model_spec(request)
        states = self.models.version_states(
            request.model_spec.name, _requested_version(request.model_spec)
        )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, (state, message) in sorted(states.items()):
            status = status_pb2.StatusProto(error_message=message)
            status.error_code = grpc.StatusCode.UNKNOWN.value[0] if message else 0
            response.model_version_status.add(version=version, state=state, status=status)
        return response


def _aborting(call):
    """A gRPC method that answers a `ServingError` with its status code and message."""

    def method(self, request, context):
        try:
            return call(self.handlers, request)
        except ServingError as error:
            context.abort(error.code, error.message)

    return method


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`Predict` and `GetModelMetadata`."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    Predict = _aborting(Handlers.predict)  # noqa: N815 (the gRPC method names)
    GetModelMetadata = _aborting(Handlers.metadata)  # noqa: N815


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """`GetModelStatus`: every version seen, with its state (AVAILABLE, END, ...)."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    GetModelStatus = _aborting(Handlers.status)  # noqa: N815


def build_server(handlers: Handlers, host: str, port: int) -> tuple[grpc.Server, int]:
    """The gRPC server with both services (not started yet) and the port it bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=_WORKER_THREADS), options=_SERVER_OPTIONS
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(handlers), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(handlers), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        raise OSError(f"--host {host} --port {port}: cannot bind this address (in use?)") from error
    return server, bound


def _registries(args: argparse.Namespace, announce) -> list[ModelRegistry]:
    if args.model_config_file is None:
        return [ModelRegistry(args.model_name, args.model_base_path, on_available=announce)]
    return [
        ModelRegistry(model.name, model.base_path, model.model_version_policy, announce)
        for model in args.model_configs
    ]


def serve(args: argparse.Namespace) -> int:
    """Runs until SIGTERM or SIGINT; returns the exit status."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    address: list[str] = []  # filled once the port is bound

    def announce(name: str, loaded: LoadedVersion) -> None:
        if address:
            print(f"serving model {name} version {loaded.version} on {address[0]}", flush=True)

    models = ModelServer(_registries(args, announce))
    # Like TF Serving, answer nothing until every model has loaded a version.
    waiter = threading.Thread(target=models.wait_until_available, args=(args.poll_seconds,))
    waiter.start()
    while waiter.is_alive() and not stopping.wait(0.1):
        pass
    if stopping.is_set():
        models.stop()
        waiter.join()
        return 0
    handlers = Handlers(models, args.max_batch_size)
    server, port = build_server(handlers, args.host, args.port)
    rest = None
    if args.rest_api_port is not None:
        rest = build_rest_server(handlers, args.host, args.rest_api_port)
        threading.Thread(target=rest.serve_forever, name="rest-api", daemon=True).start()
        print(f"serving REST API on {args.host}:{rest.server_address[1]}", flush=True)
    server.start()
    address.append(f"{args.host}:{port}")
    for name, registry in models.registries.items():
        announce(name, registry.resolve(None))
    models.start_polling(args.poll_seconds)
    stopping.wait()
    print("shutting down", flush=True)
    if rest is not None:
        rest.shutdown()
    server.stop(_SHUTDOWN_GRACE_SECONDS).wait()
    models.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Serve exported HARR SavedModels over TensorFlow Serving's gRPC and REST "
        "APIs (development stand-in for tensorflow/serving, loading models the same way).",
    )
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument(
        "--model-base-path",
        help="base path holding integer version folders, as TF Serving's --model_base_path; "
        "its latest version is served",
    )
    models.add_argument(
        "--model-config-file",
        help="TF Serving's ModelServerConfig text file (--model_config_file): several models, "
        "each with its base_path and model_version_policy (latest, all or specific)",
    )
    parser.add_argument(
        "--model-name",
        default="harr",
        help="name clients put in model_spec, with --model-base-path (default: harr)",
    )
    parser.add_argument(
        "--port", type=int, default=8500, help="gRPC port; 0 picks a free one (default: 8500)"
    )
    parser.add_argument(
        "--rest-api-port",
        type=int,
        help="also serve TF Serving's REST API on this port (TF Serving uses 8501); 0 picks "
        "a free one (default: no REST API)",
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
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    if args.max_batch_size < 1:
        parser.error(f"--max-batch-size must be >= 1. Received: {args.max_batch_size}")
    if args.poll_seconds <= 0:
        parser.error(f"--poll-seconds must be > 0. Received: {args.poll_seconds}")
    for flag, port in (("--port", args.port), ("--rest-api-port", args.rest_api_port)):
        if port is not None and not 0 <= port <= 65535:
            parser.error(f"{flag} must be between 0 and 65535. Received: {port}")
    if args.model_base_path is not None and not os.path.isdir(args.model_base_path):
        parser.error(f"--model-base-path {args.model_base_path}: no such directory")
    if args.model_config_file is not None:
        try:
            args.model_configs = read_model_config(args.model_config_file)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return serve(args)
    except OSError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    raise SystemExit(main())
