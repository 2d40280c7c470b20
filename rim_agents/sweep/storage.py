"""The shared queue of a sweep: Optuna storage, the study, and the trials' bookkeeping.

Every step opens the same storage (:func:`open_storage`: a journal file or a PostgreSQL URL)
and reads the same trial user attributes, whose names are the constants here (``sweep_index``,
``cell``, ``run_name``, ...; see :mod:`rim_agents.sweep`). :class:`Requeue` queues a failed
trial again as a copy that carries its run name, which is how a dead worker's cell resumes
its run directory; :func:`sweep_trials` and :func:`lost_cells` are the queries that the
worker and the report share.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

INDEX, CELL, RUN_NAME, START_STEP = "sweep_index", "cell", "run_name", "start_step"
WORKER, HEARTBEAT, SUCCESS, ERROR, DEATHS = "worker", "heartbeat", "success_rate", "error", "deaths"
SPEC = "sweep"  # study user attribute: how the study was created
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


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


def load_study(storage: BaseStorage, study_name: str, where: str) -> tuple[optuna.Study, dict[str, Any]]:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as error:
        names = optuna.get_all_study_names(storage)
        raise ValueError(
            f"study={study_name!r} is not in {where}; studies there: {names or 'none'}"
        ) from error
    spec = study.user_attrs.get(SPEC)
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


def new_study(storage: str, study_name: str) -> optuna.Study:
    backend, _ = open_storage(storage, create=True)
    try:
        return optuna.create_study(study_name=study_name, storage=backend, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError as error:
        raise ValueError(
            f"study={study_name!r} already exists in {describe_storage(storage)!r}: pick another name or "
            f"delete it (optuna delete-study --study-name {study_name} --storage ...)"
        ) from error


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


def sweep_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if INDEX in t.user_attrs]


def lost_cells(trials: list[FrozenTrial]) -> dict[int, str]:
    """The cells whose every attempt failed (none queued, running or finished), with the last error."""
    alive = {t.user_attrs[INDEX] for t in trials if t.state != TrialState.FAIL}
    lost: dict[int, str] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        cell = trial.user_attrs[INDEX]
        if cell not in alive:
            lost[cell] = trial.user_attrs.get(ERROR, "interrupted or its worker died")
    return lost
