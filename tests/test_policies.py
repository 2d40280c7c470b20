"""RIM policies for sb3-contrib's RecurrentPPO: every option trains, state handling,
save / load, the single-pass sequence path, the MiniGrid extractor and bad-config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
import numpy as np
import pytest
import torch as th
from einops import rearrange
from gymnasium import spaces
from minigrid.wrappers import ImgObsWrapper
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from rim_agents.extractors import MiniGridCNN, _one_hot_codes
from rim_agents.nn import RIM
from rim_agents.policies import (
    CnnRimPolicy,
    MlpRimPolicy,
    MultiInputRimPolicy,
    RimActorCriticCnnPolicy,
    RimActorCriticPolicy,
    RimMultiInputActorCriticPolicy,
)
from rim_agents.ppo import RimPPO

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RIM = dict(num_units=4, unit_size=8, top_k=2)
TINY_HIDDEN = 4 * 8
N_STEPS = 16
# Two rollouts and two updates: enough to exercise collection, the buffer and the loss.
N_TIMESTEPS = 2 * N_STEPS


def _constant_lr(_: float) -> float:
    return 3e-4


def _minigrid_env() -> gym.Env:
    return ImgObsWrapper(gym.make("MiniGrid-Empty-5x5-v0"))


def _flat_params(module: nn.Module) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _policy(**policy_kwargs: Any) -> RimActorCriticPolicy:
    policy_kwargs.setdefault("rim_kwargs", TINY_RIM)
    return RimActorCriticPolicy(spaces.Box(-1, 1, (5,)), spaces.Discrete(2), _constant_lr, **policy_kwargs)


LEARN_CASES = {
    "cartpole-discrete": ("CartPole-v1", MlpRimPolicy, {}, {}),
    "pendulum-box": ("Pendulum-v1", MlpRimPolicy, {}, {}),
    "pendulum-gsde": ("Pendulum-v1", MlpRimPolicy, {}, {"use_sde": True, "sde_sample_freq": 4}),
    "shared-rim": ("CartPole-v1", MlpRimPolicy, {"shared_lstm": True, "enable_critic_lstm": False}, {}),
    "shared-rim-both-losses": (
        "CartPole-v1",
        MlpRimPolicy,
        {"shared_lstm": True, "enable_critic_lstm": False, "detach_critic": False},
        {},
    ),
    "no-critic-rim": ("CartPole-v1", MlpRimPolicy, {"enable_critic_lstm": False}, {}),
    "two-rim-layers": ("CartPole-v1", MlpRimPolicy, {"n_lstm_layers": 2}, {}),
    "separate-extractors": ("CartPole-v1", MlpRimPolicy, {"share_features_extractor": False}, {}),
    "net-arch": (
        "CartPole-v1",
        MlpRimPolicy,
        {"net_arch": dict(pi=[16], vf=[8]), "activation_fn": nn.ReLU},
        {},
    ),
    "gru-cell": ("CartPole-v1", MlpRimPolicy, {"rim_kwargs": {**TINY_RIM, "cell": "gru"}}, {}),
    "dict-obs": (SimpleMultiObsEnv, MultiInputRimPolicy, {}, {}),
    "fake-image": (lambda: FakeImageEnv(screen_height=36, screen_width=36), CnnRimPolicy, {}, {}),
    "minigrid": (
        _minigrid_env,
        CnnRimPolicy,
        {"features_extractor_class": MiniGridCNN, "normalize_images": False},
        {},
    ),
}


@pytest.mark.parametrize("case", LEARN_CASES, ids=list(LEARN_CASES))
def test_each_policy_option_trains_the_rim_weights(case: str) -> None:
    env_id, policy_class, policy_kwargs, algo_kwargs = LEARN_CASES[case]
    policy_kwargs = {"rim_kwargs": TINY_RIM, **policy_kwargs}
    env = make_vec_env(env_id, n_envs=1, seed=0)
    model = RecurrentPPO(
        policy_class,
        env,
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        n_epochs=1,
        seed=0,
        policy_kwargs=policy_kwargs,
        **algo_kwargs,
    )
    policy = model.policy
    assert isinstance(policy.lstm_actor, RIM)
    rims = {"actor": policy.lstm_actor}
    if policy.lstm_critic is not None:
        assert isinstance(policy.lstm_critic, RIM)
        rims["critic"] = policy.lstm_critic
    before = {name: _flat_params(rim) for name, rim in rims.items()}

    model.learn(N_TIMESTEPS)

    assert model.num_timesteps == N_TIMESTEPS
    for name, rim in rims.items():
        after = _flat_params(rim)
        assert th.isfinite(after).all(), name
        assert (after - before[name]).abs().max() > 0, f"{name} RIM weights did not change"


def test_option_layout_matches_sb3_contrib() -> None:
    shared = _policy(shared_lstm=True, enable_critic_lstm=False)
    no_critic = _policy(enable_critic_lstm=False)
    separate = _policy()
    assert shared.lstm_critic is None and shared.critic is None
    assert no_critic.lstm_critic is None and isinstance(no_critic.critic, nn.Linear)
    assert no_critic.critic.out_features == TINY_HIDDEN
    assert isinstance(separate.lstm_critic, RIM) and separate.lstm_critic is not separate.lstm_actor


@pytest.mark.parametrize("detach_critic", [True, False])
def test_the_value_loss_reaches_the_shared_rim_only_without_detach_critic(detach_critic: bool) -> None:
    policy = _policy(shared_lstm=True, enable_critic_lstm=False, detach_critic=detach_critic)
    obs = th.randn(6, 5)
    states = RNNStates(*[(th.zeros(1, 2, TINY_HIDDEN), th.zeros(1, 2, TINY_HIDDEN))] * 2)
    starts = th.zeros(6)
    values, log_prob, _ = policy.evaluate_actions(obs, th.zeros(6), states, starts)
    rim_weights = list(policy.lstm_actor.parameters())
    value_gradients = th.autograd.grad(values.sum(), rim_weights, allow_unused=True, retain_graph=True)
    reached = any(g is not None and g.abs().max() > 0 for g in value_gradients)
    assert reached == (not detach_critic)
    # The actor's loss trains the RIM either way, and forward and predict_values agree with it.
    assert any(g is not None for g in th.autograd.grad(log_prob.sum(), rim_weights, allow_unused=True))
    with th.no_grad():
        predicted = policy.predict_values(obs, states.pi, starts)
        _, forward_values, _, forward_states = policy(obs, states, starts)
    assert th.allclose(predicted, values.detach()) and th.allclose(forward_values, values.detach())
    assert all(th.equal(a, b) for a, b in zip(forward_states.pi, forward_states.vf, strict=True))


def test_detach_critic_false_needs_the_shared_rim() -> None:
    with pytest.raises(ValueError, match=r"detach_critic=False needs shared_lstm=True"):
        _policy(detach_critic=False)
    with pytest.raises(ValueError, match=r"detach_critic must be True or False, got 'no'"):
        _policy(shared_lstm=True, enable_critic_lstm=False, detach_critic="no")


def test_policy_holds_no_lstm_and_optimizer_covers_exactly_its_parameters() -> None:
    policy = _policy(n_lstm_layers=2)
    assert not any(isinstance(module, nn.LSTM) for module in policy.modules())
    optimized = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in policy.parameters()}
    assert policy.lstm_actor.num_layers == 2


def test_hidden_size_is_derived_from_rim_sizes() -> None:
    policy = _policy()
    assert policy.lstm_output_dim == TINY_HIDDEN
    assert policy.lstm_actor.hidden_size == TINY_HIDDEN
    assert policy.lstm_hidden_state_shape == (1, 1, TINY_HIDDEN)
    assert policy.mlp_extractor.policy_net[0].in_features == TINY_HIDDEN
    assert _policy(lstm_hidden_size=TINY_HIDDEN).lstm_output_dim == TINY_HIDDEN
    # Without rim_kwargs the RIM's own defaults (6 units of 100, paper Table 3) apply.
    assert _policy(rim_kwargs=None).lstm_output_dim == 600


def test_policy_attention_dropout_defaults_to_zero_unless_given() -> None:
    policy = _policy()
    assert policy.lstm_actor.layers[0].input_attention.dropout == 0.0
    assert policy.lstm_actor.layers[0].communication.dropout == 0.0
    given = _policy(rim_kwargs={**TINY_RIM, "input_dropout": 0.1, "comm_dropout": 0.2})
    assert given.lstm_actor.layers[0].input_attention.dropout == 0.1
    assert given.lstm_actor.layers[0].communication.dropout == 0.2


def test_lstm_dropout_reaches_the_rim() -> None:
    policy = _policy(n_lstm_layers=2, lstm_kwargs=dict(dropout=0.25, bias=True))
    assert policy.lstm_actor.dropout == 0.25
    assert policy.lstm_critic.dropout == 0.25


@pytest.mark.parametrize(
    ("policy_kwargs", "message"),
    [
        (dict(lstm_hidden_size=64), r"lstm_hidden_size=64 disagrees with the RIM hidden size .* = 32"),
        (dict(shared_lstm=True), r"shared_lstm=True and enable_critic_lstm=True conflict"),
        (
            dict(shared_lstm=True, enable_critic_lstm=False, share_features_extractor=False),
            r"shared_lstm=True requires share_features_extractor=True",
        ),
        (dict(lstm_kwargs=dict(bidirectional=True)), r"lstm_kwargs bidirectional=True is not supported"),
        (dict(lstm_kwargs=dict(num_units=4)), r"lstm_kwargs 'num_units' is not an nn.LSTM argument"),
        (
            dict(lstm_kwargs=dict(dropout=0.1), rim_kwargs={**TINY_RIM, "dropout": 0.2}),
            r"dropout=0.1 conflicts with rim_kwargs dropout=0.2",
        ),
        (dict(rim_kwargs={**TINY_RIM, "num_layers": 2}), r"'num_layers' .* set by n_lstm_layers"),
        (dict(rim_kwargs={**TINY_RIM, "batch_first": True}), r"'batch_first' .* set by"),
        (dict(rim_kwargs={**TINY_RIM, "hidden_size": 32}), r"rim_kwargs 'hidden_size' is not a RIM argument"),
        (dict(rim_kwargs={**TINY_RIM, "unit_size": "8"}), r"unit_size must be a positive integer, got '8'"),
        (dict(rim_kwargs={**TINY_RIM, "top_k": 5}), r"top_k must be between 1 and num_units=4, got 5"),
        (dict(rim_kwargs=[4, 8]), r"rim_kwargs must be a dict"),
        (dict(n_lstm_layers=0), r"n_lstm_layers must be a positive integer, got 0"),
    ],
)
def test_conflicting_options_raise_value_error(policy_kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _policy(**policy_kwargs)


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        dict(shared_lstm=True),
        dict(shared_lstm=True, enable_critic_lstm=False, share_features_extractor=False),
    ],
    ids=["critic-rim", "separate-extractors"],
)
def test_shared_rim_conflicts_are_caught_as_sb3_contrib_reports_them(policy_kwargs: dict[str, Any]) -> None:
    # sb3-contrib's LSTM policy asserts these; code that catches its AssertionError keeps working.
    with pytest.raises(AssertionError):
        _policy(**policy_kwargs)
    with pytest.raises(AssertionError):
        RecurrentActorCriticPolicy(
            spaces.Box(-1, 1, (5,)), spaces.Discrete(2), _constant_lr, lstm_hidden_size=8, **policy_kwargs
        )


def test_rollout_masks_are_readable_from_callbacks() -> None:
    class RecordMasks(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.masks: list[th.Tensor] = []

        def _on_step(self) -> bool:
            self.masks.append(self.model.policy.lstm_actor.last_active.clone())
            return True

    callback = RecordMasks()
    model = RecurrentPPO(
        MlpRimPolicy,
        make_vec_env("CartPole-v1", n_envs=2, seed=0),
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        n_epochs=1,
        seed=0,
        policy_kwargs=dict(rim_kwargs=TINY_RIM, n_lstm_layers=2),
    )
    model.learn(N_STEPS * 2, callback=callback)
    assert len(callback.masks) == N_STEPS
    masks = th.stack(callback.masks)
    # (steps, L=1, layers, envs, units): exactly top_k active units per env, layer and step.
    assert masks.shape == (N_STEPS, 1, 2, 2, 4)
    assert masks.dtype == th.bool
    assert (masks.sum(-1) == 2).all()


def _sequence_batch(n_seq: int, seq_len: int, features_dim: int) -> tuple[th.Tensor, th.Tensor]:
    """Sequence-major features ``(n_seq * L, D)`` and episode starts ``(n_seq * L,)`` with
    resets at the first step of some sequences and in the middle of others."""
    generator = th.Generator().manual_seed(0)
    features = th.randn(n_seq * seq_len, features_dim, generator=generator)
    starts = th.zeros(n_seq, seq_len)
    starts[0, 0] = 1.0
    starts[1, 3] = 1.0
    starts[2, [1, 5]] = 1.0
    return features, starts.flatten()


def _initial_states(policy: RimActorCriticPolicy, n_seq: int) -> tuple[th.Tensor, th.Tensor]:
    generator = th.Generator().manual_seed(1)
    shape = (policy.lstm_actor.num_layers, n_seq, policy.lstm_output_dim)
    return th.randn(shape, generator=generator), th.randn(shape, generator=generator)


def test_sequence_with_resets_runs_the_rim_once() -> None:
    policy = _policy()
    calls = []
    policy.lstm_actor.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    features, starts = _sequence_batch(n_seq=3, seq_len=7, features_dim=5)
    policy._process_sequence(features, _initial_states(policy, 3), starts, policy.lstm_actor)
    assert calls == [th.Size([7, 3, 5])]


def test_one_sequence_call_equals_step_by_step_processing() -> None:
    policy = _policy(n_lstm_layers=2)
    policy.set_training_mode(False)
    rim = policy.lstm_actor
    n_seq, seq_len = 3, 7
    features, starts = _sequence_batch(n_seq, seq_len, features_dim=5)
    states = _initial_states(policy, n_seq)

    with th.no_grad():
        output, (h_n, c_n) = policy._process_sequence(features, states, starts, rim)
        sequence_masks = rim.last_active.clone()
        step_features = rearrange(features, "(n l) d -> l n d", n=n_seq)
        step_starts = rearrange(starts, "(n l) -> l n", n=n_seq)
        step_outputs, step_masks, step_states = [], [], states
        for t in range(seq_len):
            step_output, step_states = policy._process_sequence(
                step_features[t], step_states, step_starts[t], rim
            )
            step_outputs.append(step_output)
            step_masks.append(rim.last_active)

    stepped = rearrange(th.stack(step_outputs), "l n h -> (n l) h")
    assert (output - stepped).abs().max() < 1e-5
    assert (h_n - step_states[0]).abs().max() < 1e-5
    assert (c_n - step_states[1]).abs().max() < 1e-5
    assert th.equal(sequence_masks, th.cat(step_masks))


def test_sequence_call_matches_sb3_contrib_per_step_loop() -> None:
    policy = _policy()
    policy.set_training_mode(False)
    features, starts = _sequence_batch(n_seq=3, seq_len=7, features_dim=5)
    states = _initial_states(policy, 3)
    with th.no_grad():
        ours, (h_ours, c_ours) = policy._process_sequence(features, states, starts, policy.lstm_actor)
        theirs, (h_theirs, c_theirs) = RecurrentActorCriticPolicy._process_sequence(
            features, states, starts, policy.lstm_actor
        )
    assert (ours - theirs).abs().max() < 1e-5
    assert (h_ours - h_theirs).abs().max() < 1e-5
    assert (c_ours - c_theirs).abs().max() < 1e-5


def _observations(env_id: str, n: int) -> np.ndarray:
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    collected = [obs]
    for _ in range(n - 1):
        obs, *_ = env.step(env.action_space.sample())
        collected.append(obs)
    return np.stack(collected)


def _rollout(
    model: RecurrentPPO, observations: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Deterministic predict over ``observations`` one step at a time, carrying the state."""
    actions, states, state = [], [], None
    for obs, start in zip(observations, starts, strict=True):
        action, state = model.predict(
            obs[None], state=state, episode_start=np.array([start]), deterministic=True
        )
        actions.append(action)
        states.append(state)
    return np.concatenate(actions), states


def test_predict_carries_state_and_episode_start_resets_it() -> None:
    model = RecurrentPPO(MlpRimPolicy, "Pendulum-v1", seed=0, policy_kwargs=dict(rim_kwargs=TINY_RIM))
    observations = _observations("Pendulum-v1", 6)
    no_starts = np.zeros(6, dtype=bool)
    actions, states = _rollout(model, observations, no_starts)

    # Carried across calls, the state equals the RIM's over the whole sequence at once.
    policy = model.policy
    with th.no_grad():
        features = policy.extract_features(th.as_tensor(observations), policy.pi_features_extractor)
        zeros = th.zeros(1, 1, TINY_HIDDEN)
        _, (h_n, c_n) = policy._process_sequence(features, (zeros, zeros), th.zeros(6), policy.lstm_actor)
    assert np.abs(states[-1][0] - h_n.numpy()).max() < 1e-5
    assert np.abs(states[-1][1] - c_n.numpy()).max() < 1e-5

    # The state matters: a fresh state at the last step gives another hidden state.
    _, fresh_state = model.predict(observations[-1:], deterministic=True)
    assert np.abs(fresh_state[0] - states[-1][0]).max() > 1e-4

    # episode_start=True at step 3 is the same as starting from a zero state there.
    reset_starts = no_starts.copy()
    reset_starts[3] = True
    reset_actions, reset_states = _rollout(model, observations, reset_starts)
    restarted_actions, restarted_states = _rollout(model, observations[3:], no_starts[3:])
    np.testing.assert_array_equal(reset_actions[:3], actions[:3])
    np.testing.assert_allclose(reset_actions[3:], restarted_actions, atol=1e-6)
    np.testing.assert_allclose(reset_states[-1][0], restarted_states[-1][0], atol=1e-6)


def test_saved_model_loads_with_identical_actions_and_states(tmp_path: Path) -> None:
    policy_kwargs = dict(
        rim_kwargs={**TINY_RIM, "cell": "gru"}, share_features_extractor=False, n_lstm_layers=2
    )
    model = RimPPO(
        "MlpRimPolicy",
        "Pendulum-v1",
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        seed=0,
        policy_kwargs=policy_kwargs,
    )
    model.learn(N_TIMESTEPS)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip")

    assert type(loaded.policy) is RimActorCriticPolicy
    assert loaded.policy.lstm_actor.cell == "gru" and loaded.policy.lstm_actor.num_layers == 2
    observations = _observations("Pendulum-v1", 10)
    starts = np.zeros(10, dtype=bool)
    starts[[0, 5]] = True
    actions, states = _rollout(model, observations, starts)
    loaded_actions, loaded_states = _rollout(loaded, observations, starts)
    np.testing.assert_array_equal(actions, loaded_actions)
    for (h, c), (loaded_h, loaded_c) in zip(states, loaded_states, strict=True):
        np.testing.assert_array_equal(h, loaded_h)
        np.testing.assert_array_equal(c, loaded_c)


def test_saved_policy_loads_with_its_rim_options(tmp_path: Path) -> None:
    policy = _policy(n_lstm_layers=2, enable_critic_lstm=False, share_features_extractor=False)
    policy.save(tmp_path / "policy.pt")
    loaded = RimActorCriticPolicy.load(tmp_path / "policy.pt")
    assert loaded.lstm_actor.num_layers == 2 and loaded.lstm_critic is None
    assert loaded.lstm_actor.num_units == 4 and loaded.lstm_actor.top_k == 2
    observations = np.random.default_rng(0).uniform(-1, 1, (4, 5)).astype(np.float32)
    actions, state = policy.predict(observations, deterministic=True)
    loaded_actions, loaded_state = loaded.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actions, loaded_actions)
    np.testing.assert_array_equal(state[0], loaded_state[0])


def test_saved_model_keeps_its_comm_read_and_an_older_model_gets_a_clear_error(
    tmp_path: Path,
) -> None:
    model = RimPPO(
        "MlpRimPolicy",
        "CartPole-v1",
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        policy_kwargs=dict(rim_kwargs={**TINY_RIM, "comm_read": "linear"}),
    )
    model.save(tmp_path / "linear.zip")
    assert RecurrentPPO.load(tmp_path / "linear.zip").policy.lstm_actor.comm_read == "linear"

    # A model saved before comm_read existed: linear weights, no comm_read in its kwargs.
    del model.policy_kwargs["rim_kwargs"]["comm_read"]
    model.save(tmp_path / "old.zip")
    with pytest.raises(ValueError, match=r"saved weights use comm_read='linear'.*custom_objects"):
        RecurrentPPO.load(tmp_path / "old.zip")
    policy_kwargs = {**model.policy_kwargs, "rim_kwargs": {**TINY_RIM, "comm_read": "linear"}}
    loaded = RecurrentPPO.load(tmp_path / "old.zip", custom_objects={"policy_kwargs": policy_kwargs})
    assert loaded.policy.lstm_actor.comm_read == "linear"


def test_plain_recurrent_ppo_loads_a_rim_model_in_a_fresh_process(tmp_path: Path) -> None:
    model = RecurrentPPO(
        MlpRimPolicy,
        "CartPole-v1",
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        seed=0,
        policy_kwargs=dict(rim_kwargs=TINY_RIM),
    )
    model.learn(N_TIMESTEPS)
    model.save(tmp_path / "model.zip")
    observations = _observations("CartPole-v1", 8)
    np.save(tmp_path / "obs.npy", observations)
    actions, states = _rollout(model, observations, np.zeros(8, dtype=bool))

    # The fresh interpreter imports only sb3-contrib: loading must import rim_agents itself.
    script = """
import json, sys
import numpy as np
from sb3_contrib import RecurrentPPO
model = RecurrentPPO.load("model.zip")
state, actions = None, []
for obs in np.load("obs.npy"):
    action, state = model.predict(obs[None], state=state, episode_start=np.array([False]), deterministic=True)
    actions.append(int(action[0]))
json.dump({"policy": type(model.policy).__module__ + "." + type(model.policy).__name__,
           "actions": actions, "h": state[0].tolist()}, sys.stdout)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = json.loads(result.stdout)
    assert loaded["policy"] == "rim_agents.policies.RimActorCriticPolicy"
    assert loaded["actions"] == actions.tolist()
    np.testing.assert_allclose(np.array(loaded["h"]), states[-1][0], atol=1e-6)


def test_rimppo_resolves_rim_and_lstm_policy_names() -> None:
    assert RimPPO.policy_aliases["MlpRimPolicy"] is RimActorCriticPolicy
    assert RimPPO.policy_aliases["CnnRimPolicy"] is RimActorCriticCnnPolicy
    assert RimPPO.policy_aliases["MultiInputRimPolicy"] is RimMultiInputActorCriticPolicy
    rim_model = RimPPO("MlpRimPolicy", "CartPole-v1", policy_kwargs=dict(rim_kwargs=TINY_RIM))
    lstm_model = RimPPO("MlpLstmPolicy", "CartPole-v1", policy_kwargs=dict(lstm_hidden_size=TINY_HIDDEN))
    assert isinstance(rim_model.policy.lstm_actor, RIM)
    assert isinstance(lstm_model.policy.lstm_actor, nn.LSTM)
    assert rim_model.policy.lstm_actor.hidden_size == lstm_model.policy.lstm_actor.hidden_size == TINY_HIDDEN


def test_minigrid_cnn_maps_either_channel_layout_to_features_dim() -> None:
    channels_last = spaces.Box(0, 255, (7, 7, 3), np.uint8)
    channels_first = spaces.Box(0, 255, (3, 7, 7), np.uint8)
    last, first = MiniGridCNN(channels_last), MiniGridCNN(channels_first, features_dim=64)
    first.load_state_dict(last.state_dict())
    grid = th.randint(0, 11, (5, 7, 7, 3)).float()
    features = last(grid)
    assert features.shape == (5, 64)
    assert th.equal(features, first(grid.permute(0, 3, 1, 2)))
    # A fully observable 9x9 grid leaves 6x6 after the three 2x2 convolutions.
    assert (
        MiniGridCNN(spaces.Box(0, 255, (9, 9, 3), np.uint8), features_dim=16).linear[0].in_features
        == 64 * 6 * 6
    )


def test_minigrid_cnn_pads_grids_smaller_than_four_cells() -> None:
    # A 3x3 view: each 2x2 convolution pads one cell and grows the side by 1 (3 -> 6).
    cnn = MiniGridCNN(spaces.Box(0, 255, (3, 3, 3), np.uint8), features_dim=16)
    assert cnn.linear[0].in_features == 64 * 6 * 6
    assert cnn(th.randint(0, 11, (2, 3, 3, 3)).float()).shape == (2, 16)


def test_minigrid_cnn_one_hot_encodes_each_code_in_its_own_channels() -> None:
    cnn = MiniGridCNN(spaces.Box(0, 255, (3, 3, 3), np.uint8), features_dim=16, one_hot=True)
    assert cnn.cnn[0].in_channels == 11 + 6 + 4
    key = th.tensor([[[1, 1, 1], [1, 1, 1], [5, 1, 1]], [[0] * 3] * 3, [[0] * 3] * 3]).float()  # (C, H, W)
    planes = _one_hot_codes(key[None])
    assert planes.shape == (1, 21, 3, 3)
    assert planes.sum(1).eq(3).all()  # one object, one colour, one state per cell
    assert planes[0, 5, 2, 0] == 1 and planes[0, 1, 2, 0] == 0  # the key's object channel
    assert planes[0, 11 + 0, 2, 0] == 1 and planes[0, 17 + 0, 2, 0] == 1  # colour 0, state 0
    assert cnn(key[None]).shape == (1, 16)  # a (3, 3, 3) space is channels-first, as the 3x3 view gives it
    # A fully observable grid holds the agent's direction (0-3) in the state channel.
    agent = th.zeros(1, 3, 3, 3)
    agent[0, :, 1, 1] = th.tensor([10.0, 0.0, 3.0])
    assert _one_hot_codes(agent)[0, 17 + 3, 1, 1] == 1


@pytest.mark.parametrize(
    ("space", "kwargs", "message"),
    [
        (spaces.Box(0, 1, (4, 10, 10), np.uint8), {}, r"needs MiniGrid's 3 codes per cell"),
    ],
)
def test_minigrid_cnn_one_hot_rejects_other_grids(space: spaces.Space, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MiniGridCNN(space, one_hot=True, **kwargs)
    cnn = MiniGridCNN(spaces.Box(0, 255, (7, 7, 3), np.uint8), one_hot=True)
    bad = th.zeros(1, 7, 7, 3)
    bad[0, 0, 0, 1] = 6.0  # colour 6 does not exist
    with pytest.raises(ValueError, match=r"channel 1 holds codes outside 0..5"):
        cnn(bad)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (spaces.Discrete(4), r"needs a 3-D Box observation space"),
        (spaces.Box(0, 255, (7, 7), np.uint8), r"needs a 3-D Box observation space"),
    ],
)
def test_minigrid_cnn_rejects_other_observation_spaces(space: spaces.Space, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MiniGridCNN(space)


def test_minigrid_training_with_images_divided_by_255_fails_fast() -> None:
    model = RecurrentPPO(
        CnnRimPolicy,
        _minigrid_env(),
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        seed=0,
        policy_kwargs=dict(rim_kwargs=TINY_RIM, features_extractor_class=MiniGridCNN),
    )
    with pytest.raises(ValueError, match=r"pass normalize_images=False"):
        model.learn(N_STEPS)
    assert model.num_timesteps == 0


class NoVelocityObservation(gym.ObservationWrapper):
    """CartPole with the cart and pole velocities hidden: only (x, theta) are observed, so
    the policy must infer the velocities from memory."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        box = env.observation_space
        self.observation_space = spaces.Box(box.low[[0, 2]], box.high[[0, 2]], dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[[0, 2]]


def _cartpole_no_velocity() -> gym.Env:
    return NoVelocityObservation(gym.make("CartPole-v1"))


@pytest.mark.slow
def test_rim_policy_solves_cartpole_without_velocities() -> None:
    # Solved threshold: mean return >= 175 over 20 deterministic episodes (max 500); a
    # memoryless policy cannot infer the velocities and stays far below it.
    threshold = 175.0
    env = VecNormalize(make_vec_env(_cartpole_no_velocity, n_envs=8, seed=0), norm_reward=False)
    model = RimPPO(
        "MlpRimPolicy",
        env,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        learning_rate=lambda progress: 1e-3 * progress,
        clip_range=lambda progress: 0.2 * progress,
        gamma=0.98,
        gae_lambda=0.8,
        ent_coef=0.0,
        seed=0,
        policy_kwargs=dict(
            ortho_init=False,
            activation_fn=nn.ReLU,
            net_arch=dict(pi=[64], vf=[64]),
            rim_kwargs=dict(num_units=4, unit_size=16, top_k=3, input_dropout=0.0, comm_dropout=0.0),
        ),
    )
    model.learn(100_000)
    eval_env = VecNormalize(
        make_vec_env(_cartpole_no_velocity, n_envs=1, seed=100), training=False, norm_reward=False
    )
    eval_env.obs_rms = env.obs_rms
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    assert mean_return >= threshold, f"mean return {mean_return:.1f} over 20 episodes, needs {threshold}"
