"""TensorFlow Serving's REST API (`--rest_api_port`) over the same handlers as gRPC.

    GET  /v1/models/NAME[/versions/N]              model status
    GET  /v1/models/NAME[/versions/N]/metadata     signature defs
    POST /v1/models/NAME[/versions/N]:predict      {"signature_name": ..., "instances": [...]}
                                                   or {"inputs": ...}

As in TF Serving: row format ("instances") answers {"predictions": [...]}, columnar
("inputs") answers {"outputs": ...}; binary strings travel as {"b64": "..."}; errors
are {"error": message} with the HTTP code TF Serving gives the gRPC status
(`http_server.cc`'s ToHTTPStatusCode). The HTTP itself is the standard library's
`ThreadingHTTPServer`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving import IMAGES_SIGNATURE
from serving.handlers import Handlers
from serving.model_registry import ServingError

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


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


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


def _from_json(value, dtype: tf.DType):
    """A JSON value with every {"b64": ...} object (string tensors only) made bytes."""
    if isinstance(value, list):
        return [_from_json(item, dtype) for item in value]
    if isinstance(value, dict):
        if dtype != tf.string or set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _invalid(
                f"JSON Value: {json.dumps(value)} not formatted correctly for base64 data"
                if dtype == tf.string
                else f"JSON Value: {json.dumps(value)} Type: Object is not of expected type: "
                f"{dtype.name}"
            )
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error:
            raise _invalid("Unable to base64 decode") from None
    return value.encode() if dtype == tf.string and isinstance(value, str) else value


def _tensor(value, name: str, dtype: tf.DType):
    try:
        array = np.array(value, dtype=object) if dtype == tf.string else _numbers(value, dtype)
        return tf.make_tensor_proto(array, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as error:
        raise _invalid(f"input '{name}' is not a {dtype.name} tensor: {error}") from None


# What a JSON array holds, by the kind of the array NumPy makes of it.
_KINDS = {"U": "strings", "O": "nulls, objects or ragged lists", "b": "booleans", "f": "fractions"}


def _numbers(value, dtype: tf.DType) -> np.ndarray:
    """A numeric input as an array of `dtype`: strings ("1.5" included), nulls and
    objects are refused, not converted, and so are NaN and infinite floats."""
    array = np.array(value)
    allowed = "b" if dtype == tf.bool else "iu" if dtype.is_integer else "iuf"
    if array.dtype.kind not in allowed:
        held = _KINDS.get(array.dtype.kind, array.dtype.name)
        raise ValueError(f"it holds {held}, where {dtype.name} values are expected")
    array = array.astype(dtype.as_numpy_dtype)
    if dtype.is_floating and not np.isfinite(array).all():
        raise ValueError(f"it holds {array[~np.isfinite(array)][0]}; pixels must be finite")
    return array


def predict_request(body: bytes, spec: model_pb2.ModelSpec, handlers: Handlers):
    """The PredictRequest a REST predict body asks for, and whether it is in row format."""
    if not body.strip():
        raise _invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except RecursionError:
        raise _invalid("JSON Parse error: The document is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        position = getattr(error, "pos", getattr(error, "start", 0))
        message = getattr(error, "msg", str(error))
        raise _invalid(f"JSON Parse error: {message} at offset: {position}") from None
    if not isinstance(document, dict):
        raise _invalid(f"JSON Value: {json.dumps(document)} Is not object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid(
            "JSON Value not formatted correctly. 'signature_name' key must be a string value."
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(spec)
    request.model_spec.signature_name = signature_name
    loaded = handlers.models.resolve(spec.name, _version(spec), spec.version_label)
    signature_def = loaded.signature_defs.get(signature_name or IMAGES_SIGNATURE)
    if signature_def is None:
        raise _invalid(
            f'Serving signature name: "{signature_name or IMAGES_SIGNATURE}" '
            "not found in signature def"
        )
    dtypes = {alias: tf.dtypes.as_dtype(info.dtype) for alias, info in signature_def.inputs.items()}
    if ("instances" in document) == ("inputs" in document):
        raise _invalid(
            "Missing 'inputs' or 'instances' key"
            if "inputs" not in document
            else "Not formatted correctly expecting only one of 'inputs' or 'instances' keys"
        )
    row = "instances" in document
    columns = _rows_to_columns(document["instances"], dtypes) if row else _columns(document, dtypes)
    for name, value in columns.items():
        request.inputs[name].CopyFrom(_tensor(_from_json(value, dtypes[name]), name, dtypes[name]))
    return request, row


def _is_named(value) -> bool:
    """An object of named inputs, not one {"b64": ...} value."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _single_input(value, dtypes: dict[str, tf.DType], key: str) -> dict[str, object]:
    if len(dtypes) > 1:
        raise _invalid(
            f"{key} is a plain list, but expecting list of objects as multiple "
            "input tensors required as per tensorinfo_map"
        )
    return {next(iter(dtypes)): value}


def _columns(document: dict, dtypes: dict[str, tf.DType]) -> dict[str, object]:
    inputs = document["inputs"]
    if not _is_named(inputs):
        return _single_input(inputs, dtypes, "inputs")
    for name in sorted(dtypes):
        if name not in inputs:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
    return {name: inputs[name] for name in dtypes}


def _rows_to_columns(instances, dtypes: dict[str, tf.DType]) -> dict[str, list]:
    if not isinstance(instances, list):
        raise _invalid("Excepting 'instances' to be an list/array")
    if not instances:
        raise _invalid("No values in 'instances' array")
    named = [_is_named(item) for item in instances]
    if not any(named):
        return _single_input(instances, dtypes, "instances")
    columns = {name: [] for name in dtypes}
    for position, item in enumerate(instances):
        if not named[position]:
            raise _invalid(f"Expecting object but got list at item {position} of input list")
        for name in item:
            if name not in dtypes:
                raise _invalid(
                    f"Failed to process element: {position} key: {name} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {name}"
                )
        if set(item) != set(dtypes):
            raise _invalid(
                f"Failed to process element: {position} of 'instances' list. JSON object: "
                f"{json.dumps(item)[:200]} keys must be equal to: {','.join(sorted(dtypes))}"
            )
        for name, value in item.items():
            columns[name].append(value)
    return columns


def _version(spec: model_pb2.ModelSpec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def predict_json(response: predict_pb2.PredictResponse, row: bool) -> dict:
    """{"predictions": one entry per instance} (row) or {"outputs": ...} (columnar)."""
    outputs = {name: tf.make_ndarray(proto).tolist() for name, proto in response.outputs.items()}
    if not row:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    names = sorted(outputs)
    rows = zip(*(outputs[name] for name in names), strict=True)
    return {"predictions": [dict(zip(names, values, strict=True)) for values in rows]}


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
                raise _invalid("Missing model name in request.")
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
            raise _invalid(
                f"Content-Length: {declared[:40]!r} is not a body size from 0 to {MAX_BODY_BYTES} "
                "bytes"
            )
        length = int(declared)
        request, row = predict_request(self.rfile.read(length), _model_spec(match), self.handlers)
        return predict_json(self.handlers.predict(request), row)

    def _malformed(self) -> ServingError:
        return _invalid(f"Malformed request: {self.command} {self.path}")

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
