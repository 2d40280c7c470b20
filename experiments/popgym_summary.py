"""Summarise a POPGym study: MMER, final evaluation and the final model's return on test
tasks, per policy, with 95% t-intervals over seeds.

    .venv/bin/python experiments/popgym_summary.py runs/popgym_repeat_first_noact \\
        --test-env popgym-RepeatFirstMedium-v0 --episodes 200 \\
        --json docs/results/popgym_repeat_first_noact.json

POPGym's returns are normalised to [-1, 1]. MMER is the largest mean return over a run's
periodic evaluations (``envs.popgym.max_mean_episodic_reward``; the paper takes it over
training batches). The final model is evaluated on the training task and on each
``--test-env`` (the same observation layout, e.g. a harder difficulty) with sampled actions
and the same evaluation seed for every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from study_summary import report  # experiments/ is the script's folder, so on sys.path

from envs.popgym import max_mean_episodic_reward
from rim_agents.evaluation import evaluate, find_config


def run_summary(run_dir: Path, test_envs: list[str], episodes: int) -> dict[str, Any]:
    """One run: policy, seed, MMER, final evaluation, and the final model's mean return on each task."""
    config = find_config(run_dir / "final_model.zip")
    if config is None:
        raise ValueError(f"{run_dir} has no config.yaml: not a run directory of the training core")
    with np.load(run_dir / "eval" / "evaluations.npz") as evaluations:
        means = evaluations["results"].mean(axis=1)
        steps = int(evaluations["timesteps"][-1])
    row: dict[str, Any] = {
        "run": run_dir.name,
        "policy": config.policy,
        "seed": config.seed,
        "steps": steps,
        "mmer": max_mean_episodic_reward(run_dir),
        "final_evaluation": float(means[-1]),
    }
    for env_id in [config.env, *test_envs]:
        result = evaluate(run_dir / "final_model.zip", env_id=env_id, episodes=episodes, seed=2_000_000)
        row[f"final_model/{env_id}"] = float(result["mean_return"])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study_dirs", type=Path, nargs="+", help="folders of the studies' run directories")
    parser.add_argument("--test-env", nargs="*", default=[], help="other POPGym ids for the final models")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task for the final models")
    parser.add_argument("--json", type=Path, default=None, help="write rows and summary here")
    args = parser.parse_args(argv)
    runs = sorted(path.parent for folder in args.study_dirs for path in folder.glob("*/final_model.zip"))
    if not runs:
        print(f"error: no finished runs (final_model.zip) under {args.study_dirs}", file=sys.stderr)
        return 2
    rows = [run_summary(run, args.test_env, args.episodes) for run in runs]
    columns = ["mmer", "final_evaluation"] + [key for key in rows[0] if key.startswith("final_model/")]
    report(rows, columns, columns, "mean return", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
