"""POPGym: one-hot observations with the previous action, normalised returns, ids, YAML, training."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO

from envs import check_env_id, env_family, make_env
from envs.popgym import encode, encoded_size, env_ids, max_mean_episodic_reward
from rim_agents.extractors import ScaledFlatten
from rim_agents.training import build_algorithm_kwargs, load_hyperparams, make_config, parse_overrides, train

ROOT = Path(__file__).resolve().parents[1]
TASK = "popgym-RepeatFirstEasy-v0"
TINY = {
    "n_steps": 32,
    "batch_size": 64,
    "n_epochs": 1,
    "policy_kwargs.rim_kwargs": {"num_units": 2, "unit_size": 4, "top_k": 1, "cell": "gru"},
}


def one_hot(index, size):
    out = np.zeros(size, np.float32)
    out[index] = 1.0
    return out


def test_encode_is_one_hot_per_discrete_entry_and_keeps_box_values():
    np.testing.assert_array_equal(encode(spaces.Discrete(4), 2), [0, 0, 1, 0])
    np.testing.assert_array_equal(encode(spaces.Discrete(3, start=-1), -1), [1, 0, 0])
    np.testing.assert_array_equal(encode(spaces.MultiDiscrete([2, 3]), [1, 2]), [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(encode(spaces.Box(-2, 2, (1,)), np.array([1.5])), [1.5])
    pair = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(4)))
    np.testing.assert_array_equal(encode(pair, (1, 3)), [0, 1, 0, 0, 0, 1])
    assert encoded_size(pair) == 6 and encoded_size(spaces.MultiDiscrete([8, 8])) == 16
    with pytest.raises(ValueError, match="cannot encode values of Text"):
        encoded_size(spaces.Text(5))


def test_discrete_observation_is_one_hot_card_then_previous_action_then_first_step_flag():
    env = make_env("popgym-RepeatPreviousEasy-v0", seed=0)()
    assert env.observation_space.shape == (4 + 4 + 1,) and env.observation_space.dtype == np.float32
    obs, _ = env.reset(seed=2)
    card = env.unwrapped.card.item()
    np.testing.assert_array_equal(obs, [*one_hot(card, 4), 0, 0, 0, 0, 1])  # no previous action yet
    obs, *_ = env.step(3)
    card = env.unwrapped.deck.show("player", ["suits_idx"])[0, -1]
    np.testing.assert_array_equal(obs, [*one_hot(card, 4), *one_hot(3, 4), 0])


def test_multidiscrete_and_tuple_observations_get_one_one_hot_block_per_entry():
    env = make_env("popgym-CountRecallEasy-v0", seed=0)()  # MultiDiscrete([2, 2]) cards, Discrete(27) actions
    obs, _ = env.reset(seed=0)
    value, query = env.unwrapped.last_obs
    assert obs.shape == (2 + 2 + 27 + 1,)
    np.testing.assert_array_equal(obs[:4], [*one_hot(value, 2), *one_hot(query, 2)])
    env = make_env("popgym-AutoencodeEasy-v0", seed=0)()  # Tuple(Discrete(2), Discrete(4))
    assert env.observation_space.shape == (2 + 4 + 4 + 1,)


def test_multidiscrete_action_reaches_the_task_and_the_next_observation():
    env = make_env("popgym-BattleshipEasy-v0", seed=0)()
    assert env.action_space == spaces.MultiDiscrete([8, 8])
    env.reset(seed=0)
    obs, *_ = env.step(np.array([2, 5]))
    assert env.observation_space.shape == (2 + 16 + 1,)
    np.testing.assert_array_equal(obs[2:18], [*one_hot(2, 8), *one_hot(5, 8)])
    assert env.unwrapped.guesses[2, 5]  # the cell the action named was shot at


def test_box_observation_and_action_pass_through_as_values():
    env = make_env("popgym-PositionOnlyPendulumEasy-v0", seed=0)()
    assert isinstance(env.action_space, spaces.Box) and env.observation_space.shape == (2 + 1 + 1,)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([1.25], dtype=np.float32))
    assert obs[2] == 1.25 and obs[3] == 0.0


def test_without_previous_action_only_the_flag_is_appended():
    env = make_env("popgym-RepeatPreviousEasy-v0", seed=0, previous_action=False)()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (5,) and obs[-1] == 1.0
    assert env.step(1)[0][-1] == 0.0


def test_every_task_gives_flat_float_observations_inside_its_space():
    ids = env_ids()
    assert len(ids) >= 42 and {"popgym-RepeatFirstEasy-v0", "popgym-CountRecallHard-v0"} <= set(ids)
    for env_id in ids:
        env = make_env(env_id, seed=0)()
        obs, _ = env.reset(seed=0)
        for _ in range(3):
            assert obs.dtype == np.float32 and obs.ndim == 1 and env.observation_space.contains(obs), env_id
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()


def play(env_id, policy, seed):
    """Play one episode; ``policy(obs)`` -> action. The Monitor's episode statistics."""
    env = make_env(env_id, seed=seed)()
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(policy(env, obs))
        done = terminated or truncated
    return info["episode"]


def test_perfect_play_returns_one_and_random_play_stays_within_minus_one_and_one():
    first_card = {}

    def repeat_first(env, obs):
        if obs[-1] == 1.0:  # the first step: remember the card
            first_card[0] = int(np.argmax(obs[:4]))
        return first_card[0]

    episode = play(TASK, repeat_first, seed=4)
    assert episode["r"] == pytest.approx(1.0) and episode["l"] == 51
    for env_id in env_ids():
        if "Easy" in env_id:
            episode = play(env_id, lambda env, obs: env.action_space.sample(), seed=0)
            assert -1.0 <= episode["r"] <= 1.0, env_id


def test_same_seed_same_episodes_in_every_task():
    def play_randomly(env_id, seed):
        env = make_env(env_id, seed=seed)()
        env.action_space.seed(0)
        steps = []
        for _ in range(40):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            steps.append(np.append(obs, reward))
            if terminated or truncated:
                env.reset()
        return np.stack(steps)

    for env_id in env_ids():
        np.testing.assert_array_equal(play_randomly(env_id, 3), play_randomly(env_id, 3), err_msg=env_id)
    assert not np.array_equal(play_randomly(TASK, 3), play_randomly(TASK, 4))


@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        (
            "popgym-RepeatFirstEasy-v1",
            r"not a registered POPGym task; close matches: popgym-RepeatFirstEasy-v0",
        ),
        ("popgym-LabyrinthEscapeEasy-v0", r"registered only when the optional mazelib package is installed"),
        (
            "popgm-RepeatFirstEasy-v0",
            r"belongs to no supported family .*close matches: popgym-RepeatFirstEasy",
        ),
    ],
)
def test_unknown_popgym_id_lists_close_matches(env_id, message):
    with pytest.raises(ValueError, match=message):
        check_env_id(env_id)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="render_mode='rgb_array': POPGym tasks draw no frames"):
        make_env(TASK, seed=0, render_mode="rgb_array")()
    with pytest.raises(ValueError, match="previous_action='no' must be True or False"):
        make_env(TASK, seed=0, previous_action="no")()


def test_mmer_is_the_best_mean_return_over_evaluations(tmp_path):
    (tmp_path / "eval").mkdir()
    np.savez(
        tmp_path / "eval" / "evaluations.npz", timesteps=[1, 2, 3], results=[[0.1, 0.3], [0.5, 0.7], [0.2, 0]]
    )
    assert max_mean_episodic_reward(tmp_path) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="made no evaluations"):
        max_mean_episodic_reward(tmp_path / "elsewhere")


def test_yaml_block_and_its_lstm_and_memoryless_controls():
    assert env_family(TASK) == "popgym"
    hyperparams = load_hyperparams(TASK)
    assert hyperparams["policy"] == "MlpRimPolicy" and hyperparams["env_kwargs"] == {"previous_action": True}
    assert (hyperparams["gamma"], hyperparams["vf_coef"], hyperparams["ent_coef"]) == (0.99, 1.0, 0.0)
    algorithm, policy, kwargs = build_algorithm_kwargs(make_config(TASK, policy="lstm"))
    assert (algorithm, policy) == (RecurrentPPO, "MlpLstmPolicy")
    assert kwargs["policy_kwargs"]["lstm_hidden_size"] == 256  # POPGym's memory size
    algorithm, policy, kwargs = build_algorithm_kwargs(make_config(TASK, policy="ppo"))
    assert (algorithm, policy) == (PPO, "MlpPolicy") and "rim_kwargs" not in kwargs["policy_kwargs"]


def test_scaled_flatten_multiplies_the_flat_observation_and_reaches_the_lstm():
    space = make_env(TASK, seed=0)().observation_space
    extractor = ScaledFlatten(space, scale=8.0)
    obs = torch.as_tensor(np.stack([space.sample() for _ in range(3)]))
    assert extractor.features_dim == obs.shape[1]
    torch.testing.assert_close(extractor(obs), 8.0 * obs)
    for scale in (0, -1.0, True, "8"):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            ScaledFlatten(space, scale=scale)
    overrides = parse_overrides(
        ["policy_kwargs.features_extractor_class:'rim_agents.extractors.ScaledFlatten'",
         "policy_kwargs.features_extractor_kwargs:{'scale': 8.0}"]
    )  # fmt: skip
    algorithm, _, kwargs = build_algorithm_kwargs(make_config(TASK, policy="lstm", overrides=overrides))
    model = algorithm("MlpLstmPolicy", make_env(TASK, seed=0)(), **kwargs)
    assert (
        isinstance(model.policy.features_extractor, ScaledFlatten)
        and model.policy.features_extractor.scale == 8
    )


@pytest.mark.parametrize(
    ("policy", "env_id"),
    [
        ("lstm", "popgym-BattleshipEasy-v0"),  # MultiDiscrete actions
        ("ppo", "popgym-MineSweeperEasy-v0"),  # MultiDiscrete actions
        ("rim", "popgym-PositionOnlyPendulumEasy-v0"),  # Box actions
    ],
)
def test_every_policy_trains_on_multidiscrete_and_box_actions(tmp_path, policy, env_id):
    config = make_config(
        env_id,
        policy=policy,
        n_timesteps=64,
        n_envs=2,
        overrides=TINY if policy == "rim" else {k: v for k, v in TINY.items() if "rim" not in k},
        log_folder=str(tmp_path),
        eval_freq=0,
        save_freq=0,
        progress_bar=False,
        device="cpu",
    )
    model = (PPO if policy == "ppo" else RecurrentPPO).load(train(config) / "final_model.zip")
    assert model.num_timesteps == 64 and model.action_space == make_env(env_id)().action_space


def run(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, str(ROOT / "scripts" / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)


def test_tiny_repeat_first_run_trains_then_evaluates_in_normalised_returns(tmp_path):
    train_args = ["--env", TASK, "-n", 128, "--n-envs", 2, "-f", tmp_path / "logs", "--no-progress-bar"]
    train_args += ["--eval-freq", 64, "--eval-episodes", 2, "--save-freq", 0, "-params"]
    train_args += [f"{key}:{value!r}" for key, value in TINY.items()]
    result = run("train_popgym.py", *train_args)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert run_dir.name.startswith(f"{TASK}__rim__0__")
    with np.load(run_dir / "eval" / "evaluations.npz") as history:
        assert history["timesteps"].tolist() == [64, 128]
        assert history["ep_lengths"].tolist() == [[51, 51], [51, 51]]
        assert (np.abs(history["results"]) <= 1.0).all()
    assert -1.0 <= max_mean_episodic_reward(run_dir) <= 1.0

    out = tmp_path / "result.json"
    result = run("evaluate.py", "--model", run_dir / "final_model.zip", "--episodes", 3, "--json", out)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["env"] == TASK and data["lengths"] == [51, 51, 51] and data["success_rate"] is None
    # RepeatFirst pays +-1/51 per step: a return is a multiple of 1/51 in [-1, 1].
    assert all(-1.0 <= r <= 1.0 and abs(r * 51 - round(r * 51)) < 1e-3 for r in data["returns"])


def test_popgym_script_rejects_an_unknown_task_before_creating_a_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_popgym", ROOT / "scripts" / "train_popgym.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--env", "popgym-RepeatFirstEasy-v1", "-f", str(tmp_path)]) == 2
    assert "close matches: popgym-RepeatFirstEasy-v0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
