"""scripts/main.py, the main job, end to end with tiny budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_main_job_trains_rim_and_control_then_evaluates_both_tasks(tmp_path: Path) -> None:
    command = [sys.executable, "scripts/main.py", "-n", "1024", "--control-steps", "1024", "--episodes", "2",
               "-f", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(next(tmp_path.glob("*__rim__0__*/main_result.json")).read_text())
    assert set(summary["results"]) == {"MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS11-v0"}
    for by_policy in summary["results"].values():
        assert set(by_policy) == {"RIM", "memoryless PPO", "random"}
        assert all(len(result["returns"]) == 2 for result in by_policy.values())
    assert summary["trained_steps"]["RIM"] >= 1024 and summary["trained_steps"]["memoryless PPO"] >= 1024
    assert "3x3 view" in result.stdout and "| MiniGrid-MemoryS11-v0 | memoryless PPO |" in result.stdout
    assert next(tmp_path.glob("*__rim__0__*/unit_activity.png")).stat().st_size > 0


def test_main_job_rejects_a_bad_override_before_training(tmp_path: Path) -> None:
    command = [sys.executable, "scripts/main.py", "-params", "no_such_key:1", "-f", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no_such_key" in result.stderr
    assert not list(tmp_path.iterdir())
