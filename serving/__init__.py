"""Serving: SavedModel export for TensorFlow Serving, a development server with the same
gRPC and REST APIs that loads models the same (session-based) way, code generation for a
collection over gRPC, and Hamming search.

The names below are the export's contract with every client; they are plain
strings here so a client can import them without loading TensorFlow. Importing the
package has no side effects: the commands silence TensorFlow's start-up lines
themselves (`harr_tf.quiet`).
"""

IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "encode_pixels"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
OUTPUTS = ("codes", "packed", "continuous")
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
METADATA_FILE = "assets.extra/harr_metadata.json"
