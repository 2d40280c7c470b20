"""The study summaries under experiments/, run as scripts on tiny training runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rim_agents.training import make_config, parse_overrides, train

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "experiments" / name), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def popgym_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder with a tiny RIM and a tiny memoryless run on RepeatFirstEasy, 2 evaluations each."""
    folder = tmp_path_factory.mktemp("popgym_study")
    for policy in ("rim", "ppo"):
        overrides = parse_overrides(["n_steps:128", "batch_size:128"])
        config = make_config(
            "popgym-RepeatFirstEasy-v0", policy=policy, n_timesteps=512, n_envs=2, log_folder=str(folder),
            eval_freq=256, eval_episodes=2, progress_bar=False, overrides=overrides,
        )  # fmt: skip
        train(config)
    return folder


def test_popgym_summary_reports_mmer_and_the_final_models_on_a_harder_task(
    popgym_runs: Path, tmp_path
) -> None:
    out = tmp_path / "summary.json"
    result = _script(
        "popgym_summary.py",
        popgym_runs,
        "--test-env",
        "popgym-RepeatFirstMedium-v0",
        "--episodes",
        2,
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert {row["policy"] for row in data["rows"]} == {"rim", "ppo"}
    for row in data["rows"]:
        run_dir = next(popgym_runs.glob(f"*__{row['policy']}__0__*"))
        with np.load(run_dir / "eval" / "evaluations.npz") as evaluations:
            means = evaluations["results"].mean(axis=1)
        assert row["mmer"] == pytest.approx(means.max()) and row["final_evaluation"] == pytest.approx(
            means[-1]
        )
        for task in ("popgym-RepeatFirstEasy-v0", "popgym-RepeatFirstMedium-v0"):
            assert -1.0 <= row[f"final_model/{task}"] <= 1.0
    # One seed per policy: the mean and no interval.
    assert data["summary"]["rim"]["seeds"] == 1 and data["summary"]["rim"]["mmer"][1] == 0.0
    assert "| rim | 1 | 512 |" in result.stdout


def test_popgym_summary_without_finished_runs_fails_clearly(tmp_path) -> None:
    result = _script("popgym_summary.py", tmp_path)
    assert result.returncode == 2 and "no finished runs" in result.stderr


def test_memory_by_start_splits_episodes_by_where_the_cue_was_seen(tmp_path) -> None:
    overrides = parse_overrides(["env_kwargs:{'view_size': 3, 'actions': 3}", "n_steps:64", "batch_size:128"])
    config = make_config(
        "MiniGrid-MemoryS7-v0",
        n_timesteps=128,
        n_envs=2,
        log_folder=str(tmp_path),
        eval_freq=0,
        progress_bar=False,
        overrides=overrides,
    )
    model = train(config) / "final_model.zip"
    out = tmp_path / "by_start.json"
    result = _script("memory_by_start.py", model, "--episodes", 6, "--json", out)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    groups = [value for key, value in row.items() if key != "model"]
    assert len(groups) == 3 and sum(group["episodes"] for group in groups) == 6
    assert all((group["success"] is None) == (group["episodes"] == 0) for group in groups)
    assert all(0.0 <= group["success"] <= 1.0 for group in groups if group["episodes"])
