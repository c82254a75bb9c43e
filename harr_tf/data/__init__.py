"""Data: image sources, protocol splits."""

from harr_tf.data.sources import ImageDataset, load_dataset
from harr_tf.data.splits import PROTOCOLS, Protocol, ProtocolSplit, get_protocol, make_split

__all__ = [
    "PROTOCOLS",
    "ImageDataset",
    "Protocol",
    "ProtocolSplit",
    "get_protocol",
    "load_dataset",
    "make_split",
]
