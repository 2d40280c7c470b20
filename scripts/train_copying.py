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
from dataclasses import fields
from pathlib import Path

from rim_agents.copying import (
    CELLS,
    LR_SCHEDULES,
    MODELS,
    ConfigError,
    CopyingConfig,
    RunExistsError,
    TrainingInterrupted,
    check_new_run_folder,
    load_checkpoint,
    paper_config,
    results_table,
    resumed_config,
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
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_FOLDER",
        help="continue the run saved in this folder from its checkpoint.pt, exactly where it stopped; "
        "only --epochs (with a constant learning rate) and --no-progress may be given with it",
    )
    args = parser.parse_args(argv)
    if args.resume is not None:
        return _resume_args(parser, args)

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
    try:
        check_new_run_folder(output)
    except (RunExistsError, NotADirectoryError) as error:
        parser.error(str(error))
    return config, output, not args.no_progress, False


def _resume_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[CopyingConfig, Path, bool, bool]:
    """``parse_args`` for ``--resume``: the saved configuration, with at most a new number of epochs."""
    given = [FLAGS[name][0] for name in FLAGS if name != "epochs" and getattr(args, name) is not None]
    given += ["--paper"] if args.paper else []
    given += ["--output"] if args.output is not None else []
    if given:
        parser.error(
            f"--resume continues the saved configuration; drop {', '.join(given)} "
            "(only --epochs and --no-progress may be given with it)"
        )
    try:
        config = resumed_config(load_checkpoint(args.resume), args.epochs)
    except ConfigError as error:
        parser.error(f"{FLAGS[error.name][0]} must be {error.allowed}, got {error.value!r}")
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    return config, args.resume, not args.no_progress, True


def main(argv: list[str] | None = None) -> int:
    config, output, progress, resume = parse_args(argv)
    try:
        results = train_copying(config, output, progress=progress, resume=resume)
    except TrainingInterrupted as stop:
        print(
            f"\ninterrupted after update {stop.update}: checkpoint saved\n"
            f"resume with: python scripts/train_copying.py --resume {stop.output_dir}",
            file=sys.stderr,
        )
        return 130
    print(results_table(results))
    print(f"\nwall time {results['wall_time_s']:.0f} s; results in {output / 'results.json'}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
