"""Atari: observation pipeline, training-only wrappers, id errors, YAML defaults, train and evaluate."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from envs import check_env_id, make_env
from rim_agents.training import build_algorithm_kwargs, make_config, make_vec_env

ROOT = Path(__file__).resolve().parents[1]
GAME = "PongNoFrameskip-v4"
MAX_STEPS = 60  # agent steps per game in the script test: evaluation plays whole games otherwise
TINY_PARAMS = [
    "n_steps:32",
    "batch_size:64",
    "n_epochs:1",
    f"env_kwargs.max_episode_steps:{MAX_STEPS}",
    "policy_kwargs.features_extractor_kwargs:{'features_dim':16}",
    "policy_kwargs.rim_kwargs:{'num_units':2,'unit_size':4,'top_k':1,'cell':'gru'}",
]


def play(env_id, evaluation, actions, seed=0, **env_kwargs):
    """Step a fresh copy with fixed actions until its episode ends; rewards and lives per step."""
    env = make_env(env_id, seed=seed, evaluation=evaluation, **env_kwargs)()
    rewards, lives = [], []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        lives.append(info["lives"])
        if terminated or truncated:
            break
    env.close()
    return np.asarray(rewards), lives, terminated or truncated


@pytest.mark.parametrize("env_id", ["PongNoFrameskip-v4", "ALE/Pong-v5"])
@pytest.mark.parametrize("evaluation", [False, True])
def test_observations_are_84x84_uint8_frames_stacked_last(env_id, evaluation):
    env = make_env(env_id, seed=0, evaluation=evaluation, frame_stack=4)()
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (84, 84, 4) and env.observation_space.dtype == np.uint8
    assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
    assert obs.std() > 1.0  # a picture of the court, not a blank frame
    previous = obs
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
        np.testing.assert_array_equal(obs[:, :, :3], previous[:, :, 1:])  # oldest frame dropped
        previous = obs
    env.close()


def test_vectorised_env_gives_the_policy_channels_first_stacks():
    config = make_config(GAME, n_envs=2)
    env = make_vec_env(config, 2, seed=0)
    obs = env.reset()
    assert (
        env.observation_space.shape == (4, 84, 84) and obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    )
    env.close()


@pytest.mark.parametrize(("env_id", "sticky"), [("PongNoFrameskip-v4", 0.0), ("ALE/Pong-v5", 0.25)])
def test_one_agent_step_is_four_emulator_frames_for_both_id_styles(env_id, sticky):
    env = make_env(env_id, seed=0)()
    ale = env.unwrapped.ale
    before = ale.getEpisodeFrameNumber()
    env.step(0)
    assert ale.getEpisodeFrameNumber() - before == 4  # a v5 env left at its own frameskip would give 16
    assert ale.getFloat("repeat_action_probability") == pytest.approx(sticky)
    env.close()


def test_training_clips_rewards_evaluation_keeps_game_points():
    actions = [1, 0] * 150  # fire and wait: Space Invaders pays 5 to 30 points per alien
    train_rewards, _, _ = play("SpaceInvadersNoFrameskip-v4", False, actions)
    eval_rewards, _, _ = play("SpaceInvadersNoFrameskip-v4", True, actions)
    # Same seed and actions: the same game until the training copy's life-loss episode end.
    np.testing.assert_array_equal(train_rewards, np.sign(eval_rewards[: len(train_rewards)]))
    assert set(np.unique(train_rewards)) <= {-1.0, 0.0, 1.0}
    assert eval_rewards.max() >= 5.0


def test_training_episode_ends_at_a_lost_life_evaluation_plays_the_whole_game():
    actions = np.random.default_rng(0).integers(0, 4, size=1000)
    _, train_lives, train_done = play("BreakoutNoFrameskip-v4", False, actions)
    _, eval_lives, eval_done = play("BreakoutNoFrameskip-v4", True, actions)
    assert train_done and train_lives[-1] == 4 and train_lives[0] == 5
    assert eval_done and eval_lives[-1] == 0 and len(eval_lives) > len(train_lives)


def test_evaluation_game_ends_for_an_agent_that_never_fires():
    # Breakout relaunches the ball only on FIRE; a deterministic agent may never choose it.
    # Without FIRE after each lost life the game would run to ALE's 27,000-step limit.
    rewards, lives, done = play("BreakoutNoFrameskip-v4", True, np.zeros(3000, dtype=int))
    assert done and lives[-1] == 0
    assert len(rewards) < 3000


def test_evaluation_monitor_counts_agent_steps_of_a_capped_game():
    env = make_vec_env(
        make_config(GAME, overrides={"env_kwargs.max_episode_steps": 25}), 1, 0, evaluation=True
    )
    env.reset()
    done, steps = np.array([False]), 0
    while not done[0]:
        _, _, done, infos = env.step(np.array([0]))
        steps += 1
    # Pong needs FIRE to start: the two steps FireResetEnv takes at reset count towards the game.
    assert infos[0]["episode"]["l"] == 25 and steps == 23
    env.close()


@pytest.mark.parametrize(
    ("env_id", "close"),
    [
        ("ALE/Pongg-v5", "ALE/Pong-v5"),
        ("PongNoFrameskip-v5", "PongNoFrameskip-v4"),
        ("Pong-v4", "ALE/Pong-v5"),
    ],
)
def test_unknown_or_unsupported_game_lists_close_matches(env_id, close):
    with pytest.raises(ValueError, match=rf"env_id='{env_id}'.*close matches: .*{close}"):
        check_env_id(env_id)
    with pytest.raises(ValueError, match=close):
        make_config(env_id)


def test_bad_preprocessing_option_names_the_argument():
    with pytest.raises(ValueError, match=r"frame_stack=0 must be a positive integer"):
        make_env(GAME, frame_stack=0)()
    with pytest.raises(ValueError, match=r"screen_size=20 must be an integer >= 36"):
        make_env(GAME, screen_size=20)()


def test_yaml_atari_block_has_the_papers_settings():
    config = make_config("ALE/Breakout-v5")  # any game: the family block
    assert config.n_envs == 8 and config.n_timesteps == 10_000_000
    _, policy, kwargs = build_algorithm_kwargs(config)
    assert policy == "CnnRimPolicy" and config.n_envs * kwargs["n_steps"] // kwargs["batch_size"] == 4
    assert kwargs["clip_range"] == 0.1 and kwargs["ent_coef"] == 0.01
    assert kwargs["learning_rate"](1.0) == pytest.approx(2.5e-4) and kwargs["learning_rate"](0.0) == 0.0
    assert kwargs["policy_kwargs"]["rim_kwargs"] == {
        "num_units": 6,
        "unit_size": 85,
        "top_k": 4,
        "cell": "gru",
    }
    _, lstm_policy, lstm_kwargs = build_algorithm_kwargs(make_config(GAME, policy="lstm"))
    assert lstm_policy == "CnnLstmPolicy" and lstm_kwargs["policy_kwargs"]["lstm_hidden_size"] == 510


def run(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, str(ROOT / "scripts" / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)


def test_tiny_pong_run_trains_then_evaluates_with_video_and_unit_plot(tmp_path):
    train_args = ["--env", GAME, "-n", 256, "--n-envs", 2, "-f", tmp_path / "logs", "--no-progress-bar"]
    train_args += ["--eval-freq", 128, "--eval-episodes", 1, "--save-freq", 128, "-params", *TINY_PARAMS]
    result = run("train_atari.py", *train_args)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert run_dir.name.startswith(f"{GAME}__rim__0__")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "rl_model_128_steps.zip",
        "rl_model_256_steps.zip",
    ]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["hyperparams"]["env_kwargs"]["frame_stack"] == 4
    with np.load(run_dir / "eval" / "evaluations.npz") as history:
        assert history["timesteps"].tolist() == [128, 256]
        assert history["ep_lengths"].tolist() == [[MAX_STEPS], [MAX_STEPS]]  # whole (capped) games

    out = tmp_path / "out"
    eval_args = ["--model", run_dir / "final_model.zip", "--episodes", 1, "--video", out / "video"]
    eval_args += ["--activations", out / "units.png", "--json", out / "result.json"]
    result = run("evaluate.py", *eval_args)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "result.json").read_text())
    assert data["env"] == GAME and data["lengths"] == [MAX_STEPS] and data["success_rate"] is None
    assert data["returns"][0] == int(data["returns"][0]) and -21 <= data["returns"][0] <= 21  # Pong points
    assert (out / "video" / "episode_0.mp4").stat().st_size > 1000
    assert (out / "units.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atari_script_rejects_an_unknown_game_before_creating_a_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_atari", ROOT / "scripts" / "train_atari.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--env", "ALE/Breakot-v5", "-f", str(tmp_path)]) == 2
    assert "close matches: ALE/Breakout-v5" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_fast_nature_cnn_computes_nature_cnn_and_loads_its_weights():
    import torch as th
    from gymnasium import spaces
    from stable_baselines3.common.torch_layers import NatureCNN

    from rim_agents.extractors import FastNatureCNN

    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    th.manual_seed(0)
    reference = NatureCNN(space)
    fast = FastNatureCNN(space)
    fast.load_state_dict(reference.state_dict())  # same layers, same parameter names
    weight = fast.cnn[0].weight
    frames = th.randint(0, 256, (5, 4, 84, 84)).float() / 255.0
    expected = reference(frames)
    features = fast(frames)
    # converted at the first call, in place: the optimizer's parameters are still the module's
    assert fast.cnn[0].weight is weight and weight.is_contiguous(memory_format=th.channels_last)
    assert features.dtype == th.float32 and features.shape == (5, 512)
    assert th.allclose(features, expected, atol=1e-5)
    features.sum().backward()
    assert all(p.grad is not None and th.isfinite(p.grad).all() for p in fast.parameters())


def test_fast_nature_cnn_in_bf16_stays_close_and_returns_float32():
    import torch as th
    from gymnasium import spaces

    from rim_agents.extractors import FastNatureCNN, cpu_has_native_bf16

    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    if not cpu_has_native_bf16():
        with pytest.warns(UserWarning, match=r"computes in float32 on this CPU"):
            FastNatureCNN(space, bf16=True)
        pytest.skip("this CPU has no native BF16: the option falls back to float32 (checked above)")
    th.manual_seed(0)
    fast = FastNatureCNN(space, bf16=True)
    exact = FastNatureCNN(space)
    exact.load_state_dict(fast.state_dict())
    frames = th.randint(0, 256, (8, 4, 84, 84)).float() / 255.0
    low, high = fast(frames), exact(frames)
    assert low.dtype == th.float32
    # BF16 keeps 8 bits of mantissa: about 2-3 significant digits through four layers.
    assert (low - high).abs().max() < 0.05 * high.abs().max()
    assert not th.equal(low, high)


def test_the_atari_yaml_trains_every_policy_with_the_fast_pixel_network():
    from rim_agents.extractors import FastNatureCNN

    for policy in ("rim", "lstm", "ppo"):
        _, _, kwargs = build_algorithm_kwargs(make_config(GAME, policy=policy))
        assert kwargs["policy_kwargs"]["features_extractor_class"] is FastNatureCNN, policy
