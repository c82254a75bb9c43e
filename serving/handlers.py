"""The calls of TensorFlow Serving's APIs on a `ModelServer`, proto in and proto out.

`serving.server` puts them behind gRPC services and `serving.rest` behind the REST API,
so both answer alike (same status codes and messages, as TF Serving's).
"""

from __future__ import annotations

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    status_pb2,
)

from serving import IMAGES_SIGNATURE
from serving.model_registry import LoadedVersion, ModelServer, ServingError
from serving.predict import input_arrays, output_aliases, run_signature

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
