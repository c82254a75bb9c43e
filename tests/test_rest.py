"""TF Serving's REST API on the real `python -m serving.server` process, through a plain
HTTP client (urllib): status, metadata, row and columnar predict, b64 strings, errors
with TF Serving's HTTP codes (those of the gRPC status the same request gets)."""

import base64
import json
import socket
import urllib.error
import urllib.request

import grpc
import keras
import numpy as np
import pytest
from serving_support import (
    MODEL_NAME,
    TINY_BITS,
    TINY_SHAPE,
    encoded_images,
    predict_request,
    sample_images,
)
from tensorflow_serving.apis import prediction_service_pb2_grpc

from harr_tf.encoder import encode_images
from serving.rest import HTTP_STATUS
from serving.server import GRPC_OPTIONS


def call(address: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    """(HTTP status, decoded JSON answer) of GET `path`, or POST when `body` is given."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://{address}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def rest(serving_process) -> str:
    return serving_process.rest_address


@pytest.fixture(scope="module")
def expected(tiny_run_dir):
    """(images, codes, continuous) of 5 images under the in-memory encoder."""
    encoder = keras.saving.load_model(tiny_run_dir / f"bits_{TINY_BITS}" / "encoder.keras")
    images = sample_images(5, seed=13)
    continuous = keras.ops.convert_to_numpy(encoder(images.astype(np.float32)))
    return images, encode_images(encoder, images), continuous


def test_status_and_metadata(rest):
    assert rest.startswith("127.0.0.1:")
    status, answer = call(rest, f"/v1/models/{MODEL_NAME}")
    assert status == 200
    assert answer == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert call(rest, f"/v1/models/{MODEL_NAME}/versions/1") == (status, answer)
    status, answer = call(rest, f"/v1/models/{MODEL_NAME}/versions/1/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": MODEL_NAME, "signature_name": "", "version": "1"}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"
    pixels = signatures["encode_pixels"]["inputs"]["pixels"]["tensor_shape"]["dim"]
    assert [int(dim["size"]) for dim in pixels] == [-1, *TINY_SHAPE]
    assert set(signatures["serving_default"]["outputs"]) == {"codes", "packed", "continuous"}


def test_row_and_columnar_predict_give_the_in_memory_codes(rest, expected):
    images, codes, continuous = expected
    packed = np.packbits(codes > 0, axis=1)
    files = encoded_images(images)
    path = f"/v1/models/{MODEL_NAME}:predict"

    status, answer = call(rest, path, {"instances": [b64(data) for data in files]})
    assert status == 200
    rows = answer["predictions"]
    assert len(rows) == len(images) and set(rows[0]) == {"codes", "packed", "continuous"}
    np.testing.assert_array_equal([row["codes"] for row in rows], codes)
    np.testing.assert_array_equal([row["packed"] for row in rows], packed)
    served = np.array([row["continuous"] for row in rows], np.float32)
    np.testing.assert_allclose(served, continuous, rtol=0, atol=1e-5)

    named = {"instances": [{"images": b64(data)} for data in files[:2]]}
    status, answer = call(rest, f"/v1/models/{MODEL_NAME}/versions/1:predict", named)
    assert status == 200
    np.testing.assert_array_equal([row["codes"] for row in answer["predictions"]], codes[:2])

    columnar = {"signature_name": "encode_pixels", "inputs": images.astype(float).tolist()}
    status, answer = call(rest, path, columnar)
    assert status == 200
    np.testing.assert_array_equal(answer["outputs"]["codes"], codes)
    np.testing.assert_array_equal(answer["outputs"]["packed"], packed)

    status, answer = call(rest, path, {"inputs": {"images": []}})  # the empty batch
    assert status == 200 and answer["outputs"]["codes"] == []


def pixels_with(value) -> list:
    """One image of 28 × 28 × 1 float pixels as JSON rows, its first pixel `value`."""
    rows = np.zeros((1, *TINY_SHAPE)).tolist()
    rows[0][0][0][0] = value
    return rows


def bad_requests():
    """(name, path, body or None for GET, HTTP code, the start of TF Serving's message,
    the gRPC request that fails the same way or None)."""
    png = encoded_images(sample_images(1, seed=5))
    good = {"instances": [b64(png[0])]}
    predict = f"/v1/models/{MODEL_NAME}:predict"
    return [
        ("not JSON", predict, b"{instances: [", 400, "JSON Parse error: ", None),
        ("empty body", predict, b"", 400, "JSON Parse error: The document is empty", None),
        (
            "unknown signature",
            predict,
            {"signature_name": "classify", **good},
            400,
            'Serving signature name: "classify" not found in signature def',
            predict_request({"images": png}, signature="classify"),
        ),
        (
            "unknown input name",
            predict,
            {"instances": [{"pictures": b64(png[0])}]},
            400,
            "Failed to process element: 0 key: pictures of 'instances' list.",
            predict_request({"pictures": png}),
        ),
        (
            "missing columnar input",
            predict,
            {"signature_name": "encode_pixels", "inputs": {"images": [b64(png[0])]}},
            400,
            "Missing named input: pixels in 'inputs' object.",
            None,
        ),
        (
            "neither key",
            predict,
            {"signature_name": ""},
            400,
            "Missing 'inputs' or 'instances'",
            None,
        ),
        (
            "unknown model",
            "/v1/models/resnet:predict",
            good,
            404,
            "Servable not found for request: Latest(resnet)",
            predict_request({"images": png}, model="resnet"),
        ),
        (
            "missing version",
            f"/v1/models/{MODEL_NAME}/versions/9:predict",
            good,
            404,
            "Servable not found for request: Specific(harr, 9)",
            predict_request({"images": png}, version=9),
        ),
        (
            "undecodable bytes",
            predict,
            {"instances": [b64(png[0]), b64(b"not an image")]},
            400,
            "Unknown image file format.",
            predict_request({"images": [png[0], b"not an image"]}),
        ),
        (
            "wrong pixel shape",
            predict,
            {"signature_name": "encode_pixels", "instances": np.zeros((1, 20, 20, 1)).tolist()},
            400,
            "input 'pixels' must have shape [-1, 28, 28, 1]",
            predict_request(
                {"pixels": np.zeros((1, 20, 20, 1), np.float32)}, "harr", "encode_pixels"
            ),
        ),
        ("bad b64", predict, {"instances": [{"b64": "***"}]}, 400, "Unable to base64 decode", None),
        (
            "NaN pixels",
            predict,
            {"signature_name": "encode_pixels", "instances": pixels_with(float("nan"))},
            400,
            "input 'pixels' is not a float32 tensor: it holds nan; pixels must be finite",
            None,
        ),
        (
            "string pixels",
            predict,
            {"signature_name": "encode_pixels", "instances": pixels_with("12.5")},
            400,
            "input 'pixels' is not a float32 tensor: it holds strings, where float32 values are",
            None,
        ),
        ("unknown path", "/v2/whatever", None, 400, "Malformed request: GET /v2/whatever", None),
        (
            "status of an unknown model",
            "/v1/models/other",
            None,
            404,
            "Could not find any versions of model other",
            None,
        ),
    ]


@pytest.mark.parametrize("case", bad_requests(), ids=lambda case: case[0])
def test_bad_request_gets_tf_serving_error_and_server_keeps_serving(
    rest, grpc_server, expected, case
):
    _, path, body, code, message, grpc_request = case
    status, answer = call(rest, path, body)
    assert status == code
    assert set(answer) == {"error"} and answer["error"].startswith(message), answer
    if grpc_request is not None:  # the gRPC status of the same request maps to this code
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(grpc_server, options=GRPC_OPTIONS)
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(grpc_request, timeout=30)
        assert HTTP_STATUS[caught.value.code()] == code
    images, codes, _ = expected
    good = {"instances": [b64(data) for data in encoded_images(images[:1])]}
    status, answer = call(rest, f"/v1/models/{MODEL_NAME}:predict", good)
    assert status == 200 and answer["predictions"][0]["codes"] == codes[0].tolist()


@pytest.mark.parametrize("length", ["abc", "-5", "99999999999999999999"])
def test_a_bad_content_length_gets_a_400_reply_and_the_server_keeps_serving(rest, expected, length):
    host, port = rest.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            f"POST /v1/models/{MODEL_NAME}:predict HTTP/1.1\r\nHost: {rest}\r\n"
            f"Content-Length: {length}\r\n\r\n{{}}".encode()
        )
        reply = b""
        while chunk := connection.recv(65536):  # the server closes the connection
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply
    assert json.loads(body)["error"].startswith(f"Content-Length: {length!r} is not a body size")
    images, codes, _ = expected
    good = {"instances": [b64(data) for data in encoded_images(images[:1])]}
    status, answer = call(rest, f"/v1/models/{MODEL_NAME}:predict", good)
    assert status == 200 and answer["predictions"][0]["codes"] == codes[0].tolist()
