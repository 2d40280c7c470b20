"""RimPPO: sb3-contrib's RecurrentPPO with the RIM policy names and, for RIM policies, a
rollout buffer whose minibatches carry no padding waste (:mod:`rim_agents.buffers`)."""

from __future__ import annotations

from typing import ClassVar

from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.policies import BasePolicy

from rim_agents.buffers import RimDictRolloutBuffer, RimRolloutBuffer
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
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **RecurrentPPO.policy_aliases,
        "MlpRimPolicy": MlpRimPolicy,
        "CnnRimPolicy": CnnRimPolicy,
        "MultiInputRimPolicy": MultiInputRimPolicy,
    }

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
        if not isinstance(self.policy, RimActorCriticPolicy):
            return
        # The parent built sb3-contrib's buffer; this one has the same storage.
        rim = self.policy.lstm_actor
        buffer_class = (
            RimDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else RimRolloutBuffer
        )
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, rim.num_layers, self.n_envs, rim.hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )
