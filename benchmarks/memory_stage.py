"""Stages of a run in this process, for `benchmarks/memory.py --stages`: prints, per
stage, one JSON line with the batch it ran at, the RSS before the stage and the peak RSS
(GB), and the estimate `harr_tf.memory_budget` makes of that peak.

    .venv/bin/python benchmarks/memory_stage.py teacher --folder DIR --image-size 64
    .venv/bin/python benchmarks/memory_stage.py teacher,training --folder DIR --image-size 32

Stages: `teacher` (the WTA teacher pass, `wta_codes` with the backbone), `encoding`
(`encode_images` with the encoder), both on `--images` images, and `training`
(`--steps` steps of a fine-tuned backbone on three views of the folder's training
images). A process's peak RSS only grows: one stage per process measures it alone.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

STAGES = ("training", "teacher", "encoding")


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    import keras

    from harr_tf.backbones import build_backbone
    from harr_tf.config import ModelConfig, TrainConfig, WTAConfig
    from harr_tf.data import load_dataset
    from harr_tf.data.image_size import inference_batch_size
    from harr_tf.encoder import build_encoder, encode_images
    from harr_tf.features import wta_codes
    from harr_tf.memory_budget import (
        GB,
        activation_bytes,
        budget_bytes,
        inference_cost,
        peak_rss_bytes,
        set_budget,
        training_cost,
    )

    if args.memory_budget:
        set_budget(args.memory_budget)
    model = ModelConfig(backbone=args.backbone, weights="none", student="fine_tuned")
    dataset = load_dataset(f"folder:{args.folder}").at_size(args.image_size)
    shape = dataset.image_shape
    indices = np.arange(min(args.images, dataset.num_items))
    keras.utils.set_random_seed(0)
    if stage == "training":
        from harr_tf.run_data import build_wta_structure, load_run_data
        from harr_tf.training import new_model, training_stream, with_batch_size

        config = TrainConfig(
            dataset=f"folder:{args.folder}",
            bits=(16,),
            epochs=1,
            steps_per_epoch=args.steps,
            train_size="all",  # the training images the protocol leaves
            image_size=args.image_size,
            batch_size=args.batch_size,
            memory_budget=args.memory_budget,
            model=model,
            wta=WTAConfig(features="pixels"),
        )
        data = load_run_data(config)
        config = with_batch_size(data.config, shape)
        wta = build_wta_structure(data.dataset, data.split.train, config)
        harr = new_model(config, 16, shape, wta)
        stream, _ = training_stream(config, data, wta, harr.views)
        batch, network = config.batch_size, harr.encoder
        per_image, fixed = training_cost(activation_bytes(network), 4 * network.count_params())
        before = peak_rss_bytes()
        harr.fit(stream, epochs=1, steps_per_epoch=args.steps, verbose=0)
    else:
        if stage == "teacher":
            network = build_backbone(args.backbone, shape, "none")
        else:
            network = build_encoder(shape, 16, model)
        batch = inference_batch_size(network, args.batch_size)
        per_image, fixed = inference_cost(activation_bytes(network), 4 * network.count_params())
        before = peak_rss_bytes()
        if stage == "teacher":
            wta_codes(
                dataset,
                indices,
                "backbone",
                num_permutations=512,
                window=8,
                seed=0,
                network=network,
                batch_size=batch,
            )
        else:
            encode_images(network, dataset.images(indices), batch)
    return {
        "batch": batch,
        "before_gb": before / GB,
        "peak_gb": peak_rss_bytes() / GB,
        "estimate_gb": (fixed + batch * per_image) / GB,
        "budget_gb": budget_bytes() / GB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", help=f"comma-separated, of {STAGES}")
    parser.add_argument("--folder", required=True, help="a folder of images (folder:DIR)")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--images", type=int, default=128, help="images the stage reads")
    parser.add_argument("--steps", type=int, default=2, help="training steps")
    parser.add_argument("--batch-size", type=int, help="default: the one the budget gives")
    parser.add_argument("--memory-budget", type=float, help="GB (default: a third of RAM)")
    args = parser.parse_args()
    from harr_tf.quiet import quiet_tensorflow

    quiet_tensorflow(False)
    for stage in args.stages.split(","):
        if stage not in STAGES:
            raise SystemExit(f"Unknown stage {stage!r}. Expected some of {STAGES}.")
        print(json.dumps({"stage": stage, **run_stage(stage, args)}), flush=True)


if __name__ == "__main__":
    main()
