"""SavedModel export: signatures as TF Serving sees them, codes equal to the in-memory
encoder's through TF Serving's own loader (TF1 session, `saved_model_cli run`), the
training preprocessing in the graph, atomic versions, stale staging removed."""

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from google.protobuf import text_format
from PIL import Image
from serving_support import TINY_BITS, TINY_SHAPE, encoded_images, make_tiny_run, sample_images
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from harr_tf.data import load_dataset
from harr_tf.encoder import encode_images
from harr_tf.trained_run import Run
from serving import METADATA_FILE, OUTPUTS, WARMUP_FILE, export, layout
from serving.layout import servable_versions
from serving.model_config import add_model_to_config
from serving.model_registry import LoadedVersion
from serving.session_bundle import SessionBundle

COLOUR_SHAPE = (24, 24, 3)


@pytest.fixture(scope="module")
def encoder(tiny_run_dir):
    return keras.saving.load_model(tiny_run_dir / f"bits_{TINY_BITS}" / "encoder.keras")


def signature_blocks(cli_output: str) -> dict[str, str]:
    """`saved_model_cli show --all` text cut into one block per SignatureDef."""
    parts = re.split(r"signature_def\['([^']+)'\]:", cli_output.split("Concrete Functions")[0])
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def tensor_info(block: str, kind: str, name: str) -> tuple[str, str]:
    found = re.search(
        rf"{kind}\['{name}'\] tensor_info:\s+dtype: (\S+)\s+shape: (\([^)]*\))", block
    )
    assert found, f"no {kind} {name} in:\n{block}"
    return found.groups()


@pytest.mark.slow
def test_saved_model_cli_shows_both_signatures(exported_base):
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run(
        [str(cli), "show", "--all", "--dir", str(exported_base / "1")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    blocks = signature_blocks(shown)
    assert {"serving_default", "encode_pixels"} <= set(blocks)
    height, width, channels = TINY_SHAPE
    inputs = {
        "serving_default": ("images", ("DT_STRING", "(-1)")),
        "encode_pixels": ("pixels", ("DT_FLOAT", f"(-1, {height}, {width}, {channels})")),
    }
    for signature, (name, expected) in inputs.items():
        block = blocks[signature]
        assert "Method name is: tensorflow/serving/predict" in block
        assert tensor_info(block, "inputs", name) == expected
        assert tensor_info(block, "outputs", "codes") == ("DT_INT8", f"(-1, {TINY_BITS})")
        assert tensor_info(block, "outputs", "packed") == ("DT_UINT8", f"(-1, {TINY_BITS // 8})")
        assert tensor_info(block, "outputs", "continuous") == ("DT_FLOAT", f"(-1, {TINY_BITS})")
    # No function of the graph asks for XLA compilation.
    proto = saved_model_pb2.SavedModel.FromString((exported_base / "1/saved_model.pb").read_bytes())
    functions = proto.meta_graphs[0].graph_def.library.function
    assert functions
    assert not [f.signature.name for f in functions if f.attr["_XlaMustCompile"].b]


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    """(encoder, version directory) of a 24×24×3 tiny run exported once for the module."""
    run = make_tiny_run(tmp_path_factory.mktemp("colour_run"), shape=COLOUR_SHAPE, seed=2)
    encoder = Run.load(run).encoder()
    return encoder, export.export_encoder(encoder, tmp_path_factory.mktemp("colour") / "harr")


@pytest.fixture(scope="module", params=["grey", "colour"])
def served_model(request, encoder, exported_base, colour_model):
    """(encoder, version directory, image shape) of the grey and the colour export."""
    if request.param == "grey":
        return encoder, exported_base / "1", TINY_SHAPE
    return (*colour_model, COLOUR_SHAPE)


BATCHES = (0, 1, 64)


def signature_inputs(shape) -> dict[str, tuple[str, object]]:
    """`{signature: (input alias, all 64 inputs)}`: PNG files (Pillow's) and float pixels."""
    images = sample_images(64, shape, seed=7)  # not the images the encoders were fitted on
    return {
        "serving_default": ("images", np.array(encoded_images(images), object)),
        "encode_pixels": ("pixels", images.astype(np.float32)),
    }


def assert_outputs_equal_the_encoder(outputs, encoder, shape, batch, context):
    images = sample_images(64, shape, seed=7)[:batch]
    bits = encoder.output_shape[-1]
    assert outputs["codes"].dtype == np.int8 and outputs["codes"].shape == (batch, bits), context
    assert outputs["packed"].dtype == np.uint8, context
    assert outputs["continuous"].shape == (batch, bits), context
    if batch == 0:
        assert outputs["packed"].shape == (0, bits // 8), context
        return
    codes = encode_images(encoder, images)
    assert len({tuple(code) for code in codes}) > min(batch, 3) - 1  # codes tell images apart
    np.testing.assert_array_equal(outputs["codes"], codes, err_msg=context)
    np.testing.assert_array_equal(outputs["packed"], np.packbits(codes > 0, axis=1), context)
    expected = keras.ops.convert_to_numpy(encoder(images.astype(np.float32)))
    np.testing.assert_allclose(outputs["continuous"], expected, rtol=0, atol=1e-5, err_msg=context)


def test_tf1_session_loader_gives_the_in_memory_codes(served_model):
    """What TF Serving does: import the graph, run the restore op, run tensors by name."""
    encoder, directory, shape = served_model
    bundle = SessionBundle(directory)
    for signature, (alias, inputs) in signature_inputs(shape).items():
        for batch in BATCHES:
            outputs = bundle.run(signature, {alias: inputs[:batch]})
            assert_outputs_equal_the_encoder(outputs, encoder, shape, batch, (signature, batch))
    bundle.close()


# Each `saved_model_cli` process spends seconds importing TensorFlow, so all of them
# (every batch size, signature and model) run at once.
CLI_BATCHES = (0, 1, 64)


@pytest.mark.slow
def test_saved_model_cli_run_gives_the_in_memory_codes(
    encoder, exported_base, colour_model, tmp_path
):
    models = {
        "grey": (encoder, exported_base / "1", TINY_SHAPE),
        "colour": (*colour_model, COLOUR_SHAPE),
    }
    cli = Path(sys.executable).with_name("saved_model_cli")
    runs = {}
    for model, (_, directory, shape) in models.items():
        for signature, (alias, inputs) in signature_inputs(shape).items():
            for batch in CLI_BATCHES:
                folder = tmp_path / f"{model}_{signature}_{batch}"
                folder.mkdir()
                np.save(folder / "in.npy", inputs[:batch], allow_pickle=True)
                command = [str(cli), "run", "--dir", str(directory), "--tag_set", "serve"]
                command += ["--signature_def", signature]
                command += ["--inputs", f"{alias}={folder / 'in.npy'}"]
                command += ["--outdir", str(folder / "out")]
                runs[model, signature, batch] = subprocess.Popen(
                    command,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
    for (model, signature, batch), process in runs.items():
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-3000:]
        out = tmp_path / f"{model}_{signature}_{batch}" / "out"
        outputs = {name: np.load(out / f"{name}.npy") for name in OUTPUTS}
        model_encoder, _, shape = models[model]
        context = (model, signature, batch)
        assert_outputs_equal_the_encoder(outputs, model_encoder, shape, batch, context)


def test_every_format_decodes_to_the_training_pixels(exported_base, encoder):
    """Lossless files of grayscale images give exactly the codes of their pixels; BMP,
    GIF and WebP decode to three channels, which the graph brings back to one."""
    images = sample_images(4, seed=3)
    bundle = SessionBundle(exported_base / "1")
    expected = keras.ops.convert_to_numpy(encoder(images.astype(np.float32)))
    for image_format in ("PNG", "BMP", "GIF", "WEBP"):
        options = {"lossless": True} if image_format == "WEBP" else {}
        encoded = np.array(encoded_images(images, image_format, **options), object)
        served = bundle.run("serving_default", {"images": encoded})
        np.testing.assert_array_equal(
            served["codes"], encode_images(encoder, images), err_msg=image_format
        )
        np.testing.assert_allclose(
            served["continuous"], expected, rtol=0, atol=1e-5, err_msg=image_format
        )
    jpeg = np.array(encoded_images(images, "JPEG"), object)  # lossy: codes may move a little
    assert bundle.run("serving_default", {"images": jpeg})["codes"].shape == (4, TINY_BITS)
    # TF2's object-based loader runs the same export too (what in-process users call).
    model = tf.saved_model.load(str(exported_base / "1"))
    codes = model.signatures["serving_default"](images=tf.constant(list(encoded)))["codes"]
    np.testing.assert_array_equal(codes.numpy(), encode_images(encoder, images))


def blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_session_loaded_graph_refuses_images_over_its_pixel_budget(
    exported_base, tiny_run_dir, tmp_path, capsys
):
    """TF Serving's loader runs the budget check: a 62 KB PNG of 8,000 × 8,000 pixels
    fails INVALID_ARGUMENT naming its size; `--max-pixels` sets an export's budget."""
    bundle = SessionBundle(exported_base / "1")
    good = np.array(encoded_images(sample_images(1)), object)
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        bundle.run(
            "serving_default", {"images": np.array([good[0], blank_png(8000, 8000)], object)}
        )
    assert "The image is 8000 x 8000 pixels, over the limit of 40000000 pixels" in str(
        refused.value
    )
    assert bundle.run("serving_default", {"images": good})["codes"].shape == (1, TINY_BITS)
    base = tmp_path / "harr"
    arguments = ["--run-dir", str(tiny_run_dir), "--model-base-path", str(base)]
    assert export.main([*arguments, "--max-pixels", str(28 * 28)]) == 0
    assert json.loads((base / "1" / METADATA_FILE).read_text())["max_pixels"] == 784
    small = SessionBundle(base / "1")
    assert small.run("serving_default", {"images": good})["codes"].shape == (1, TINY_BITS)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="28 x 29 pixels, over the limit of 784"
    ):
        small.run("serving_default", {"images": np.array([blank_png(28, 29)], object)})
    with pytest.raises(SystemExit):
        export.main([*arguments, "--max-pixels", "0"])
    assert "--max-pixels" in capsys.readouterr().err


def test_colour_images_of_any_size_match_the_folder_loader(colour_model, tmp_path):
    encoder, version_dir = colour_model
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {"PNG": (24, 24), "JPEG": (40, 30), "BMP": (17, 33), "GIF": (24, 24), "WEBP": (50, 50)}
    for position, (image_format, (height, width)) in enumerate(sizes.items()):
        image = sample_images(1, (height, width, 3), seed=position)[0]
        (folder / f"{position}.{image_format.lower()}").write_bytes(
            encoded_images(image[None], image_format)[0]
        )
    dataset = load_dataset(f"folder:{folder}", image_size=24)
    pixels = dataset.read(np.arange(dataset.num_items))
    encoded = np.array([(folder / item).read_bytes() for item in dataset.ids], object)
    served = SessionBundle(version_dir).run("serving_default", {"images": encoded})
    np.testing.assert_array_equal(served["codes"], encode_images(encoder, pixels))
    np.testing.assert_allclose(
        served["continuous"],
        keras.ops.convert_to_numpy(encoder(pixels.astype(np.float32))),
        rtol=0,
        atol=1e-5,
    )


def test_warmup_requests_replay_through_the_session_and_metadata(
    exported_base, tiny_run_dir, encoder
):
    loaded = LoadedVersion.load(1, exported_base / "1")  # the server's loader: replays them
    assert loaded.replay_warmup() == 2
    records = list(tf.data.TFRecordDataset(str(exported_base / "1" / WARMUP_FILE)))
    requests = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        for record in records
    ]
    assert sorted(r.model_spec.signature_name for r in requests) == [
        "encode_pixels",
        "serving_default",
    ]
    grey = keras.ops.convert_to_numpy(encoder(np.full((1, *TINY_SHAPE), 128.0, np.float32)))
    for request in requests:
        assert request.model_spec.name == "harr"
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = loaded.run(request.model_spec.signature_name, inputs, ["continuous"])
        np.testing.assert_allclose(outputs["continuous"], grey, rtol=0, atol=1e-5)

    metadata = json.loads((exported_base / "1" / METADATA_FILE).read_text())
    config = yaml.safe_load((tiny_run_dir / "config.yaml").read_text())
    assert metadata["bits"] == TINY_BITS
    assert metadata["image_size"] == list(TINY_SHAPE[:2])
    assert metadata["channels"] == TINY_SHAPE[2]
    assert metadata["max_pixels"] == 40_000_000
    assert metadata["dataset"] == config["dataset"]
    canonical = json.dumps(config, sort_keys=True).encode()
    assert metadata["config_sha256"] == hashlib.sha256(canonical).hexdigest()


def test_export_is_atomic_and_numbers_versions(encoder, tmp_path, monkeypatch):
    base = tmp_path / "harr"
    seen = {}

    def fail_after_saving(directory, *args):
        seen["staging"] = directory
        seen["complete"] = (directory / "saved_model.pb").is_file()
        seen["visible"] = servable_versions(base)
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(export, "_check_export", fail_after_saving)
        with pytest.raises(RuntimeError, match="disk full"):
            export.export_encoder(encoder, base)
    # Mid-export the SavedModel existed under a name no server treats as a version;
    # the failure left nothing behind.
    assert seen["complete"] and not seen["visible"]
    assert not seen["staging"].name.isdigit() and seen["staging"].parent == base
    assert list(base.iterdir()) == []

    assert export.export_encoder(encoder, base, version=5) == base / "5"
    assert export.export_encoder(encoder, base) == base / "6"  # the next free version
    with pytest.raises(FileExistsError, match="--version 5"):
        export.export_encoder(encoder, base, version=5)
    assert sorted(servable_versions(base)) == [5, 6]
    assert sorted(path.name for path in base.iterdir()) == ["5", "6"]
    assert (base / "6").stat().st_mode & 0o777 == 0o755


def test_cli_exports_and_names_bad_input(tiny_run_dir, tmp_path, capsys):
    base = tmp_path / "harr"
    config_file = tmp_path / "models.config"
    arguments = ["--run-dir", str(tiny_run_dir), "--model-base-path", str(base)]
    assert export.main([*arguments, "--write-model-config", str(config_file)]) == 0
    assert f"to {base / '1'}" in capsys.readouterr().out
    assert (base / "1" / "saved_model.pb").is_file()
    # TF Serving's ModelServerConfig, which --model_config_file reads; adding the model
    # again (the next export) keeps one entry, and its version policy.
    add_model_to_config(config_file, "harr_16", tmp_path / "elsewhere")
    config = text_format.Parse(config_file.read_text(), ModelServerConfig())
    assert [(m.name, m.base_path, m.model_platform) for m in config.model_config_list.config] == [
        ("harr", str(base.resolve()), "tensorflow"),
        ("harr_16", str((tmp_path / "elsewhere").resolve()), "tensorflow"),
    ]
    config.model_config_list.config[0].model_version_policy.all.SetInParent()
    config_file.write_text(text_format.MessageToString(config))
    add_model_to_config(config_file, "harr", base)
    again = text_format.Parse(config_file.read_text(), ModelServerConfig())
    assert len(again.model_config_list.config) == 2
    assert again.model_config_list.config[0].model_version_policy.HasField("all")
    config_file.write_text("not a config {")
    with pytest.raises(ValueError, match=r"models.config: not a ModelServerConfig"):
        add_model_to_config(config_file, "harr", base)
    with pytest.raises(SystemExit, match=r"no trained encoder bits_32/encoder.keras.*\[16\]"):
        export.main(
            ["--run-dir", str(tiny_run_dir), "--bits", "32", "--model-base-path", str(base)]
        )
    with pytest.raises(SystemExit, match="not a run directory.*config.yaml"):
        export.main(["--run-dir", str(tmp_path), "--model-base-path", str(base)])
    with pytest.raises(SystemExit, match="already exists"):
        export.main(
            ["--run-dir", str(tiny_run_dir), "--model-base-path", str(base), "--version", "1"]
        )
    assert sorted(path.name for path in base.iterdir()) == ["1"]


def test_next_export_removes_staging_that_no_live_exporter_writes(encoder, tmp_path):
    base = tmp_path / "harr"
    base.mkdir()
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        staging = {
            "killed exporter": base / f".export-{host}-{dead.pid}-abc",
            "live exporter": base / f".export-{host}-{alive.pid}-def",
            "old, unnamed owner": base / ".export-ghi",
            "recent, unnamed owner": base / ".export-jkl",
            "old, another host": base / f".export-elsewhere-{alive.pid}-mno",
        }
        for directory in staging.values():
            (directory / "variables").mkdir(parents=True)
            (directory / "saved_model.pb").write_bytes(b"half written")
        long_ago = time.time() - layout.STALE_STAGING_SECONDS - 60
        for name in ("old, unnamed owner", "old, another host"):
            os.utime(staging[name], (long_ago, long_ago))
        assert export.export_encoder(encoder, base) == base / "1"
        left = {name for name, directory in staging.items() if directory.exists()}
        assert left == {"live exporter", "recent, unnamed owner"}
    finally:
        alive.kill()
        alive.wait()
    assert sorted(path.name for path in base.iterdir() if path.name.isdigit()) == ["1"]
