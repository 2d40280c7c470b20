"""Train RIM or an LSTM on the copying task (paper Table 1) and print a results table.

Small CPU default (see docs/copying.md), both models::

    python scripts/train_copying.py --model rim
    python scripts/train_copying.py --model lstm

The paper's configuration (gap 50 train / 200 test, 6x100 units k=4, LSTM 600)::

    python scripts/train_copying.py --paper --model rim --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from rim_agents.copying import (
    CELLS,
    LR_SCHEDULES,
    MODELS,
    ConfigError,
    CopyingConfig,
    paper_config,
    results_table,
    train_copying,
)
from rim_agents.nn.attention import COMM_READS

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
    "num_units": ("--num-units", int, "RIM units"),
    "unit_size": ("--unit-size", int, "RIM unit size"),
    "top_k": ("--top-k", int, "RIM units active per step"),
    "cell": ("--cell", str, "RIM unit dynamics"),
    "input_dropout": ("--input-dropout", float, "RIM dropout on the input-attention weights"),
    "comm_dropout": ("--comm-dropout", float, "RIM dropout on the communication-attention weights"),
    "comm_read": ("--comm-read", str, "how RIM units add their communication read (gated or linear)"),
    "hidden_size": ("--hidden-size", int, "LSTM baseline hidden size"),
    "device": ("--device", str, "torch device, e.g. cpu or cuda"),
    "num_threads": ("--num-threads", int, "CPU threads for torch (one is fastest for the RIM on a CPU)"),
}
CHOICES = {"model": MODELS, "cell": CELLS, "lr_schedule": LR_SCHEDULES, "comm_read": COMM_READS}


def parse_args(argv: list[str] | None = None) -> tuple[CopyingConfig, Path, bool]:
    """
    :param argv: command-line arguments (default ``sys.argv[1:]``)
    :return: the validated configuration, the output folder and whether to show a progress bar
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
    defaults = CopyingConfig()
    for config_field in fields(CopyingConfig):
        flag, kind, text = FLAGS[config_field.name]
        default = getattr(defaults, config_field.name)
        if config_field.name == "test_lengths":
            parser.add_argument(
                flag, type=kind, nargs="+", default=None, help=f"{text} (default {list(default)})"
            )
        else:
            parser.add_argument(
                flag,
                type=kind,
                choices=CHOICES.get(config_field.name),
                default=None,
                help=f"{text} (default {default})",
            )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for TensorBoard events, checkpoint.pt and results.json "
        "(default runs/copying/<model>__gap<train>__<seed>__<time>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    model = args.model or defaults.model
    base = paper_config(model) if args.paper else CopyingConfig(model=model)
    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    values = {config_field.name: getattr(base, config_field.name) for config_field in fields(CopyingConfig)}
    values.update(overrides)
    try:
        config = CopyingConfig(**values)
    except ConfigError as error:
        allowed = error.allowed
        for name, (flag, _, _) in FLAGS.items():
            allowed = allowed.replace(f"{name}=", f"{flag}=")
        parser.error(f"{FLAGS[error.name][0]} must be {allowed}, got {error.value!r}")
    output = args.output or Path(
        "runs", "copying", f"{config.model}__gap{config.train_length}__{config.seed}__{int(time.time())}"
    )
    return config, output, not args.no_progress


def main(argv: list[str] | None = None) -> None:
    config, output, progress = parse_args(argv)
    results = train_copying(config, output, progress=progress)
    print(results_table(results))
    print(f"\nwall time {results['wall_time_s']:.0f} s; results in {output / 'results.json'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
