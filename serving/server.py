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

if __name__ == "__main__":  # a command: TensorFlow's start-up lines are not its output
    from harr_tf.quiet import quiet_command_start

    quiet_command_start()

import argparse
import logging
import os
import signal
import threading
from concurrent import futures

import grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from harr_tf.flags import add_verbose, command_name
from harr_tf.quiet import log_to_stderr
from serving.handlers import Handlers
from serving.model_config import read_model_config
from serving.model_registry import LoadedVersion, ModelRegistry, ModelServer, ServingError
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
        prog=command_name("serving.server"),
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
    add_verbose(parser)
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
    log_to_stderr(logging.INFO, "%(asctime)s %(levelname)s %(message)s")
    try:
        return serve(args)
    except OSError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    raise SystemExit(main())
