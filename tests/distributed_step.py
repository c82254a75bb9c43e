"""Run as a subprocess by test_distribute.py: one HARR training step on two logical CPU
devices under MirroredStrategy against the same step on one device, same global batch.

Prints a JSON object of the largest differences. Logical devices must be configured
before TensorFlow initialises its devices, hence a process of its own.

The backbone is small_cnn's conv-BN blocks with tanh instead of ReLU and max-pooling:
their gradients jump where a unit crosses zero or a pooling window changes its winner,
so on one device already a 1e-6 relative change of the pixels (the order of the
replicas' partial sums) moves small_cnn's first-layer gradients by 2e-3.
"""

import json
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from harr_tf.distribute import synchronize_batch_norm  # noqa: E402
from harr_tf.layers import HashHead  # noqa: E402
from harr_tf.model import HarrModel  # noqa: E402
from harr_tf.wta import WTASimilarity  # noqa: E402

SHAPE = (12, 12, 1)


def smooth_encoder():
    inputs = keras.Input(SHAPE)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters, stride in ((4, 1), (8, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("tanh")(x)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    pixels = keras.Input(SHAPE)
    return keras.Model(pixels, HashHead(8, name="hash_head")(backbone(pixels)))


def make_model(guidance, weights=None):
    encoder = smooth_encoder()
    synchronize_batch_norm(encoder)
    if weights is not None:
        encoder.set_weights(weights)
    model = HarrModel(
        encoder,
        WTASimilarity(tau=0.5, s_max=0.9, s_min=0.1, window=4),
        temperature=0.2,
        bcr_weight=0.7,
        quantization_weight=0.3,
        guidance=guidance,
        backbone_lr_multiplier=0.5,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


def compare(guidance):
    rng = np.random.default_rng(0)
    batch = {k: rng.uniform(0, 255, (16, *SHAPE)).astype("float32") for k in "abw"}
    batch["wta"] = rng.integers(0, 4, (16, 16)).astype("uint8")
    dataset = tf.data.Dataset.from_tensors(batch).repeat(2)
    keras.utils.set_random_seed(0)
    single = make_model(guidance)
    start = single.encoder.get_weights()
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope() as strategy:
        mirrored = make_model(guidance, start)
    histories = [m.fit(dataset, epochs=1, verbose=0).history for m in (single, mirrored)]
    pairs = zip(single.encoder.get_weights(), mirrored.encoder.get_weights(), strict=True)
    moved = [np.abs(a - b).max() for a, b in zip(single.encoder.get_weights(), start, strict=True)]
    return {
        "replicas": strategy.num_replicas_in_sync,
        "loss": [h["loss"][0] for h in histories],
        "weight_difference": float(max(np.abs(a - b).max() for a, b in pairs)),
        "weight_movement": float(max(moved)),
    }


if __name__ == "__main__":
    print(json.dumps({guidance: compare(guidance) for guidance in sys.argv[1:]}))
