"""TF Serving's REST JSON for predict: a request body as the PredictRequest it asks for
(row format "instances" or columnar "inputs", binary strings as {"b64": ...}), and the
PredictResponse as the JSON TF Serving answers. Bad input is an INVALID_ARGUMENT
`ServingError` with TF Serving's own message."""

from __future__ import annotations

import base64
import binascii
import json

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

from serving import IMAGES_SIGNATURE
from serving.handlers import Handlers
from serving.model_registry import ServingError


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _from_json(value, dtype: tf.DType):
    """A JSON value with every {"b64": ...} object (string tensors only) made bytes."""
    if isinstance(value, list):
        return [_from_json(item, dtype) for item in value]
    if isinstance(value, dict):
        if dtype != tf.string or set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise invalid_argument(
                f"JSON Value: {json.dumps(value)} not formatted correctly for base64 data"
                if dtype == tf.string
                else f"JSON Value: {json.dumps(value)} Type: Object is not of expected type: "
                f"{dtype.name}"
            )
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error:
            raise invalid_argument("Unable to base64 decode") from None
    return value.encode() if dtype == tf.string and isinstance(value, str) else value


def _tensor(value, name: str, dtype: tf.DType):
    try:
        array = np.array(value, dtype=object) if dtype == tf.string else _numbers(value, dtype)
        return tf.make_tensor_proto(array, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as error:
        raise invalid_argument(f"input '{name}' is not a {dtype.name} tensor: {error}") from None


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
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except RecursionError:
        raise invalid_argument("JSON Parse error: The document is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        position = getattr(error, "pos", getattr(error, "start", 0))
        message = getattr(error, "msg", str(error))
        raise invalid_argument(f"JSON Parse error: {message} at offset: {position}") from None
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {json.dumps(document)} Is not object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument(
            "JSON Value not formatted correctly. 'signature_name' key must be a string value."
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(spec)
    request.model_spec.signature_name = signature_name
    loaded = handlers.models.resolve(spec.name, _version(spec), spec.version_label)
    signature_def = loaded.signature_defs.get(signature_name or IMAGES_SIGNATURE)
    if signature_def is None:
        raise invalid_argument(
            f'Serving signature name: "{signature_name or IMAGES_SIGNATURE}" '
            "not found in signature def"
        )
    dtypes = {alias: tf.dtypes.as_dtype(info.dtype) for alias, info in signature_def.inputs.items()}
    if ("instances" in document) == ("inputs" in document):
        raise invalid_argument(
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
        raise invalid_argument(
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
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
    return {name: inputs[name] for name in dtypes}


def _rows_to_columns(instances, dtypes: dict[str, tf.DType]) -> dict[str, list]:
    if not isinstance(instances, list):
        raise invalid_argument("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    named = [_is_named(item) for item in instances]
    if not any(named):
        return _single_input(instances, dtypes, "instances")
    columns = {name: [] for name in dtypes}
    for position, item in enumerate(instances):
        if not named[position]:
            raise invalid_argument(
                f"Expecting object but got list at item {position} of input list"
            )
        for name in item:
            if name not in dtypes:
                raise invalid_argument(
                    f"Failed to process element: {position} key: {name} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {name}"
                )
        if set(item) != set(dtypes):
            raise invalid_argument(
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
