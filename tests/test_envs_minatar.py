"""MinAtar: observation pipeline, seeding, id errors, the MinAtar network, YAML, train and evaluate."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO

from envs import check_env_id, env_family, make_env
from envs.minatar import GAMES
from rim_agents.extractors import MinAtarCNN
from rim_agents.training import build_algorithm_kwargs, load_hyperparams, make_config, train

ROOT = Path(__file__).resolve().parents[1]
GAME = "MinAtar/Breakout-v1"
TINY_PARAMS = [
    "n_steps:32",
    "batch_size:64",
    "n_epochs:1",
    "env_kwargs.max_episode_steps:40",  # evaluation plays whole games otherwise
    "policy_kwargs.features_extractor_kwargs:{'features_dim':16}",
    "policy_kwargs.rim_kwargs:{'num_units':2,'unit_size':4,'top_k':1,'cell':'gru'}",
]
# Channels per game: one binary channel per kind of object (MinAtar's games).
CHANNELS = {"Asterix": 4, "Breakout": 4, "Freeway": 7, "Seaquest": 10, "SpaceInvaders": 6}
MINIMAL_ACTIONS = {"Asterix": 5, "Breakout": 3, "Freeway": 3, "Seaquest": 6, "SpaceInvaders": 4}


@pytest.mark.parametrize("game", GAMES)
def test_observation_is_the_game_state_channels_first_as_float32_zeros_and_ones(game):
    env = make_env(f"MinAtar/{game}-v1", seed=0)()
    shape = (CHANNELS[game], 10, 10)
    assert env.observation_space.shape == shape and env.observation_space.dtype == np.float32
    assert env.action_space.n == MINIMAL_ACTIONS[game]
    obs, _ = env.reset(seed=1)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    state = env.unwrapped.game.state()  # (10, 10, C) bool
    assert obs.shape == shape and obs.dtype == np.float32 and obs.flags.c_contiguous
    np.testing.assert_array_equal(obs, state.transpose(2, 0, 1).astype(np.float32))
    assert set(np.unique(obs)) <= {0.0, 1.0} and obs.sum() > 0


def test_v0_ids_keep_all_six_actions():
    assert make_env("MinAtar/Breakout-v0", seed=0)().action_space.n == 6


def test_same_seed_same_game_and_copies_get_different_games():
    def observations(idx):
        env = make_env(GAME, seed=5, idx=idx)()  # seeds its first reset with 5 + idx
        frames = [env.unwrapped.game.state().transpose(2, 0, 1).astype(np.float32)]
        for step in range(30):
            obs, _, terminated, _, _ = env.step(step % 3)
            frames.append(env.reset()[0] if terminated else obs)
        return np.stack(frames)

    np.testing.assert_array_equal(observations(0), observations(0))
    assert not all(np.array_equal(observations(0), observations(idx)) for idx in (1, 2, 3))


def test_episode_is_a_whole_game_scored_in_unclipped_points():
    env = make_env("MinAtar/Breakout-v1", seed=0, sticky_action_prob=0.0)()
    env.reset(seed=0)
    rewards, done = [], False
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        done = terminated or truncated
    assert terminated and not truncated  # Breakout ends when the ball is lost, not by a time limit
    assert info["episode"]["r"] == sum(rewards) and info["episode"]["l"] == len(rewards)
    assert all(reward in (0, 1) for reward in rewards)


def test_max_episode_steps_truncates_a_game():
    env = make_env("MinAtar/Freeway-v1", seed=0, max_episode_steps=7)()
    for _ in range(7):
        *_, truncated, info = env.step(0)  # Freeway never ends before 2,500 steps on its own
    assert truncated and info["episode"]["l"] == 7


def test_video_frames_are_uint8_pixels_sixteen_per_cell():
    env = make_env(GAME, seed=0, render_mode="rgb_array")()
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8
    # Each cell is a 16x16 square of one colour; the paddle row (9) is not all black.
    np.testing.assert_array_equal(frame[::16, ::16].repeat(16, 0).repeat(16, 1), frame)
    assert frame[9 * 16].max() > 0


@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        (
            "MinAtar/Breakot-v1",
            r"'MinAtar/Breakot-v1' is not a MinAtar game .*close matches: MinAtar/Breakout-v1",
        ),
        ("MinAtar/Pong-v1", r"'MinAtar/Pong-v1' is not a MinAtar game \(Asterix, Breakout"),
        ("MinAtr/Breakout-v1", r"belongs to no supported family .*close matches: MinAtar/Breakout-v1"),
    ],
)
def test_unknown_minatar_id_lists_close_matches(env_id, message):
    with pytest.raises(ValueError, match=message):
        check_env_id(env_id)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sticky_action_prob": 1.5}, "sticky_action_prob=1.5 must be a probability"),
        ({"max_episode_steps": 0}, "max_episode_steps=0 must be a positive integer"),
        ({"difficulty_ramping": "yes"}, "difficulty_ramping='yes' must be True or False"),
    ],
)
def test_bad_options_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_env(GAME, seed=0, **kwargs)()


def test_minatar_cnn_is_one_3x3_conv_of_16_channels_then_128_units():
    env = make_env("MinAtar/Seaquest-v1", seed=0)()
    extractor = MinAtarCNN(env.observation_space)
    obs, _ = env.reset(seed=0)
    features = extractor(th.as_tensor(obs)[None])
    assert features.shape == (1, 128) and (features >= 0).all()
    conv, linear = extractor.cnn[0], extractor.linear[0]
    assert conv.weight.shape == (16, 10, 3, 3) and conv.stride == (1, 1) and conv.padding == (0, 0)
    assert linear.weight.shape == (128, 16 * 8 * 8)
    with pytest.raises(ValueError, match="needs a 3-D"):
        MinAtarCNN(make_env("popgym-RepeatFirstEasy-v0", seed=0)().observation_space)


def test_yaml_block_and_its_lstm_and_memoryless_controls():
    assert env_family(GAME) == "minatar"
    hyperparams = load_hyperparams(GAME)
    assert hyperparams["policy"] == "CnnRimPolicy" and hyperparams["gamma"] == 0.999
    algorithm, policy, kwargs = build_algorithm_kwargs(make_config(GAME))
    assert policy == "CnnRimPolicy" and kwargs["policy_kwargs"]["features_extractor_class"] is MinAtarCNN
    algorithm, policy, kwargs = build_algorithm_kwargs(make_config(GAME, policy="lstm"))
    assert (algorithm, policy) == (RecurrentPPO, "CnnLstmPolicy")
    assert kwargs["policy_kwargs"]["lstm_hidden_size"] == 128
    algorithm, policy, kwargs = build_algorithm_kwargs(make_config(GAME, policy="ppo"))
    assert (algorithm, policy) == (PPO, "CnnPolicy") and "rim_kwargs" not in kwargs["policy_kwargs"]


@pytest.mark.parametrize("policy", ["lstm", "ppo"])
def test_lstm_and_memoryless_controls_train_on_minatar(tmp_path, policy):
    config = make_config(
        GAME,
        policy=policy,
        n_timesteps=64,
        n_envs=2,
        overrides={"n_steps": 32, "batch_size": 64, "n_epochs": 1},
        log_folder=str(tmp_path),
        eval_freq=0,
        save_freq=0,
        progress_bar=False,
        device="cpu",
    )
    run_dir = train(config)
    model = (RecurrentPPO if policy == "lstm" else PPO).load(run_dir / "final_model.zip")
    assert isinstance(model.policy.features_extractor, MinAtarCNN) and model.num_timesteps == 64


def run(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, str(ROOT / "scripts" / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)


def test_tiny_breakout_run_trains_then_evaluates_with_video_and_unit_plot(tmp_path):
    train_args = ["--env", GAME, "-n", 128, "--n-envs", 2, "-f", tmp_path / "logs", "--no-progress-bar"]
    train_args += ["--eval-freq", 64, "--eval-episodes", 1, "--save-freq", 0, "-params", *TINY_PARAMS]
    result = run("train_minatar.py", *train_args)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "logs").iterdir()  # one folder deep: the id's "/" becomes "+"
    assert run_dir.name.startswith("MinAtar+Breakout-v1__rim__0__")
    with np.load(run_dir / "eval" / "evaluations.npz") as history:
        assert history["timesteps"].tolist() == [64, 128]
        assert (history["ep_lengths"] <= 40).all()

    out = tmp_path / "out"
    eval_args = ["--model", run_dir / "final_model.zip", "--episodes", 2, "--video", out / "video"]
    eval_args += ["--activations", out / "units.png", "--json", out / "result.json"]
    result = run("evaluate.py", *eval_args)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "result.json").read_text())
    assert data["env"] == GAME and len(data["returns"]) == 2 and data["success_rate"] is None
    assert all(r == int(r) and r >= 0 for r in data["returns"])  # Breakout points: bricks broken
    assert (out / "video" / "episode_0.mp4").stat().st_size > 500
    assert (out / "units.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_minatar_script_rejects_an_unknown_game_before_creating_a_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_minatar", ROOT / "scripts" / "train_minatar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--env", "MinAtar/Breakot-v1", "-f", str(tmp_path)]) == 2
    assert "close matches: MinAtar/Breakout-v1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
