"""`python train.py`: the training command, `harr_tf.train_command` (also `harr-train`)."""

import sys

from harr_tf.train_command import main

if __name__ == "__main__":
    sys.exit(main())
