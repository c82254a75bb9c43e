"""--mixed-precision: the flag's policies, bad values refused, every built-in backbone
runs under mixed float16 (the update itself: test_model.py)."""

import keras
import numpy as np
import pytest

from harr_tf.config import ModelConfig
from harr_tf.encoder import build_encoder
from harr_tf.precision import MIXED_PRECISION_BACKBONES, policy_name, set_precision


@pytest.fixture(autouse=True)
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    ("flag", "policy"),
    [("none", "float32"), ("float16", "mixed_float16"), ("bfloat16", "mixed_bfloat16")],
)
def test_flag_values_set_the_global_policy(flag, policy):
    assert set_precision(flag, "small_cnn") == policy
    assert keras.mixed_precision.global_policy().name == policy


def test_bad_values_and_unchecked_backbones_are_refused():
    with pytest.raises(
        ValueError, match="one of \\['bfloat16', 'float16', 'none'\\]. Received: 'fp8'"
    ):
        policy_name("fp8")
    with pytest.raises(ValueError, match="not supported with backbone 'vit'"):
        set_precision("float16", "vit")
    assert set_precision("none", "vit") == "float32"  # float32 asks nothing of a backbone
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("backbone", MIXED_PRECISION_BACKBONES)
def test_every_listed_backbone_encodes_under_mixed_float16(backbone):
    # float16 is the narrower of the two mixed types; bfloat16 has float32's range.
    set_precision("float16", backbone)
    config = ModelConfig(backbone=backbone, weights="none", width=4)
    encoder = build_encoder((32, 32, 3), 16, config)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    codes = encoder(images, training=True)
    assert codes.dtype == "float16" and codes.shape == (2, 16)
    assert np.isfinite(np.asarray(codes, np.float32)).all()
