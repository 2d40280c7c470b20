"""Checks of user input at the boundary: PPO hyperparameters, torch devices and output paths.

Each raises a ValueError that names the argument, the value and what is allowed, so that the
training core, the scripts and ``RimPPO`` refuse bad input before an environment, a model or
a run directory exists.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch as th

# The allowed range of each numeric PPO hyperparameter, as words for the message.
_POSITIVE_INT = "a positive integer"
_UNIT_INTERVAL = "a number in [0, 1]"
_NON_NEGATIVE = "a number >= 0"
_POSITIVE = "a number > 0"
_SCHEDULE = "a number > 0 or a linear schedule 'lin_<start>' with start > 0"
RANGES: dict[str, str] = {
    "n_steps": _POSITIVE_INT,
    "n_epochs": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "stats_window_size": _POSITIVE_INT,
    "gamma": _UNIT_INTERVAL,
    "gae_lambda": _UNIT_INTERVAL,
    "ent_coef": _NON_NEGATIVE,
    "vf_coef": _NON_NEGATIVE,
    "max_grad_norm": _POSITIVE,
    "target_kl": _POSITIVE,
    "learning_rate": _SCHEDULE,
    "clip_range": _SCHEDULE,
    "clip_range_vf": _SCHEDULE,
}
# None means "off" for these (no KL stop, no value clipping).
_NONE_ALLOWED = ("target_kl", "clip_range_vf")


def linear_schedule_start(key: str, value: str) -> float:
    """The start value of a ``"lin_<start>"`` schedule string (rl-zoo's linear decay to 0).

    :param key: the hyperparameter, for the message
    :param value: e.g. ``"lin_3e-4"``
    """
    if not value.startswith("lin_"):
        raise ValueError(f"{key}={value!r}: a string must be a linear schedule like 'lin_3e-4'")
    try:
        return float(value[len("lin_") :])
    except ValueError as error:
        raise ValueError(f"{key}={value!r}: cannot read the start value after 'lin_'") from error


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fits(allowed: str, key: str, value: Any) -> bool:
    if allowed == _POSITIVE_INT:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if allowed == _SCHEDULE and isinstance(value, str):
        try:
            return linear_schedule_start(key, value) > 0
        except ValueError:
            return False
    if not _is_number(value):
        return False
    if allowed == _UNIT_INTERVAL:
        return 0 <= value <= 1
    if allowed == _NON_NEGATIVE:
        return value >= 0
    return value > 0


def check_hyperparams(hyperparams: dict[str, Any]) -> None:
    """Refuse a PPO hyperparameter outside its range (``n_steps`` a positive integer, ``gamma``
    in [0, 1], ``clip_range`` > 0, ...); keys without a range here are left to the algorithm.

    :param hyperparams: RecurrentPPO arguments, as in a YAML block with overrides applied
    """
    for key, allowed in RANGES.items():
        if key not in hyperparams:
            continue
        value = hyperparams[key]
        if value is None and key in _NONE_ALLOWED:
            continue
        if not _fits(allowed, key, value):
            also = " or None" if key in _NONE_ALLOWED else ""
            raise ValueError(f"hyperparameter {key} must be {allowed}{also}, got {value!r}")


def check_device(device: str | th.device) -> None:
    """Refuse a torch device that does not exist on this machine (SB3 would quietly use the CPU).

    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"mps"``
    """
    if device == "auto":
        return
    try:
        parsed = th.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a torch device; use auto, cpu or cuda[:index]") from error
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = th.cuda.device_count()
        if count == 0:
            raise ValueError(
                f"device={device!r}, but torch sees no CUDA GPU on this machine; use cpu or auto"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device={device!r}, but this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}"
            )
        return
    if parsed.type == "mps" and th.backends.mps.is_available():
        return
    raise ValueError(f"device={device!r} is not available on this machine; use auto, cpu or cuda[:index]")


def check_writable_folder(path: str | Path, what: str) -> None:
    """Refuse a folder that cannot be created or written: a file on the way, or no permission.

    :param path: the folder (it need not exist yet)
    :param what: the flag or argument that gave it, for the message (e.g. ``"-f"``)
    """
    folder = Path(path)
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {str(folder)!r}: {str(existing)!r} is a file, not a folder; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{what} {str(folder)!r}: {str(existing)!r} is not writable; give a folder you can write to"
        )


def check_writable_file(path: str | Path, what: str) -> None:
    """Refuse a file path that cannot be written: a folder, or a folder on the way that cannot be.

    :param path: the file (it need not exist yet)
    :param what: the flag or argument that gave it, for the message (e.g. ``"--json"``)
    """
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{what} {str(file)!r} is a folder; give a file name")
    if file.exists() and not os.access(file, os.W_OK):
        raise ValueError(f"{what} {str(file)!r} is not writable; give a file you can write to")
    check_writable_folder(file.parent, what)
