"""Summarise a study scored by episode return (POPGym, MinAtar, MiniGrid): the best and the
final periodic evaluation, and the final model's return on its own task and on test tasks, per
training task and policy, with 95% t-intervals over seeds.

    .venv/bin/python experiments/returns_summary.py runs/popgym_repeat_first_noact \\
        --test-env popgym-RepeatFirstMedium-v0 --episodes 200 \\
        --json docs/results/popgym_repeat_first_noact.json

The best evaluation is the largest mean return over a run's periodic evaluations
(``eval/evaluations.npz``). On POPGym, whose returns are normalised to [-1, 1], that is MMER,
max mean episodic reward (``envs.popgym.max_mean_episodic_reward``; the paper takes it over
training batches). On MinAtar the returns are game scores. The final model is evaluated on its
training task and on each ``--test-env`` (the same observation layout, e.g. a harder
difficulty) with sampled actions and the same evaluation seed for every run. ``--success``
adds the final models' success rates (MiniGrid: the goal reached, a positive return).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from study_summary import report  # experiments/ is the script's folder, so on sys.path

from rim_agents.evaluation import evaluate, find_config


def run_summary(run_dir: Path, test_envs: list[str], episodes: int) -> dict[str, Any]:
    """One run: task, policy, seed, best and final evaluation, the final model's return per task."""
    config = find_config(run_dir / "final_model.zip")
    if config is None:
        raise ValueError(f"{run_dir} has no config.yaml: not a run directory of the training core")
    with np.load(run_dir / "eval" / "evaluations.npz") as evaluations:
        means = evaluations["results"].mean(axis=1)
        steps = int(evaluations["timesteps"][-1])
    row: dict[str, Any] = {
        "run": run_dir.name,
        "env": config.env,
        "policy": config.policy,
        "seed": config.seed,
        "steps": steps,
        "best_evaluation": float(means.max()),
        "final_evaluation": float(means[-1]),
    }
    for key, env_id in [("final_model", config.env)] + [(f"final_model/{e}", e) for e in test_envs]:
        result = evaluate(run_dir / "final_model.zip", env_id=env_id, episodes=episodes, seed=2_000_000)
        row[key] = float(result["mean_return"])
        if result["success_rate"] is not None:
            row[f"success/{key}"] = float(result["success_rate"])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study_dirs", type=Path, nargs="+", help="folders of the studies' run directories")
    parser.add_argument("--test-env", nargs="*", default=[], help="other ids for every final model")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task for the final models")
    parser.add_argument("--json", type=Path, default=None, help="write rows and summary here")
    parser.add_argument(
        "--success", action="store_true", help="also summarise the final models' success rates"
    )
    args = parser.parse_args(argv)
    runs = sorted(path.parent for folder in args.study_dirs for path in folder.glob("*/final_model.zip"))
    if not runs:
        print(f"error: no finished runs (final_model.zip) under {args.study_dirs}", file=sys.stderr)
        return 2
    rows = [run_summary(run, args.test_env, args.episodes) for run in runs]
    columns = ["best_evaluation", "final_evaluation", "final_model"]
    columns += [f"final_model/{env_id}" for env_id in args.test_env]
    titles = ["best evaluation (MMER on POPGym)", "final evaluation", "final model"]
    titles += [f"final model on {env_id}" for env_id in args.test_env]
    unit = "mean return"
    if args.success:
        missing = [row["run"] for row in rows if "success/final_model" not in row]
        if missing:
            print(f"error: --success, but these runs' tasks report no success: {missing}", file=sys.stderr)
            return 2
        columns += [f"success/{column}" for column in columns if column.startswith("final_model")]
        titles += [f"success, {title}" for title in titles if title.startswith("final model")]
        unit = "mean return or success rate"
    report(rows, columns, titles, unit, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
