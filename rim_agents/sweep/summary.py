"""Step 3 of a sweep, ``report``: the finished runs aggregated over seeds.

:func:`summarize` groups the complete trials by their grid axes other than seed and reads
each run directory (evaluations, the RIM's largest state); :func:`report` prints the status
line and :func:`markdown_table`, and writes the rows as JSON and the curves of
:func:`plot_curves` and :func:`plot_states` as PNG.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import TrialState

from rim_agents.checks import check_writable_file
from rim_agents.stats import t_half_width
from rim_agents.sweep.storage import (
    CELL,
    INDEX,
    RUN_NAME,
    SUCCESS,
    describe_storage,
    load_study,
    lost_cells,
    open_storage,
    sweep_trials,
)


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
    study, spec = load_study(backend, study_name, describe_storage(storage))
    trials = sweep_trials(study)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    indices = [t.user_attrs[INDEX] for t in complete]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    lost = lost_cells(trials)
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
