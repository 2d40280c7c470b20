"""RimPPO's rollout buffer: minibatches of whole episode pieces packed into lanes, the
training forward that reproduces the rollout exactly, and which algorithm gets which buffer."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv

from rim_agents.buffers import RimDictRolloutBuffer, RimRolloutBuffer, lane_layout, pack_lanes
from rim_agents.extractors import FastNatureCNN
from rim_agents.policies import MlpRimPolicy
from rim_agents.ppo import RimPPO

TINY_RIM = dict(num_units=4, unit_size=8, top_k=2)


def _episode_starts(n_envs: int, n_steps: int, probability: float, seed: int = 0) -> np.ndarray:
    """``(E, T)`` random episode starts."""
    return (np.random.default_rng(seed).random((n_envs, n_steps)) < probability).astype(np.float32)


def _real_slots(layout: np.ndarray, total: int) -> list[np.ndarray]:
    """The step indices of each lane, without the empty slots."""
    return [lane[lane < total] for lane in layout]


def test_every_step_lands_in_one_minibatch_of_exactly_batch_size_steps() -> None:
    np.random.seed(0)
    starts = _episode_starts(8, 32, probability=0.15)
    layouts = lane_layout(starts, batch_size=48)
    real = [np.concatenate(_real_slots(layout, 256)) for layout in layouts]
    assert [len(steps) for steps in real] == [48] * 5 + [16]
    assert np.array_equal(np.sort(np.concatenate(real)), np.arange(256))
    whole = lane_layout(starts, batch_size=None)
    assert len(whole) == 1 and np.array_equal(np.sort(whole[0][whole[0] < 256]), np.arange(256))


@pytest.mark.parametrize("batch_size", [7, 48, 64, 256])
def test_lanes_continue_an_episode_or_reset_it_exactly_where_the_rollout_did(batch_size: int) -> None:
    np.random.seed(1)
    n_envs, n_steps = 8, 32
    total = n_envs * n_steps
    starts = _episode_starts(n_envs, n_steps, probability=0.2).reshape(-1)
    resets_inside_lanes = 0
    for layout in lane_layout(starts.reshape(n_envs, n_steps), batch_size):
        # Empty slots only at the end of a lane, and the lane length is the longest piece's.
        filled = layout < total
        assert (np.sort(filled, axis=1)[:, ::-1] == filled).all()
        assert filled[:, -1].any()
        for lane in _real_slots(layout, total):
            for before, step in itertools.pairwise(lane):
                follows = step == before + 1 and step % n_steps != 0
                # A step that does not follow its predecessor in the lane must reset the state.
                assert follows or starts[step] == 1, (before, step)
                resets_inside_lanes += int(not follows)
    assert resets_inside_lanes > 0


def test_packing_opens_a_lane_per_continuing_piece_then_fills_first_fit_longest_first() -> None:
    lengths = np.array([3, 5, 2, 2, 1])
    continues = np.array([True, False, True, False, False])
    lane, column, n_lanes = pack_lanes(lengths, continues)
    assert n_lanes == 3
    assert lane.tolist() == [0, 2, 1, 0, 1]
    assert column.tolist() == [0, 0, 0, 3, 2]


def test_the_example_of_docs_minibatches_packs_as_drawn() -> None:
    # env 0: a a a | b b b b b    env 1: c c c c c | d d | e
    starts = np.zeros((2, 8), dtype=np.float32)
    starts[0, 3] = starts[1, 5] = starts[1, 7] = 1.0
    names = np.array(list("aaabbbbbcccccdde."))
    (layout,) = lane_layout(starts, batch_size=None)
    assert ["".join(lane) for lane in names[layout]] == ["ccccc", "aaadd", "bbbbb", "e...."]


def test_short_episodes_pack_into_lanes_of_the_longest_piece_with_little_waste() -> None:
    # 16 envs x 64 steps of episodes about 5 steps long (a learned MiniGrid agent's), the
    # YAML's batch of 512: lanes as long as the longest piece, several episodes in each.
    np.random.seed(2)
    starts = _episode_starts(16, 64, probability=0.2, seed=2)
    layouts = lane_layout(starts, batch_size=512)
    assert sum(layout.size for layout in layouts) / starts.size < 1.05
    assert all(layout.shape[1] < 32 for layout in layouts)
    assert all(len(layout) > 512 / 32 for layout in layouts)


def test_minibatches_are_reshuffled_every_epoch() -> None:
    np.random.seed(3)
    starts = _episode_starts(4, 32, probability=0.1)
    first, second = lane_layout(starts, 32), lane_layout(starts, 32)
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def _collect_one_rollout(model: RecurrentPPO) -> None:
    model._setup_learn(model.n_steps * model.n_envs)
    callback = CallbackList([])
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


ROLLOUT_CASES: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "discrete": ("CartPole-v1", "MlpRimPolicy", {}),
    "box-actions": ("MountainCarContinuous-v0", "MlpRimPolicy", {}),
    "shared-rim": ("CartPole-v1", "MlpRimPolicy", {"shared_lstm": True, "enable_critic_lstm": False}),
    "shared-rim-both-losses": (
        "CartPole-v1",
        "MlpRimPolicy",
        {"shared_lstm": True, "enable_critic_lstm": False, "detach_critic": False},
    ),
    "no-critic-rim": ("CartPole-v1", "MlpRimPolicy", {"enable_critic_lstm": False}),
    "two-rim-layers": ("CartPole-v1", "MlpRimPolicy", {"n_lstm_layers": 2}),
    "gru-cell": ("CartPole-v1", "MlpRimPolicy", {"rim_kwargs": {**TINY_RIM, "cell": "gru"}}),
    "dict-obs": (SimpleMultiObsEnv, "MultiInputRimPolicy", {}),
    "fast-pixels": (
        lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=3),
        "CnnRimPolicy",
        {"features_extractor_class": FastNatureCNN},
    ),
}


@pytest.mark.parametrize("algorithm", [RimPPO, RecurrentPPO], ids=["lanes", "sb3-contrib"])
@pytest.mark.parametrize("case", ROLLOUT_CASES, ids=list(ROLLOUT_CASES))
def test_training_forward_reproduces_the_rollout_log_probs_and_values(
    case: str, algorithm: type[RecurrentPPO]
) -> None:
    # PPO's first ratio must be exactly 1: the update recomputes what the rollout computed.
    env_id, policy, policy_kwargs = ROLLOUT_CASES[case]
    policy_class = RimPPO.policy_aliases[policy]
    model = algorithm(
        policy_class,
        make_vec_env(env_id, n_envs=4, seed=0),
        n_steps=32,
        batch_size=40,  # not a multiple of n_steps: minibatch boundaries split episodes
        seed=0,
        policy_kwargs={"rim_kwargs": TINY_RIM, **policy_kwargs},
    )
    _assert_the_update_reproduces_the_rollout(model)


@pytest.mark.parametrize("max_lane_length", [1, 5, 16])
def test_lanes_capped_in_length_reproduce_the_rollout_from_its_stored_states(max_lane_length: int) -> None:
    model = RimPPO(
        "MlpRimPolicy",
        make_vec_env("CartPole-v1", n_envs=4, seed=0),
        n_steps=32,
        batch_size=40,
        seed=0,
        max_lane_length=max_lane_length,
        policy_kwargs={"rim_kwargs": TINY_RIM},
    )
    _assert_the_update_reproduces_the_rollout(model)
    for layout in model.rollout_buffer.get(model.batch_size):
        assert layout.episode_starts.numel() / layout.lstm_states.pi[0].shape[1] <= max_lane_length


@pytest.mark.parametrize("max_lane_length", [1, 4, 7, 32, 100])
def test_capped_lanes_cut_every_env_at_multiples_of_the_cap_and_nowhere_else(max_lane_length: int) -> None:
    np.random.seed(2)
    n_envs, n_steps = 8, 32
    total = n_envs * n_steps
    starts = _episode_starts(n_envs, n_steps, probability=0.05)
    flat_starts = starts.reshape(-1)
    layouts = lane_layout(starts, 64, max_lane_length)
    assert np.array_equal(
        np.sort(np.concatenate([layout[layout < total] for layout in layouts])), np.arange(total)
    )
    cap_cuts = 0
    for layout in layouts:
        assert layout.shape[1] <= min(max_lane_length, n_steps)
        for lane in _real_slots(layout, total):
            for before, step in itertools.pairwise(lane):
                follows = step == before + 1 and step % n_steps % max_lane_length != 0
                assert follows or flat_starts[step] == 1, (before, step)
            # A lane that continues an episode starts at a cut: the cap, an env's first step, or a
            # minibatch boundary (where SB3's shuffled deal splits a piece).
            cap_cuts += int(lane[0] % n_steps % max_lane_length == 0 and lane[0] % n_steps != 0)
    assert (cap_cuts > 0) == (max_lane_length < n_steps)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "8"])
def test_rimppo_rejects_a_max_lane_length_that_is_not_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match=r"max_lane_length must be a positive integer \(steps\) or None"):
        RimPPO("MlpRimPolicy", "CartPole-v1", max_lane_length=value, policy_kwargs={"rim_kwargs": TINY_RIM})


def test_max_lane_length_is_refused_where_sb3_contribs_sequences_are_used_and_kept_through_save(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=r"max_lane_length applies to the packed lanes only"):
        RimPPO("MlpLstmPolicy", "CartPole-v1", max_lane_length=8)
    model = RimPPO(
        "MlpRimPolicy", "CartPole-v1", n_steps=16, max_lane_length=8, policy_kwargs={"rim_kwargs": TINY_RIM}
    )
    model.save(tmp_path / "model.zip")
    assert RimPPO.load(tmp_path / "model.zip").rollout_buffer.max_lane_length == 8


@pytest.mark.parametrize("n_lstm_layers", [1, 2])
def test_the_lstm_policy_on_packed_lanes_reproduces_its_rollout(n_lstm_layers: int) -> None:
    # packed_minibatches=True gives sb3-contrib's LSTM the lanes; its nn.LSTM then steps
    # through lanes that hold episode starts, and must still recompute the rollout exactly.
    model = RimPPO(
        "MlpLstmPolicy",
        make_vec_env("CartPole-v1", n_envs=4, seed=0),
        n_steps=32,
        batch_size=40,
        seed=0,
        packed_minibatches=True,
        policy_kwargs={"lstm_hidden_size": 8, "n_lstm_layers": n_lstm_layers},
    )
    assert type(model.rollout_buffer) is RimRolloutBuffer
    _assert_the_update_reproduces_the_rollout(model)


def _assert_the_update_reproduces_the_rollout(model: RecurrentPPO) -> None:
    _collect_one_rollout(model)
    model.policy.set_training_mode(False)
    real_steps = 0
    for sample in model.rollout_buffer.get(model.batch_size):
        mask = sample.mask > 0
        actions = sample.actions
        if isinstance(model.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        with th.no_grad():
            values, log_prob, _ = model.policy.evaluate_actions(
                sample.observations, actions, sample.lstm_states, sample.episode_starts
            )
        assert (log_prob - sample.old_log_prob)[mask].abs().max() < 1e-5
        assert (values.flatten() - sample.old_values)[mask].abs().max() < 1e-5
        real_steps += int(mask.sum())
    assert real_steps == 4 * 32


def test_cartpole_rollout_resets_inside_the_lanes() -> None:
    # The consistency test above covers in-lane resets only if the rollout has some.
    model = RimPPO(
        "MlpRimPolicy",
        make_vec_env("CartPole-v1", n_envs=4, seed=0),
        n_steps=32,
        seed=0,
        policy_kwargs={"rim_kwargs": TINY_RIM},
    )
    _collect_one_rollout(model)
    resets = [
        (sample.episode_starts.view(sample.lstm_states.pi[0].shape[1], -1)[:, 1:] > 0).sum()
        for sample in model.rollout_buffer.get(40)
    ]
    assert sum(int(count) for count in resets) > 0


def test_rimppo_gives_rim_policies_the_lane_buffer_and_everything_else_sb3_contribs(tmp_path: Path) -> None:
    cartpole = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    rim = RimPPO("MlpRimPolicy", cartpole, n_steps=16, policy_kwargs={"rim_kwargs": TINY_RIM})
    assert type(rim.rollout_buffer) is RimRolloutBuffer
    multi = RimPPO(
        "MultiInputRimPolicy", SimpleMultiObsEnv(), n_steps=16, policy_kwargs={"rim_kwargs": TINY_RIM}
    )
    assert type(multi.rollout_buffer) is RimDictRolloutBuffer
    lstm = RimPPO("MlpLstmPolicy", cartpole, n_steps=16, policy_kwargs={"lstm_hidden_size": 8})
    assert type(lstm.rollout_buffer) is RecurrentRolloutBuffer
    plain = RecurrentPPO(MlpRimPolicy, cartpole, n_steps=16, policy_kwargs={"rim_kwargs": TINY_RIM})
    assert type(plain.rollout_buffer) is RecurrentRolloutBuffer
    plain_multi = RecurrentPPO("MultiInputLstmPolicy", SimpleMultiObsEnv(), n_steps=16)
    assert type(plain_multi.rollout_buffer) is RecurrentDictRolloutBuffer
    rim.save(tmp_path / "rim.zip")
    assert type(RimPPO.load(tmp_path / "rim.zip", env=cartpole).rollout_buffer) is RimRolloutBuffer
    assert (
        type(RecurrentPPO.load(tmp_path / "rim.zip", env=cartpole).rollout_buffer) is RecurrentRolloutBuffer
    )
    # packed_minibatches overrides the choice either way, and is kept through save and load.
    padded = RimPPO(
        "MlpRimPolicy", cartpole, n_steps=16, packed_minibatches=False, policy_kwargs={"rim_kwargs": TINY_RIM}
    )
    assert type(padded.rollout_buffer) is RecurrentRolloutBuffer
    packed = RimPPO("MlpLstmPolicy", cartpole, n_steps=16, packed_minibatches=True)
    assert type(packed.rollout_buffer) is RimRolloutBuffer
    for model, buffer in ((padded, RecurrentRolloutBuffer), (packed, RimRolloutBuffer)):
        model.save(tmp_path / "model.zip")
        assert type(RimPPO.load(tmp_path / "model.zip", env=cartpole).rollout_buffer) is buffer


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_rimppo_rejects_a_packed_minibatches_that_is_not_a_bool_or_none(value: Any) -> None:
    with pytest.raises(ValueError, match=r"packed_minibatches must be True, False or None .* got"):
        RimPPO("MlpLstmPolicy", "CartPole-v1", packed_minibatches=value)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True, "64"])
def test_rimppo_rejects_a_batch_size_that_is_not_a_positive_integer(batch_size: Any) -> None:
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer .* got"):
        RimPPO("MlpRimPolicy", "CartPole-v1", batch_size=batch_size, policy_kwargs={"rim_kwargs": TINY_RIM})


LEARN_CASES: dict[str, tuple[Any, str, dict[str, Any], dict[str, Any]]] = {
    "dict-obs": (SimpleMultiObsEnv, "MultiInputRimPolicy", {}, {}),
    "shared-rim": ("CartPole-v1", "MlpRimPolicy", {"shared_lstm": True, "enable_critic_lstm": False}, {}),
    "two-rim-layers-no-critic-rim": (
        "CartPole-v1",
        "MlpRimPolicy",
        {"n_lstm_layers": 2, "enable_critic_lstm": False},
        {},
    ),
    "gsde": ("Pendulum-v1", "MlpRimPolicy", {}, {"use_sde": True, "sde_sample_freq": 4}),
}


@pytest.mark.parametrize("case", LEARN_CASES, ids=list(LEARN_CASES))
def test_rimppo_trains_the_rim_weights_with_every_option(case: str) -> None:
    env_id, policy, policy_kwargs, algo_kwargs = LEARN_CASES[case]
    model = RimPPO(
        policy,
        make_vec_env(env_id, n_envs=2, seed=0),
        n_steps=16,
        batch_size=24,
        n_epochs=2,
        seed=0,
        policy_kwargs={"rim_kwargs": TINY_RIM, **policy_kwargs},
        **algo_kwargs,
    )
    before = th.cat([p.detach().flatten() for p in model.policy.lstm_actor.parameters()]).clone()
    model.learn(64)
    after = th.cat([p.detach().flatten() for p in model.policy.lstm_actor.parameters()])
    assert model.num_timesteps == 64
    assert th.isfinite(after).all()
    assert (after - before).abs().max() > 0


def test_image_observations_reach_a_channels_last_network_in_nhwc_order() -> None:
    env = make_vec_env(
        lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=3), n_envs=2, seed=0
    )
    cases = {True: {"features_extractor_class": FastNatureCNN}, False: {}}
    for channels_last, kwargs in cases.items():
        model = RimPPO(
            "CnnRimPolicy",
            env,
            n_steps=16,
            batch_size=16,
            seed=0,
            policy_kwargs={"rim_kwargs": TINY_RIM, **kwargs},
        )
        assert model.rollout_buffer.channels_last_images == channels_last
        _collect_one_rollout(model)
        observations = next(iter(model.rollout_buffer.get(16))).observations
        assert observations.dtype == th.uint8 and observations.dim() == 4
        assert observations.is_contiguous(memory_format=th.channels_last) == channels_last
        # the NCHW contents are the same either way
        assert th.equal(observations[:, :, 0, 0], observations.contiguous()[:, :, 0, 0])
