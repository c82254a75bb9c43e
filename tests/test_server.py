"""The development gRPC server, as a real `python -m serving.server` process: answers
like TensorFlow Serving, survives bad requests, picks up new versions, holds its memory."""

import base64
import io
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from serving_support import (
    MODEL_NAME,
    READY_LINE,
    TINY_BITS,
    TINY_SHAPE,
    ServingProcess,
    encoded_images,
    make_tiny_run,
    predict_request,
    sample_images,
)
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from harr_tf.encoder import encode_images
from serving.export import export
from serving.model_config import add_model_to_config
from serving.server import GRPC_OPTIONS
from serving.signatures import EncoderServingGraph

pytestmark = pytest.mark.slow  # every test runs a server process

State = get_model_status_pb2.ModelVersionStatus.State


def stubs(address):
    channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return prediction, model_service_pb2_grpc.ModelServiceStub(channel)


def expected_outputs(run_dir, images):
    """Codes and continuous outputs of the run's in-memory Keras encoder."""
    encoder = keras.saving.load_model(run_dir / f"bits_{TINY_BITS}" / "encoder.keras")
    continuous = keras.ops.convert_to_numpy(encoder(images.astype(np.float32)))
    return encode_images(encoder, images), continuous


def outputs_of(response):
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def status_of(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code(), caught.value.details()


def test_predict_equals_the_in_memory_encoder(grpc_server, tiny_run_dir):
    assert grpc_server.startswith("127.0.0.1:")  # loopback unless told otherwise
    prediction, _ = stubs(grpc_server)
    images = sample_images(6, seed=11)
    codes, continuous = expected_outputs(tiny_run_dir, images)
    requests = {
        "serving_default": predict_request({"images": encoded_images(images)}),
        "encode_pixels": predict_request(
            {"pixels": images.astype(np.float32)}, signature="encode_pixels"
        ),
    }
    for signature, request in requests.items():
        response = prediction.Predict(request, timeout=30)
        assert response.model_spec.name == MODEL_NAME
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == signature
        outputs = outputs_of(response)
        np.testing.assert_array_equal(outputs["codes"], codes)
        np.testing.assert_array_equal(outputs["packed"], np.packbits(codes > 0, axis=1))
        np.testing.assert_allclose(outputs["continuous"], continuous, rtol=0, atol=1e-5)
    request = predict_request({"images": encoded_images(images[:2])}, version=1)
    request.output_filter.append("packed")
    outputs = outputs_of(prediction.Predict(request, timeout=30))
    assert list(outputs) == ["packed"]
    np.testing.assert_array_equal(outputs["packed"], np.packbits(codes[:2] > 0, axis=1))


def test_empty_batch_gives_empty_outputs(grpc_server):
    prediction, _ = stubs(grpc_server)
    request = predict_request({})
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([], dtype=tf.string))
    outputs = outputs_of(prediction.Predict(request, timeout=30))
    assert outputs["codes"].shape == (0, TINY_BITS) and outputs["codes"].dtype == np.int8
    assert outputs["packed"].shape == (0, TINY_BITS // 8) and outputs["packed"].dtype == np.uint8
    assert outputs["continuous"].shape == (0, TINY_BITS)


def test_metadata_and_status(grpc_server):
    prediction, models = stubs(grpc_server)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL_NAME
    code, details = status_of(prediction.GetModelMetadata, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at least one metadata_field" in details
    request.metadata_field.append("signature_def")
    response = prediction.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    serving_default = signatures.signature_def["serving_default"]
    assert serving_default.method_name == "tensorflow/serving/predict"
    assert serving_default.inputs["images"].dtype == tf.string.as_datatype_enum
    assert set(serving_default.outputs) == {"codes", "packed", "continuous"}
    pixels = signatures.signature_def["encode_pixels"].inputs["pixels"]
    assert [dim.size for dim in pixels.tensor_shape.dim] == [-1, *TINY_SHAPE]

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL_NAME
    status = models.GetModelStatus(status_request, timeout=30).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in status] == [(1, State.AVAILABLE, 0)]
    status_request.model_spec.version.value = 4
    code, details = status_of(models.GetModelStatus, status_request)
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "Could not find version 4 of model harr")
    status_request.model_spec.name = "other"
    status_request.model_spec.ClearField("version")
    code, details = status_of(models.GetModelStatus, status_request)
    assert (code, details) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model other",
    )


def good_request():
    return predict_request({"images": encoded_images(sample_images(2, seed=5))})


def bad_requests():
    """(name, request, status code, the start of TF Serving's message)."""
    png = encoded_images(sample_images(1, seed=5))
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    extra = predict_request({"images": png, "labels": np.zeros(1, np.int64)})
    unknown_output = predict_request({"images": png})
    unknown_output.output_filter.append("scores")
    return [
        (
            "unknown model",
            predict_request({"images": png}, model="resnet"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(resnet)",
        ),
        (
            "missing version",
            predict_request({"images": png}, version=9),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(harr, 9)",
        ),
        (
            "unknown signature",
            predict_request({"images": png}, signature="classify"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "classify" not found.',
        ),
        (
            "unknown input name",
            predict_request({"pictures": png}),
            invalid,
            "input tensor alias not found in signature: pictures. "
            "Inputs expected to be in the set {images}.",
        ),
        ("extra input", extra, invalid, "input size does not match signature: 2!=1"),
        (
            "wrong dtype",
            predict_request({"images": np.zeros(1, np.float32)}),
            invalid,
            "Expects arg[0] to be string but float32 is provided",
        ),
        (
            "wrong rank",
            predict_request({"images": [png]}),
            invalid,
            "input 'images' must have shape [-1]; received shape [1, 1]",
        ),
        (
            "wrong pixel shape",
            predict_request(
                {"pixels": np.zeros((1, 20, 20, 1), np.float32)}, "harr", "encode_pixels"
            ),
            invalid,
            "input 'pixels' must have shape [-1, 28, 28, 1]",
        ),
        (
            "undecodable bytes",
            predict_request({"images": [png[0], b"not an image"]}),
            invalid,
            "Unknown image file format.",
        ),
        (
            "oversized batch",
            predict_request({"images": png * 1025}),
            invalid,
            "Task size 1025 is larger than maximum input batch size 1024",
        ),
        (
            "unknown output",
            unknown_output,
            invalid,
            "output tensor alias not found in signature: scores",
        ),
    ]


@pytest.mark.parametrize("case", bad_requests(), ids=lambda case: case[0])
def test_bad_request_gets_tf_serving_status_and_server_keeps_serving(grpc_server, case):
    _, request, expected_code, expected_message = case
    prediction, _ = stubs(grpc_server)
    code, details = status_of(prediction.Predict, request)
    assert code == expected_code
    assert details.startswith(expected_message), details
    assert outputs_of(prediction.Predict(good_request(), timeout=30))["codes"].shape == (
        2,
        TINY_BITS,
    )


NO_VERSION_YET = re.compile(r"No versions of servable harr found under base path")
READY_VERSION_2 = re.compile(r"serving model harr version 2 on ")


def test_versions_are_picked_up_as_they_appear_and_a_broken_one_is_not(tiny_run_dir, tmp_path):
    base = tmp_path / "models" / MODEL_NAME
    base.mkdir(parents=True)
    other_run = make_tiny_run(tmp_path / "other_run", seed=1)
    images = sample_images(5, seed=2)
    first_codes, _ = expected_outputs(tiny_run_dir, images)
    second_codes, _ = expected_outputs(other_run, images)
    assert not np.array_equal(first_codes, second_codes)
    request = predict_request({"images": encoded_images(images)})

    server = ServingProcess(base, "--poll-seconds", "0.2").start(wait=False)
    with server:
        server.wait_for(NO_VERSION_YET)  # like TF Serving, it waits for a first version
        export(tiny_run_dir, None, base)
        server.address = server.wait_for(READY_LINE)["address"]
        prediction, models = stubs(server.address)
        response = prediction.Predict(request, timeout=30)
        assert response.model_spec.version.value == 1
        np.testing.assert_array_equal(outputs_of(response)["codes"], first_codes)

        export(other_run, None, base)  # version 2, renamed into place while serving
        server.wait_for(READY_VERSION_2)
        response = prediction.Predict(request, timeout=30)
        assert response.model_spec.version.value == 2
        np.testing.assert_array_equal(outputs_of(response)["codes"], second_codes)
        code, details = status_of(prediction.Predict, predict_request({"images": []}, version=1))
        assert code == grpc.StatusCode.NOT_FOUND and "Specific(harr, 1)" in details

        broken = base / "3"
        shutil.copytree(base / "2", broken)
        (broken / "saved_model.pb").write_bytes(b"truncated")
        # Version 4: the variables are not under the restore op (TF2's loader would run it).
        write_module_export(other_run, tmp_path / "module_export")
        shutil.copytree(base / "2" / "assets.extra", tmp_path / "module_export" / "assets.extra")
        (tmp_path / "module_export").rename(base / "4")
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = MODEL_NAME
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = models.GetModelStatus(status_request, timeout=30).model_version_status
            if {s.version for s in states if s.state == State.END} >= {1, 3, 4}:
                break
            time.sleep(0.2)
        by_version = {s.version: s for s in states}
        states = [by_version[v].state for v in (1, 2, 3, 4)]
        assert states == [State.END, State.AVAILABLE, State.END, State.END]
        assert by_version[3].status.error_code != 0 and by_version[3].status.error_message
        assert "Could not find variable" in by_version[4].status.error_message
        response = prediction.Predict(request, timeout=30)
        assert response.model_spec.version.value == 2  # still serving the good version
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 15
        assert "shutting down" in server.lines


def write_module_export(run_dir, directory):
    """The export as it was before `keras.export.ExportArchive`: a `tf.Module` holding
    the Keras 3 encoder, saved with both signatures. TF2's `tf.saved_model.load` runs
    it; TF Serving's session loader does not restore its variables
    (keras-team/keras#20096), so it must never serve."""
    encoder = keras.saving.load_model(run_dir / f"bits_{TINY_BITS}" / "encoder.keras")
    graph = EncoderServingGraph(encoder)
    module = tf.Module()
    module.encoder = encoder
    signatures = {
        "serving_default": tf.function(
            graph._encode_images, input_signature=[tf.TensorSpec([None], tf.string, "images")]
        ),
        "encode_pixels": tf.function(
            graph._encode_pixels,
            input_signature=[tf.TensorSpec([None, *TINY_SHAPE], tf.float32, "pixels")],
        ),
    }
    tf.saved_model.save(module, str(directory), signatures=signatures)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


RSS_GROWTH_BOUND_KIB = 16 * 1024  # measured: about 1 MiB for 5,000 requests
LOAD_REQUESTS = 5000
LOAD_THREADS = 8


def test_mixed_load_answers_every_good_request_with_bounded_memory(serving_process, tiny_run_dir):
    """5,000 requests from 8 threads, about a third of them bad: every good one gets
    the in-memory codes, every bad one its status, and the server's resident memory
    grows less than 16 MiB (a leak of 3.5 KB per request would exceed it)."""
    prediction, _ = stubs(serving_process.address)
    pool = sample_images(16, seed=21)
    pool_codes, _ = expected_outputs(tiny_run_dir, pool)
    pool_files = encoded_images(pool)
    bad = [(case[1], case[2]) for case in bad_requests() if case[0] != "oversized batch"]

    def good(rng):
        chosen = rng.choice(len(pool), size=rng.integers(1, 5))
        return predict_request({"images": [pool_files[i] for i in chosen]}), pool_codes[chosen]

    for _ in range(100):  # warm up: allocations TF and gRPC keep for the process lifetime
        prediction.Predict(good(np.random.default_rng(0))[0], timeout=30)
    before = rss_kib(serving_process.pid)

    failures, counts = [], {"good": 0, "bad": 0}
    lock = threading.Lock()

    def client(worker: int) -> None:
        rng = np.random.default_rng(worker)
        for step in range(LOAD_REQUESTS // LOAD_THREADS):
            if rng.random() < 0.65:
                request, codes = good(rng)
                try:
                    outputs = outputs_of(prediction.Predict(request, timeout=60))
                    ok = np.array_equal(outputs["codes"], codes)
                except grpc.RpcError as error:
                    ok = error.code()
                kind = "good"
            else:
                request, expected_code = bad[rng.integers(len(bad))]
                try:
                    prediction.Predict(request, timeout=60)
                    ok = "a bad request succeeded"
                except grpc.RpcError as error:
                    ok = error.code() == expected_code or error.code()
                kind = "bad"
            with lock:
                counts[kind] += 1
                if ok is not True:
                    failures.append((worker, step, kind, ok))

    threads = [threading.Thread(target=client, args=(worker,)) for worker in range(LOAD_THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    growth = rss_kib(serving_process.pid) - before
    print(f"{sum(counts.values())} requests in {seconds:.1f} s; RSS growth {growth} KiB")
    assert not failures, failures[:5]
    assert sum(counts.values()) == LOAD_REQUESTS and counts["bad"] > 600
    assert growth < RSS_GROWTH_BOUND_KIB


def test_a_port_in_use_is_a_clear_error(serving_process, exported_base):
    port = serving_process.address.rsplit(":", 1)[1]
    with ServingProcess(exported_base, "--port", port).start(wait=False) as second:
        second.wait_for(re.compile(rf"--port {port}: cannot bind this address"))
        assert second.wait() == 1


def test_model_config_file_serves_several_models_by_their_version_policies(
    exported_base, tiny_run_dir, tmp_path
):
    base = tmp_path / "harr_two"
    shutil.copytree(exported_base / "1", base / "1")
    other_run = make_tiny_run(tmp_path / "other_run", seed=1)
    export(other_run, None, base)  # version 2
    config_file = tmp_path / "models.config"
    add_model_to_config(config_file, "harr", base)  # as serving.export writes it: latest
    config = text_format.Parse(config_file.read_text(), ModelServerConfig())
    for name, policy in (("harr_all", "all {}"), ("harr_v1", "specific { versions: 1 }")):
        model = config.model_config_list.config.add(name=name, base_path=str(base))
        text_format.Parse(policy, model.model_version_policy)
    config_file.write_text(text_format.MessageToString(config))
    images = sample_images(3, seed=4)
    codes = {1: expected_outputs(tiny_run_dir, images)[0]}
    codes[2] = expected_outputs(other_run, images)[0]

    with ServingProcess(None, "--model-config-file", str(config_file)).start() as server:
        for name in ("harr", "harr_all", "harr_v1"):
            server.wait_for(re.compile(rf"serving model {name} version"))
        prediction, models = stubs(server.address)
        served = {"harr": [2], "harr_all": [1, 2], "harr_v1": [1]}
        for name, versions in served.items():
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = name
            status = models.GetModelStatus(request, timeout=30).model_version_status
            available = [(v, State.AVAILABLE) for v in versions]
            assert [(s.version, s.state) for s in status] == available
            for version in [None, *versions]:
                request = predict_request({"images": encoded_images(images)}, name, "", version)
                response = prediction.Predict(request, timeout=30)
                assert response.model_spec.name == name
                assert response.model_spec.version.value == (version or max(versions))
                expected = codes[version or max(versions)]
                np.testing.assert_array_equal(outputs_of(response)["codes"], expected)
        request = predict_request({"images": []}, "harr_v1", "", 2)
        assert status_of(prediction.Predict, request) == (
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(harr_v1, 2)",
        )


def test_a_model_config_naming_a_missing_base_path_is_one_line_at_start(tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text(
        f'model_config_list {{ config {{ name: "harr" base_path: "{tmp_path / "nowhere"}" }} }}'
    )
    with ServingProcess(None, "--model-config-file", str(config_file)).start(wait=False) as server:
        assert server.wait() == 1
    assert server.lines[-1] == (
        f"error: --model-config-file {config_file}: model harr: base_path "
        f"'{tmp_path / 'nowhere'}' is not a directory"
    )
    assert not [line for line in server.lines if "Traceback" in line]


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), which a decode cannot hide."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])


def blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_decompression_bomb_is_refused_before_decoding_over_grpc_and_rest(exported_base):
    """A 62 KB PNG of 8,000 × 8,000 pixels would take 64 MB decoded and 256 MB more
    resized in float32; the graph refuses it from its header: INVALID_ARGUMENT (REST
    400) naming its size, the server's peak memory unchanged, the next request served."""
    bomb, good = blank_png(8000, 8000), encoded_images(sample_images(1, seed=4))
    assert len(bomb) < 64 * 1024
    message = "The image is 8000 x 8000 pixels, over the limit of 40000000 pixels"
    with ServingProcess(exported_base, "--rest-api-port", "0") as server:
        prediction, _ = stubs(server.address)
        prediction.Predict(predict_request({"images": good}), timeout=60)  # warm
        before = peak_rss_kib(server.pid)
        for _ in range(3):
            code, details = status_of(prediction.Predict, predict_request({"images": [bomb]}))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
        body = json.dumps({"instances": [{"b64": base64.b64encode(bomb).decode()}]}).encode()
        request = urllib.request.Request(
            f"http://{server.rest_address}/v1/models/{MODEL_NAME}:predict", data=body
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400
        assert message in json.loads(refused.value.read())["error"]
        growth = peak_rss_kib(server.pid) - before
        assert growth < 32 * 1024, f"peak memory grew {growth} KiB"
        response = prediction.Predict(predict_request({"images": good}), timeout=60)
        assert outputs_of(response)["codes"].shape == (1, TINY_BITS)
