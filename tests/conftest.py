"""Shared test setup: quiet TensorFlow, and the real-data skip rule."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

pytest_plugins = ["serving_support"]  # the serving fixtures (tests/serving_support.py)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def require_fashion_mnist() -> str:
    """The real Fashion-MNIST IDX directory; skips without it, except in CI where it must exist."""
    if os.path.isdir(FASHION_MNIST_DIR):
        return FASHION_MNIST_DIR
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must have the real Fashion-MNIST files at {FASHION_MNIST_DIR}")
    pytest.skip(f"real Fashion-MNIST not found at {FASHION_MNIST_DIR}")
