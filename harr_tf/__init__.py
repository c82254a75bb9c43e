"""harr-tf: unsupervised deep hashing for image retrieval (HARR) in Keras 3.

The front door (docs/api.md):

    import harr_tf

    run = harr_tf.train(harr_tf.TrainConfig(bits=(64,)), "runs/r1")  # or Run.load
    codes = run.encode("folder:photos", 64)                        # a harr_tf.Codes
    index = harr_tf.HammingIndex.build(codes.packed, codes.ids)
    harr_tf.export(run, 64, "models/harr")                         # for TF Serving

Importing the package has no side effects and loads nothing eagerly: each name below
is imported on first use (PEP 562), so `import harr_tf` and `harr_tf.TrainConfig` load
no TensorFlow. The commands silence TensorFlow's start-up lines themselves
(`harr_tf.quiet`).
"""

from __future__ import annotations

import importlib

# Each public name and the module that defines it.
_PUBLIC = {
    "TrainConfig": "harr_tf.config",
    "ModelConfig": "harr_tf.config",
    "WTAConfig": "harr_tf.config",
    "LossConfig": "harr_tf.config",
    "AugmentConfig": "harr_tf.config",
    "train": "harr_tf.trained_run",
    "Run": "harr_tf.trained_run",
    "Codes": "harr_tf.codes",
    "HammingIndex": "harr_tf.index",
    "INDEX_KINDS": "harr_tf.faiss_index_kinds",
    "export": "serving.export",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'harr_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
