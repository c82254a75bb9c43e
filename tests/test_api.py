"""The public API (docs/api.md): its example runs as written; a run opens as train.py
left it and encodes every form of images as the served model does; codes round-trip
through the file the commands write; `train` refuses what would spoil a run."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import require_fashion_mnist
from serving_support import TINY_BITS, TINY_SHAPE, encoded_images, sample_images

import harr_tf
from harr_tf.config import ModelConfig, TrainConfig
from harr_tf.layers import sign_codes
from harr_tf.locks import LockHeld
from harr_tf.run_directory import RunDirectory
from serving import IMAGES_INPUT, IMAGES_SIGNATURE
from serving.code_store import CodesOrigin, CodeStore, StoredCodes, load_codes_file
from serving.session_bundle import SessionBundle

ROOT = Path(__file__).resolve().parents[1]


def documented_example() -> str:
    """The Python code of docs/api.md (its one python block)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path):
    require_fashion_mnist()
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", documented_example()],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.splitlines()
    assert printed[0].startswith("(16, 32) 0.")
    assert printed[-1] == os.path.join("models", "harr", "1")
    run = harr_tf.Run.load(tmp_path / "runs" / "api-example")
    assert run.bits == (16, 32) and set(run.metrics["results"]) == {"16", "32"}
    codes = harr_tf.Codes.load(tmp_path / "codes.npz")
    assert len(codes) == 3000 and codes.bits == 32
    assert (tmp_path / "models" / "harr" / "1" / "saved_model.pb").is_file()


def test_the_public_names_load_lazily():
    code = (
        "import sys, harr_tf; "
        "harr_tf.TrainConfig, harr_tf.ModelConfig, harr_tf.Codes; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
        "print(sorted(harr_tf.__all__) == sorted(n for n in dir(harr_tf) if n in harr_tf.__all__))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
    for name in harr_tf.__all__:
        assert getattr(harr_tf, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        harr_tf.Nothing  # noqa: B018


def expected_packed(run: harr_tf.Run, images: np.ndarray) -> np.ndarray:
    continuous = run.encoder()(images.astype(np.float32))
    return np.packbits(keras.ops.convert_to_numpy(sign_codes(continuous)) > 0, axis=1)


def test_a_run_opens_as_train_py_left_it(tiny_run_dir):
    run = harr_tf.Run.load(tiny_run_dir)
    assert isinstance(run.config, TrainConfig)
    assert run.config == RunDirectory(tiny_run_dir).read_config()
    assert run.config.model.width == 4 and run.config.bits == (TINY_BITS,)
    assert run.bits == (TINY_BITS,) and run.metrics == {}
    assert run.encoder() is run.encoder(TINY_BITS)
    assert run.image_shape == TINY_SHAPE


def test_every_form_of_images_gets_the_encoders_codes(tiny_run_dir, tmp_path):
    run = harr_tf.Run.load(tiny_run_dir)
    images = np.load(tiny_run_dir / "images.npz")["images"]
    expected = expected_packed(run, images)

    from_array = run.encode(images, TINY_BITS)
    assert from_array.ids.tolist() == [str(i) for i in range(len(images))]
    np.testing.assert_array_equal(from_array.packed, expected)
    assert len(np.unique(expected, axis=0)) > len(images) // 2  # the codes tell images apart

    from_spec = run.encode(f"npz:{tiny_run_dir / 'images.npz'}")
    assert from_spec.ids.tolist() == [f"images/{i}" for i in range(len(images))]
    np.testing.assert_array_equal(from_spec.packed, expected)

    paths = []
    for position, contents in enumerate(encoded_images(images[:8])):
        paths.append(tmp_path / f"{position}.png")
        paths[-1].write_bytes(contents)
    from_files = run.encode(paths)
    assert from_files.ids.tolist() == [str(path) for path in paths]
    np.testing.assert_array_equal(from_files.packed, expected[:8])


def test_files_of_any_size_get_the_served_models_codes(tiny_run_dir, exported_base, tmp_path):
    """Files of other sizes and colours are decoded and resized as the served model does."""
    contents = [
        *encoded_images(sample_images(3, (40, 56, 3), seed=5), "PNG"),
        *encoded_images(sample_images(3, (20, 20, 1), seed=6), "JPEG"),
    ]
    paths = []
    for position, data in enumerate(contents):
        paths.append(tmp_path / f"{position}.img")
        paths[-1].write_bytes(data)
    (tmp_path / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    codes = harr_tf.Run.load(tiny_run_dir).encode([*paths, tmp_path / "damaged.png"])
    assert codes.ids.tolist() == [str(path) for path in paths]  # the damaged file left out
    bundle = SessionBundle(exported_base / "1")
    try:
        served = bundle.run(IMAGES_SIGNATURE, {IMAGES_INPUT: np.array(contents, object)})
    finally:
        bundle.close()
    np.testing.assert_array_equal(codes.packed, served["packed"])


def test_images_the_run_cannot_read_are_refused(tiny_run_dir, tmp_path):
    run = harr_tf.Run.load(tiny_run_dir)
    with pytest.raises(ValueError, match="3-channel images; the run's encoder reads 1-channel"):
        run.encode(np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        run.encode(np.zeros((2, 28, 28, 1), np.float32))
    missing = r"no trained encoder bits_32/encoder.keras.*\[16\]"
    with pytest.raises(FileNotFoundError, match=missing):
        run.encoder(32)
    with pytest.raises(FileNotFoundError, match="is not a run directory: expected .*config.yaml"):
        harr_tf.Run.load(tmp_path)
    RunDirectory(tmp_path).write_config(TrainConfig())
    with pytest.raises(FileNotFoundError, match="holds no trained encoder yet"):
        harr_tf.Run.load(tmp_path).encode(np.zeros((1, 28, 28, 1), np.uint8))


def test_codes_round_trip_through_the_codes_file(tmp_path):
    rng = np.random.default_rng(0)
    signs = rng.choice(np.array([-1, 1], np.int8), (5, 24))
    codes = harr_tf.Codes.from_signs([f"item{i}" for i in range(5)], signs)
    assert codes.bits == 24 and codes.packed.shape == (5, 3) and codes.packed.dtype == np.uint8
    np.testing.assert_array_equal(codes.packed, np.packbits(signs > 0, axis=1))
    np.testing.assert_array_equal(codes.signs, signs)

    codes.save(tmp_path / "codes.npz")
    loaded = harr_tf.Codes.load(tmp_path / "codes.npz")
    assert loaded.ids.tolist() == codes.ids.tolist()
    np.testing.assert_array_equal(loaded.packed, codes.packed)
    stored = load_codes_file(tmp_path / "codes.npz")  # as serving.search reads it
    np.testing.assert_array_equal(stored.codes, signs)
    assert stored.origin is None

    # The file serving.encode writes, with its origin and failures, loads as Codes too.
    origin = CodesOrigin("harr", 3, "serving_default", 24)
    encoded = StoredCodes(codes.ids, signs, codes.packed, origin)
    CodeStore(tmp_path / "encoded.npz").finish(
        tuple(codes.ids[::-1]), encoded, {"broken": "cannot decode"}, origin
    )
    from_command = harr_tf.Codes.load(tmp_path / "encoded.npz")
    assert from_command.ids.tolist() == codes.ids[::-1].tolist()
    np.testing.assert_array_equal(from_command.packed, codes.packed[::-1])


def test_codes_refuse_what_is_not_codes(tmp_path):
    with pytest.raises(ValueError, match=r"Received: ids \(2,\), packed \(3, 1\) uint8"):
        harr_tf.Codes(np.array(["a", "b"]), np.zeros((3, 1), np.uint8))
    with pytest.raises(ValueError, match=r"packed \(2, 1\) int64"):
        harr_tf.Codes(np.array(["a", "b"]), np.zeros((2, 1), np.int64))
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"other.npz has no \['ids', 'codes', 'packed'\]"):
        harr_tf.Codes.load(tmp_path / "other.npz")


def test_train_refuses_a_run_it_would_spoil(tiny_run_dir, tmp_path):
    existing = tmp_path / "existing"
    shutil.copytree(tiny_run_dir, existing)
    config = RunDirectory(existing).read_config()
    with pytest.raises(FileExistsError, match="already holds a run"):
        harr_tf.train(config, existing)
    changed = TrainConfig(dataset=config.dataset, bits=(32,), model=ModelConfig(width=4))
    with pytest.raises(ValueError, match=r"bits: \[16\] -> \[32\]"):
        harr_tf.train(changed, existing, resume=True)
    new = RunDirectory(tmp_path / "new")
    with new.lock(), pytest.raises(LockHeld, match="is in use by process"):
        harr_tf.train(config, new.path)
    assert not new.is_run()
