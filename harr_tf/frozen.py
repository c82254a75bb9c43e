"""The frozen student: a pretrained backbone kept fixed, the hash head trained on its
cached features (issue 25; DESIGN §5 "Students").

On a CPU nearly all of a fine-tuning step is spent in the backbone. Frozen, the
backbone's pooled features of each training image's views are computed once —
`rounds` rounds of the model's views (A, B, W), each image's crops and colours drawn
from its position as in training — and the head trains on them with the same losses at
thousands of steps a second. The head starts where ITQ on the same features ends (PCA
and rotation as its weights), so training only has to improve on the shallow hash.
Features are cached in the run directory (`features/`, written beside and renamed) and
read back on `--resume`; the exported encoder is the backbone and the head in one model.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from harr_tf.atomic import atomic_path
from harr_tf.baselines import itq_linear
from harr_tf.config import TrainConfig
from harr_tf.data.augment import ViewAugmenter
from harr_tf.data.image_size import inference_batch_size
from harr_tf.layers import HashHead, sign_codes
from harr_tf.run_data import RunData, teacher_network

logger = logging.getLogger("harr_tf")


def inference_function(backbone: keras.Model):
    """`backbone` at inference as one compiled graph: twice as fast on a CPU as eager
    calls, batch after batch (the last, smaller batch traces once more)."""
    return tf.function(lambda batch: backbone(batch, training=False), reduce_retracing=True)


def backbone_features(
    backbone: keras.Model,
    images: tf.data.Dataset,
    batch_size: int,
    progress: bool = False,
    what: str = "features",
) -> np.ndarray:
    """(n, d) float32 features of a stream of single images, in order."""
    count = int(images.cardinality())
    batches = images.batch(batch_size).map(lambda batch: tf.cast(batch, tf.float32))
    apply = inference_function(backbone)
    out = []
    steps = -(-count // batch_size) if count >= 0 else None
    for batch in tqdm(batches.prefetch(2), what, steps, unit="batch", disable=not progress):
        out.append(apply(batch).numpy())
    dim = backbone.output_shape[-1]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


def training_features(
    backbone: keras.Model,
    dataset,
    indices: np.ndarray,
    augmenter: ViewAugmenter,
    rounds: int,
    batch_size: int,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The features of the training images `indices`: (n, d) float32 of each image at
    the evaluation transform, and (rounds, views, n, d) float16 of the augmenter's views
    (round r of item i drawn from stream position r·n + i). Each image is decoded once."""
    n = len(indices)
    dim = backbone.output_shape[-1]
    plain = np.zeros((n, dim), np.float32)
    views = np.zeros((rounds, len(augmenter.views), n, dim), np.float16)
    apply = inference_function(backbone)
    make_views = tf.function(augmenter.make_views, reduce_retracing=True)
    stream = tf.data.Dataset.zip(dataset.images(indices), tf.data.Dataset.range(n))
    stream = stream.batch(batch_size).map(
        lambda images, place: (tf.cast(images, tf.float32), place)
    )
    start = 0
    steps = -(-n // batch_size)
    for images, place in tqdm(
        stream.prefetch(2), "training features", steps, unit="batch", disable=not progress
    ):
        end = start + len(images)
        plain[start:end] = apply(images).numpy()
        for r in range(rounds):
            made = make_views(images, place + r * n)
            for v, name in enumerate(augmenter.views):
                views[r, v, start:end] = apply(made[name]).numpy()
        start = end
    return plain, views


def cached_array(path: str, compute, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The array saved at `path` (read memory-mapped), else `compute()` saved there
    beside and renamed, so a killed run resumes without recomputing finished parts.
    A saved array of another shape than `expected_shape` (its leading dims) is recomputed."""
    if os.path.exists(path):
        array = np.load(path, mmap_mode="r")
        if expected_shape is None or array.shape[: len(expected_shape)] == expected_shape:
            logger.info("Features read from %s", path)
            return array
    array = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        np.save(f, array)
    return np.load(path, mmap_mode="r")


def head_encoder(dim: int, bits: int, beta: float = 1.0) -> keras.Model:
    """Cached features (batch, d) → continuous codes h (batch, bits): the trained part."""
    inputs = keras.Input((dim,), name="features")
    codes = HashHead(bits, beta=beta, name="hash_head")(inputs)
    return keras.Model(inputs, codes, name=f"harr_head_{bits}")


def start_from_itq(head: keras.Model, train_features: np.ndarray, seed: int) -> None:
    """Sets the head's dense layer to ITQ's affine map of `train_features`, scaled so
    that the projections have unit standard deviation (tanh neither saturated nor flat)."""
    bits = head.output_shape[-1]
    weights, bias = itq_linear(train_features, bits, seed)
    scale = float(np.std(np.asarray(train_features, np.float32) @ weights + bias)) or 1.0
    dense = head.get_layer("hash_head").dense
    dense.set_weights([weights / scale, bias / scale])


def feature_stream(
    views: np.ndarray,
    codes: tf.Variable | np.ndarray,
    names: tuple[str, ...],
    batch_size: int,
    seed: int,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Endless batches `{name: (batch, d) float32, "wta": (batch, P)}` of cached view
    features (`views`: (rounds, len(names), n, d)); each image's round is drawn per
    step. Every batch is a function of (`seed`, step), so a resumed run continues the
    same stream from `start_step`."""
    rounds, _, n, dim = views.shape
    per_pass = max(1, n // batch_size)
    wta = np.asarray(codes)

    def batches():
        step = start_step
        while True:
            epoch, k = divmod(step, per_pass)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            chosen = order[k * batch_size : (k + 1) * batch_size]
            picked = np.random.default_rng([seed, epoch, k]).integers(rounds, size=len(chosen))
            batch = {
                name: np.asarray(views[picked, v, chosen], np.float32)
                for v, name in enumerate(names)
            }
            batch["wta"] = wta[chosen]
            yield batch
            step += 1

    signature = {name: tf.TensorSpec((batch_size, dim), tf.float32) for name in names}
    signature["wta"] = tf.TensorSpec((batch_size, wta.shape[1]), tf.as_dtype(wta.dtype))
    stream = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return stream.prefetch(4)


def pixel_encoder(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """The exported encoder: pixels → the frozen backbone → the trained head."""
    backbone.trainable = False
    inputs = keras.Input(backbone.input_shape[1:], name="pixels")
    codes = head.get_layer("hash_head")(backbone(inputs))
    return keras.Model(inputs, codes, name=f"harr_encoder_{head.output_shape[-1]}")


def head_codes(encoder: keras.Model, features: np.ndarray, continuous: bool) -> np.ndarray:
    """The codes of `encoder`'s hash head applied to cached backbone `features`: what
    `encode_images` gives for the images, without passing them through the backbone."""
    head = encoder.get_layer("hash_head")
    out = []
    for start in range(0, len(features), 4096):
        h = head(np.asarray(features[start : start + 4096], np.float32))
        out.append(keras.ops.convert_to_numpy(h if continuous else sign_codes(h)))
    dtype = np.float32 if continuous else np.int8
    return np.concatenate(out) if out else np.zeros((0, head.bits), dtype)


@dataclasses.dataclass
class FrozenFeatures:
    """The frozen backbone and its cached features: `train` (n, d) of the un-augmented
    training images (the WTA teacher's and ITQ's), `views` (rounds, len(names), n, d)."""

    backbone: keras.Model
    names: tuple[str, ...]
    train: np.ndarray
    views: np.ndarray
    batch_size: int
    directory: str
    evaluated: dict = dataclasses.field(default_factory=dict)

    def features(self, key: str, dataset, indices: np.ndarray, progress: bool) -> np.ndarray:
        """The backbone's features of `indices` (the query set, the database), computed
        once per run (cached in the run directory) and kept for every code length."""
        if key not in self.evaluated:
            self.evaluated[key] = cached_array(
                os.path.join(self.directory, f"{key}.npy"),
                lambda: backbone_features(
                    self.backbone, dataset.images(indices), self.batch_size, progress, key
                ),
                (len(indices),),
            )
        return self.evaluated[key]


def prepare_frozen(
    config: TrainConfig, data: RunData, directory: str, progress: bool
) -> FrozenFeatures:
    """The frozen student's backbone (`--backbone` with `--weights`) and its features
    of the training images and their views, cached in `directory` (the run's
    `features/`)."""
    dataset = data.dataset
    backbone = teacher_network(dataset, config)
    backbone.trainable = False
    batch = inference_batch_size(backbone, config.encode_batch_size)
    train = data.split.train
    augmenter = ViewAugmenter(dataset.image_shape, config.augment, seed=config.seed)
    rounds = config.model.feature_rounds
    logger.info(
        "Frozen student: %s features of %d training images, %d rounds of views %s",
        config.model.network,
        len(train),
        rounds,
        "".join(augmenter.views).upper(),
    )
    computed = {}

    def compute(part: int):
        if not computed:
            found = training_features(backbone, dataset, train, augmenter, rounds, batch, progress)
            computed.update(enumerate(found))
        return computed[part]

    train_features = cached_array(
        os.path.join(directory, "train.npy"), lambda: compute(0), (len(train),)
    )
    views = cached_array(
        os.path.join(directory, "views.npy"),
        lambda: compute(1),
        (rounds, len(augmenter.views), len(train)),
    )
    return FrozenFeatures(backbone, augmenter.views, train_features, views, batch, directory)
