"""HarrModel: the HARR training step (DESIGN §2.4), and nothing else.

Ma et al., "HARR: Learning Discriminative and High-quality Hash Codes for Image
Retrieval", ACM TOMM 2024, https://doi.org/10.1145/3627162.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from harr_tf.encoder import encode_images
from harr_tf.losses import (
    bit_correlation_loss,
    instance_contrastive_loss,
    quantization_loss,
    wta_contrastive_loss,
)
from harr_tf.wta import WTASimilarity


@keras.saving.register_keras_serializable(package="harr_tf")
class HarrModel(keras.Model):
    """Trains `encoder` (pixels in [0, 255] → continuous codes h) with the HARR losses.

    Each batch is a dict of the views in `views` (`w`, and `a`, `b` when L_bcr or
    instance guidance needs them), each (batch, H, W, C), and `wta`, the stored WTA
    codes (batch, P) of the un-augmented images. The views go through the encoder as
    one concatenated batch.

    Under a `tf.distribute` strategy the losses are of the global batch: every replica
    all-gathers the codes and WTA codes (as the SimCLR and Barlow Twins TensorFlow
    references do), so a step equals the single-device step on the same images (with
    synchronised batch norm, `harr_tf.distribute.synchronize_batch_norm`). Under a
    `mixed_float16` policy the loss is scaled by the `LossScaleOptimizer` that
    `compile` wraps the optimizer in, and `apply_gradients` unscales it.

    Args:
        encoder: a model whose "backbone" sub-model is scaled by
            `backbone_lr_multiplier` and whose output is (batch, bits).
        similarity: the `WTASimilarity` layer holding τ, s_max and s_min.
        temperature: T of the contrastive loss. Defaults to 0.1.
        bcr_weight: η₁, weight of the bit-correlation loss. Defaults to 1.0.
        quantization_weight: η₂, weight of the quantization loss. Defaults to 0.5.
        off_diagonal_weight: λ_off of the bit-correlation loss. Defaults to 1.0.
        include_self: count i = j as a positive pair. Defaults to False.
        similarity_weight: weight of L_sim (0 removes it, for ablations). Defaults to 1.0.
        guidance: `"wta"` (HARR) or `"instance"` (plain instance contrast between
            views W and A, the ablation of the WTA structure). Defaults to `"wta"`.
        backbone_lr_multiplier: gradient scale of the backbone's weights (0.01 for
            a pretrained backbone; with SGD this is a learning-rate multiplier).
            Defaults to 1.0.
    """

    def __init__(
        self,
        encoder: keras.Model,
        similarity: WTASimilarity,
        temperature: float = 0.1,
        bcr_weight: float = 1.0,
        quantization_weight: float = 0.5,
        off_diagonal_weight: float = 1.0,
        include_self: bool = False,
        similarity_weight: float = 1.0,
        guidance: str = "wta",
        backbone_lr_multiplier: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if guidance not in ("wta", "instance"):
            raise ValueError(f"Expected guidance 'wta' or 'instance'. Received: {guidance!r}")
        self.similarity_weight = similarity_weight
        self.guidance = guidance
        self.encoder = encoder
        self.similarity = similarity
        self.temperature = temperature
        self.bcr_weight = bcr_weight
        self.quantization_weight = quantization_weight
        self.off_diagonal_weight = off_diagonal_weight
        self.include_self = include_self
        self.backbone_lr_multiplier = backbone_lr_multiplier
        names = ["loss", "similarity_loss", "quantization_loss"]
        if self.uses_pair_views:
            names.insert(2, "bcr_loss")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.build()

    def build(self, input_shape: Any = None) -> None:
        # The functional encoder and the similarity layer's weights exist already:
        # nothing waits for data, which `fit` under a distribution strategy expects.
        self.similarity.build((None, None))
        self.built = True

    @property
    def uses_pair_views(self) -> bool:
        """Whether views A and B are encoded: only L_bcr and instance guidance read them,
        so without both a step encodes view W alone, a third of the work."""
        return self.bcr_weight != 0 or self.guidance == "instance"

    @property
    def views(self) -> tuple[str, ...]:
        """The views a batch must hold, W first."""
        return ("w", "a", "b") if self.uses_pair_views else ("w",)

    @property
    def metrics(self) -> list:
        return list(self.trackers.values())

    def call(self, images: Any, training: bool = False) -> Any:
        return self.encoder(images, training=training)

    def encode(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Binary codes (n, bits) int8 in {−1, +1} for pixels (n, H, W, C) in [0, 255]."""
        return encode_images(self.encoder, images, batch_size)

    def compute_losses(self, batch: dict, training: bool) -> dict:
        """The three losses and their weighted total for one batch of views."""
        views = ops.concatenate([batch[name] for name in self.views], axis=0)
        outputs = ops.split(self.encoder(views, training=training), len(self.views), axis=0)
        codes = {name: gather_replicas(h) for name, h in zip(self.views, outputs, strict=True)}
        h_w = codes["w"]
        if self.guidance == "wta":
            targets = self.similarity(gather_replicas(ops.cast(batch["wta"], "int32")))
            similarity_loss = wta_contrastive_loss(
                h_w,
                targets["positive"],
                targets["positive_weight"],
                targets["negative_weight"],
                temperature=self.temperature,
                include_self=self.include_self,
            )
        else:
            similarity_loss = instance_contrastive_loss(
                h_w, codes["a"], temperature=self.temperature
            )
        losses = {
            "similarity_loss": similarity_loss,
            "quantization_loss": quantization_loss(h_w),
        }
        total = (
            self.similarity_weight * similarity_loss
            + self.quantization_weight * losses["quantization_loss"]
        )
        if self.uses_pair_views:
            losses["bcr_loss"] = bit_correlation_loss(
                codes["a"], codes["b"], off_diagonal_weight=self.off_diagonal_weight
            )
            total = total + self.bcr_weight * losses["bcr_loss"]
        losses["loss"] = total
        return losses

    def train_step(self, batch: dict) -> dict:
        with tf.GradientTape() as tape:
            losses = self.compute_losses(batch, training=True)
            # Every replica computes the global loss; all-gather's gradient sums the
            # replicas' gradients of it, and so does the optimizer: hence 1 / replicas.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(losses["loss"] / replicas)
        variables = self.encoder.trainable_variables
        gradients = tape.gradient(scaled, variables)
        backbone = {id(v) for v in self.backbone_variables()}
        gradients = [
            g * self.backbone_lr_multiplier if id(v) in backbone else g
            for g, v in zip(gradients, variables, strict=True)
        ]
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return self._track(losses)

    def backbone_variables(self) -> list:
        """The trainable weights of the encoder's "backbone" sub-model; none when the
        encoder is a head on cached features (the frozen student)."""
        names = {layer.name for layer in self.encoder.layers}
        if "backbone" not in names:
            return []
        return self.encoder.get_layer("backbone").trainable_variables

    def test_step(self, batch: dict) -> dict:
        return self._track(self.compute_losses(batch, training=False))

    def _track(self, losses: dict) -> dict:
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "similarity": keras.saving.serialize_keras_object(self.similarity),
            "temperature": self.temperature,
            "bcr_weight": self.bcr_weight,
            "quantization_weight": self.quantization_weight,
            "off_diagonal_weight": self.off_diagonal_weight,
            "include_self": self.include_self,
            "similarity_weight": self.similarity_weight,
            "guidance": self.guidance,
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
        }

    @classmethod
    def from_config(cls, config: dict) -> HarrModel:
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["similarity"] = keras.saving.deserialize_keras_object(config["similarity"])
        return cls(**config)


def gather_replicas(values: Any) -> Any:
    """`values` (batch, ...) of every replica, concatenated in replica order: the global
    batch. The gradient flows back to this replica's slice. Unchanged on one device."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return context.all_gather(values, axis=0)
