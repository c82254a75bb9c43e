"""HarrModel: the train step's losses equal the loss functions, training moves the
weights and lowers the loss, the backbone learning-rate multiplier, save/load."""

import numpy as np
import pytest
import tensorflow as tf

from harr_tf.config import ModelConfig
from harr_tf.encoder import build_encoder
from harr_tf.losses import (
    bit_correlation_loss,
    instance_contrastive_loss,
    quantization_loss,
    wta_contrastive_loss,
)
from harr_tf.model import HarrModel
from harr_tf.wta import WTASimilarity

SHAPE = (12, 12, 1)


def make_model(bits=8, multiplier=1.0, learning_rate=0.05):
    encoder = build_encoder(SHAPE, bits, ModelConfig(width=4))
    model = HarrModel(
        encoder,
        WTASimilarity(tau=0.5, s_max=0.9, s_min=0.1, window=4),
        temperature=0.2,
        bcr_weight=0.7,
        quantization_weight=0.3,
        backbone_lr_multiplier=multiplier,
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate))
    return model


def make_batch(size=6, seed=0):
    rng = np.random.default_rng(seed)
    views = {k: rng.uniform(0, 255, (size, *SHAPE)).astype("float32") for k in "abw"}
    views["wta"] = rng.integers(0, 4, (size, 16)).astype("uint8")
    return views


def test_compute_losses_combine_the_loss_functions():
    model, batch = make_model(), make_batch()
    losses = model.compute_losses(batch, training=False)
    h = {k: model.encoder(batch[k], training=False) for k in "abw"}
    targets = model.similarity(batch["wta"])
    expected_sim = wta_contrastive_loss(
        h["w"],
        targets["positive"],
        targets["positive_weight"],
        targets["negative_weight"],
        temperature=0.2,
    )
    expected_bcr = bit_correlation_loss(h["a"], h["b"])
    expected_q = quantization_loss(h["w"])
    np.testing.assert_allclose(losses["similarity_loss"], expected_sim, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses["bcr_loss"], expected_bcr, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses["quantization_loss"], expected_q, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        losses["loss"], expected_sim + 0.7 * expected_bcr + 0.3 * expected_q, rtol=1e-4
    )


def test_fit_lowers_the_loss_and_reports_every_tracker():
    model, batch = make_model(), make_batch(size=16)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    history = model.fit(dataset, epochs=6, steps_per_epoch=5, verbose=0).history
    assert set(history) == {"loss", "similarity_loss", "bcr_loss", "quantization_loss"}
    assert history["loss"][-1] < history["loss"][0]


def test_without_bcr_a_step_encodes_view_w_alone():
    encoder = build_encoder(SHAPE, 8, ModelConfig(width=4))
    similarity = WTASimilarity(tau=0.5, s_max=0.9, s_min=0.1, window=4)
    model = HarrModel(encoder, similarity, bcr_weight=0.0, quantization_weight=0.3)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05))
    assert model.views == ("w",)
    batch = make_batch(size=16)
    del batch["a"], batch["b"]  # the training stream then makes view W alone
    losses = model.compute_losses(batch, training=True)
    h_w = model.encoder(batch["w"], training=True)
    targets = model.similarity(batch["wta"])
    expected = wta_contrastive_loss(
        h_w, targets["positive"], targets["positive_weight"], targets["negative_weight"]
    ) + 0.3 * quantization_loss(h_w)
    np.testing.assert_allclose(losses["loss"], expected, rtol=1e-4, atol=1e-5)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=2, verbose=0)
    assert set(history.history) == {"loss", "similarity_loss", "quantization_loss"}
    assert np.isfinite(history.history["loss"]).all()


def test_backbone_multiplier_scales_only_backbone_updates():
    batch = make_batch()
    moves = {}
    for multiplier in (1.0, 0.0):
        tf.keras.utils.set_random_seed(1)
        model = make_model(multiplier=multiplier)
        backbone = model.encoder.get_layer("backbone")
        head = model.encoder.get_layer("hash_head")
        before = [v.numpy().copy() for v in (backbone.trainable_variables[0], head.dense.kernel)]
        model.train_step(batch)
        after = [v.numpy() for v in (backbone.trainable_variables[0], head.dense.kernel)]
        moves[multiplier] = [np.abs(a - b).max() for a, b in zip(after, before, strict=True)]
    assert moves[1.0][0] > 0 and moves[0.0][0] == 0.0  # frozen backbone with multiplier 0
    assert moves[0.0][1] > 0  # the head still learns


def test_encode_gives_signs_of_the_encoder():
    model = make_model()
    images = make_batch()["w"]
    codes = model.encode(images)
    h = model.encoder.predict(images, verbose=0)
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(codes, np.where(h >= 0, 1, -1))


def test_keras_file_round_trip_keeps_outputs_and_settings(tmp_path):
    model, batch = make_model(), make_batch()
    model.train_step(batch)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert loaded.bcr_weight == 0.7 and loaded.similarity.tau == 0.5
    np.testing.assert_allclose(
        loaded.encoder.predict(batch["w"], verbose=0),
        model.encoder.predict(batch["w"], verbose=0),
        atol=1e-6,
    )
    # The optimizer state came along: training continues identically.
    model.train_step(batch)
    loaded.train_step(batch)
    np.testing.assert_allclose(
        loaded.encoder.predict(batch["w"], verbose=0),
        model.encoder.predict(batch["w"], verbose=0),
        atol=1e-5,
    )


def test_train_step_under_mirrored_strategy_matches_plain():
    batch = make_batch()
    tf.keras.utils.set_random_seed(3)
    plain = make_model()
    plain_loss = plain.compute_losses(batch, training=False)["loss"]
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        tf.keras.utils.set_random_seed(3)
        mirrored = make_model()
    dataset = tf.data.Dataset.from_tensors(batch)
    history = mirrored.evaluate(dataset, verbose=0, return_dict=True)
    assert history["loss"] == pytest.approx(float(plain_loss), rel=1e-4)
    mirrored.fit(dataset, epochs=1, verbose=0)


def test_instance_guidance_and_similarity_weight():
    batch = make_batch()
    encoder = build_encoder(SHAPE, 8, ModelConfig(width=4))
    similarity = WTASimilarity(tau=0.5, s_max=0.9, s_min=0.1, window=4)
    model = HarrModel(encoder, similarity, guidance="instance", similarity_weight=0.0)
    losses = model.compute_losses(batch, training=False)
    h_a = model.encoder(batch["a"], training=False)
    h_w = model.encoder(batch["w"], training=False)
    expected = instance_contrastive_loss(h_w, h_a, temperature=0.1)
    np.testing.assert_allclose(losses["similarity_loss"], expected, rtol=1e-4)
    # With weight 0, L_sim is reported but does not enter the total.
    np.testing.assert_allclose(
        losses["loss"], losses["bcr_loss"] + 0.5 * losses["quantization_loss"], rtol=1e-5
    )
    with pytest.raises(ValueError, match="'pairs'"):
        HarrModel(encoder, similarity, guidance="pairs")


@pytest.fixture
def restore_policy():
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


def one_step_update(policy):
    tf.keras.mixed_precision.set_global_policy(policy)
    tf.keras.utils.set_random_seed(1)
    model = make_model()
    before = [v.numpy().copy() for v in model.encoder.trainable_variables]
    losses = model.train_step(make_batch(size=16))
    after = [v.numpy() for v in model.encoder.trainable_variables]
    update = np.concatenate([(a - b).ravel() for a, b in zip(after, before, strict=True)])
    return model, float(losses["loss"]), update


@pytest.mark.parametrize(
    ("policy", "tolerance"), [("mixed_float16", 0.03), ("mixed_bfloat16", 0.1)]
)
def test_mixed_precision_step_updates_the_weights_like_float32(restore_policy, policy, tolerance):
    _, reference_loss, reference = one_step_update("float32")
    model, loss, update = one_step_update(policy)
    if policy == "mixed_float16":  # compile wrapped the optimizer; the step scaled the loss
        assert isinstance(model.optimizer, tf.keras.optimizers.LossScaleOptimizer)
        assert float(model.optimizer.dynamic_scale) == 2.0**15
    assert loss == pytest.approx(reference_loss, rel=tolerance)
    # Unscaled, the update would be 2^15 times too small; here it is float32's.
    norm = np.linalg.norm(update) / np.linalg.norm(reference)
    cosine = update @ reference / (np.linalg.norm(update) * np.linalg.norm(reference))
    assert abs(norm - 1.0) < tolerance and cosine > 1.0 - tolerance


@pytest.mark.slow
def test_xla_compiled_step_updates_the_weights_like_the_graph_step():
    """On a single GPU Keras compiles `train_step` with XLA by default (jit_compile
    "auto"); the compiled step must train exactly as the CPU's graph step does."""
    updates = []
    for jit_compile in (False, True):
        tf.keras.utils.set_random_seed(1)
        model = make_model()
        model.compile(optimizer=tf.keras.optimizers.SGD(0.05), jit_compile=jit_compile)
        assert model.jit_compile == jit_compile
        before = [v.numpy().copy() for v in model.encoder.trainable_variables]
        dataset = tf.data.Dataset.from_tensors(make_batch(size=16)).repeat(2)
        model.fit(dataset, epochs=1, verbose=0)
        after = [v.numpy() for v in model.encoder.trainable_variables]
        updates.append(
            np.concatenate([(a - b).ravel() for a, b in zip(after, before, strict=True)])
        )
    graph, xla = updates
    assert np.linalg.norm(graph) > 1e-3  # two steps moved the weights
    np.testing.assert_allclose(xla, graph, rtol=1e-3, atol=1e-5 * np.abs(graph).max())
