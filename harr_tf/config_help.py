"""What each command-line setting of a `TrainConfig` means, as every command's --help says it.

Keyed by the setting's dotted field name (`model.width` is `TrainConfig.model.width`), in
the order train.py lists them; `harr_tf.flags` builds a setting's flag (name, type,
default) from its field and takes the words from here, so a flag reads the same in every
command; a command adds what it alone does with the value. Settings without an entry are
set in a YAML file only (`--config`).
"""

SETTING_HELP = {
    "dataset": "fashion_mnist | mnist | cifar10 | tfds:NAME[:SPLIT] | idx:DIR | folder:DIR | "
    "tfrecord:PATTERN | npz:FILE (docs/collections.md)",
    "data_dir": "local IDX directory when TFDS cannot download",
    "protocol": "evaluation protocol: standard | cifar10-i | authors",
    "bits": "comma-separated code lengths, one model each (multiples of 8)",
    "epochs": "training epochs per model",
    "steps": "training steps per model, rounded up to whole epochs",
    "steps_per_epoch": "batches per epoch",
    "batch_size": "images per training batch",
    "train_size": "training images: N (spread evenly over classes) or 'all' of the database",
    "queries_per_class": "evaluation queries per class",
    "validation_per_class": "validation queries per class, from the database",
    "image_size": "side of the square images the network sees",
    "max_pixels": "images whose header declares more pixels are skipped unread, named in the log",
    "learning_rate": "SGD learning rate, cosine-decayed to 0",
    "weight_decay": "SGD weight decay",
    "eval_every": "epochs between validation mAP evaluations",
    "encode_batch_size": "images per batch when encoding and extracting WTA features",
    "memory_budget": "GB the default batches are sized to fit; a batch past it runs again in "
    "halves",
    "steps_per_execution": "training steps per call into the compiled loop; Keras reads the "
    "logs on the host after each call, so on a GPU 8-32 waits less",
    "seed": "seed of everything drawn at random: the split, WTA table, augmentation, weights",
    "model.backbone": "small_cnn | vgg16 | resnet50 | efficientnetb0 | efficientnet_lite0",
    "model.weights": "imagenet | none | PATH of a weights file",
    "model.init_from_teacher": "true: the trained backbone starts from --weights, as the WTA "
    "teacher does; false: from seeded random weights (the teacher keeps --weights)",
    "model.student": "how a pretrained --backbone is used: frozen (the hash head trains on the "
    "backbone's cached features; fast on a CPU) | "
    "fine_tuned (backbone and head train together, the paper; for GPUs) | distilled "
    "(small_cnn learns from the backbone's WTA structure; needs --wta-features backbone)",
    "model.feature_rounds": "frozen student: rounds of augmented views (A, B, W) of each "
    "training image whose backbone features are cached",
    "model.width": "small_cnn channels of the first stage",
    "model.pooling": "small_cnn feature pooling: grid (averages over 3x3 regions, flattened) "
    "| global",
    "model.beta": "initial tanh scale β of the hash head",
    "model.beta_growth": "β grows by this fraction per epoch",
    "loss.temperature": "contrastive temperature T",
    "loss.bcr_weight": "η₁, weight of the bit-correlation loss",
    "loss.quantization_weight": "η₂, weight of the quantization loss",
    "loss.include_self": "count i = j as a positive pair (true/false)",
    "wta.features": "what the WTA structure ranks: sqrt_smoothed_pixels (square roots of the "
    "intensities, then as smoothed_pixels) | smoothed_pixels (contrast-normalised, blurred, "
    "standardised) | pixels | backbone (the frozen backbone's pooled features, with "
    "--weights, the paper's teacher) | file:FEATURES.npz (arrays 'ids' and 'features' "
    "computed elsewhere)",
    "wta.num_permutations": "P, number of WTA permutations",
    "wta.window": "K, WTA window size",
    "wta.refresh_every": "rebuild the WTA structure from the backbone's own features every N "
    "epochs (0: never)",
    "wta.positive_fraction": "ρ, fraction of pairs treated as positive",
}

# The defaults a field's None stands for, in words; other defaults are the field's value.
DEFAULT_HELP = {
    "data_dir": "$HARR_DATA_DIR, then /usr/share/datasets/fashion-mnist",
    "steps": "1170, Fashion-MNIST's 30 epochs of 39 batches, whatever the dataset's size",
    "steps_per_epoch": "one pass over the training images",
    "batch_size": "as many as the network's cost per image fits in --memory-budget, at most 128",
    "train_size": "the protocol's",
    "queries_per_class": "the protocol's; a class too small for the protocol gives at most a "
    "tenth of its items",
    "validation_per_class": "the protocol's; at most a tenth of a small class",
    "image_size": "the native size of images up to 96 px, else 64 for small_cnn; 224 for "
    "pretrained backbones",
    "encode_batch_size": "as many as the network's cost per image fits in --memory-budget, at "
    "most 512",
    "memory_budget": "a third of the machine's memory",
    "model.student": "frozen for pretrained backbones, fine_tuned for small_cnn",
    "model.backbone": "chosen from the collection: efficientnet_lite0 with its ImageNet "
    "weights as the WTA teacher for image files, records and colour arrays, small_cnn with "
    "the pixel teacher for single-channel arrays such as Fashion-MNIST (the log says which "
    "and why)",
}
