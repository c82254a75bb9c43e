"""A SavedModel loaded the way TensorFlow Serving loads it: into its own graph and session.

TF Serving's C++ loader imports the MetaGraphDef tagged `serve`, runs the
SaverDef's restore op on `variables/`, and then runs the SignatureDef's tensors by
name. TF2's `tf.saved_model.load` restores by object graph instead, so a model it
runs may still fail in TF Serving (a variable the restore op does not restore); every
path of this project that checks or serves a SavedModel goes through this loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

SERVE_TAG = "serve"


class SessionBundle:
    """`path` loaded into a fresh `tf.Graph` and `tf.compat.v1.Session`.

    Args:
        path: a SavedModel directory (holding `saved_model.pb` and `variables/`).

    Raises:
        tf.errors.OpError, OSError, RuntimeError: the SavedModel cannot be loaded or
            its variables cannot be restored.
    """

    def __init__(self, path: str | Path) -> None:
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, [SERVE_TAG], str(path)
                )
        except BaseException:
            self.session.close()
            raise
        self.signature_defs = dict(meta_graph.signature_def)

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Runs one signature: feeds `inputs` (by alias) and fetches `outputs` (all when None).

        Raises:
            KeyError: no such signature, input or output alias.
            tf.errors.OpError: the graph failed (e.g. bytes that are not an image).
        """
        signature = self.signature_defs[signature_name]
        wanted = list(signature.outputs) if outputs is None else outputs
        fetches = {alias: signature.outputs[alias].name for alias in wanted}
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        return self.session.run(fetches, feed_dict=feeds)

    def close(self) -> None:
        self.session.close()


def op_message(message: str) -> str:
    """A graph error's own message, without the "Graph execution error:" preamble that
    Python's session adds (TF Serving's C++ session answers with the op's message)."""
    return message.removeprefix("Graph execution error:").strip()
