"""The study summaries under experiments/, run as scripts on tiny training runs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from envs.popgym import max_mean_episodic_reward
from rim_agents.sweep import load_grid, load_space
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


def test_returns_summary_reports_mmer_and_the_final_models_on_a_harder_task(
    popgym_runs: Path, tmp_path
) -> None:
    out = tmp_path / "summary.json"
    result = _script(
        "returns_summary.py",
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
        assert row["best_evaluation"] == pytest.approx(max_mean_episodic_reward(run_dir))
        assert row["best_evaluation"] == pytest.approx(means.max())
        assert row["final_evaluation"] == pytest.approx(means[-1])
        for key in ("final_model", "final_model/popgym-RepeatFirstMedium-v0"):
            assert -1.0 <= row[key] <= 1.0
    # One seed per policy: the mean and no interval.
    rim = data["summary"]["popgym-RepeatFirstEasy-v0"]["rim"]
    assert rim["seeds"] == 1 and rim["best_evaluation"][1] == 0.0
    assert "| popgym-RepeatFirstEasy-v0 | rim | 1 | 512 |" in result.stdout


def test_popgym_summary_without_finished_runs_fails_clearly(tmp_path) -> None:
    result = _script("returns_summary.py", tmp_path)
    assert result.returncode == 2 and "no finished runs" in result.stderr


@pytest.fixture(scope="module")
def minigrid_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder with a tiny RIM and a tiny memoryless run on MemoryS7 (3x3 view), 2 evaluations each."""
    folder = tmp_path_factory.mktemp("minigrid_study")
    overrides = parse_overrides(["env_kwargs:{'view_size': 3, 'actions': 3}", "n_steps:64", "batch_size:128"])
    for policy in ("rim", "ppo"):
        config = make_config(
            "MiniGrid-MemoryS7-v0", policy=policy, n_timesteps=256, n_envs=2, log_folder=str(folder),
            eval_freq=128, eval_episodes=2, progress_bar=False, overrides=overrides,
        )  # fmt: skip
        train(config)
    return folder


def test_returns_summary_adds_success_rates_where_the_task_reports_them(
    minigrid_runs: Path, popgym_runs: Path, tmp_path
) -> None:
    out = tmp_path / "summary.json"
    result = _script(
        "returns_summary.py", minigrid_runs, "--test-env", "MiniGrid-MemoryS9-v0",
        "--episodes", 3, "--success", "--json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    for row in data["rows"]:
        for key in ("final_model", "final_model/MiniGrid-MemoryS9-v0"):
            # MiniGrid pays 1 - 0.9 * steps / max_steps on reaching the goal, 0 otherwise.
            assert 0.0 <= row[key] <= 1.0
            assert row[f"success/{key}"] in (0.0, 1 / 3, 2 / 3, 1.0)
            assert (row[f"success/{key}"] == 0.0) == (row[key] == 0.0)
    cells = data["summary"]["MiniGrid-MemoryS7-v0"]["rim"]
    assert {"success/final_model", "success/final_model/MiniGrid-MemoryS9-v0"} <= set(cells)
    assert "success, final model on MiniGrid-MemoryS9-v0" in result.stdout
    # POPGym has no success: asking for it names the runs instead of printing an empty column.
    result = _script("returns_summary.py", popgym_runs, "--episodes", 1, "--success")
    assert result.returncode == 2 and "report no success" in result.stderr


def test_memory_summary_reports_training_and_test_success_per_task_and_policy(
    minigrid_runs: Path, tmp_path
) -> None:
    out = tmp_path / "summary.json"
    result = _script(
        "memory_summary.py", minigrid_runs, "--test-env", "MiniGrid-MemoryS9-v0",
        "--episodes", 2, "--last", 2, "--json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert sorted(row["policy"] for row in data["rows"]) == ["ppo", "rim"]
    for row in data["rows"]:
        assert row["env"] == "MiniGrid-MemoryS7-v0" and row["steps"] == 256
        for key in ("train_success_last2", "train_success_final", "test_success/MiniGrid-MemoryS9-v0"):
            assert 0.0 <= row[key] <= 1.0
    assert set(data["summary"]["MiniGrid-MemoryS7-v0"]) == {"ppo", "rim"}
    assert "| MiniGrid-MemoryS7-v0 | rim | 1 | 256 |" in result.stdout


def test_memory_summary_evaluates_the_best_model_when_asked(minigrid_runs: Path, tmp_path) -> None:
    out = tmp_path / "best.json"
    result = _script(
        "memory_summary.py", minigrid_runs, "--test-env", "MiniGrid-MemoryS9-v0",
        "--episodes", 2, "--last", 2, "--model", "best", "--json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    for row in rows:
        best = json.loads((minigrid_runs / row["run"] / "best_model.json").read_text())
        assert row["model"] == "best" and row["model_steps"] == best["num_timesteps"] in (128, 256)
        assert 0.0 <= row["test_success/MiniGrid-MemoryS9-v0"] <= 1.0
    assert "best model on MiniGrid-MemoryS9-v0" in result.stdout


def _tiny_memory_model(folder: Path, policy: str, env_kwargs: str) -> Path:
    """A MemoryS7 agent trained for 128 steps (2 envs), for the scripts that read saved models."""
    overrides = parse_overrides([f"env_kwargs:{env_kwargs}", "n_steps:64", "batch_size:128"])
    config = make_config(
        "MiniGrid-MemoryS7-v0", policy=policy, n_timesteps=128, n_envs=2, log_folder=str(folder),
        eval_freq=0, progress_bar=False, overrides=overrides,
    )  # fmt: skip
    return train(config) / "final_model.zip"


def test_memory_by_start_splits_episodes_by_where_the_cue_was_seen(tmp_path) -> None:
    model = _tiny_memory_model(tmp_path, "rim", "{'view_size': 3, 'actions': 3}")
    out = tmp_path / "by_start.json"
    result = _script("memory_by_start.py", model, "--episodes", 6, "--json", out)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    groups = [value for key, value in row.items() if key != "model"]
    assert len(groups) == 3 and sum(group["episodes"] for group in groups) == 6
    assert all((group["success"] is None) == (group["episodes"] == 0) for group in groups)
    assert all(0.0 <= group["success"] <= 1.0 for group in groups if group["episodes"])


def test_optimizer_state_reads_adams_moments_from_a_saved_model(tmp_path) -> None:
    model = _tiny_memory_model(tmp_path, "rim", "{'view_size': 3, 'actions': 3}")
    out = tmp_path / "optimizer.json"
    result = _script("optimizer_state.py", model, "--json", out)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    assert row["adam_steps"] == 4 and row["eps"] == 1e-5  # one 128-step rollout, one minibatch, 4 epochs
    assert 0.0 <= row["sqrt_v_q10"] <= row["sqrt_v_q50"] <= row["sqrt_v_q90"] <= row["sqrt_v_q99"]
    assert 0.0 <= row["below_eps"] <= 1.0 and row["weights"] > 1000
    bad = tmp_path / "not_a_model.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("data", "{}")
    result = _script("optimizer_state.py", bad)
    assert (
        result.returncode == 2
        and "error: " in result.stderr
        and "holds no policy.optimizer.pth" in result.stderr
    )


def test_memory_cue_in_state_measures_the_cue_from_sight_to_the_fork(tmp_path) -> None:
    model = _tiny_memory_model(tmp_path, "lstm", "{'view_size': 3, 'actions': 3}")
    out = tmp_path / "cue.json"
    result = _script(
        "memory_cue_in_state.py", model, "--fresh", "rim", "--init-seeds", 1,
        "-params", "env_kwargs:{'view_size': 3, 'actions': 3}", "--json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    trained, fresh = json.loads(out.read_text())
    assert fresh["agent"] == "fresh rim, init seed 0"
    for row in (trained, fresh):
        # MemoryS7: the agent starts at x=1 and reaches the fork at x=5, 5 observations in all.
        assert len(row["relative_distance"]) == 5
        assert all(value >= 0.0 for value in row["relative_distance"])
        assert row["relative_distance"][0] > 0.0  # the cue in view moves the state


def test_memory_unit_hold_reports_the_cue_units_and_their_later_activity(tmp_path) -> None:
    options = "{'view_size': 3, 'actions': 3, 'start_at_cue': True, 'fixed_candidates': True}"
    model = _tiny_memory_model(tmp_path, "rim", options)
    out = tmp_path / "hold.json"
    result = _script("memory_unit_hold.py", model, "--episodes", 3, "--json", out)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    # Every episode starts from a zero state, where all units tie: the tie rule picks units 0 and 1.
    assert row["units_active_at_the_cue"] == {"0,1": 3}
    assert row["later_steps"] > 0 and 0.0 <= row["share_of_later_steps_with_a_cue_unit_active"] <= 1.0


def test_memory_cloning_imitates_the_scripted_agent_and_reports_its_decisions(tmp_path) -> None:
    out = tmp_path / "cloning.json"
    result = _script(
        "memory_cloning.py", "--policies", "rim", "ppo", "--targets", "match", "cue", "--seeds", 0,
        "--updates", 4, "--eval-every", 2, "--train-episodes", 30, "--episodes", 20, "--lanes", 2,
        "-params", "env_kwargs:{'view_size': 3, 'actions': 3, 'start_at_cue': True}", "--json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["target"], row["policy"]) for row in rows] == [
        ("match", "rim"), ("match", "ppo"), ("cue", "rim"), ("cue", "ppo"),
    ]  # fmt: skip
    for row in rows:
        assert [update for update, _ in row["decision_accuracy"]] == [2, 4]
        assert all(0.0 <= accuracy <= 1.0 for _, accuracy in row["decision_accuracy"])
        assert row["log_likelihood"] < 0.0
        assert ("success_sampled" in row) == (row["target"] == "match")


def test_the_scripted_agent_decides_after_facing_north_and_always_wins_the_match() -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    from memory_cloning import FORWARD, LEFT, expert_episode

    from envs.minigrid import make_minigrid

    env = make_minigrid("MiniGrid-MemoryS7-v0", view_size=3, actions=3, start_at_cue=True)
    for seed in range(6):  # expert_episode asserts the success itself
        (observations, actions), decision = expert_episode(env, seed, "match")
        assert actions[:decision] == [FORWARD] * 4 + [LEFT]  # from x=1 to the fork at x=5, then north
        assert actions[decision] in (FORWARD, LEFT) and len(observations) == len(actions)


def test_input_term_scale_puts_a_rim_unit_near_8x_an_lstm_and_value_size_16_near_1x() -> None:
    result = _script("input_term_scale.py", "--seeds", 2)
    assert result.returncode == 0, result.stderr
    ratios = {
        line.split("|")[1].strip(): float(line.split("|")[3].strip().rstrip("x"))
        for line in result.stdout.splitlines()
        if line.startswith("| ") and line.strip().endswith("x |")
    }
    assert ratios["nn.LSTM(5, 256)"] == 1.0
    assert ratios["RIM unit of 256, value size 1024"] > 5.0
    assert 0.7 < ratios["RIM unit of 256, value size 16"] < 1.5


def test_study_summary_groups_rows_by_task_then_policy(tmp_path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    from study_summary import report

    rows = [
        {"env": env, "policy": policy, "steps": 1000 + seed, "score": score}
        for env, policy, seed, score in [
            ("A-v0", "rim", 0, 1.0), ("A-v0", "rim", 1, 3.0), ("A-v0", "ppo", 0, 5.0),
            ("B-v0", "rim", 0, 7.0),
        ]
    ]  # fmt: skip
    out = tmp_path / "summary.json"
    summary = report(rows, ["score"], ["score"], "mean", out)
    assert summary["A-v0"]["rim"]["seeds"] == 2 and summary["A-v0"]["rim"]["steps"] == 1000
    assert summary["A-v0"]["rim"]["score"][0] == pytest.approx(2.0)
    assert summary["A-v0"]["rim"]["score"][1] == pytest.approx(12.706, rel=1e-3)  # sd sqrt(2), se 1, t(1 dof)
    assert summary["B-v0"] == {"rim": {"seeds": 1, "steps": 1000, "score": (7.0, 0.0)}}
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:5] == [
        "| A-v0 | ppo | 1 | 1,000 | 5.00 ± 0.00 |",
        "| A-v0 | rim | 2 | 1,000 | 2.00 ± 12.71 |",
        "| B-v0 | rim | 1 | 1,000 | 7.00 ± 0.00 |",
    ]
    assert json.loads(out.read_text())["summary"]["A-v0"]["ppo"]["score"] == [5.0, 0.0]


@pytest.mark.parametrize("grid", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_checked_in_grid_still_resolves(grid: Path) -> None:
    """The studies' grid files stay runnable: every cell resolves against today's YAML and keys
    (a search space: its fixed keys with the lowest value of each range or choice)."""
    data = yaml.safe_load(grid.read_text())
    if any(isinstance(value, dict) and {"float", "int"} & set(value) for value in data.values()):
        fixed, space = load_space(grid)
        assert space and "env" in fixed
        return
    axes, cells = load_grid(grid)
    assert cells and all("env" in cell and set(axes) <= set(cell) for cell in cells)
    assert len({tuple(sorted(map(str, cell.items()))) for cell in cells}) == len(cells)


def test_memory_pool_pools_the_parts_and_tests_the_counts(tmp_path) -> None:
    def part(name: str, seeds: range, rim: list[float], lstm: list[float]) -> Path:
        rows = [
            {"policy": policy, "seed": seed, "test_success/S7": value}
            for policy, values in (("rim", rim), ("lstm", lstm))
            for seed, value in zip(seeds, values, strict=True)
        ]
        path = tmp_path / name
        path.write_text(json.dumps({"rows": rows}))
        return path

    first = part("a.json", range(0, 3), [1.0, 1.0, 0.95], [0.5, 1.0, 0.4])
    second = part("b.json", range(3, 5), [1.0, 0.5], [0.45, 0.5])
    out = tmp_path / "pooled.json"
    result = _script("memory_pool.py", first, second, "--policies", "rim", "lstm", "--json", out)
    assert result.returncode == 0, result.stderr
    cells = json.loads(out.read_text())["tasks"]["S7"]
    assert cells["rim"]["seeds"] == [0, 1, 2, 3, 4] and cells["rim"]["solved"] == 4
    assert cells["lstm"]["solved"] == 1 and cells["lstm"]["mean"] == pytest.approx(0.57)
    assert cells["fisher_p"] == pytest.approx(0.206, abs=1e-3)  # 4 of 5 against 1 of 5
    missing = _script("memory_pool.py", first, "--policies", "rim", "ppo")
    assert missing.returncode == 2 and "no rows of policy ['ppo']" in missing.stderr


def test_carry_runs_saves_what_a_sweep_needs_and_restores_it_without_overwriting(tmp_path: Path) -> None:
    import zipfile

    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "logs" / "study" / "0000__Pong__rim__0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "config.yaml").write_text("env: Pong\n")
    (run / "eval" / "evaluations.npz").write_bytes(b"npz")
    with zipfile.ZipFile(run / "checkpoints" / "rl_model_100_steps.zip", "w") as archive:
        archive.writestr("data", "{}")
    (run / "checkpoints" / "rl_model_200_steps.zip").write_bytes(b"cut short")  # a kill while saving
    writer = SummaryWriter(str(run / "tb" / "RecurrentPPO_1"))
    for step, value in ((50, -21.0), (100, -20.5)):
        writer.add_scalar("rollout/ep_rew_mean", value, step)
    writer.close()
    journal = tmp_path / "runs" / "sweep.log"
    journal.parent.mkdir()
    journal.write_text("journal\n")

    state = tmp_path / "state"
    saved = _script("carry_runs.py", "save", "--storage", journal, "--logs", tmp_path / "logs",
                    "--studies", "study", "--to", state)  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert "study/0000__Pong__rim__0: checkpoint at 100 steps" in saved.stdout
    kept = state / "study" / "0000__Pong__rim__0"
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["rl_model_100_steps.zip"]
    assert (run / "checkpoints" / "rl_model_200_steps.zip").exists()  # the source is left as it was
    assert (kept / "curve.csv").read_text().splitlines() == [
        "step,rollout/ep_rew_mean",
        "50,-21.0",
        "100,-20.5",
    ]
    assert (state / "sweep.log").read_text() == "journal\n"

    fresh = tmp_path / "fresh"
    restored = _script("carry_runs.py", "restore", "--from", state, "--storage", fresh / "sweep.log",
                       "--logs", fresh / "logs")  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    back = fresh / "logs" / "study" / "0000__Pong__rim__0"
    assert (back / "checkpoints" / "rl_model_100_steps.zip").read_bytes() == (
        run / "checkpoints" / "rl_model_100_steps.zip"
    ).read_bytes()
    assert (back / "config.yaml").read_text() == "env: Pong\n"
    again = _script("carry_runs.py", "restore", "--from", state, "--storage", fresh / "sweep.log")
    assert again.returncode != 0 and "restore never overwrites" in again.stderr
