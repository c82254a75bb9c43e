"""What a pretraining run records about itself, and the check a run makes with it.

`python -m harr_tf.pretrain` writes `pretrain.yaml` beside the backbone's weights (the
dataset, image shape, network and method it pretrained with); a run whose teacher
starts from those weights refuses them when they were pretrained on another dataset or
image size. The command (`harr_tf.pretrain`) and the run (`harr_tf.run`) both use it.
"""

from __future__ import annotations

import os

import yaml

PRETRAIN_FILE = "pretrain.yaml"


def check_pretrained_weights(weights: str, dataset: str, image_shape: tuple) -> None:
    """Refuses `train.py --weights DIR/backbone.weights.h5` when DIR's pretraining was on
    another dataset or image size (other files, without a `pretrain.yaml`, pass)."""
    described = os.path.join(os.path.dirname(os.path.abspath(weights)), PRETRAIN_FILE)
    if not os.path.isfile(described):
        return
    with open(described) as f:
        saved = yaml.safe_load(f) or {}
    shape = [int(d) for d in image_shape]
    if saved.get("dataset") != dataset or saved.get("image_shape") != shape:
        raise ValueError(
            f"--weights {weights} was pretrained on {saved.get('dataset')} at "
            f"{saved.get('image_shape')}, but this run trains on {dataset} at {shape}: "
            "pretrain on this dataset and image size first (python -m harr_tf.pretrain)."
        )
