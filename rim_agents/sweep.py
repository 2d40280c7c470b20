"""Experiment grids and hyperparameter searches on Optuna with shared storage (rl-baselines3-zoo's way).

Three steps, each a function here and a subcommand of ``scripts/sweep.py``:

1. :func:`create_grid` / :func:`create_search`: a study whose queue holds one WAITING trial
   per grid cell (``study.enqueue_trial``; Optuna's GridSampler runs cells twice when
   several workers ask at once) or per search trial (TPE samples its parameters when a
   worker takes it);
2. :func:`work`: worker processes take queued trials until none is left, each one a
   :func:`rim_agents.training.train` run in ``{output}/{study}/{run name}`` that reports its
   evaluation returns to Optuna (and can be pruned in a search);
3. :func:`report`: a markdown table aggregated over seeds, the same rows as JSON, and
   learning curves with seed bands.

Storage: a journal file path (one machine, or a shared folder) or a ``postgresql://`` URL
(many machines). A trial whose worker died is failed and queued again carrying its run
name, so the retry resumes the same run directory from its latest checkpoint: with
PostgreSQL through Optuna's heartbeat, with a journal file through a beat counter this
module writes into the trial's user attributes (see :class:`Worker`).

A trial's user attributes: ``sweep_index`` (the cell; copied into retries), ``cell`` (its
training options), ``run_name``, ``start_step`` (checkpoint the last attempt resumed from),
``worker`` (host:pid), ``heartbeat`` (journal only: a count of beats), ``deaths`` (how often
the cell's worker died; hand-backs do not count), ``success_rate`` and ``error``.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import json
import multiprocessing
import os
import re
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch as th
import yaml
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, Trial, TrialState
from stable_baselines3.common.callbacks import BaseCallback

from rim_agents.callbacks import checkpoint_problem, sorted_checkpoints
from rim_agents.checks import check_writable_file, check_writable_folder
from rim_agents.stats import t_half_width
from rim_agents.training import (
    CHECKPOINT_DIR,
    HYPERPARAM_KEYS,
    TrainConfig,
    build_algorithm_kwargs,
    make_config,
    train,
)

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
INDEX, CELL, RUN_NAME, START_STEP = "sweep_index", "cell", "run_name", "start_step"
WORKER, HEARTBEAT, SUCCESS, ERROR, DEATHS = "worker", "heartbeat", "success_rate", "error", "deaths"
_SPEC = "sweep"  # study user attribute: how the study was created
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


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


def _suggest(trial: Trial, key: str, distribution: dict[str, Any]) -> Any:
    if "categorical" in distribution:
        return trial.suggest_categorical(key, distribution["categorical"])
    if "float" in distribution:
        low, high = distribution["float"]
        return trial.suggest_float(key, low, high, log=distribution["log"], step=distribution["step"])
    low, high = distribution["int"]
    return trial.suggest_int(
        key, int(low), int(high), log=distribution["log"], step=distribution["step"] or 1
    )


# --- storage --------------------------------------------------------------------------------------


def describe_storage(storage: str) -> str:
    """The storage string with any database password hidden, for messages.

    :param storage: journal file path or database URL
    """
    if _SCHEME_RE.match(storage) is None:
        return storage
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", storage)


def open_storage(
    storage: str,
    heartbeat: int | None = None,
    grace: int | None = None,
    max_retry: int | None = None,
    create: bool = False,
) -> tuple[BaseStorage, Path | None]:
    """Open a journal file or a PostgreSQL database as Optuna storage.

    :param storage: a journal file path (no ``scheme://``), or ``postgresql://user:password@host:port/db``
        (``postgres://`` and ``postgresql+driver://`` too)
    :param heartbeat: seconds between heartbeats of a running trial (database: Optuna's heartbeat)
    :param grace: seconds without a heartbeat after which a running trial counts as dead
    :param max_retry: times a dead worker's trial is queued again (database; the journal path
        does the same in :class:`Worker`)
    :param create: the journal file may be created (``create``); otherwise it must exist
    :return: (storage, journal file path or None for a database)
    """
    match = _SCHEME_RE.match(storage)
    if match is None:
        path = Path(storage)
        if path.is_dir():
            raise ValueError(f"storage={storage!r} is a folder; give a journal file path such as sweeps.log")
        if not create and not path.is_file():
            raise ValueError(
                f"storage={storage!r}: no journal file there; make the sweep first with `create`"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), path
    scheme = match.group(1).lower()
    if scheme == "postgres":
        storage, scheme = "postgresql" + storage[len("postgres") :], "postgresql"
    if scheme != "postgresql" and not scheme.startswith("postgresql+"):
        raise ValueError(
            f"storage={describe_storage(storage)!r}: unknown scheme {scheme!r}. Use a journal file path "
            "(one machine, e.g. sweeps.log) or postgresql://user:password@host:port/database (many machines)"
        )
    import sqlalchemy

    driver = sqlalchemy.engine.make_url(storage).get_driver_name()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}  # workers idle for a whole trial between queries
    if driver in ("psycopg2", "psycopg"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            callback = Requeue(death=True, max_deaths=max_retry) if heartbeat else None
            rdb = RDBStorage(
                storage,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=callback,
            )
    except ImportError as error:
        raise ValueError(
            f"storage={describe_storage(storage)!r} needs the PostgreSQL driver {driver!r}: "
            f"pip install 'rim_agents[sweep]' (psycopg[binary]). {error}"
        ) from error
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        raise ValueError(f"cannot reach the database {describe_storage(storage)!r}: {reason}") from error
    return rdb, None


def _load_study(storage: BaseStorage, study_name: str, where: str) -> tuple[optuna.Study, dict[str, Any]]:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as error:
        names = optuna.get_all_study_names(storage)
        raise ValueError(
            f"study={study_name!r} is not in {where}; studies there: {names or 'none'}"
        ) from error
    spec = study.user_attrs.get(_SPEC)
    if spec is None:
        raise ValueError(
            f"study={study_name!r} in {where} was not made by `sweep.py create` "
            "(or its creation was interrupted)"
        )
    if spec["kind"] == "search":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            # constant_liar: parallel workers do not all sample next to the same running trial.
            study.sampler = optuna.samplers.TPESampler(
                n_startup_trials=spec["n_startup_trials"], multivariate=True, constant_liar=True
            )
        if spec["pruner"] == "median":
            study.pruner = optuna.pruners.MedianPruner(
                n_startup_trials=spec["n_startup_trials"], n_warmup_steps=spec["n_warmup_steps"]
            )
    if spec["kind"] == "grid" or spec["pruner"] == "none":
        study.pruner = optuna.pruners.NopPruner()  # grid cells are a comparison: all run to the end
    return study, spec


def _new_study(storage: str, study_name: str) -> optuna.Study:
    backend, _ = open_storage(storage, create=True)
    try:
        return optuna.create_study(study_name=study_name, storage=backend, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError as error:
        raise ValueError(
            f"study={study_name!r} already exists in {describe_storage(storage)!r}: pick another name or "
            f"delete it (optuna delete-study --study-name {study_name} --storage ...)"
        ) from error


def create_grid(storage: str, study_name: str, grid_file: str | Path) -> int:
    """Create a study with one queued trial per cell of ``grid_file``.

    :param storage: journal file path or PostgreSQL URL
    :param study_name: study name (must be new)
    :param grid_file: YAML grid file (see :func:`load_grid`)
    :return: the number of queued cells
    """
    axes, cells = load_grid(grid_file)
    study = _new_study(storage, study_name)
    for index, cell in enumerate(cells):
        study.enqueue_trial({}, user_attrs={INDEX: index, CELL: cell})
    study.set_user_attr(_SPEC, {"kind": "grid", "axes": axes, "n_items": len(cells)})
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
    study = _new_study(storage, study_name)
    for index in range(n_trials):
        study.enqueue_trial({}, user_attrs={INDEX: index})
    study.set_user_attr(
        _SPEC,
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


# --- workers --------------------------------------------------------------------------------------


class _TrialLost(Exception):
    """The running trial was failed by another worker (declared dead): stop training at once."""


class Requeue:
    """Queue a failed trial again as a WAITING copy that carries its run name.

    Deaths (a worker that stopped beating) and hand-backs (Ctrl-C, SIGTERM) are counted
    apart, in the ``deaths`` user attribute: only deaths spend the ``max_deaths`` budget, so
    interrupting a sweep never leaves a cell without a retry for a real crash. The copy does
    not inherit reported evaluations, which may come from steps past the checkpoint it
    resumes from; it reports on the run's own evaluation grid (evaluations continue on the
    steps they had before the resume), so the pruner compares it at the same steps.
    Usable as an :class:`~optuna.storages.RDBStorage` ``heartbeat_stale_trial_callback``.

    :param death: whether the trial's worker died (counts against ``max_deaths``)
    :param max_deaths: times one cell is queued again after its worker died; None: no limit
    """

    def __init__(self, death: bool, max_deaths: int | None = None) -> None:
        self.death = death
        self.max_deaths = max_deaths

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.add(study, trial)

    def add(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Queue the copy; False when the trial's deaths have spent the budget."""
        deaths = int(trial.user_attrs.get(DEATHS, 0)) + self.death
        if self.max_deaths is not None and deaths > self.max_deaths:
            return False
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={**trial.user_attrs, DEATHS: deaths},
                # Optuna's retry attributes, so RetryHeartbeatStaleTrialCallback.retry_history reads them.
                system_attrs={"failed_trial": history[0], "retry_history": history},
            )
        )
        return True


def read_evaluations(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A run's evaluations from ``eval/evaluations.npz``, one row per step.

    A resumed run appends to the file; where a step was evaluated twice (before a crash and
    again after resuming from an earlier checkpoint) the later evaluation is kept.

    :param run_dir: a run directory
    :return: (steps (E,), mean return per evaluation (E,), success rate per evaluation (E,) or None)
    """
    path = Path(run_dir) / "eval" / "evaluations.npz"
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist: the run never finished an evaluation")
    with np.load(path) as data:
        steps = data["timesteps"]
        returns = data["results"].mean(axis=1)
        successes = data["successes"].mean(axis=1) if "successes" in data else None
    last = {int(step): row for row, step in enumerate(steps)}
    rows = [last[step] for step in sorted(last)]
    return steps[rows], returns[rows], None if successes is None else successes[rows]


STATE_TAG = "rim/state_abs_max/h"


def read_state_max(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A RIM run's largest abs(h) per rollout (``rim/state_abs_max/h`` in its TensorBoard events).

    :param run_dir: a run directory
    :return: (steps (R,), largest abs(h) of the rollout ending there (R,)); both empty for an
        LSTM run or a run from before the scalar existed
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    if STATE_TAG not in events.Tags()["scalars"]:
        return np.empty(0, dtype=np.int64), np.empty(0)
    scalars = events.Scalars(STATE_TAG)
    return np.array([e.step for e in scalars]), np.array([e.value for e in scalars])


def resume_point(run_dir: str | Path) -> tuple[Path | None, int]:
    """The latest checkpoint of ``run_dir`` that was completely written, and its step count.

    A worker killed while saving leaves a truncated zip; it is renamed ``*.zip.partial`` so
    that the run resumes from the checkpoint before it.

    :param run_dir: a run directory (it need not exist yet)
    :return: (checkpoint or None, its step count or 0)
    """
    while found := sorted_checkpoints(Path(run_dir) / CHECKPOINT_DIR):
        steps, checkpoint = found[-1]
        if checkpoint_problem(checkpoint) is None:
            return checkpoint, steps
        checkpoint.replace(checkpoint.with_name(f"{checkpoint.name}.partial"))
    return None, 0


def _sweep_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if INDEX in t.user_attrs]


def _lost_cells(trials: list[FrozenTrial]) -> dict[int, str]:
    """The cells whose every attempt failed (none queued, running or finished), with the last error."""
    alive = {t.user_attrs[INDEX] for t in trials if t.state != TrialState.FAIL}
    lost: dict[int, str] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        cell = trial.user_attrs[INDEX]
        if cell not in alive:
            lost[cell] = trial.user_attrs.get(ERROR, "interrupted or its worker died")
    return lost


class _StopWhenLost(BaseCallback):
    """Stop training, within one environment step of noticing, once the trial is not ours.

    Another worker fails a trial whose heartbeat it has not seen change for ``grace``
    seconds and queues a retry that resumes the same run directory; two processes must
    never write there at once. The trial's state is read from the storage at most every
    ``period`` seconds; once it is no longer RUNNING, :class:`_TrialLost` ends ``learn``
    before any further checkpoint or evaluation is written.
    """

    def __init__(self, backend: BaseStorage, trial_id: int, period: float) -> None:
        super().__init__()
        self.backend, self.trial_id, self.period = backend, trial_id, period
        self._next = time.monotonic() + period

    def _on_step(self) -> bool:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.period
            if self.backend.get_trial(self.trial_id).state != TrialState.RUNNING:
                raise _TrialLost(f"trial {self.trial_id} was failed by another worker")
        return True


class Worker:
    """Takes queued trials of a sweep until none is queued or running, then returns.

    A trial is taken from the queue by a compare-and-set of its state (WAITING -> RUNNING),
    so two workers never take the same one and an empty queue creates no trial. While it
    runs, the worker beats: a counter in the trial's ``heartbeat`` attribute (journal) or
    Optuna's heartbeat (database, timed by the database's clock). A journal trial whose
    counter another worker has not seen change for ``grace`` seconds of that worker's own
    monotonic clock is failed and queued again, so clocks of different machines never need
    to agree; ``recover`` queues all running trials at once. The retry carries the run name,
    so it resumes the run directory's latest checkpoint. A worker whose trial was failed this
    way stops training within one step of noticing (:class:`_TrialLost`).

    :param storage: journal file path or PostgreSQL URL
    :param study_name: the study made by ``create``
    :param output: parent of the study's folder of run directories (``{output}/{study_name}/...``)
    :param heartbeat: seconds between heartbeats of the running trial (also the idle poll period)
    :param grace: seconds without a heartbeat after which a running trial counts as dead
    :param max_retry: times one cell is queued again after its worker died (hand-backs after
        Ctrl-C or SIGTERM do not count)
    """

    def __init__(
        self, storage: str, study_name: str, output: str | Path, heartbeat: int, grace: int, max_retry: int
    ) -> None:
        self.backend, self.journal = open_storage(
            storage, heartbeat=heartbeat, grace=grace, max_retry=max_retry
        )
        self.study, self.spec = _load_study(self.backend, study_name, describe_storage(storage))
        self.study_id = self.backend.get_study_id_from_name(study_name)
        self.run_root = Path(output) / study_name
        self.heartbeat = heartbeat
        self.grace = grace
        self.requeue_dead = Requeue(death=True, max_deaths=max_retry)
        self.hand_back = Requeue(death=False)
        self.tag = f"{socket.gethostname()}:{os.getpid()}"
        self.current: int | None = None
        # Journal: the heartbeat counter last seen for each running trial, and when (monotonic).
        self._beats: dict[int, tuple[Any, float]] = {}

    @contextlib.contextmanager
    def _requeue_lock(self) -> Iterator[None]:
        if self.journal is None:  # a database fails a trial atomically: only one worker wins
            yield
            return
        # Journal appends are not compare-and-set: without this lock two workers could both
        # fail the same dead trial and queue it twice.
        lock = JournalFileSymlinkLock(f"{self.journal}.requeue")
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _fail_and_requeue(self, trial: FrozenTrial, requeue: Requeue) -> bool:
        try:
            failed = self.study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            return False  # finished, or failed by another worker, meanwhile
        if failed.state != TrialState.FAIL or not requeue.add(self.study, failed):
            return False
        print(f"[{self.tag}] queued trial {trial.number} (cell {trial.user_attrs[INDEX]}) again", flush=True)
        return True

    def recover(self) -> int:
        """Queue every running trial again now; only safe when no other worker of the sweep is alive.

        :return: the number of trials queued again
        """
        with self._requeue_lock():
            return sum(
                self._fail_and_requeue(t, self.requeue_dead)
                for t in _sweep_trials(self.study, (TrialState.RUNNING,))
            )

    def retry_failed(self) -> int:
        """Queue again every cell whose last attempt raised an error and that has no attempt
        queued, running or finished: after the cause is fixed, the sweep finishes the cells
        it lost. Each retry resumes its run directory's latest checkpoint.

        :return: the number of cells queued again
        """
        with self._requeue_lock():
            attempts: dict[int, list[FrozenTrial]] = {}
            for trial in _sweep_trials(self.study):
                attempts.setdefault(trial.user_attrs[INDEX], []).append(trial)
            count = 0
            for cell in sorted(attempts):
                last = max(attempts[cell], key=lambda t: t.number)
                if last.state == TrialState.FAIL and ERROR in last.user_attrs:
                    self.hand_back.add(self.study, last)
                    print(f"[{self.tag}] queued cell {cell} again ({last.user_attrs[ERROR]})", flush=True)
                    count += 1
            return count

    def _requeue_dead(self) -> None:
        if self.journal is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            return
        now = time.monotonic()
        with self._requeue_lock():
            running = _sweep_trials(self.study, (TrialState.RUNNING,))
            self._beats = {n: seen for n, seen in self._beats.items() if n in {t.number for t in running}}
            for trial in running:
                beat = trial.user_attrs.get(HEARTBEAT)
                seen = self._beats.get(trial.number)
                if seen is None or seen[0] != beat:
                    self._beats[trial.number] = (beat, now)  # alive, or not watched long enough yet
                elif now - seen[1] > self.grace:
                    self._fail_and_requeue(trial, self.requeue_dead)

    def _take(self) -> tuple[Trial, int] | None:
        """Take a queued trial (WAITING -> RUNNING, compare-and-set): the trial and its storage id,
        or None when none is left."""
        for frozen in _sweep_trials(self.study, (TrialState.WAITING,)):
            trial_id = self.backend.get_trial_id_from_study_id_trial_number(self.study_id, frozen.number)
            try:
                if self.backend.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return Trial(self.study, trial_id), trial_id
            except UpdateFinishedTrialError:
                continue  # another worker took it and finished it meanwhile
        return None

    def run(self) -> int:
        """Take trials until the sweep is done: 0, or 130 when interrupted (its trial is queued again)."""
        th.set_num_threads(1)
        try:
            while True:
                self._requeue_dead()
                taken = self._take()
                if taken is not None:
                    self._run_trial(*taken)
                    self.current = None
                elif _sweep_trials(self.study, (TrialState.RUNNING,)):
                    time.sleep(self.heartbeat)  # others are running: wait in case one dies
                else:
                    return 0
        except KeyboardInterrupt:
            self._hand_back()
            return 130

    def _run_trial(self, trial: Trial, trial_id: int) -> None:
        state, value = TrialState.FAIL, None
        try:
            value = self._objective(trial, trial_id)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except _TrialLost:
            print(f"[{self.tag}] trial {trial.number} was declared dead and queued again", flush=True)
            return
        except Exception as error:  # the trial fails; the worker goes on with the next one
            print(f"[{self.tag}] trial {trial.number} failed: {type(error).__name__}: {error}", flush=True)
        try:
            self.study.tell(trial, value, state=state)
        except UpdateFinishedTrialError:
            print(f"[{self.tag}] trial {trial.number} was declared dead and queued again", flush=True)

    def _hand_back(self) -> None:
        if self.current is None:
            return
        trial = self.study.get_trials(deepcopy=False)[self.current]
        if trial.state == TrialState.RUNNING:
            print(f"[{self.tag}] interrupted: handing trial {trial.number} back", flush=True)
            with self._requeue_lock():
                self._fail_and_requeue(trial, self.hand_back)

    @contextlib.contextmanager
    def _beating(self, trial: Trial, trial_id: int) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            count = 0
            while True:
                count += 1
                try:
                    if self.journal is None:
                        self.backend.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                    else:
                        self.backend.set_trial_user_attr(trial_id, HEARTBEAT, count)
                except UpdateFinishedTrialError:
                    return  # declared dead by another worker; _StopWhenLost stops the training
                if stop.wait(self.heartbeat):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _objective(self, trial: Trial, trial_id: int) -> float:
        self.current = trial.number
        attrs = trial.user_attrs
        try:
            cell = attrs.get(CELL)
            if cell is None:  # a search trial's first attempt: sample now, from the trials done so far
                cell = {**self.spec["fixed"]}
                cell.update({key: _suggest(trial, key, d) for key, d in self.spec["space"].items()})
                trial.set_user_attr(CELL, cell)
            config = cell_config(cell, self.run_root)
            run_name = (
                attrs.get(RUN_NAME) or f"{attrs[INDEX]:04d}__{config.env}__{config.policy}__{config.seed}"
            )
            run_dir = self.run_root / run_name
            checkpoint, start = resume_point(run_dir)
            trial.set_user_attr(RUN_NAME, run_name)
            trial.set_user_attr(START_STEP, start)
            trial.set_user_attr(WORKER, self.tag)
            print(
                f"[{self.tag}] trial {trial.number} (cell {attrs[INDEX]}): {run_dir} from step {start}",
                flush=True,
            )

            def report(num_timesteps: int, mean_return: float, success_rate: float | None) -> bool:
                trial.report(mean_return, num_timesteps)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"evaluation return {mean_return:.3g} at step {num_timesteps}")
                return True

            lost = _StopWhenLost(self.backend, trial_id, self.heartbeat)
            with self._beating(trial, trial_id):
                train(config, run_dir=run_dir, checkpoint=checkpoint, report=report, callbacks=[lost])
            _, returns, successes = read_evaluations(run_dir)
            if successes is not None:
                trial.set_user_attr(SUCCESS, float(successes[-1]))
            return float(returns[-1])
        except (optuna.TrialPruned, _TrialLost):
            raise
        except Exception as error:
            trial.set_user_attr(ERROR, f"{type(error).__name__}: {error}"[:1000])
            raise


def _worker_process(
    storage: str, study_name: str, output: str, heartbeat: int, grace: int, max_retry: int
) -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # terminate hands the trial back like Ctrl-C
    code = Worker(storage, study_name, output, heartbeat, grace, max_retry).run()
    raise SystemExit(code)


def work(
    storage: str,
    study_name: str,
    output: str | Path = "logs",
    workers: int = 1,
    heartbeat: int = 30,
    grace: int = 120,
    recover: bool = False,
    max_retry: int = 3,
    retry_failed: bool = False,
) -> int:
    """Run ``workers`` worker processes here until the sweep has nothing queued or running.

    Each worker uses one torch thread and, where there are GPUs, one GPU (round robin). The
    same call on other machines with the same PostgreSQL URL and the same (shared) output
    folder joins the sweep.

    :param storage: journal file path or PostgreSQL URL
    :param study_name: the study made by ``create``
    :param output: folder holding ``{study_name}/{run name}`` run directories
    :param workers: worker processes; 1 works in this process
    :param heartbeat: seconds between heartbeats of a running trial
    :param grace: seconds without a heartbeat after which a trial counts as dead and is queued again
    :param recover: first queue again every trial left running (only when no worker of the sweep is alive)
    :param max_retry: times one cell is queued again after its worker died
    :param retry_failed: first queue again every cell whose last attempt raised an error (a
        trial that fails is not retried on its own: the same error would recur)
    :return: 0 when done, 130 when interrupted, 1 when a worker process died or a cell failed
        (it prints a summary line either way)
    """
    for name, value, low in (
        ("workers", workers, 1),
        ("heartbeat", heartbeat, 1),
        ("max_retry", max_retry, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if isinstance(grace, bool) or not isinstance(grace, int) or grace <= heartbeat:
        raise ValueError(
            f"grace={grace!r} must be an integer number of seconds longer than heartbeat={heartbeat}"
        )
    check_writable_folder(output, "--output")  # here, not as a failed cell per trial
    worker = Worker(storage, study_name, output, heartbeat, grace, max_retry)
    worker_args = (storage, study_name, str(output), heartbeat, grace, max_retry)
    code = _run_workers(worker, workers, recover, retry_failed, worker_args)
    lost = _lost_cells(_sweep_trials(worker.study))
    complete = {t.user_attrs[INDEX] for t in _sweep_trials(worker.study, (TrialState.COMPLETE,))}
    line = f"sweep {study_name!r}: {len(complete)}/{worker.spec['n_items']} complete"
    if lost:
        line += f", {len(lost)} failed {sorted(lost)}: `sweep.py report` shows their errors"
    print(line if code != 130 else f"interrupted; {line}", flush=True)
    return 1 if code == 0 and lost else code


def _run_workers(
    worker: Worker, workers: int, recover: bool, retry_failed: bool, worker_args: tuple[Any, ...]
) -> int:
    """:func:`work` after its checks: the exit status of this process's worker or worker processes."""
    if recover:
        print(f"recovered {worker.recover()} running trial(s)", flush=True)
    if retry_failed:
        print(f"queued {worker.retry_failed()} failed cell(s) again", flush=True)
    if workers == 1:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # hand the trial back
        try:
            return worker.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    devices = _visible_gpus()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    processes = []
    saved = dict(os.environ)
    try:
        for index in range(workers):
            os.environ["OMP_NUM_THREADS"] = "1"
            os.environ["MKL_NUM_THREADS"] = "1"
            if devices:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
            process = context.Process(
                target=_worker_process,
                args=worker_args,
                name=f"sweep-worker-{index}",
            )
            process.start()
            processes.append(process)
    finally:
        os.environ.clear()
        os.environ.update(saved)

    def forward(signum: int, frame: Any) -> None:
        for process in processes:
            process.terminate()

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        for process in processes:
            with contextlib.suppress(
                KeyboardInterrupt
            ):  # the workers got Ctrl-C too and hand back their trials
                process.join()
            process.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    codes = [process.exitcode for process in processes]
    for process, code in zip(processes, codes, strict=True):
        if code not in (0, 130):
            print(f"{process.name} (pid {process.pid}) ended with exit code {code}", flush=True)
    if any(code not in (0, 130) for code in codes):
        return 1
    return 130 if 130 in codes else 0


def _visible_gpus() -> list[str]:
    if not th.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [device.strip() for device in visible.split(",") if device.strip()]
    return [str(index) for index in range(th.cuda.device_count())]


# --- report ---------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None


def _format(mean: float | None, half_width: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if half_width is None else f"{mean:.3f} ± {half_width:.3f}"


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def summarize(
    storage: str, study_name: str, output: str | Path = "logs", threshold: float | None = None
) -> tuple[str, list[str], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Aggregate a sweep's finished runs over seeds.

    :param storage: journal file path or PostgreSQL URL
    :param study_name: the study
    :param output: the folder the workers wrote run directories to (read for ``threshold`` and curves)
    :param threshold: report the first evaluation step whose return reaches this (None: skip)
    :return: (status line, grid axes other than seed, rows (those axes, ``n_seeds``, ``mean_return``,
        ``std_return``, ``ci95_return`` (half-width of the 95% t-interval over seeds),
        ``success_rate``, ``std_success_rate``, ``ci95_success_rate``, ``state_abs_max`` (the mean over
        seeds of each RIM run's largest abs(h), or None), and with a threshold
        ``steps_to_threshold`` and ``n_reached``), runs of each row by its axes' JSON key)
    """
    backend, _ = open_storage(storage)
    study, spec = _load_study(backend, study_name, describe_storage(storage))
    trials = _sweep_trials(study)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    indices = [t.user_attrs[INDEX] for t in complete]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    lost = _lost_cells(trials)
    status = (
        f"study {study_name!r} ({spec['kind']}): {len(set(indices))}/{spec['n_items']} complete, "
        f"{count[TrialState.RUNNING]} running, {count[TrialState.WAITING]} waiting, "
        f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed or interrupted attempt(s)"
    )
    if twice:
        status += f"; cells complete more than once: {twice}"
    if lost:
        status += f"\ncells failed and not queued again: {sorted(lost)}; their errors:"
        status += "".join(f"\n  cell {cell}: {error}" for cell, error in sorted(lost.items()))
        status += "\nfix the cause, then queue them again: sweep.py work ... --retry-failed"
    axes = [axis for axis in spec["axes"] if axis != "seed"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for trial in sorted(complete, key=lambda t: t.user_attrs[INDEX]):
        cell = trial.user_attrs[CELL]
        key = json.dumps([cell.get(axis) for axis in axes])
        groups.setdefault(key, []).append(
            {
                "cell": cell,
                "return": float(trial.value),  # type: ignore[arg-type]
                "success": trial.user_attrs.get(SUCCESS),
                "run_dir": Path(output) / study_name / trial.user_attrs[RUN_NAME],
            }
        )
    missing = [run["run_dir"] for runs in groups.values() for run in runs if not run["run_dir"].is_dir()]
    if missing:
        raise ValueError(
            f"the run directory of a finished cell, {str(missing[0])!r}, is not there: --output must be "
            f"the folder the workers wrote to (work --output), got {str(output)!r}"
        )
    rows = []
    for runs in groups.values():
        final_returns = [run["return"] for run in runs]
        mean, std = _mean_std(final_returns)
        row: dict[str, Any] = {axis: runs[0]["cell"].get(axis) for axis in axes}
        row.update(
            {
                "n_seeds": len(runs),
                "mean_return": mean,
                "std_return": std,
                "ci95_return": t_half_width(final_returns),
            }
        )
        successes = [run["success"] for run in runs if run["success"] is not None]
        success, success_std = _mean_std(successes) if successes else (None, None)
        row.update(
            {
                "success_rate": success,
                "std_success_rate": success_std,
                "ci95_success_rate": t_half_width(successes),
            }
        )
        peaks = [
            values.max() for _, values in map(read_state_max, [run["run_dir"] for run in runs]) if values.size
        ]
        row["state_abs_max"] = float(np.mean(peaks)) if peaks else None
        if threshold is not None:
            reached = []
            for run in runs:
                steps, returns, _ = read_evaluations(run["run_dir"])
                hits = np.flatnonzero(returns >= threshold)
                if len(hits):
                    reached.append(float(steps[hits[0]]))
            row["steps_to_threshold"] = float(np.mean(reached)) if reached else None
            row["n_reached"] = len(reached)
        rows.append(row)
    if spec["kind"] == "search":
        rows.sort(key=lambda row: -row["mean_return"])
    return status, axes, rows, groups


def markdown_table(rows: list[dict[str, Any]], axes: list[str], threshold: float | None = None) -> str:
    """Rows of :func:`summarize` as a markdown table.

    :param rows: aggregated rows
    :param axes: the grid axes other than seed (the first columns)
    :param threshold: the threshold the rows were computed with, for the column title
    """
    header = [*axes, "seeds", "final return (mean ± 95% CI)", "success rate (mean ± 95% CI)"]
    states = any(row["state_abs_max"] is not None for row in rows)
    if states:
        header.append("largest abs(h)")
    if threshold is not None:
        header.append(f"steps to return ≥ {threshold:g}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_value_text(row[axis]) for axis in axes]
        cells += [
            str(row["n_seeds"]),
            _format(row["mean_return"], row["ci95_return"]),
            _format(row["success_rate"], row["ci95_success_rate"]),
        ]
        if states:
            cells.append("-" if row["state_abs_max"] is None else f"{row['state_abs_max']:.3g}")
        if threshold is not None:
            steps = row["steps_to_threshold"]
            cells.append("-" if steps is None else f"{steps:.0f} ({row['n_reached']}/{row['n_seeds']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_states(groups: dict[str, list[dict[str, Any]]], axes: list[str], path: str | Path) -> None:
    """Each RIM run's largest abs(h) per rollout over training, log scale, one line per seed.

    :param groups: runs of each row, as returned by :func:`summarize`
    :param axes: the grid axes other than seed, in row-key order
    :param path: PNG file to write
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout="constrained")
    panel = figure.subplots()
    for (key, runs), color in zip(groups.items(), itertools.cycle(f"C{i}" for i in range(10)), strict=False):
        values = dict(zip(axes, json.loads(key), strict=True))
        label = ", ".join(f"{axis}={_value_text(v)}" for axis, v in values.items()) or "all"
        for index, run in enumerate(runs):
            steps, peaks = read_state_max(run["run_dir"])
            seed = run["cell"].get("seed")
            panel.plot(
                steps, peaks, color=color, alpha=0.8, label=f"{label}, seed {seed}" if index < 9 else None
            )
    panel.set_yscale("log")
    panel.set_xlabel("environment steps")
    panel.set_ylabel("largest abs(h) in the rollout")
    panel.legend(fontsize="x-small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def plot_curves(groups: dict[str, list[dict[str, Any]]], axes: list[str], path: str | Path) -> None:
    """Learning curves, mean over seeds with a ±1 standard deviation band, one panel per env.

    :param groups: runs of each row, as returned by :func:`summarize`
    :param axes: the grid axes other than seed, in row-key order
    :param path: PNG file to write
    """
    from matplotlib.figure import Figure

    by_env: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    for key, runs in groups.items():
        values = dict(zip(axes, json.loads(key), strict=True))
        label = ", ".join(f"{axis}={_value_text(v)}" for axis, v in values.items() if axis != "env") or "all"
        by_env.setdefault(runs[0]["cell"]["env"], []).append((label, runs))
    if not by_env:
        raise ValueError("no finished runs to plot yet")
    figure = Figure(figsize=(6 * len(by_env), 4), layout="constrained")
    for panel, (env, lines) in zip(
        figure.subplots(1, len(by_env), squeeze=False)[0], by_env.items(), strict=True
    ):
        for label, runs in lines:
            curves = [read_evaluations(run["run_dir"]) for run in runs]
            steps = curves[0][0]
            for other, _, _ in curves[1:]:
                steps = np.intersect1d(steps, other)  # pruned or unfinished seeds: common steps only
            returns = np.stack([r[np.isin(s, steps)] for s, r, _ in curves])  # (seeds, E)
            mean = returns.mean(axis=0)
            (line,) = panel.plot(steps, mean, label=f"{label} ({len(runs)} seeds)")
            if len(runs) > 1:
                std = returns.std(axis=0, ddof=1)
                panel.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        panel.set_title(env)
        panel.set_xlabel("environment steps")
        panel.set_ylabel("evaluation return")
        panel.legend(fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def report(
    storage: str,
    study_name: str,
    output: str | Path = "logs",
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    threshold: float | None = None,
    state_plot_path: str | Path | None = None,
) -> str:
    """The sweep's status line and markdown table; optionally the rows as JSON and curves as PNG.

    :param storage: journal file path or PostgreSQL URL
    :param study_name: the study
    :param output: the folder the workers wrote run directories to
    :param json_path: write the rows as a JSON list here
    :param plot_path: write learning curves with seed bands here (PNG)
    :param threshold: add the mean first step at which a seed's evaluation return reached this
    :param state_plot_path: write each RIM run's largest abs(h) over training here (PNG)
    :return: markdown text
    """
    for flag, path in (("--json", json_path), ("--plot", plot_path), ("--state-plot", state_plot_path)):
        if path is not None:
            check_writable_file(path, flag)
    status, axes, rows, groups = summarize(storage, study_name, output, threshold)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=2) + "\n")
    if plot_path is not None:
        plot_curves(groups, axes, plot_path)
    if state_plot_path is not None:
        plot_states(groups, axes, state_plot_path)
    return f"{status}\n\n{markdown_table(rows, axes, threshold)}\n"
