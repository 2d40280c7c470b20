"""Step 1 of a sweep, ``create``: grid files and search spaces, read, checked and queued.

:func:`load_grid` turns a grid file into cells (every combination of its list-valued keys),
:func:`load_space` a search-space file into fixed options and TPE distributions; both resolve
every cell to a :class:`~rim_agents.training.TrainConfig` now, so that a typo fails before any
work starts. :func:`create_grid` and :func:`create_search` make the study and queue one WAITING
trial per cell or search trial; :func:`cell_config` is how a worker later turns a cell into
its run's configuration.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import Trial

from rim_agents.sweep.storage import CELL, INDEX, SPEC, new_study
from rim_agents.training import HYPERPARAM_KEYS, TrainConfig, build_algorithm_kwargs, make_config

# Grid and search-space keys that are TrainConfig fields rather than RecurrentPPO hyperparameters.
OPTION_KEYS = (
    "env",
    "policy",
    "seed",
    "n_timesteps",
    "n_envs",
    "vec_env",
    "eval_freq",
    "eval_episodes",
    "eval_deterministic",
    "save_freq",
    "keep_checkpoints",
    "device",
    "max_seconds",
)
PRUNERS = ("median", "none")


class _Loader(yaml.SafeLoader):
    """PyYAML reads ``1e-4`` as a string (YAML 1.1); grid files mean a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    with open(path) as file:
        try:
            data = yaml.load(file, Loader=_Loader)  # a SafeLoader: no arbitrary objects
        except yaml.YAMLError as error:
            raise ValueError(
                f"{what} file {str(path)!r} is not valid YAML: {' '.join(str(error).split())}"
            ) from error
    if data is None or data == {}:
        raise ValueError(
            f"{what} file {str(path)!r} is empty: give at least env (e.g. env: MiniGrid-MemoryS7-v0)"
        )
    if not isinstance(data, dict):
        raise ValueError(
            f"{what} file {str(path)!r} must be a mapping of option: value, got {type(data).__name__}"
        )
    return data


def _check_key(key: str, where: str) -> None:
    top = key.split(".")[0]
    if key in OPTION_KEYS or ("." in key and top in HYPERPARAM_KEYS) or key in HYPERPARAM_KEYS:
        return
    known = sorted(set(OPTION_KEYS) | HYPERPARAM_KEYS)
    close = difflib.get_close_matches(key, known, n=3)
    raise ValueError(
        f"unknown key {key!r} in {where} (close: {', '.join(close) or 'none'}). Allowed: training options "
        f"{list(OPTION_KEYS)} and hyperparameters {sorted(HYPERPARAM_KEYS)}; nested ones with dots, "
        "e.g. policy_kwargs.rim_kwargs.top_k"
    )


def cell_config(cell: dict[str, Any], log_folder: str | Path) -> TrainConfig:
    """The training configuration of one grid cell (or search trial).

    :param cell: training options (:data:`OPTION_KEYS`) and hyperparameter overrides (dotted keys allowed)
    :param log_folder: parent of the run directory
    """
    overrides = dict(cell)
    options = {key: overrides.pop(key) for key in OPTION_KEYS if key in overrides}
    if "env" not in options:
        raise ValueError(f"a sweep cell needs an env, got keys {sorted(cell)}")
    return make_config(
        options.pop("env"),
        policy=options.pop("policy", "rim"),
        seed=options.pop("seed", 0),
        overrides=overrides,
        n_timesteps=options.pop("n_timesteps", None),
        n_envs=options.pop("n_envs", None),
        log_folder=str(log_folder),
        progress_bar=False,
        **options,
    )


def _check_cell(cell: dict[str, Any], where: str) -> None:
    """Resolve a cell now: a typo must fail at create time, not hours into the sweep."""
    try:
        config = cell_config(cell, ".")
        build_algorithm_kwargs(config)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    if not 0 < config.eval_freq <= config.n_timesteps:
        raise ValueError(
            f"{where}: eval_freq={config.eval_freq} must be between 1 and n_timesteps={config.n_timesteps}: "
            "a sweep scores each run by its last evaluation"
        )


def load_grid(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Read a grid file: each key a training option or hyperparameter, a list of several values an axis.

    A one-element list is a fixed value, which is how a list-valued hyperparameter is fixed
    (``policy_kwargs.net_arch: [[64, 64]]``).

    :param path: YAML grid file
    :return: (axis names in file order, cells in grid order: the last axis varies fastest)
    """
    data = _read_yaml(path, "grid")
    axes: dict[str, list[Any]] = {}
    for key, value in data.items():
        _check_key(str(key), f"grid file {str(path)!r}")
        if isinstance(value, list):
            if not value:
                raise ValueError(
                    f"grid axis {key!r} in {str(path)!r} is an empty list: give at least one value"
                )
            encoded = [json.dumps(item, sort_keys=True) for item in value]
            if len(set(encoded)) != len(encoded):
                raise ValueError(f"grid axis {key!r} in {str(path)!r} repeats a value: {value}")
            if len(value) > 1:
                axes[key] = value
    if "env" not in data:
        raise ValueError(f"grid file {str(path)!r} has no env key (e.g. env: MiniGrid-MemoryS7-v0)")
    cells = []
    for combo in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combo, strict=True))
        cells.append(
            {
                key: chosen[key] if key in chosen else (value[0] if isinstance(value, list) else value)
                for key, value in data.items()
            }
        )
    for index, cell in enumerate(cells):
        _check_cell(cell, f"grid cell {index} {cell}")
    return list(axes), cells


def _distribution(key: str, value: Any) -> dict[str, Any] | None:
    """The search distribution a space-file value stands for, or None for a fixed value."""
    if isinstance(value, list) and len(value) > 1:
        if not all(item is None or isinstance(item, (bool, int, float, str)) for item in value):
            raise ValueError(f"search choices for {key!r} must be numbers, strings or booleans, got {value}")
        return {"categorical": value}
    if not isinstance(value, dict) or not ({"float", "int"} & set(value)):
        return None
    kind = "float" if "float" in value else "int"
    extra = sorted(set(value) - {kind, "log", "step"})
    if extra or ("float" in value and "int" in value):
        raise ValueError(
            f"search range for {key!r} takes one of float/int plus log and step; got keys {sorted(value)}"
        )
    bounds = value[kind]
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise ValueError(
            f"search range for {key!r}: {kind} must be [low, high] with low < high, got {bounds}"
        )
    return {kind: bounds, "log": bool(value.get("log", False)), "step": value.get("step")}


def load_space(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read a search-space file: like a grid file, but a list is a categorical choice for TPE and
    ``{float: [low, high], log: true}`` or ``{int: [low, high], step: 2}`` is a range.

    :param path: YAML search-space file
    :return: (fixed options, searched distributions by key)
    """
    data = _read_yaml(path, "search space")
    fixed: dict[str, Any] = {}
    space: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        _check_key(str(key), f"search space file {str(path)!r}")
        if isinstance(value, list) and not value:
            raise ValueError(f"search choices for {key!r} in {str(path)!r} are an empty list")
        distribution = _distribution(key, value)
        if distribution is None:
            fixed[key] = value[0] if isinstance(value, list) else value
        else:
            space[key] = distribution
    if "env" not in data:
        raise ValueError(f"search space file {str(path)!r} has no env key (e.g. env: MiniGrid-MemoryS7-v0)")
    if not space:
        raise ValueError(
            f"search space file {str(path)!r} searches nothing: give a list of choices or a range"
        )
    lowest = {
        key: next(v for k, v in d.items() if k in ("categorical", "float", "int"))[0]
        for key, d in space.items()
    }
    _check_cell({**fixed, **lowest}, f"search space {str(path)!r}")
    return fixed, space


def suggest(trial: Trial, key: str, distribution: dict[str, Any]) -> Any:
    if "categorical" in distribution:
        return trial.suggest_categorical(key, distribution["categorical"])
    if "float" in distribution:
        low, high = distribution["float"]
        return trial.suggest_float(key, low, high, log=distribution["log"], step=distribution["step"])
    low, high = distribution["int"]
    return trial.suggest_int(
        key, int(low), int(high), log=distribution["log"], step=distribution["step"] or 1
    )


def create_grid(storage: str, study_name: str, grid_file: str | Path) -> int:
    """Create a study with one queued trial per cell of ``grid_file``.

    :param storage: journal file path or PostgreSQL URL
    :param study_name: study name (must be new)
    :param grid_file: YAML grid file (see :func:`load_grid`)
    :return: the number of queued cells
    """
    axes, cells = load_grid(grid_file)
    study = new_study(storage, study_name)
    for index, cell in enumerate(cells):
        study.enqueue_trial({}, user_attrs={INDEX: index, CELL: cell})
    study.set_user_attr(SPEC, {"kind": "grid", "axes": axes, "n_items": len(cells)})
    return len(cells)


def create_search(
    storage: str,
    study_name: str,
    space_file: str | Path,
    n_trials: int,
    pruner: str = "median",
    n_startup_trials: int = 5,
) -> int:
    """Create a study with ``n_trials`` queued TPE trials over the space of ``space_file``.

    Queued trials carry no parameters yet: TPE samples them when a worker takes one, from
    the trials finished by then. The median pruner stops a trial whose evaluation return is
    below the median of earlier trials at the same step, after a third of ``n_timesteps``.

    :param storage: journal file path or PostgreSQL URL
    :param study_name: study name (must be new)
    :param space_file: YAML search space (see :func:`load_space`)
    :param n_trials: trials to run
    :param pruner: ``"median"`` or ``"none"``
    :param n_startup_trials: random trials before TPE, and trials before the pruner acts
    :return: the number of queued trials
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials={n_trials!r} must be a positive integer")
    if pruner not in PRUNERS:
        raise ValueError(f"pruner={pruner!r} is not supported; use one of {PRUNERS}")
    if isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 0:
        raise ValueError(f"n_startup_trials={n_startup_trials!r} must be a non-negative integer")
    fixed, space = load_space(space_file)
    steps = fixed.get("n_timesteps")
    study = new_study(storage, study_name)
    for index in range(n_trials):
        study.enqueue_trial({}, user_attrs={INDEX: index})
    study.set_user_attr(
        SPEC,
        {
            "kind": "search",
            "axes": list(space),
            "n_items": n_trials,
            "fixed": fixed,
            "space": space,
            "pruner": pruner,
            "n_startup_trials": n_startup_trials,
            "n_warmup_steps": int(steps) // 3 if isinstance(steps, (int, float)) else 0,
        },
    )
    return n_trials
