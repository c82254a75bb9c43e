"""Data: image sources, protocol splits.

The names below load on first use (PEP 562), so the modules of this package that need
no TensorFlow import without it, and `python -m harr_tf.data.tfrecord` silences
TensorFlow's start-up lines before TensorFlow loads.
"""

import importlib

_DEFINED_IN = {
    "ImageDataset": "harr_tf.data.sources",
    "load_dataset": "harr_tf.data.sources",
    "PROTOCOLS": "harr_tf.data.splits",
    "Protocol": "harr_tf.data.splits",
    "ProtocolSplit": "harr_tf.data.splits",
    "get_protocol": "harr_tf.data.splits",
    "make_split": "harr_tf.data.splits",
}
__all__ = sorted(_DEFINED_IN)


def __getattr__(name: str):
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_DEFINED_IN[name]), name)
