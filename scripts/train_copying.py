"""Train RIM or an LSTM on the copying task (paper Table 1) and print a results table.

Small CPU default (see docs/copying.md), both models::

    python scripts/train_copying.py --model rim
    python scripts/train_copying.py --model lstm

The paper's configuration (gap 50 train / 200 test, 6x100 units k=4, LSTM 600)::

    python scripts/train_copying.py --paper --model rim --device cuda

Continue a run that was stopped (Ctrl-C saves a checkpoint; a killed run continues from its
last finished epoch), optionally with more epochs::

    python scripts/train_copying.py --resume runs/copying/rim [--epochs 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rim_agents.copying import (
    CELLS,
    LR_SCHEDULES,
    MODELS,
    CopyingConfig,
    check_new_run_folder,
    load_checkpoint,
    paper_config,
    results_table,
    resumed_config,
    train_copying,
)
from rim_agents.nn.attention import COMM_READS
from rim_agents.supervised_cli import (
    CORE_FLAGS,
    add_config_flags,
    add_run_flags,
    new_run_args,
    resume_args,
    train_and_report,
)

FLAGS = {
    "model": ("--model", str, "rim (RIMs) or lstm (the baseline)"),
    "train_length": ("--train-length", int, "gap (blanks before the delimiter) of the training sequences"),
    "test_lengths": ("--test-lengths", int, "gaps to evaluate on after every epoch"),
    "epochs": ("--epochs", int, "epochs; each ends with an evaluation and a checkpoint"),
    "batches_per_epoch": ("--batches-per-epoch", int, "training batches per epoch"),
    "batch_size": ("--batch-size", int, "sequences per batch"),
    "eval_batches": ("--eval-batches", int, "test batches per gap"),
    "lr": ("--lr", float, "Adam learning rate (the starting rate of the cosine schedule)"),
    "lr_schedule": ("--lr-schedule", str, "constant, or cosine decay to 0 at the last update"),
    "clip": ("--clip", float, "maximum gradient norm"),
    "seed": ("--seed", int, "seed for the weights, the training data and the test sets"),
    "embedding_size": ("--embedding-size", int, "token embedding size"),
    **CORE_FLAGS,
}
CHOICES = {"model": MODELS, "cell": CELLS, "lr_schedule": LR_SCHEDULES, "comm_read": COMM_READS}


def parse_args(argv: list[str] | None = None) -> tuple[CopyingConfig, Path, bool, bool]:
    """
    :param argv: command-line arguments (default ``sys.argv[1:]``)
    :return: the validated configuration, the output folder, whether to show a progress bar and
        whether to resume the run saved there
    """
    parser = argparse.ArgumentParser(
        description="Copying task (Goyal et al. 2021, Table 1): train on one gap, test on longer ones."
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="start from the paper's configuration (gap 50/200, 6x100 k=4, LSTM 600, 200x200 batches at a "
        "constant 1e-3, attention dropouts 0.1) "
        "instead of the small CPU default; other flags still override it",
    )
    add_config_flags(parser, CopyingConfig, FLAGS, CHOICES)
    add_run_flags(
        parser,
        "runs/copying/<model>__gap<train>__<seed>__<time>",
        "--epochs (with a constant learning rate) and --no-progress",
    )
    args = parser.parse_args(argv)
    if args.resume is not None:
        return resume_args(
            parser,
            args,
            FLAGS,
            ["--paper"] if args.paper else [],
            lambda: resumed_config(load_checkpoint(args.resume), args.epochs),
        )

    def make_config() -> CopyingConfig:
        model = args.model or CopyingConfig.model
        base = paper_config(model) if args.paper else CopyingConfig(model=model)
        overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
        return CopyingConfig(**{**asdict(base), **overrides})

    return new_run_args(
        parser,
        args,
        FLAGS,
        make_config,
        lambda config: Path(
            "runs", "copying", f"{config.model}__gap{config.train_length}__{config.seed}__{int(time.time())}"
        ),
        check_new_run_folder,
    )


def main(argv: list[str] | None = None) -> int:
    config, output, progress, resume = parse_args(argv)
    return train_and_report(
        lambda: train_copying(config, output, progress=progress, resume=resume),
        results_table,
        output,
        "scripts/train_copying.py",
    )


if __name__ == "__main__":
    sys.exit(main())
