"""What every resumable supervised run (copying, sequential images) does with its run folder.

A run folder holds ``checkpoint.pt`` (everything the rest of the run depends on) and
``results.json`` (the evaluation history), both rewritten through a temporary file so that a
kill never leaves half of one. A new run refuses a folder that already holds one; Ctrl-C stops a
run between two updates so that it can save and be resumed exactly. Its TensorBoard events
start with the hyperparameter table, and a resumed run drops those logged after the checkpoint.
The task modules (``rim_agents.copying``, ``rim_agents.seq_images``) decide what goes into the checkpoint.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch as th
from torch.utils.tensorboard import SummaryWriter

from rim_agents.checkpoints import replace_durably, write_text_atomically

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"


class RunExistsError(FileExistsError):
    """The output folder already holds a run; the message says how to resume it or start afresh."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped a run between two updates after its checkpoint was saved.

    :param output_dir: the run folder, whose ``checkpoint.pt`` continues the run
    :param update: the updates made so far
    """

    def __init__(self, output_dir: Path, update: int) -> None:
        self.output_dir = output_dir
        self.update = update
        super().__init__(f"interrupted after update {update}; checkpoint saved in {output_dir / CHECKPOINT}")


@contextmanager
def interrupt_flag() -> Iterator[Callable[[], bool]]:
    """
    While active, the first Ctrl-C (SIGINT) or SIGTERM (``kill``, a container or machine being
    stopped; the only stop a background job started with ``&`` from a script still hears, as
    such jobs ignore SIGINT) only sets a flag that the training loop reads between updates, so
    the run stops at a clean point and saves; a second one interrupts at once. Outside the main
    thread (where signals cannot be handled) the flag never rises.

    :return: a function that says whether a stop was asked for
    """
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed.is_set
        return
    stops = (signal.SIGINT, signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        pressed.set()
        for stop in stops:  # the next one raises KeyboardInterrupt at once
            signal.signal(stop, signal.default_int_handler)

    previous = {stop: signal.signal(stop, handler) for stop in stops}
    try:
        yield pressed.is_set
    finally:
        for stop, old_handler in previous.items():
            signal.signal(stop, old_handler)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """
    While active, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does, so the code that saves on
    Ctrl-C saves on it too: ``kill``, a stopped container or machine, and background jobs started
    with ``&`` from a script, which ignore SIGINT. Only in the main thread, where signals are
    handled; elsewhere it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_new_run_folder(output_dir: str | Path, task: str, script: str) -> None:
    """
    Refuse to start a run in a folder that already holds one, so that nothing is overwritten.

    :param output_dir: the folder the run would write to
    :param task: the task's name in messages ("copying")
    :param script: the script that resumes it ("scripts/train_copying.py")
    :raises RunExistsError: when ``checkpoint.pt`` or ``results.json`` is there
    :raises NotADirectoryError: when the path is a file
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output {output_dir} is a file, not a folder; pass a folder")
    if (output_dir / CHECKPOINT).exists() or (output_dir / RESULTS).exists():
        raise RunExistsError(
            f"{output_dir} already holds a {task} run; continue it with "
            f"`python {script} --resume {output_dir}`, or pass another --output"
        )


def load_checkpoint(output_dir: str | Path, task: str, script: str) -> dict[str, Any]:
    """
    The saved state of a run, to continue it.

    :param output_dir: the run folder (or its ``checkpoint.pt``)
    :param task: the task's name in messages ("copying")
    :param script: the script that writes such folders ("scripts/train_copying.py")
    :return: the checkpoint dictionary (the task module says what it holds)
    :raises FileNotFoundError: when there is no checkpoint, with what to pass instead
    :raises ValueError: when the file lacks the data generator's state or the configuration
    """
    path = Path(output_dir)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"no {task} checkpoint at {path}; --resume takes a run folder written by "
            f"{script} (it holds {CHECKPOINT})"
        )
    checkpoint = th.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint or "config" not in checkpoint:
        raise ValueError(
            f"{path} is not a resumable {task} checkpoint (it lacks the data generator's state; "
            "runs saved before --resume existed cannot be continued exactly)"
        )
    return checkpoint


def save_atomically(state: dict[str, Any], path: Path) -> None:
    """``th.save`` through a temporary file in the same folder, so a kill never leaves half a checkpoint."""
    partial = path.with_name(f".{path.name}.partial")
    th.save(state, partial)
    replace_durably(partial, path)


def write_results(output_dir: Path, results: dict[str, Any]) -> None:
    """Write ``results.json`` through a temporary file, so a kill never leaves half of it."""
    write_text_atomically(output_dir / RESULTS, json.dumps(results, indent=2) + "\n")


def open_writer(
    output_dir: Path, config: dict[str, Any], num_params: int, step: int, resumed: bool
) -> SummaryWriter:
    """
    The run's TensorBoard writer; a new run logs its hyperparameter table and parameter count.

    :param output_dir: the run folder
    :param config: the configuration as JSON-friendly values
    :param num_params: the model's parameter count
    :param step: the updates made so far
    :param resumed: whether the run continues from its checkpoint
    :return: the writer (the caller closes it)
    """
    # Events logged after the checkpoint by a killed run are dropped: the resumed run rewrites them.
    writer = SummaryWriter(str(output_dir), purge_step=step + 1 if resumed else None)
    if not resumed:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()),
        )
        writer.add_scalar("charts/parameters", num_params, 0)
    return writer


def log_unit_activity(writer: SummaryWriter, prefix: str, unit_activity: th.Tensor, step: int) -> None:
    """
    Log how often each RIM unit was active as ``<prefix>/layer<l>_unit<k>``.

    :param writer: the run's writer
    :param prefix: the tag group, naming the test set ("units_gap_50", "units_16x16")
    :param unit_activity: (num_layers, K) fraction of steps each unit was active
    :param step: the updates made so far
    """
    for layer, activity in enumerate(unit_activity):
        for unit, frequency in enumerate(activity.tolist()):
            writer.add_scalar(f"{prefix}/layer{layer}_unit{unit}", frequency, step)
