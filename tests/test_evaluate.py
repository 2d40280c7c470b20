"""Evaluation rollouts: scripts/evaluate.py outputs, recurrent state protocol, other envs, clear errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rim_agents.evaluation import evaluate, evaluate_random, resolve_model, run_episodes
from rim_agents.plotting import plot_unit_activity
from rim_agents.ppo import RimPPO
from rim_agents.training import make_config, make_vec_env, parse_overrides, train

ROOT = Path(__file__).resolve().parents[1]
ENV = "MiniGrid-MemoryS7-v0"
SMALL_RIM = {"rim_kwargs": {"num_units": 2, "unit_size": 4, "top_k": 1}}
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


def evaluate_script(argv):
    """scripts/evaluate.py's main in this process."""
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


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
    with pytest.raises(ValueError, match=r"does not fit the agent trained on MiniGrid-MemoryS7-v0: .*56, 56"):
        evaluate(tmp_path / "run" / "final_model.zip", episodes=1, device="cpu")


def test_a_run_directory_evaluates_its_best_else_its_final_model(rim_run, tmp_path, capsys):
    assert resolve_model(rim_run) == (rim_run / "final_model.zip", "final")
    shutil.copytree(rim_run, tmp_path / "run")
    shutil.copy(rim_run / "final_model.zip", tmp_path / "run" / "best_model.zip")
    assert resolve_model(tmp_path / "run") == (tmp_path / "run" / "best_model.zip", "best")
    assert evaluate_script(["--model", str(tmp_path / "run"), "--episodes", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"model: {tmp_path / 'run' / 'best_model.zip'} (the run's best model)" in out
    assert "over 1 episodes" in out


def test_an_agent_evaluates_on_any_gymnasium_id_its_spaces_fit(tmp_path):
    model = RimPPO("MlpRimPolicy", "CartPole-v1", n_steps=16, batch_size=16, policy_kwargs=SMALL_RIM)
    model.save(tmp_path / "rim_cartpole.zip")  # the README's example: no run directory, no config.yaml
    result = evaluate(tmp_path / "rim_cartpole.zip", env_id="CartPole-v1", episodes=2, device="cpu")
    assert result["env"] == "CartPole-v1" and len(result["returns"]) == 2 and result["mean_return"] >= 8


def test_help_shows_each_example_on_its_own_line(capsys):
    with pytest.raises(SystemExit):
        evaluate_script(["--help"])
    lines = capsys.readouterr().out.splitlines()
    example = "    python scripts/evaluate.py --model logs/<run> --env MiniGrid-MemoryS11-v0 --video videos/"
    assert any(line.startswith(example) and line.endswith("--json r.json") for line in lines)


def test_unit_activity_plot_says_what_black_means():
    figure = plot_unit_activity(np.eye(3, dtype=bool)[None].repeat(5, 0)[:, :1], np.zeros(5))
    top, bottom = figure.axes
    assert [text.get_text() for text in top.get_legend().get_texts()] == ["active", "inactive"]
    assert top.get_ylabel() == "RIM unit" and bottom.get_xlabel() == "step of the episode"


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
