"""One `PredictRequest` against one `SignatureDef`: checked, run by tensor name in the
version's session, and failed the way TensorFlow Serving fails it (INVALID_ARGUMENT
with its messages, where it has them).

Shapes and the batch limit are checked on the TensorProto's declared shape before
any array is built, so a request cannot make the server allocate more than the
limit allows.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving.model_registry import LoadedVersion, ServingError
from serving.session_bundle import op_message


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _set_text(names) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def output_aliases(request: predict_pb2.PredictRequest, signature_def) -> list[str]:
    """The outputs to return: `request.output_filter`, or all of the signature's."""
    available = set(signature_def.outputs)
    wanted = list(request.output_filter)
    for alias in wanted:
        if alias not in available:
            raise _invalid(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {_set_text(available)}."
            )
    if len(set(wanted)) != len(wanted):
        raise _invalid("duplicate output tensor alias")
    return wanted or sorted(available)


def input_arrays(
    request: predict_pb2.PredictRequest, signature_def, max_batch_size: int | None
) -> dict[str, np.ndarray]:
    """The request's inputs as arrays that fit the SignatureDef, or INVALID_ARGUMENT."""
    specs = {
        alias: (tf.dtypes.as_dtype(info.dtype), tf.TensorShape(info.tensor_shape))
        for alias, info in signature_def.inputs.items()
    }
    sent, expected = set(request.inputs), set(specs)
    if len(sent) != len(expected):
        raise _invalid(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({_set_text(sent)}) != len({_set_text(expected)}). "
            f"Sent extra: {_set_text(sent - expected)}. "
            f"Missing but required: {_set_text(expected - sent)}."
        )
    if sent != expected:
        raise _invalid(
            f"input tensor alias not found in signature: {','.join(sorted(sent - expected))}. "
            f"Inputs expected to be in the set {_set_text(expected)}."
        )
    arrays = {}
    for position, name in enumerate(sorted(specs)):
        (dtype, spec_shape), proto = specs[name], request.inputs[name]
        received = _dtype_name(proto.dtype)
        if received != dtype.name:
            raise _invalid(
                f"Expects arg[{position}] to be {dtype.name} but {received} is provided "
                f"(input '{name}')"
            )
        shape = [dim.size for dim in proto.tensor_shape.dim]
        if proto.tensor_shape.unknown_rank or not spec_shape.is_compatible_with(shape):
            raise _invalid(
                f"input '{name}' must have shape {_shape_text(spec_shape)}; received shape {shape}"
            )
        if max_batch_size is not None and shape and shape[0] > max_batch_size:
            raise _invalid(
                f"Task size {shape[0]} is larger than maximum input batch size "
                f"{max_batch_size} (input '{name}')"
            )
        try:
            arrays[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as error:
            raise _invalid(f"input '{name}' is not a valid tensor: {error}") from error
    return arrays


def run_signature(
    loaded: LoadedVersion, signature_name: str, arrays: dict[str, np.ndarray], aliases: list[str]
) -> dict[str, np.ndarray]:
    """Runs the signature's tensors in the version's session; a graph error (e.g.
    undecodable bytes) keeps its status code and message, as in TF Serving."""
    try:
        return loaded.run(signature_name, arrays, aliases)
    except tf.errors.OpError as error:
        raise ServingError(_grpc_code(error.error_code), op_message(error.message)) from error


def _dtype_name(enum_value: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum_value).name
    except TypeError:
        return f"DataType {enum_value}"


def _shape_text(shape: tf.TensorShape) -> str:
    return "[" + ", ".join("-1" if size is None else str(size) for size in shape.as_list()) + "]"


def _grpc_code(error_code: int) -> grpc.StatusCode:
    """TensorFlow's canonical error code as the gRPC status with the same number."""
    by_number = {status.value[0]: status for status in grpc.StatusCode}
    return by_number.get(error_code, grpc.StatusCode.UNKNOWN)
