"""SavedModel export: signatures as TF Serving sees them, codes equal to the in-memory
encoder's from a fresh process, the training preprocessing in the graph, atomic versions."""

import hashlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from serving_support import TINY_BITS, TINY_SHAPE, encoded_images, make_tiny_run, sample_images
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from harr_tf.data import load_dataset
from harr_tf.encoder import encode_images
from serving import METADATA_FILE, WARMUP_FILE, export
from serving.layout import servable_versions


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


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    directory, inputs_dir, out_file = sys.argv[1:]
    model = tf.saved_model.load(directory)
    pixels = np.load(f"{inputs_dir}/pixels.npy")
    encoded = [open(f"{inputs_dir}/{i}.png", "rb").read() for i in range(len(pixels))]
    results = {}
    for batch in (3, 8):
        for signature, data in (("serving_default", encoded), ("encode_pixels", pixels)):
            key = "images" if signature == "serving_default" else "pixels"
            parts = [
                model.signatures[signature](**{key: tf.constant(data[start : start + batch])})
                for start in range(0, len(data), batch)
            ]
            for output in ("codes", "packed", "continuous"):
                joined = np.concatenate([part[output].numpy() for part in parts])
                results[f"{signature}_{batch}_{output}"] = joined
    empty = model.signatures["serving_default"](images=tf.constant([], tf.string))
    for output, value in empty.items():
        results[f"empty_{output}"] = value.numpy()
    np.savez(out_file, **results)
    """
)


def test_fresh_process_gives_the_in_memory_codes_at_two_batch_sizes(
    exported_base, encoder, tmp_path
):
    images = sample_images(11, seed=7)  # not the images the tiny encoder was fitted on
    np.save(tmp_path / "pixels.npy", images.astype(np.float32))
    for position, encoded in enumerate(encoded_images(images)):
        (tmp_path / f"{position}.png").write_bytes(encoded)
    (tmp_path / "reload.py").write_text(FRESH_PROCESS_SCRIPT)
    reload = subprocess.run(
        [sys.executable, str(tmp_path / "reload.py"), str(exported_base / "1")]
        + [str(tmp_path), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
    )
    assert reload.returncode == 0, reload.stderr[-3000:]
    served = np.load(tmp_path / "out.npz")
    expected_codes = encode_images(encoder, images)
    expected_continuous = keras.ops.convert_to_numpy(encoder(images.astype(np.float32)))
    assert len({tuple(code) for code in expected_codes}) > 3  # the codes tell images apart
    for signature in ("serving_default", "encode_pixels"):
        for batch in (3, 8):
            key = f"{signature}_{batch}"
            assert served[f"{key}_codes"].dtype == np.int8
            np.testing.assert_array_equal(served[f"{key}_codes"], expected_codes)
            np.testing.assert_allclose(
                served[f"{key}_continuous"], expected_continuous, rtol=0, atol=1e-5
            )
            packed = np.packbits(expected_codes > 0, axis=1)
            np.testing.assert_array_equal(served[f"{key}_packed"], packed)
    assert served["empty_codes"].shape == (0, TINY_BITS)
    assert served["empty_codes"].dtype == np.int8
    assert served["empty_packed"].shape == (0, TINY_BITS // 8)
    assert served["empty_packed"].dtype == np.uint8
    assert served["empty_continuous"].shape == (0, TINY_BITS)


def test_every_format_decodes_to_the_training_pixels(exported_base, encoder):
    """Lossless files of grayscale images give exactly the codes of their pixels; BMP,
    GIF and WebP decode to three channels, which the graph brings back to one."""
    images = sample_images(4, seed=3)
    model = tf.saved_model.load(str(exported_base / "1"))
    expected = keras.ops.convert_to_numpy(encoder(images.astype(np.float32)))
    for image_format in ("PNG", "BMP", "GIF", "WEBP"):
        options = {"lossless": True} if image_format == "WEBP" else {}
        encoded = encoded_images(images, image_format, **options)
        served = model.signatures["serving_default"](images=tf.constant(encoded))
        np.testing.assert_array_equal(
            served["codes"].numpy(), encode_images(encoder, images), err_msg=image_format
        )
        np.testing.assert_allclose(
            served["continuous"].numpy(), expected, rtol=0, atol=1e-5, err_msg=image_format
        )
    jpeg = encoded_images(images, "JPEG")  # lossy: it decodes, codes may move a little
    codes = model.signatures["serving_default"](images=tf.constant(jpeg))["codes"]
    assert codes.shape == (4, TINY_BITS)


def test_colour_images_of_any_size_match_the_folder_loader(tmp_path):
    run = make_tiny_run(tmp_path / "run", shape=(24, 24, 3), seed=2)
    encoder, _ = export.load_run_encoder(run)
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {"PNG": (24, 24), "JPEG": (40, 30), "BMP": (17, 33), "GIF": (24, 24), "WEBP": (50, 50)}
    for position, (image_format, (height, width)) in enumerate(sizes.items()):
        image = sample_images(1, (height, width, 3), seed=position)[0]
        (folder / f"{position}.{image_format.lower()}").write_bytes(
            encoded_images(image[None], image_format)[0]
        )
    dataset = load_dataset(f"folder:{folder}", image_size=24)
    base = export.export_encoder(encoder, tmp_path / "models" / "harr")
    model = tf.saved_model.load(str(base))
    encoded = [(folder / item).read_bytes() for item in dataset.ids]
    served = model.signatures["serving_default"](images=tf.constant(encoded))
    np.testing.assert_array_equal(served["codes"].numpy(), encode_images(encoder, dataset.images))
    np.testing.assert_allclose(
        served["continuous"].numpy(),
        keras.ops.convert_to_numpy(encoder(dataset.images.astype(np.float32))),
        rtol=0,
        atol=1e-5,
    )


def test_warmup_requests_and_metadata(exported_base, tiny_run_dir):
    model = tf.saved_model.load(str(exported_base / "1"))
    records = list(tf.data.TFRecordDataset(str(exported_base / "1" / WARMUP_FILE)))
    requests = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        for record in records
    ]
    assert sorted(r.model_spec.signature_name for r in requests) == [
        "encode_pixels",
        "serving_default",
    ]
    for request in requests:
        assert request.model_spec.name == "harr"
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = model.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["codes"].shape == (1, TINY_BITS)

    metadata = json.loads((exported_base / "1" / METADATA_FILE).read_text())
    config = yaml.safe_load((tiny_run_dir / "config.yaml").read_text())
    assert metadata["bits"] == TINY_BITS
    assert metadata["image_size"] == list(TINY_SHAPE[:2])
    assert metadata["channels"] == TINY_SHAPE[2]
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
    assert export.main(["--run-dir", str(tiny_run_dir), "--model-base-path", str(base)]) == 0
    assert f"to {base / '1'}" in capsys.readouterr().out
    assert (base / "1" / "saved_model.pb").is_file()
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
