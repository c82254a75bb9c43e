"""TensorFlow Serving's REST API (`--rest_api_port`) over the same handlers as gRPC.

    GET  /v1/models/NAME[/versions/N]              model status
    GET  /v1/models/NAME[/versions/N]/metadata     signature defs
    POST /v1/models/NAME[/versions/N]:predict      {"signature_name": ..., "instances": [...]}
                                                   or {"inputs": ...}

As in TF Serving: row format ("instances") answers {"predictions": [...]}, columnar
("inputs") answers {"outputs": ...}; binary strings travel as {"b64": "..."}; errors
are {"error": message} with the HTTP code TF Serving gives the gRPC status
(`http_server.cc`'s ToHTTPStatusCode). The HTTP itself is the standard library's
`ThreadingHTTPServer`; this module routes it, `serving.rest_json` reads and writes the
predict JSON.
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.handlers import Handlers
from serving.model_registry import ServingError
from serving.rest_json import invalid_argument, predict_json, predict_request

logger = logging.getLogger(__name__)

_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
_PREDICT = re.compile(rf"(?i){_MODEL}:predict")
_METADATA = re.compile(rf"(?i){_MODEL}/metadata")
_STATUS = re.compile(r"(?i)/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+))?")
MAX_BODY_BYTES = 512 * 1024 * 1024

# TF Serving's ToHTTPStatusCode (tensorflow_serving/model_servers/http_server.cc).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def _model_spec(match: re.Match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=match["name"])
    if match["version"]:
        spec.version.value = int(match["version"])
    if match.groupdict().get("label"):
        spec.version_label = match["label"]
    return spec


def _json(message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class _RestHandler(BaseHTTPRequestHandler):
    handlers: Handlers  # set on the subclass build_rest_server makes
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's method names)
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._post)

    def _get(self) -> dict:
        if match := _METADATA.fullmatch(self.path):
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=_model_spec(match), metadata_field=["signature_def"]
            )
            return _json(self.handlers.metadata(request))
        if match := _STATUS.fullmatch(self.path):
            if not match["name"]:
                raise invalid_argument("Missing model name in request.")
            request = get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(match))
            return _json(self.handlers.status(request))
        raise self._malformed()

    def _post(self) -> dict:
        match = _PREDICT.fullmatch(self.path)
        if not match:
            raise self._malformed()
        declared = self.headers.get("Content-Length") or "0"
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot go on
            raise invalid_argument(
                f"Content-Length: {declared[:40]!r} is not a body size from 0 to {MAX_BODY_BYTES} "
                "bytes"
            )
        length = int(declared)
        request, row = predict_request(self.rfile.read(length), _model_spec(match), self.handlers)
        return predict_json(self.handlers.predict(request), row)

    def _malformed(self) -> ServingError:
        return invalid_argument(f"Malformed request: {self.command} {self.path}")

    def _answer(self, handle) -> None:
        try:
            status, answer = 200, handle()
        except ServingError as error:
            status, answer = HTTP_STATUS.get(error.code, 500), {"error": error.message}
        body = json.dumps(answer).encode()
        self.send_response(status)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        logger.debug("REST %s", format % args)


def build_rest_server(handlers: Handlers, host: str, port: int) -> ThreadingHTTPServer:
    """The REST API server, bound (serve it with `serve_forever` on a thread)."""
    handler = type("RestHandler", (_RestHandler,), {"handlers": handlers})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise OSError(
            f"--host {host} --rest-api-port {port}: cannot bind this address ({error.strerror})"
        ) from None
    server.daemon_threads = True
    return server
