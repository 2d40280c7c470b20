"""scripts/main.py, the main job, end to end with tiny budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "scripts/main.py",
        "--control-steps",
        "1024",
        "--episodes",
        "2",
        "-f",
        str(tmp_path),
    ]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_main_job_trains_rim_and_control_on_repeat_first_then_evaluates_the_longer_task(
    tmp_path: Path,
) -> None:
    result = _main(tmp_path, "-n", "1024")
    assert result.returncode == 0, result.stderr
    summary = json.loads(next(tmp_path.glob("*__rim__0__*/main_result.json")).read_text())
    assert set(summary["results"]) == {"popgym-RepeatFirstEasy-v0", "popgym-RepeatFirstMedium-v0"}
    for by_policy in summary["results"].values():
        assert set(by_policy) == {"RIM", "memoryless PPO", "random"}
        assert all(len(result["returns"]) == 2 for result in by_policy.values())
        assert all(result["success_rate"] is None for result in by_policy.values())  # POPGym has no success
    # Medium deals 8 decks: 415 answers per episode against Easy's 51.
    assert summary["results"]["popgym-RepeatFirstMedium-v0"]["random"]["lengths"] == [415, 415]
    assert summary["results"]["popgym-RepeatFirstEasy-v0"]["random"]["lengths"] == [51, 51]
    assert summary["trained_steps"]["RIM"] >= 1024 and summary["trained_steps"]["memoryless PPO"] >= 1024
    assert "env_kwargs: previous_action=False" in result.stdout
    assert "| popgym-RepeatFirstMedium-v0 | memoryless PPO |" in result.stdout
    config = next(tmp_path.glob("*__rim__0__*/config.yaml")).read_text()
    assert "previous_action: false" in config
    assert next(tmp_path.glob("*__rim__0__*/unit_activity.png")).stat().st_size > 0


def test_main_job_on_minigrid_memory_trains_the_t_maze_and_tests_memory_s11(tmp_path: Path) -> None:
    result = _main(
        tmp_path, "--env", "MiniGrid-MemoryS7-v0", "-n", "1024", "-params", "env_kwargs.start_at_cue:False"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(next(tmp_path.glob("*__rim__0__*/main_result.json")).read_text())
    assert set(summary["results"]) == {"MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS11-v0"}
    for by_policy in summary["results"].values():
        assert all(0.0 <= result["success_rate"] <= 1.0 for result in by_policy.values())
    # The task's options and the user's override both apply.
    assert "view_size=3, actions=3, start_at_cue=False, fixed_candidates=True" in result.stdout
    assert "| MiniGrid-MemoryS11-v0 | memoryless PPO |" in result.stdout


def test_main_job_rejects_a_task_it_does_not_run(tmp_path: Path) -> None:
    result = _main(tmp_path, "--env", "CartPole-v1")
    assert result.returncode == 2
    assert "runs POPGym (popgym-*) and MiniGrid (MiniGrid-*) tasks" in result.stderr
    assert not list(tmp_path.iterdir())


def test_main_job_rejects_a_bad_override_before_training(tmp_path: Path) -> None:
    command = [sys.executable, "scripts/main.py", "-params", "no_such_key:1", "-f", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no_such_key" in result.stderr
    assert not list(tmp_path.iterdir())
