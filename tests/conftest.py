"""Shared test setup: quiet TensorFlow, the real-data skip rule, and the `slow` marker of
every test that needs a model server or a database."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

# The serving fixtures (tests/serving_support.py), a PostgreSQL server (postgres_server.py).
pytest_plugins = ["serving_support", "postgres_server"]

# Fixtures that start a process: `python -m serving.server`, PostgreSQL. A test using one,
# directly or through another fixture, is slow (`pytest -m "not slow"` leaves it out).
SLOW_FIXTURES = {"serving_process", "grpc_server", "postgres"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def require_fashion_mnist() -> str:
    """The real Fashion-MNIST IDX directory; skips without it, except in CI where it must exist."""
    if os.path.isdir(FASHION_MNIST_DIR):
        return FASHION_MNIST_DIR
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must have the real Fashion-MNIST files at {FASHION_MNIST_DIR}")
    pytest.skip(f"real Fashion-MNIST not found at {FASHION_MNIST_DIR}")


def write_fashion_mnist_subset(directory, per_class: int) -> str:
    """`per_class` real Fashion-MNIST images of each class (seeded) as an npz spec, so a
    test trains on real pixels in seconds."""
    import numpy as np

    from harr_tf.data import load_dataset

    dataset = load_dataset(f"idx:{require_fashion_mnist()}")
    rng = np.random.default_rng(0)
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(dataset.labels == c), per_class, replace=False)
                for c in range(10)
            ]
        )
    )
    path = os.path.join(directory, "fashion_subset.npz")
    np.savez(path, images=dataset.read(keep), labels=dataset.labels[keep])
    return f"npz:{path}"
