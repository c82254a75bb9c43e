"""The network and WTA teacher a run uses when `--backbone` is not given, chosen from
the collection (issue 25; docs/experiments.md, "The pretrained teacher").

The choice follows the source's channels: image files and records are decoded to RGB
(three channels, grey files too), arrays keep theirs. On such images the ImageNet
features of EfficientNet-Lite0 (offline, in a pinned wheel) teach far more than the
pixels: on Debian's clip-art, HARR's frozen student reaches 0.426 mAP@1000 at 32 bits
against 0.301 for ITQ on the pixels. On single-channel arrays of small images
(Fashion-MNIST, MNIST) the pixel teacher wins, and so small_cnn is also chosen where an
`--image-size` below Lite0's smallest input is asked for.
"""

from __future__ import annotations

import dataclasses

from harr_tf.config import TrainConfig, WTAConfig
from harr_tf.data.image_size import MIN_SIZE

COLOUR_BACKBONE = "efficientnet_lite0"
GREY_BACKBONE = "small_cnn"


def choose_backbone(config: TrainConfig, channels: int) -> tuple[TrainConfig, str]:
    """`config` with `model.backbone` chosen for images of `channels` when it is None,
    and why, for the log. For three channels: Lite0 with its ImageNet weights as the WTA
    teacher (unless `weights` or `wta.features` were set), its student frozen by
    default; for one: small_cnn and the pixel teacher."""
    model = config.model
    if model.backbone is not None:
        return config, "as set"
    small = config.image_size is not None and config.image_size < MIN_SIZE[COLOUR_BACKBONE]
    if channels != 3 or small:
        chosen = dataclasses.replace(model, backbone=GREY_BACKBONE)
        why = (
            f"--image-size {config.image_size}, below {COLOUR_BACKBONE}'s smallest input"
            if small
            else "single-channel images: the pixel teacher beats ImageNet features on them "
            "(Fashion-MNIST)"
        )
        return dataclasses.replace(config, model=chosen), why
    weights = "imagenet" if model.weights == "none" else model.weights
    chosen = dataclasses.replace(model, backbone=COLOUR_BACKBONE, weights=weights)
    features = config.wta.features
    if features == WTAConfig().features:
        features = "backbone"
    wta = dataclasses.replace(config.wta, features=features)
    return dataclasses.replace(config, model=chosen, wta=wta), (
        "three-channel images: ImageNet features teach more than pixels (clip-art, 32 "
        "bits: 0.426 mAP against 0.301 for ITQ on the pixels)"
    )
