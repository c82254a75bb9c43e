"""harr-tf: unsupervised deep hashing for image retrieval (HARR) in Keras 3.

Started as a command (`python -m harr_tf.pretrain ...`), TensorFlow's start-up lines are
silenced unless `--verbose` is given (`harr_tf.quiet`).
"""

from harr_tf.quiet import quiet_module_command_line

quiet_module_command_line("harr_tf")
