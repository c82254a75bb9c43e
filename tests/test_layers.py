"""HashHead, sign_codes and save/load of the project's layers."""

import keras
import numpy as np
import pytest

from harr_tf import wta
from harr_tf.layers import HashHead, sign_codes


def test_hash_head_is_scaled_tanh_of_its_dense_layer():
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    head = HashHead(bits=16, beta=1.5)
    h = keras.ops.convert_to_numpy(head(x))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in head.dense.weights)
    assert h.shape == (5, 16)
    np.testing.assert_allclose(h, np.tanh(1.5 * (x @ kernel + bias)), rtol=1e-5, atol=1e-6)
    assert head.trainable_weights == head.dense.trainable_weights
    head.beta.assign(4.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head(x)), np.tanh(4.0 * (x @ kernel + bias)), atol=1e-6
    )


def test_beta_can_be_assigned_before_build():
    head = HashHead(bits=8)
    head.beta.assign(3.0)
    assert float(head.beta) == 3.0


@pytest.mark.parametrize("bits", [0, -8, 4, 12, 16.0, True, "32"])
def test_hash_head_rejects_bad_bits(bits):
    with pytest.raises(ValueError, match="multiple of 8"):
        HashHead(bits=bits)


def test_hash_head_rejects_non_positive_beta():
    with pytest.raises(ValueError, match="beta"):
        HashHead(bits=8, beta=0.0)


def test_hash_head_config_round_trip():
    head = HashHead(bits=24, beta=2.0, name="head")
    clone = HashHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()
    assert clone.bits == 24 and float(clone.beta) == 2.0


def test_sign_codes_maps_zero_to_plus_one():
    h = np.array([[-0.3, 0.0, 0.7, -0.0]], dtype=np.float32)
    b = sign_codes(h)
    assert keras.backend.standardize_dtype(b.dtype) == "int8"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(b), [[-1, 1, 1, 1]])


def test_keras_file_round_trip(tmp_path):
    table = wta.make_permutation_table(10, num_permutations=32, window=4, seed=5)
    inputs = keras.Input((10,))
    head = HashHead(bits=8)
    model = keras.Model(inputs, {"h": head(inputs), "wta": wta.WTAHash(table)(inputs)})
    head.beta.assign(2.5)  # a schedule's value must survive, not the initial one
    path = tmp_path / "tiny.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32)
    expected, got = model(x), restored(x)
    for key in ("h", "wta"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got[key]), keras.ops.convert_to_numpy(expected[key])
        )
    restored_head = next(layer for layer in restored.layers if isinstance(layer, HashHead))
    assert float(restored_head.beta) == 2.5
