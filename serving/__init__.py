"""Serving: SavedModel export for TensorFlow Serving, a development server with the same
gRPC and REST APIs that loads models the same (session-based) way, code generation for a
collection over gRPC, and Hamming search.

The names below are the export's contract with every client; they are plain
strings here so a client can import them without loading TensorFlow. Started as a
command (`python -m serving.export ...`), TensorFlow's start-up lines are silenced
unless `--verbose` is given (`harr_tf.quiet`); `serving.search build|add|remove` do not
load TensorFlow at all.
"""

from harr_tf.quiet import command_module, quiet_module_command_line

_COMMAND = command_module()
quiet_module_command_line(
    "serving", needs_tensorflow=_COMMAND[:1] != ["serving.search"] or "query" in _COMMAND[1:2]
)

IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "encode_pixels"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
OUTPUTS = ("codes", "packed", "continuous")
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
METADATA_FILE = "assets.extra/harr_metadata.json"
