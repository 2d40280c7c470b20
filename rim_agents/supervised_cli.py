"""The command line the supervised tasks' scripts share (``scripts/train_copying.py``,
``scripts/train_seq_images.py``).

Each script names a flag, a type and a help text per configuration field; this module turns
them into argparse flags, a validated configuration (or a parser error naming the flag), the
``--output`` / ``--no-progress`` / ``--resume`` flags and their checks, and the end of ``main``:
train, print the results table, or on Ctrl-C print the command that resumes the run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from rim_agents.run_state import RunExistsError, TrainingInterrupted
from rim_agents.supervised_config import ConfigError

Config = TypeVar("Config")

Flags = dict[str, tuple[str, type, str]]
"""Configuration field -> (flag, type, help text without the default)."""

CORE_FLAGS: Flags = {
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
"""The flags of the recurrent core's fields and the run's device and threads, which every
supervised configuration ends with (``rim_agents.supervised_config``)."""


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_class: type,
    flags: Flags,
    choices: dict[str, Iterable[str]],
) -> None:
    """
    One flag per field of ``config_class``, defaulting to ``None`` (not given); the help shows the
    field's default ("all" for a ``*_limit``), and the one tuple field takes one or more values.

    :param parser: the script's parser
    :param config_class: the configuration dataclass, whose defaults the help shows
    :param flags: every field's flag, type and help text
    :param choices: field -> allowed values, for the fields that have them
    """
    defaults = config_class()
    for config_field in fields(config_class):
        flag, kind, text = flags[config_field.name]
        default = getattr(defaults, config_field.name)
        if isinstance(default, tuple):
            parser.add_argument(
                flag, type=kind, nargs="+", default=None, help=f"{text} (default {list(default)})"
            )
        else:
            shown = "all" if config_field.name.endswith("_limit") else default
            parser.add_argument(
                flag,
                type=kind,
                choices=choices.get(config_field.name),
                default=None,
                help=f"{text} (default {shown})",
            )


def add_run_flags(parser: argparse.ArgumentParser, default_output: str, with_resume: str) -> None:
    """
    :param parser: the script's parser
    :param default_output: the pattern of the default run folder, for the help
    :param with_resume: the flags that may be given with ``--resume``, for the help
    """
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"folder for TensorBoard events, checkpoint.pt and results.json (default {default_output})",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_FOLDER",
        help="continue the run saved in this folder from its checkpoint.pt, exactly where it stopped; "
        f"only {with_resume} may be given with it",
    )


def flag_error(parser: argparse.ArgumentParser, flags: Flags, error: ConfigError) -> NoReturn:
    """Exit through ``parser.error`` with ``error`` told in flags: ``--top-k must be ...``."""
    allowed = error.allowed
    for name, (flag, _, _) in flags.items():
        allowed = allowed.replace(f"{name}=", f"{flag}=")
    parser.error(f"{flags[error.name][0]} must be {allowed}, got {error.value!r}")


def new_run_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    flags: Flags,
    make_config: Callable[[], Config],
    default_output: Callable[[Config], Path],
    check_new_run_folder: Callable[[Path], None],
) -> tuple[Config, Path, bool, bool]:
    """
    ``parse_args`` for a new run: the configuration, and a run folder that holds no run yet.

    :param parser: the script's parser, through which every error exits
    :param args: the parsed flags
    :param flags: every field's flag, to name it in errors
    :param make_config: builds the configuration from the flags (may raise ``ConfigError``)
    :param default_output: the run folder when ``--output`` is not given
    :param check_new_run_folder: the task's refusal of a folder that already holds a run
    :return: what ``parse_args`` returns
    """
    try:
        config = make_config()
    except ConfigError as error:
        flag_error(parser, flags, error)
    output = args.output or default_output(config)
    try:
        check_new_run_folder(output)
    except (RunExistsError, NotADirectoryError) as error:
        parser.error(str(error))
    return config, output, not args.no_progress, False


def resume_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    flags: Flags,
    other_flags: list[str],
    resumed_config: Callable[[], Config],
) -> tuple[Config, Path, bool, bool]:
    """
    ``parse_args`` for ``--resume``: the saved configuration, with at most a new number of epochs.

    :param parser: the script's parser, through which every error exits
    :param args: the parsed flags
    :param flags: every field's flag
    :param other_flags: the script's own flags that were given and do not go with ``--resume``
    :param resumed_config: loads the saved configuration from ``args.resume`` with ``args.epochs``
    :return: what ``parse_args`` returns
    """
    given = [flags[name][0] for name in flags if name != "epochs" and getattr(args, name) is not None]
    given += other_flags
    given += ["--output"] if args.output is not None else []
    if given:
        parser.error(
            f"--resume continues the saved configuration; drop {', '.join(given)} "
            "(only --epochs and --no-progress may be given with it)"
        )
    try:
        config = resumed_config()
    except ConfigError as error:
        parser.error(f"{flags[error.name][0]} must be {error.allowed}, got {error.value!r}")
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    return config, args.resume, not args.no_progress, True


def train_and_report(
    train: Callable[[], dict[str, Any]],
    results_table: Callable[[dict[str, Any]], str],
    output: Path,
    script: str,
) -> int:
    """
    The end of a script's ``main``: train, then print the results table and where they are.

    :param train: runs the training and returns ``results.json``'s content
    :param results_table: the task's markdown table of it
    :param output: the run folder
    :param script: the script's path, for the resume command
    :return: the exit status: 0, or 130 when Ctrl-C stopped the run (its resume command printed)
    """
    try:
        results = train()
    except TrainingInterrupted as stop:
        print(
            f"\ninterrupted after update {stop.update}: checkpoint saved\n"
            f"resume with: python {script} --resume {stop.output_dir}",
            file=sys.stderr,
        )
        return 130
    print(results_table(results))
    print(f"\nwall time {results['wall_time_s']:.0f} s; results in {output / 'results.json'}")
    sys.stdout.flush()
    return 0
