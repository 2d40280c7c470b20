"""RimPPO: sb3-contrib's RecurrentPPO with the RIM policy names and, for RIM policies, a
rollout buffer whose minibatches carry no padding waste (:mod:`rim_agents.buffers`)."""

from __future__ import annotations

from typing import Any, ClassVar

from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import BasePolicy

from rim_agents.buffers import RimDictRolloutBuffer, RimRolloutBuffer
from rim_agents.checks import check_device
from rim_agents.extractors import FastNatureCNN
from rim_agents.policies import CnnRimPolicy, MlpRimPolicy, MultiInputRimPolicy, RimActorCriticPolicy


class RimPPO(RecurrentPPO):
    """
    :class:`sb3_contrib.RecurrentPPO` whose ``policy_aliases`` add ``"MlpRimPolicy"``,
    ``"CnnRimPolicy"`` and ``"MultiInputRimPolicy"`` to sb3-contrib's ``"MlpLstmPolicy"``,
    ``"CnnLstmPolicy"`` and ``"MultiInputLstmPolicy"``, so both run side by side from the
    same string-configured code:

    ``RimPPO("MlpRimPolicy", "CartPole-v1", policy_kwargs=dict(rim_kwargs=dict(top_k=2)))``

    With a RIM policy the rollout buffer is :class:`rim_agents.buffers.RimRolloutBuffer`
    (or its dict variant): minibatches of ``batch_size`` steps whose episodes are packed
    into lanes, reset inside the RIM's time loop, instead of sb3-contrib's one padded
    sequence per episode. The losses are the same; the computed slots and sequential steps
    are fewer (docs/minibatches.md). An LSTM policy keeps sb3-contrib's buffer, unchanged.

    ``RecurrentPPO(MlpRimPolicy, env)`` with the class works as well (with sb3-contrib's
    buffer), and a model saved by either loads back with ``RecurrentPPO.load`` or
    ``RimPPO.load`` (the policy class is stored by reference and imported from
    ``rim_agents.policies`` on load).

    :param packed_minibatches: which buffer builds the minibatches. None (default): the
        packed lanes for RIM policies, sb3-contrib's padded sequences for the others.
        ``False``: sb3-contrib's for every policy; ``True``: the packed lanes for every
        policy, the LSTM included (its ``nn.LSTM`` then runs step by step in any lane that
        holds an episode start: correct, slower). The two differ in which episode pieces
        share a minibatch, so this is how to compare policies under the same minibatches.
    :param max_lane_length: with the packed lanes, cut every env's rollout into pieces of at
        most this many steps (truncated backpropagation through time; each piece starts from
        the state stored during the rollout, as sb3-contrib's sequences do). Shorter lanes
        mean more of them per minibatch, which a CPU computes faster (docs/atari.md); None
        (default) cuts only at episode starts and rollout ends.
    Other arguments are sb3-contrib's ``RecurrentPPO``'s.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **RecurrentPPO.policy_aliases,
        "MlpRimPolicy": MlpRimPolicy,
        "CnnRimPolicy": CnnRimPolicy,
        "MultiInputRimPolicy": MultiInputRimPolicy,
    }

    def __init__(
        self,
        *args: Any,
        packed_minibatches: bool | None = None,
        max_lane_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        if packed_minibatches is not None and not isinstance(packed_minibatches, bool):
            raise ValueError(
                f"packed_minibatches must be True, False or None (packed for RIM policies only), "
                f"got {packed_minibatches!r}"
            )
        if max_lane_length is not None and (
            isinstance(max_lane_length, bool) or not isinstance(max_lane_length, int) or max_lane_length < 1
        ):
            raise ValueError(
                "max_lane_length must be a positive integer (steps) or None (no limit), "
                f"got {max_lane_length!r}"
            )
        check_device(kwargs.get("device", "auto"))  # SB3 would quietly train on the CPU instead
        # read by _setup_model, which __init__ calls
        self.packed_minibatches = packed_minibatches
        self.max_lane_length = max_lane_length
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        batch_size = self.batch_size
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be a positive integer (steps per minibatch) or None (the whole "
                f"rollout), got {batch_size!r}"
            )
        super()._setup_model()
        packed = self.packed_minibatches
        if not (isinstance(self.policy, RimActorCriticPolicy) if packed is None else packed):
            if self.max_lane_length is not None:
                raise ValueError(
                    "max_lane_length applies to the packed lanes only; this model uses sb3-contrib's "
                    "padded sequences (set packed_minibatches=True, or leave max_lane_length unset)"
                )
            return
        # The parent built sb3-contrib's buffer; this one has the same storage.
        assert isinstance(self.policy, RecurrentActorCriticPolicy)  # every alias here is recurrent
        num_layers, _, hidden_size = self.policy.lstm_hidden_state_shape
        buffer_class = (
            RimDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else RimRolloutBuffer
        )
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, num_layers, self.n_envs, hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )
        self.rollout_buffer.max_lane_length = self.max_lane_length
        extractor = self.policy.features_extractor
        self.rollout_buffer.channels_last_images = (
            isinstance(extractor, FastNatureCNN) and extractor.channels_last
        )
