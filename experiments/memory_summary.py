"""Summarise a memory study: success on the training task over the last evaluations, and on
longer test tasks, per policy, with 95% t-intervals over seeds.

    .venv/bin/python experiments/memory_summary.py runs/memory_view3_s7 \\
        --test-env MiniGrid-MemoryS11-v0 --episodes 100 --json docs/results/memory_view3_s7.json

Reads each run directory's ``eval/evaluations.npz`` (the training core's periodic
evaluations on the training task: success = a positive return) and evaluates its
``final_model.zip`` on each ``--test-env`` with the run's own environment options (view size,
actions), sampled actions, the same evaluation seed for every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from rim_agents.evaluation import evaluate, find_config


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, float(half)


def run_summary(run_dir: Path, last: int, test_envs: list[str], episodes: int) -> dict[str, Any]:
    """One run: its policy, seed, training-task success (final and mean of the last evaluations),
    and its final model's success on each test task."""
    config = find_config(run_dir / "final_model.zip")
    if config is None:
        raise ValueError(f"{run_dir} has no config.yaml: not a run directory of the training core")
    evaluations = np.load(run_dir / "eval" / "evaluations.npz")
    success = (evaluations["results"] > 0).mean(axis=1)
    row: dict[str, Any] = {
        "run": run_dir.name,
        "policy": config.policy,
        "seed": config.seed,
        "steps": int(evaluations["timesteps"][-1]),
        "train_success_final": float(success[-1]),
        f"train_success_last{last}": float(success[-last:].mean()),
    }
    for env_id in test_envs:
        result = evaluate(run_dir / "final_model.zip", env_id=env_id, episodes=episodes, seed=2_000_000)
        row[f"test_success/{env_id}"] = float(result["success_rate"])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study_dir", type=Path, help="folder of the study's run directories")
    parser.add_argument("--test-env", nargs="*", default=[], help="longer tasks for the final models")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per test task")
    parser.add_argument("--last", type=int, default=5, help="training-task evaluations averaged")
    parser.add_argument("--json", type=Path, default=None, help="write rows and summary here")
    args = parser.parse_args(argv)
    runs = sorted(path.parent for path in args.study_dir.glob("*/final_model.zip"))
    if not runs:
        print(f"error: no finished runs (final_model.zip) under {args.study_dir}", file=sys.stderr)
        return 2
    rows = [run_summary(run, args.last, args.test_env, args.episodes) for run in runs]
    columns = [f"train_success_last{args.last}", "train_success_final"]
    columns += [f"test_success/{env_id}" for env_id in args.test_env]
    summary: dict[str, dict[str, Any]] = {}
    for policy in sorted({row["policy"] for row in rows}):
        mine = [row for row in rows if row["policy"] == policy]
        summary[policy] = {"seeds": len(mine), "steps": min(row["steps"] for row in mine)}
        for column in columns:
            summary[policy][column] = interval([row[column] for row in mine])
    names = [f"last {args.last} evaluations", "final evaluation"]
    names += [f"final model on {env_id}" for env_id in args.test_env]
    print("| policy | seeds | steps | " + " | ".join(f"success, {name}" for name in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for policy, cells in summary.items():
        values = " | ".join(f"{cells[c][0]:.2f} ± {cells[c][1]:.2f}" for c in columns)
        print(f"| {policy} | {cells['seeds']} | {cells['steps']:,} | {values} |")
    print("(mean over seeds ± half-width of the 95% t-interval; one seed: no interval)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
