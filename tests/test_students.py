"""The students of a pretrained teacher (issue 25): the frozen student's head starts at
ITQ, trains on cached features and exports the backbone with it; the distilled student
is small_cnn learning from the teacher's WTA structure; the choice is validated, logged
and resumable."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from harr_tf.baselines import hash_codes, train_hasher
from harr_tf.collection_defaults import choose_backbone
from harr_tf.config import ModelConfig, TrainConfig, WTAConfig
from harr_tf.data import load_dataset
from harr_tf.frozen import FrozenFeatures, feature_stream, head_codes, head_encoder, start_from_itq
from harr_tf.frozen_validation import FeatureEvaluation, better_head
from harr_tf.wta import encode_wta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LITE0 = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--wta-features", "backbone"]
SMALL = ["--bits", "16", "--steps", "6", "--image-size", "64", "--queries-per-class", "4"]


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """Three classes of 30 colour images (96 x 80 PNGs): a red disc, a green bar, a blue
    ring on noise, each drawn at a random place and size."""
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :96]
    for name, colour in (("disc", (220, 30, 30)), ("bar", (30, 200, 40)), ("ring", (40, 60, 230))):
        os.makedirs(root / name)
        for i in range(30):
            image = rng.integers(0, 90, (80, 96, 3)).astype(np.uint8)
            cy, cx, r = rng.integers(25, 55), rng.integers(25, 70), rng.integers(10, 22)
            distance = np.hypot(yy - cy, xx - cx)
            mask = {
                "disc": distance < r,
                "bar": (abs(yy - cy) < r // 3) & (abs(xx - cx) < r * 2),
                "ring": (distance < r) & (distance > r * 0.6),
            }[name]
            image[mask] = colour
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return f"folder:{root}"


def train(*args, check=True):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, os.path.join(ROOT, "train.py"), *args, "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_head_starts_where_itq_ends():
    features = np.random.default_rng(0).normal(size=(300, 40)).astype(np.float32) + 2.0
    head = head_encoder(40, 16)
    start_from_itq(head, features, seed=3)
    itq = hash_codes(train_hasher("itq", features, 16, seed=3), features)
    encoder = keras.Model(head.input, head.output)
    np.testing.assert_array_equal(head_codes(encoder, features, continuous=False), itq)


def test_the_head_ends_no_worse_than_its_itq_start_on_validation(tmp_path):
    """A head that training led astray (here: random weights) gives way to its ITQ
    start, judged on validation queries drawn from the database, never the queries."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    features = (rng.normal(size=(3, 32))[labels] + 0.5 * rng.normal(size=(180, 32))).astype("f4")
    validation = np.concatenate([np.flatnonzero(labels == c)[:5] for c in range(3)])
    split = SimpleNamespace(database=np.arange(180), validation=np.sort(validation))
    data = SimpleNamespace(dataset=SimpleNamespace(labels=labels), split=split, top_k=None)
    train = features[::2]
    frozen = FrozenFeatures(None, ("a",), train, train[None, None], 8, str(tmp_path))
    frozen.evaluated["database"] = features
    config = TrainConfig()
    astray = head_encoder(32, 8)
    astray.get_layer("hash_head").dense.set_weights(
        [rng.normal(size=(32, 8)).astype("f4"), np.zeros(8, "f4")]
    )
    validation = FeatureEvaluation(frozen, data, config, progress=False)
    kept = better_head(astray, frozen, validation, config)
    assert kept is not astray
    itq_map = validation.score(kept)
    assert itq_map > validation.score(astray)
    start = head_encoder(32, 8)
    start_from_itq(start, train, config.seed)
    assert validation.score(start) == itq_map
    # A trained head at least as good is kept.
    assert better_head(start, frozen, validation, config) is start


def test_the_feature_stream_is_a_function_of_seed_and_step():
    rng = np.random.default_rng(0)
    views = rng.normal(size=(2, 3, 50, 8)).astype(np.float16)
    codes = rng.integers(0, 4, (50, 16)).astype(np.uint8)
    names = ("a", "b", "w")
    stream = feature_stream(views, codes, names, 16, seed=1).as_numpy_iterator()
    first = [next(stream) for _ in range(5)]
    resumed = next(
        feature_stream(views, codes, names, 16, seed=1, start_step=4).as_numpy_iterator()
    )
    for name in (*names, "wta"):
        np.testing.assert_array_equal(resumed[name], first[4][name])
    # Each row is one image's cached view of one round, with that image's WTA codes.
    batch = first[0]
    for row in range(16):
        image = int(np.flatnonzero((codes == batch["wta"][row]).all(axis=1))[0])
        assert any(
            np.array_equal(batch["w"][row], views[r, 2, image].astype(np.float32)) for r in (0, 1)
        )


@pytest.mark.parametrize(
    ("model", "wta", "message"),
    [
        ({"backbone": "small_cnn", "student": "frozen"}, {}, "needs a pretrained --backbone"),
        ({"student": "tuned"}, {}, "Unknown student"),
        ({"backbone": "efficientnet_lite0", "student": "distilled"}, {}, "--wta-features backbone"),
        ({"backbone": "efficientnet_lite0", "feature_rounds": 0}, {}, "feature_rounds"),
    ],
)
def test_bad_student_settings_are_refused(model, wta, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model=ModelConfig(**model), wta=WTAConfig(**wta))


def test_the_backbone_is_chosen_from_the_collection_unless_set():
    """Colour images get the ImageNet Lite0 teacher (frozen student), grey ones small_cnn
    and the pixel teacher; what a user set is kept."""
    colour, why = choose_backbone(TrainConfig(), channels=3)
    assert (colour.model.backbone, colour.model.weights) == ("efficientnet_lite0", "imagenet")
    assert colour.wta.features == "backbone" and colour.model.student_mode == "frozen"
    assert why.startswith("three-channel images")
    grey, why = choose_backbone(TrainConfig(), channels=1)
    assert (grey.model.backbone, grey.model.weights) == ("small_cnn", "none")
    assert grey.wta.features == "sqrt_smoothed_pixels" and why.startswith("single-channel images")
    pixels = TrainConfig(wta=WTAConfig(features="smoothed_pixels"))
    assert choose_backbone(pixels, 3)[0].wta.features == "smoothed_pixels"
    student = TrainConfig(model=ModelConfig(student="distilled"))
    assert choose_backbone(student, 3)[0].model.trained_backbone == "small_cnn"
    tiny, why = choose_backbone(TrainConfig(image_size=16), 3)
    assert tiny.model.backbone == "small_cnn" and why.startswith("--image-size 16, below")
    chosen = TrainConfig(model=ModelConfig(backbone="small_cnn"))
    assert choose_backbone(chosen, 3) == (chosen, "as set")
    with pytest.raises(ValueError, match="--student frozen needs a pretrained --backbone"):
        choose_backbone(TrainConfig(model=ModelConfig(student="frozen")), 1)


def test_pretrained_backbones_default_to_the_frozen_student():
    assert ModelConfig(backbone="efficientnet_lite0").student_mode == "frozen"
    assert ModelConfig(backbone="small_cnn").student_mode == "fine_tuned"
    distilled = ModelConfig(backbone="efficientnet_lite0", student="distilled")
    assert distilled.trained_backbone == "small_cnn" and distilled.student_weights == "none"


@pytest.mark.slow
def test_a_frozen_run_exports_the_backbone_with_its_head_and_resumes(colour_folder, tmp_path):
    run_dir = tmp_path / "run"
    result = train("--dataset", colour_folder, *LITE0, *SMALL, "--run-dir", str(run_dir))
    assert "student: the hash head on the frozen efficientnet_lite0" in result.stderr
    assert "16-bit head: val_map" in result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for method in ("itq", "itq_features", "pcah_features", "exact_cosine"):
        assert 0.0 < metrics["baselines"][method]["16"] <= 1.0
    assert "ITQ-F" in result.stdout and "COSINE-F" in result.stdout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["student"] is None and config["batch_size"] == 64
    features = {name: np.load(run_dir / "features" / f"{name}.npy") for name in ("train", "query")}
    train_items = len(np.load(run_dir / "split.npz")["train"])
    assert features["train"].shape == (train_items, 1280)
    assert np.load(run_dir / "features" / "views.npy").shape == (1, 3, train_items, 1280)
    # The WTA teacher is the frozen backbone's features of the training images.
    wta = np.load(run_dir / "wta.npz")
    np.testing.assert_array_equal(wta["codes"], encode_wta(features["train"], wta["table"]))
    # The exported encoder is pixels → backbone → head, and codes as the run evaluated.
    encoder = keras.saving.load_model(run_dir / "bits_16" / "encoder.keras")
    dataset = load_dataset(colour_folder).at_size(64)
    query = np.load(run_dir / "split.npz")["query"]
    pixels = dataset.read(query).astype(np.float32)
    codes = np.where(keras.ops.convert_to_numpy(encoder(pixels, training=False)) >= 0, 1, -1)
    np.testing.assert_array_equal(codes, head_codes(encoder, features["query"], False))
    (run_dir / "metrics.json").unlink()
    again = train("--run-dir", str(run_dir), "--resume")
    assert "Features read from" in again.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())["results"]["16"]
    assert resumed["map"] == metrics["results"]["16"]["map"]


@pytest.mark.slow
def test_a_distilled_run_trains_small_cnn_from_the_teachers_structure(colour_folder, tmp_path):
    run_dir = tmp_path / "run"
    result = train(
        "--dataset", colour_folder, *LITE0, *SMALL, "--student", "distilled",
        "--width", "4", "--batch-size", "32", "--run-dir", str(run_dir),
    )  # fmt: skip
    assert "student: small_cnn" in result.stderr
    encoder = keras.saving.load_model(run_dir / "bits_16" / "encoder.keras")
    assert encoder.input_shape == (None, 64, 64, 3)
    assert not any("efficientnet" in layer.name for layer in encoder.get_layer("backbone").layers)
    # The teacher read the training images at its own 224 px, not the student's 64.
    from harr_tf.backbones import build_backbone

    train_items = np.load(run_dir / "split.npz")["train"]
    teacher_images = load_dataset(colour_folder).at_size(224).read(train_items)
    teacher = build_backbone("efficientnet_lite0", (224, 224, 3), "imagenet")
    features = keras.ops.convert_to_numpy(
        teacher(teacher_images.astype(np.float32), training=False)
    )
    wta = np.load(run_dir / "wta.npz")
    agree = (encode_wta(features, wta["table"]) == wta["codes"]).mean()
    assert agree > 0.99  # the same features up to float round-off in near ties
