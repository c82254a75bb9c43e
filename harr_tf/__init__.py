"""harr-tf: unsupervised deep hashing for image retrieval (HARR) in Keras 3."""
