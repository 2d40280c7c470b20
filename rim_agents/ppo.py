"""RimPPO: sb3-contrib's RecurrentPPO that also knows the RIM policy names."""

from __future__ import annotations

from typing import ClassVar

from sb3_contrib import RecurrentPPO
from stable_baselines3.common.policies import BasePolicy

from rim_agents.policies import CnnRimPolicy, MlpRimPolicy, MultiInputRimPolicy


class RimPPO(RecurrentPPO):
    """
    :class:`sb3_contrib.RecurrentPPO`, unchanged, whose ``policy_aliases`` add
    ``"MlpRimPolicy"``, ``"CnnRimPolicy"`` and ``"MultiInputRimPolicy"`` to sb3-contrib's
    ``"MlpLstmPolicy"``, ``"CnnLstmPolicy"`` and ``"MultiInputLstmPolicy"``, so both run
    side by side from the same string-configured code:

    ``RimPPO("MlpRimPolicy", "CartPole-v1", policy_kwargs=dict(rim_kwargs=dict(top_k=2)))``

    ``RecurrentPPO(MlpRimPolicy, env)`` with the class works as well, and a model saved by
    either loads back with ``RecurrentPPO.load`` or ``RimPPO.load`` (the policy class is
    stored by reference and imported from ``rim_agents.policies`` on load).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **RecurrentPPO.policy_aliases,
        "MlpRimPolicy": MlpRimPolicy,
        "CnnRimPolicy": CnnRimPolicy,
        "MultiInputRimPolicy": MultiInputRimPolicy,
    }
