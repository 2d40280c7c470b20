"""Summarise a memory study: success on the training task over the last evaluations, and on
longer test tasks, per policy, with 95% t-intervals over seeds.

    .venv/bin/python experiments/memory_summary.py runs/memory_view3_s7 \\
        --test-env MiniGrid-MemoryS11-v0 --episodes 100 --json docs/results/memory_view3_s7.json

Reads each run directory's ``eval/evaluations.npz`` (the training core's periodic
evaluations on the training task: success = a positive return) and evaluates its
``final_model.zip`` on each ``--test-env`` with the run's own environment options (view size,
actions), sampled actions, the same evaluation seed for every run. ``--model best`` evaluates
``best_model.zip`` instead: the model of the run's best periodic evaluation on the training
task (chosen on that task alone, so a run that solved it and later collapsed is judged by
what it had learned).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from study_summary import report  # experiments/ is the script's folder, so on sys.path

from rim_agents.evaluation import evaluate, find_config


def run_summary(
    run_dir: Path, last: int, test_envs: list[str], episodes: int, model: str = "final"
) -> dict[str, Any]:
    """One run: its policy, seed, training-task success (final and mean of the last evaluations),
    and its ``model`` ("final" or "best") model's success on each test task."""
    model_path = run_dir / f"{model}_model.zip"
    if not model_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {model_path.name}: was the run finished with evaluations?")
    config = find_config(model_path)
    if config is None:
        raise ValueError(f"{run_dir} has no config.yaml: not a run directory of the training core")
    evaluations = np.load(run_dir / "eval" / "evaluations.npz")
    success = (evaluations["results"] > 0).mean(axis=1)
    row: dict[str, Any] = {
        "run": run_dir.name,
        "env": config.env,
        "policy": config.policy,
        "seed": config.seed,
        "steps": int(evaluations["timesteps"][-1]),
        "train_success_final": float(success[-1]),
        f"train_success_last{last}": float(success[-last:].mean()),
        "model": model,
    }
    if model == "best":
        row["model_steps"] = int(json.loads((run_dir / "best_model.json").read_text())["num_timesteps"])
    for env_id in test_envs:
        result = evaluate(model_path, env_id=env_id, episodes=episodes, seed=2_000_000)
        row[f"test_success/{env_id}"] = float(result["success_rate"])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study_dir", type=Path, help="folder of the study's run directories")
    parser.add_argument("--test-env", nargs="*", default=[], help="longer tasks for the models")
    parser.add_argument(
        "--model", choices=["final", "best"], default="final", help="which model of each run to evaluate"
    )
    parser.add_argument("--episodes", type=int, default=100, help="episodes per test task")
    parser.add_argument("--last", type=int, default=5, help="training-task evaluations averaged")
    parser.add_argument("--json", type=Path, default=None, help="write rows and summary here")
    args = parser.parse_args(argv)
    runs = sorted(path.parent for path in args.study_dir.glob("*/final_model.zip"))
    if not runs:
        print(f"error: no finished runs (final_model.zip) under {args.study_dir}", file=sys.stderr)
        return 2
    rows = [run_summary(run, args.last, args.test_env, args.episodes, args.model) for run in runs]
    columns = [f"train_success_last{args.last}", "train_success_final"]
    columns += [f"test_success/{env_id}" for env_id in args.test_env]
    names = [f"last {args.last} evaluations", "final evaluation"]
    names += [f"{args.model} model on {env_id}" for env_id in args.test_env]
    report(rows, columns, [f"success, {name}" for name in names], "mean", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
