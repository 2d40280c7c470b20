"""What the supervised tasks' configurations (copying, sequential images) share.

Both describe a recurrent core (``rim_agents.nn.RIM`` or the ``torch.nn.LSTM`` baseline) with the
same fields, trained by Adam with gradient clipping on one device. This module holds the checks of
those fields, each raising ``ConfigError`` with the field, the value and the allowed range, and
the construction of the core they describe. The task modules (``rim_agents.copying``,
``rim_agents.seq_images``) check their own fields and call these in their ``__post_init__``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch as th
from torch import nn

from rim_agents.nn import RIM

MODELS = ("rim", "lstm")
CELLS = ("lstm", "gru")


class ConfigError(ValueError):
    """A configuration value outside what is allowed; names the field, the value and the allowed range."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name} must be {allowed}, got {value!r}")


def is_positive_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) of at least 1."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def check_choices(config: Any, choices: dict[str, Iterable[str]]) -> None:
    """
    :param config: the configuration
    :param choices: field name -> allowed values, checked in this order
    :raises ConfigError: for the first field whose value is not allowed
    """
    for name, allowed in choices.items():
        allowed = tuple(allowed)
        if getattr(config, name) not in allowed:
            raise ConfigError(name, getattr(config, name), f"one of {', '.join(allowed)}")


def check_positive_ints(config: Any, names: Iterable[str]) -> None:
    """
    :param config: the configuration
    :param names: the fields that must be positive integers, checked in this order
    :raises ConfigError: for the first that is not
    """
    for name in names:
        if not is_positive_int(getattr(config, name)):
            raise ConfigError(name, getattr(config, name), "a positive integer")


def check_positive_int_list(name: str, values: tuple[Any, ...]) -> None:
    """
    :param name: the field (``test_lengths``, ``test_sizes``)
    :param values: its value
    :raises ConfigError: when it is empty or holds anything but positive integers
    """
    if not values or not all(is_positive_int(value) for value in values):
        raise ConfigError(name, values, "one or more positive integers")


def check_shared_fields(config: Any) -> None:
    """
    Check the fields every supervised configuration has after its own: ``seed``, ``top_k``
    (against the already checked ``num_units``), ``lr`` and ``clip``, the two RIM dropouts and
    ``device``.

    :param config: the configuration
    :raises ConfigError: for the first field outside its range
    """
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError("seed", config.seed, "a non-negative integer")
    if not is_positive_int(config.top_k) or config.top_k > config.num_units:
        raise ConfigError("top_k", config.top_k, f"an integer in [1, num_units={config.num_units}]")
    for name in ("lr", "clip"):
        value = getattr(config, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ConfigError(name, value, "a positive finite number")
    for name in ("input_dropout", "comm_dropout"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            raise ConfigError(name, value, "a number in [0, 1)")
    try:
        device = th.device(config.device)
    except RuntimeError as error:
        raise ConfigError("device", config.device, "a torch device such as cpu or cuda") from error
    if device.type == "cuda" and not th.cuda.is_available():
        raise ConfigError("device", config.device, "cpu on this machine (torch.cuda.is_available() is False)")


def build_core(config: Any) -> RIM | nn.LSTM:
    """
    The recurrent core that ``config`` describes, on the CPU, with weights drawn from torch's
    global generator (the caller seeds it).

    :param config: the configuration (``model``, ``embedding_size`` and the RIM or LSTM fields)
    :return: ``RIM`` for ``model="rim"``, else ``nn.LSTM(embedding_size, hidden_size)``; both
        time-major, ``(L, N, embedding_size)`` in
    """
    if config.model == "rim":
        return RIM(
            config.embedding_size,
            num_units=config.num_units,
            unit_size=config.unit_size,
            top_k=config.top_k,
            cell=config.cell,
            input_dropout=config.input_dropout,
            comm_dropout=config.comm_dropout,
            comm_read=config.comm_read,
        )
    return nn.LSTM(config.embedding_size, config.hidden_size)


def check_resumable(config: Any, saved: Any) -> None:
    """
    :param config: the configuration a run is resumed with
    :param saved: the configuration saved in its checkpoint
    :raises ConfigError: when they differ in anything but ``epochs``
    """
    if {**config.to_dict(), "epochs": saved.epochs} != saved.to_dict():
        raise ConfigError("config", config.to_dict(), f"the saved run's configuration {saved.to_dict()}")


def check_epochs_started(checkpoint: dict[str, Any], epochs: int) -> None:
    """
    :param checkpoint: a saved run (``epoch`` finished epochs and ``batch`` updates into the next)
    :param epochs: the new total number of epochs
    :raises ConfigError: when ``epochs`` is fewer than the epochs the run has already started
    """
    done = checkpoint["epoch"] + (1 if checkpoint["batch"] else 0)
    if epochs < done:
        raise ConfigError("epochs", epochs, f"at least {done}, the epochs this run has already started")
