"""bench/bench_vs_commit.py: the tree it imports, the numbers it parses, the ratios it prints."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


vs_commit = _load("bench_vs_commit")


def test_ratios_are_the_issue_targets_over_the_medians():
    rounds = {"base_rim": [10.0, 12.0, 11.0], "head_rim": [30.0, 20.0, 25.0], "head_ppo": [40.0, 50.0, 45.0]}
    text = "\n".join(vs_commit.report(rounds))
    assert "| base_rim | 10.0 | 12.0 | 11.0 | 11.0 |" in text
    assert "RIM now / RIM at base, YAML block: 2.27x" in text  # 25 / 11
    assert "RIM / memoryless PPO, YAML block now: 0.56x" in text  # 25 / 45
    assert "with the options" not in text  # rows not measured give no ratio


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git repository")
def test_base_tree_is_unpacked_and_imported_first(tmp_path: Path):
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    tree = vs_commit.unpack(head.stdout.strip(), tmp_path)
    assert (tree / "rim_agents" / "training.py").is_file()
    vs_commit.check_imports(tree, tree / "rim_agents")  # PYTHONPATH wins over the installed package
    with pytest.raises(RuntimeError, match="imports from"):
        vs_commit.check_imports(tree, ROOT / "rim_agents")


def test_one_row_runs_bench_ppo_and_parses_its_rate():
    """The real path: bench_ppo.py in a subprocess, its summary line parsed (tiny CartPole run)."""
    row = vs_commit.Row("tiny", "head", "ppo", ("n_envs:1", "n_steps:16", "batch_size:16", "n_epochs:1"))
    rate = vs_commit.steps_per_second(row, ROOT, "CartPoleNoVel-v1", 32)
    assert rate > 0
    with pytest.raises(RuntimeError, match="failed"):
        vs_commit.steps_per_second(
            vs_commit.Row("bad", "head", "ppo", ("n_steps:0",)), ROOT, "CartPoleNoVel-v1", 32
        )
