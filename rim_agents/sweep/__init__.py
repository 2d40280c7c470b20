"""Experiment grids and hyperparameter searches on Optuna with shared storage (rl-baselines3-zoo's way).

Three steps, each a module of this package, a function re-exported here and a subcommand
of ``scripts/sweep.py``:

1. ``grid``: :func:`create_grid` / :func:`create_search` make a study whose queue holds one
   WAITING trial per grid cell (``study.enqueue_trial``; Optuna's GridSampler runs cells
   twice when several workers ask at once) or per search trial (TPE samples its parameters
   when a worker takes it);
2. ``worker``: :func:`work` runs worker processes that take queued trials until none is
   left, each one a :func:`rim_agents.training.train` run in ``{output}/{study}/{run name}``
   that reports its evaluation returns to Optuna (and can be pruned in a search);
3. ``summary``: :func:`report` writes a markdown table aggregated over seeds, the same rows
   as JSON, and learning curves with seed bands.

``storage`` holds what the three share: the Optuna storage, the study and the trials'
bookkeeping. Storage: a journal file path (one machine, or a shared folder) or a
``postgresql://`` URL (many machines). A trial whose worker died is failed and queued again
carrying its run name, so the retry resumes the same run directory from its latest
checkpoint: with PostgreSQL through Optuna's heartbeat, with a journal file through a beat
counter this package writes into the trial's user attributes (see :class:`Worker`).

A trial's user attributes: ``sweep_index`` (the cell; copied into retries), ``cell`` (its
training options), ``run_name``, ``start_step`` (checkpoint the last attempt resumed from),
``worker`` (host:pid), ``heartbeat`` (journal only: a count of beats), ``deaths`` (how often
the cell's worker died; hand-backs do not count), ``success_rate`` and ``error``.
"""

from rim_agents.checkpoints import resume_point
from rim_agents.sweep.grid import (
    OPTION_KEYS,
    PRUNERS,
    cell_config,
    create_grid,
    create_search,
    load_grid,
    load_space,
)
from rim_agents.sweep.storage import (
    CELL,
    DEATHS,
    ERROR,
    HEARTBEAT,
    INDEX,
    RUN_NAME,
    START_STEP,
    SUCCESS,
    WORKER,
    Requeue,
    describe_storage,
    open_storage,
)
from rim_agents.sweep.summary import (
    STATE_TAG,
    markdown_table,
    plot_curves,
    plot_states,
    read_evaluations,
    read_state_max,
    report,
    summarize,
)
from rim_agents.sweep.worker import Worker, work

__all__ = [
    "CELL",
    "DEATHS",
    "ERROR",
    "HEARTBEAT",
    "INDEX",
    "OPTION_KEYS",
    "PRUNERS",
    "RUN_NAME",
    "START_STEP",
    "STATE_TAG",
    "SUCCESS",
    "WORKER",
    "Requeue",
    "Worker",
    "cell_config",
    "create_grid",
    "create_search",
    "describe_storage",
    "load_grid",
    "load_space",
    "markdown_table",
    "open_storage",
    "plot_curves",
    "plot_states",
    "read_evaluations",
    "read_state_max",
    "report",
    "resume_point",
    "summarize",
    "work",
]
