"""Evaluation rollouts: scripts/evaluate.py outputs, recurrent state protocol, other envs, clear errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rim_agents.evaluation import evaluate, evaluate_random, run_episodes
from rim_agents.training import make_config, make_vec_env, parse_overrides, train

ROOT = Path(__file__).resolve().parents[1]
ENV = "MiniGrid-MemoryS7-v0"
TINY = parse_overrides(
    [
        "n_steps:16",
        "batch_size:32",
        "n_epochs:1",
        "policy_kwargs.net_arch:[8]",
        "policy_kwargs.features_extractor_kwargs:{'features_dim':8}",
        "policy_kwargs.rim_kwargs:{'num_units':3,'unit_size':4,'top_k':2}",
    ]
)


def tiny_run(folder, policy):
    config = make_config(
        ENV,
        policy=policy,
        overrides=TINY,
        n_timesteps=32,
        n_envs=2,
        log_folder=str(folder),
        eval_freq=0,
        save_freq=0,
        progress_bar=False,
        device="cpu",
    )
    return train(config)


@pytest.fixture(scope="module")
def rim_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("rim"), "rim")


def test_evaluate_script_writes_json_videos_and_activation_plot(rim_run, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model", rim_run / "final_model.zip"]
    command += ["--episodes", "2", "--seed", "5", "--video", str(out / "video")]
    command += ["--activations", str(out / "units.png"), "--json", str(out / "result.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "+-" in result.stdout and "success rate" in result.stdout
    data = json.loads((out / "result.json").read_text())
    assert {
        "mean_return",
        "std_return",
        "mean_length",
        "success_rate",
        "episodes",
        "returns",
        "lengths",
    } <= set(data)
    assert data["env"] == ENV and data["episodes"] == 2 and len(data["returns"]) == 2
    assert data["mean_return"] == pytest.approx(np.mean(data["returns"]))
    videos = sorted((out / "video").glob("*.mp4"))
    assert [v.name for v in videos] == ["episode_0.mp4", "episode_1.mp4"] and all(
        v.stat().st_size > 1000 for v in videos
    )
    assert (out / "units.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rim_agent_evaluates_on_a_larger_memory_maze(rim_run):
    result = evaluate(rim_run / "final_model.zip", env_id="MiniGrid-MemoryS11-v0", episodes=1, device="cpu")
    assert result["env"] == "MiniGrid-MemoryS11-v0" and result["episodes"] == 1
    assert result["success_rate"] == float(result["returns"][0] > 0)


def test_activation_plot_of_lstm_agent_is_a_clear_error(tmp_path):
    run_dir = tiny_run(tmp_path, "lstm")
    with pytest.raises(ValueError, match=r"needs a RIM policy.*LSTM"):
        evaluate(run_dir / "final_model.zip", activations_path=tmp_path / "units.png", device="cpu")
    assert evaluate(run_dir / "final_model.zip", episodes=1, device="cpu")["episodes"] == 1


def test_observation_shape_mismatch_is_a_clear_error(rim_run, tmp_path):
    # The same agent, but its run's config now asks for RGB observations (56x56x3, not 7x7x3).
    shutil.copytree(rim_run, tmp_path / "run")
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    config["hyperparams"]["env_kwargs"] = {"observation": "rgb"}
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"gives observations .*56, 56.* trained on"):
        evaluate(tmp_path / "run" / "final_model.zip", episodes=1, device="cpu")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(tmp_path / "nothing.zip")


def test_episode_start_is_true_exactly_at_each_episodes_first_step():
    config = make_config(ENV, overrides={"env_kwargs.max_steps": 7})
    env = make_vec_env(config, 1, seed=0)
    starts = []

    def act(obs, episode_start):
        starts.append(bool(episode_start[0]))
        return np.array([0])  # turning left forever: every episode lasts max_steps

    result = run_episodes(act, env, episodes=3)
    assert result["lengths"] == [7, 7, 7]
    assert starts == ([True] + [False] * 6) * 3


def test_random_baseline_success_is_positive_return():
    result = evaluate_random(ENV, episodes=12, seed=1)
    assert result["success_rate"] == pytest.approx(np.mean(np.asarray(result["returns"]) > 0))
    assert result["episodes"] == 12
