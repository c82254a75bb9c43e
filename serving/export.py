"""Export a trained encoder as a versioned SavedModel that TensorFlow Serving loads as is.

    python -m serving.export --run-dir runs/default --bits 64 --model-base-path models/harr

writes `models/harr/<version>/` (the next free integer unless `--version` is given)
with the `serving_default` (image bytes) and `encode_pixels` signatures, warm-up
requests in `assets.extra/` and a metadata file, through `keras.export.ExportArchive`
so that TF Serving's session-based loader restores every variable; the export is
checked by loading it that same way. The version is built in a temporary directory
whose name is not an integer (`.export-HOST-PID-*`), then renamed into place, so a
server polling the base path never sees a half-written version; the next export
removes such directories that a killed exporter left behind.
`--write-model-config F` adds the model to TF Serving's `--model_config_file`.
"""

from __future__ import annotations

if __name__ == "__main__":  # a command: TensorFlow's start-up lines are not its output
    from harr_tf.quiet import quiet_command_start

    quiet_command_start()

import argparse
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
from tqdm import tqdm

from harr_tf.config import MAX_IMAGE_PIXELS, TrainConfig, to_dict
from harr_tf.flags import add_run_dir, add_verbose, command_name, positive
from harr_tf.trained_run import Run
from serving import (
    IMAGES_INPUT,
    IMAGES_SIGNATURE,
    METADATA_FILE,
    PIXELS_INPUT,
    PIXELS_SIGNATURE,
    WARMUP_FILE,
)
from serving.layout import (
    next_version,
    remove_stale_staging,
    staging_prefix,
    version_directories,
)
from serving.model_config import add_model_to_config
from serving.session_bundle import SessionBundle
from serving.signatures import EncoderServingGraph

_CHECK_TOLERANCE = 1e-4


def config_hash(config: dict) -> str:
    """SHA-256 of the training config, independent of key order and YAML formatting."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def export_encoder(
    encoder: keras.Model,
    base_path: str | Path,
    *,
    version: int | None = None,
    config: TrainConfig | None = None,
    progress: bool = False,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Path:
    """Writes `encoder` as `base_path/<version>/` and returns that directory.

    Args:
        encoder: float pixels (batch, H, W, C) in [0, 255] → continuous codes (batch, bits).
        base_path: the model's base path; its last component names the model in the
            warm-up requests.
        version: the version number; the next free integer when None. Defaults to None.
        config: the training config, whose dataset and hash go into the metadata.
            Defaults to None.
        progress: show a progress bar over the export stages. Defaults to False.
        max_pixels: the served graph refuses images declaring more pixels, before
            decoding them. Defaults to 40,000,000.

    Raises:
        FileExistsError: `version` already exists under `base_path`.
    """
    base = Path(base_path)
    if version is not None and version in version_directories(base):
        raise FileExistsError(
            f"--version {version}: {base / str(version)} already exists. Choose another "
            f"version, or omit --version to use the next free one ({next_version(base)})."
        )
    base.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(base)
    graph = EncoderServingGraph(encoder, max_pixels)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=base))
    staging.chmod(0o755)  # mkdtemp's is private; a server running as another user reads it
    stages = tqdm(total=4, desc="Exporting", unit="stage", disable=not progress)
    try:
        stages.set_postfix_str("tracing and saving the signatures")
        graph.archive().write_out(str(staging), verbose=False)
        stages.update()
        stages.set_postfix_str("warm-up requests and metadata")
        _write_warmup_requests(staging / WARMUP_FILE, base.name, graph.image_shape)
        _write_metadata(staging / METADATA_FILE, graph, to_dict(config) if config else {})
        stages.update()
        stages.set_postfix_str("checking the saved signatures with TF Serving's loader")
        _check_export(staging, encoder, graph.image_shape)
        stages.update()
        version = next_version(base) if version is None else version
        target = base / str(version)
        try:
            os.rename(staging, target)
        except OSError as error:  # another exporter published this version first
            raise FileExistsError(f"{target} appeared during the export: {error}") from error
        stages.set_postfix_str(f"published {target}")
        stages.update()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        stages.close()
    return target


def export(
    run: Run | str | os.PathLike,
    bits: int | None,
    model_base_path: str | os.PathLike,
    **options,
) -> Path:
    """Exports the `bits`-bit encoder of `run` (a `Run` or its directory; the longest
    code length when `bits` is None) as the next version under `model_base_path` and
    returns that version's directory; `options` are `export_encoder`'s `version`,
    `progress` and `max_pixels`.

    Raises:
        FileNotFoundError: `run` holds no run, or no encoder of `bits` bits.
    """
    run = run if isinstance(run, Run) else Run.load(run)
    return export_encoder(run.encoder(bits), model_base_path, config=run.config, **options)


def example_image(shape: tuple[int, int, int]) -> bytes:
    """A PNG of mid-grey pixels of `shape`: a request that runs the whole serving graph."""
    return tf.io.encode_png(np.full(shape, 128, np.uint8)).numpy()


def _write_warmup_requests(path: Path, model_name: str, shape: tuple[int, int, int]) -> None:
    """One `PredictionLog` per signature, which TF Serving replays before serving."""
    requests = {
        IMAGES_SIGNATURE: {IMAGES_INPUT: tf.make_tensor_proto([example_image(shape)])},
        PIXELS_SIGNATURE: {
            PIXELS_INPUT: tf.make_tensor_proto(np.full((1, *shape), 128.0, np.float32))
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            for name, tensor in inputs.items():
                request.inputs[name].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def _write_metadata(path: Path, graph: EncoderServingGraph, config: dict) -> None:
    height, width, channels = graph.image_shape
    metadata = {
        "bits": graph.bits,
        "image_size": [height, width],
        "channels": channels,
        "max_pixels": graph.max_pixels,
        "dataset": config.get("dataset"),
        "config_sha256": config_hash(config),
        "signatures": {IMAGES_SIGNATURE: IMAGES_INPUT, PIXELS_SIGNATURE: PIXELS_INPUT},
        "tensorflow_version": tf.__version__,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def _check_export(directory: Path, encoder: keras.Model, shape: tuple[int, int, int]) -> None:
    """Loads the SavedModel as TF Serving does (session, restore op) and compares both
    signatures' outputs on one image with the in-memory encoder's."""
    pixels = np.full((1, *shape), 128.0, np.float32)
    expected = keras.ops.convert_to_numpy(encoder(pixels))
    inputs = {
        IMAGES_SIGNATURE: {IMAGES_INPUT: np.array([example_image(shape)], object)},
        PIXELS_SIGNATURE: {PIXELS_INPUT: pixels},
    }
    bundle = SessionBundle(directory)
    try:
        for signature, feeds in inputs.items():
            served = bundle.run(signature, feeds, ["continuous"])["continuous"]
            difference = np.abs(served - expected).max()
            if difference > _CHECK_TOLERANCE:
                raise RuntimeError(
                    f"The exported {signature} disagrees with the in-memory encoder by "
                    f"{difference:.2g} on a test image; nothing was published."
                )
    finally:
        bundle.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("serving.export"),
        description="Export a trained HARR encoder as a SavedModel for TensorFlow Serving.",
    )
    add_run_dir(parser, "the train.py run whose encoder is exported", required=True)
    parser.add_argument(
        "--bits",
        type=int,
        help="code length to export (the run's bits_N folder); default: the longest trained",
    )
    parser.add_argument(
        "--model-base-path",
        default="models/harr",
        help="TF Serving model base path; the version goes in a sub-folder (default: %(default)s)",
    )
    parser.add_argument(
        "--version",
        type=int,
        help="version number, a non-negative integer not yet used; default: the next free one",
    )
    parser.add_argument(
        "--write-model-config",
        metavar="FILE",
        help="add (or update) this model in TF Serving's ModelServerConfig text file FILE, "
        "for tensorflow_model_server --model_config_file and serving.server "
        "--model-config-file",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive(int),
        default=MAX_IMAGE_PIXELS,
        help="the served model refuses images whose header declares more pixels, before "
        "decoding them (default: %(default)s, the training readers' limit)",
    )
    add_verbose(parser)
    args = parser.parse_args(argv)
    if args.version is not None and args.version < 0:
        parser.error(f"--version must be a non-negative integer. Received: {args.version}")
    try:
        target = export(
            args.run_dir,
            args.bits,
            args.model_base_path,
            version=args.version,
            progress=True,
            max_pixels=args.max_pixels,
        )
    except FileNotFoundError as error:  # the run directory's: it names the directory
        raise SystemExit(f"error: --run-dir {error}") from error
    except (FileExistsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    metadata = json.loads((target / METADATA_FILE).read_text())
    print(
        f"Exported the {metadata['bits']}-bit encoder of {args.run_dir} to {target} "
        f"(signatures {IMAGES_SIGNATURE}: {IMAGES_INPUT}, {PIXELS_SIGNATURE}: {PIXELS_INPUT})"
    )
    if args.write_model_config:
        try:
            add_model_to_config(args.write_model_config, target.parent.name, target.parent)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from error
        print(f"Model {target.parent.name} is in {args.write_model_config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
