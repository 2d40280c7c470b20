"""The classic-control memory family: CartPole without velocities, its YAML block and a training run."""

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import RecurrentPPO

from envs import env_family, make_env
from rim_agents.training import load_hyperparams, make_config, train

ROOT = Path(__file__).resolve().parents[1]


def test_cartpole_without_velocities_observes_scaled_position_and_angle_only():
    env = make_env("CartPoleNoVel-v1", seed=0)()
    full = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    state, _ = full.reset(seed=3)
    assert env.observation_space.shape == (2,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs, [state[0] / 2.4, state[2] / (12 * 2 * np.pi / 360)], rtol=1e-6)
    for _ in range(5):
        obs, *_ = env.step(1)
        state, *_ = full.step(1)
    np.testing.assert_allclose(obs, [state[0] / 2.4, state[2] / (12 * 2 * np.pi / 360)], rtol=1e-6)


def test_episode_ends_when_the_scaled_angle_leaves_minus_one_to_one():
    env = make_env("CartPoleNoVel-v1", seed=0)()
    env.reset(seed=0)
    terminated = False
    while not terminated:
        obs, _, terminated, _, info = env.step(1)  # always push right: the pole falls left
    assert abs(obs[1]) > 1.0 or abs(obs[0]) > 1.0
    assert info["episode"]["l"] < 100


def test_unknown_classic_id_names_the_known_ones():
    assert env_family("CartPoleNoVel-v1") == "classic"
    with pytest.raises(
        ValueError, match=r"'CartPoleNoVel-v2' is not a classic memory task; known: CartPoleNoVel-v1"
    ):
        make_env("CartPoleNoVel-v2")


def test_yaml_block_trains_a_rim_on_cartpole_without_velocities(tmp_path):
    assert load_hyperparams("CartPoleNoVel-v1")["policy"] == "MlpRimPolicy"
    config = make_config(
        "CartPoleNoVel-v1",
        n_timesteps=512,
        log_folder=str(tmp_path),
        eval_freq=256,
        eval_episodes=2,
        save_freq=0,
        progress_bar=False,
        device="cpu",
        overrides={"n_epochs": 2},
    )
    run_dir = train(config)
    assert (run_dir / "final_model.zip").is_file()
    with np.load(run_dir / "eval" / "evaluations.npz") as evaluations:
        assert evaluations["timesteps"].tolist() == [256, 512]
        assert (evaluations["results"] >= 8).all()  # CartPole returns count steps, at least 8 before a fall


def test_train_classic_script_runs_and_reads_comm_read_from_params(tmp_path):
    spec = importlib.util.spec_from_file_location("train_classic", ROOT / "scripts" / "train_classic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["-n", "256", "-f", tmp_path, "--eval-freq", "0", "--no-progress-bar"]
    assert (
        module.main([*map(str, args), "-params", "n_epochs:1", "policy_kwargs.rim_kwargs.comm_read:linear"])
        == 0
    )
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("CartPoleNoVel-v1__rim__0__")
    assert RecurrentPPO.load(run_dir / "final_model.zip").policy.lstm_actor.comm_read == "linear"
