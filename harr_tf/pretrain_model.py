"""The model and the budget of self-supervised pretraining (`harr_tf.pretrain`)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from harr_tf.atomic import write_json_atomically
from harr_tf.pretrain_losses import PRETRAIN_LOSSES


@keras.saving.register_keras_serializable(package="harr_tf")
class PretrainModel(keras.Model):
    """`backbone → projector` trained on two views (`a`, `b`, each (batch, H, W, C)) of
    each image with one of `PRETRAIN_LOSSES`; only the backbone is kept afterwards.

    Args:
        backbone: pixels in [0, 255] → features (batch, d).
        projector: features → embeddings (batch, dim) the loss compares.
        method: a key of `PRETRAIN_LOSSES`. Defaults to "barlow_twins".
    """

    def __init__(
        self, backbone: keras.Model, projector: keras.Model, method: str = "barlow_twins", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if method not in PRETRAIN_LOSSES:
            raise ValueError(
                f"Unknown method. Expected one of {tuple(PRETRAIN_LOSSES)}. Received: {method!r}"
            )
        self.backbone, self.projector, self.method = backbone, projector, method
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # Built before `fit`, as BackupAndRestore needs: the backbone's output is known.
        projector.build(backbone.output_shape)
        self.built = True

    @property
    def metrics(self) -> list:
        return [self.loss_tracker]

    def call(self, images: Any, training: bool = False) -> Any:
        return self.projector(self.backbone(images, training=training), training=training)

    def compute_loss_of(self, batch: dict, training: bool) -> Any:
        """The method's loss between the embeddings of views A and B, one forward pass."""
        embeddings = self(ops.concatenate([batch["a"], batch["b"]], axis=0), training=training)
        z_a, z_b = ops.split(embeddings, 2, axis=0)
        return PRETRAIN_LOSSES[self.method](z_a, z_b)

    def train_step(self, batch: dict) -> dict:
        with tf.GradientTape() as tape:
            loss = self.compute_loss_of(batch, training=True)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "projector": keras.saving.serialize_keras_object(self.projector),
            "method": self.method,
        }

    @classmethod
    def from_config(cls, config: dict) -> PretrainModel:
        config = dict(config)
        for name in ("backbone", "projector"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)


class PretrainBudget(keras.callbacks.Callback):
    """Ends `fit` once the budget is spent: `minutes` of training time summed over resumes
    (kept in the JSON file `path`), else `epochs`. Each epoch starts at the learning rate
    of a cosine decay from `learning_rate` to 0 over the budget's spent fraction, so a time
    budget anneals fully whatever the machine's speed; a schedule over steps would have to
    guess the speed (the guess it replaced was 2.2x too fast on 2 idle cores, and under
    load much more).
    """

    def __init__(
        self, path: str, learning_rate: float, *, minutes: float | None, epochs: int | None
    ) -> None:
        super().__init__()
        if (minutes is None) == (epochs is None):
            raise ValueError(f"Give one budget, minutes or epochs. Received: {minutes=}, {epochs=}")
        self.path, self.learning_rate = path, learning_rate
        self.minutes, self.epochs = minutes, epochs
        self.spent = 0.0
        if os.path.exists(path):
            with open(path) as f:
                self.spent = float(json.load(f)["seconds"])

    def spent_fraction(self, epoch: int) -> float:
        """How much of the budget the first `epoch` epochs used, in [0, 1]."""
        if self.minutes is not None:
            return min(1.0, self.spent / (60 * self.minutes))
        return min(1.0, epoch / self.epochs)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.minutes is not None and self.spent_fraction(0) >= 1:
            self.model.stop_training = True  # a resumed run whose budget is spent

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        fraction = self.spent_fraction(epoch)
        self.model.optimizer.learning_rate = (
            self.learning_rate * 0.5 * (1 + math.cos(math.pi * fraction))
        )
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.spent += time.perf_counter() - self.start
        write_json_atomically(self.path, {"seconds": self.spent, "epochs": epoch + 1})
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
        if self.spent_fraction(epoch + 1) >= 1:
            self.model.stop_training = True
