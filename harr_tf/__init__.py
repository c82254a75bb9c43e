"""harr-tf: unsupervised deep hashing for image retrieval (HARR) in Keras 3.

Importing the package has no side effects and loads nothing eagerly; the commands
silence TensorFlow's start-up lines themselves (`harr_tf.quiet`).
"""
