"""Environment factories, chosen by environment family from the id.

``make_env(env_id, seed, idx, **env_kwargs)`` returns a thunk that builds one wrapped,
seeded environment with a Monitor, for ``DummyVecEnv`` / ``SubprocVecEnv``. A family is a
module with ``owns(env_id)``, ``env_ids()``, ``check_env_id(env_id)``,
``make(env_id, seed, **kwargs)`` (one seeded, wrapped environment) and ``EVALUATION_KWARGS``: the options an
evaluation environment overrides (Atari: whole games, unclipped rewards; MiniGrid: none).
An unknown id gets the same hint in every family (``envs.ids``: the closest known ids).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import gymnasium as gym

from envs import atari, classic, minatar, minigrid, popgym
from envs.ids import close_matches

FAMILIES: dict[str, ModuleType] = {
    "minigrid": minigrid,
    "atari": atari,
    "classic": classic,
    "minatar": minatar,
    "popgym": popgym,
}


def env_family(env_id: str) -> str:
    """Name the family of ``env_id``; ValueError listing close ids when no family owns it.

    :param env_id: e.g. ``"MiniGrid-MemoryS7-v0"``
    """
    for name, module in FAMILIES.items():
        if module.owns(env_id):
            return name
    known = [known_id for module in FAMILIES.values() for known_id in module.env_ids()]
    close = close_matches(env_id, known)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"env_id={env_id!r} belongs to no supported family ({', '.join(FAMILIES)}){hint}")


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches unless ``env_id`` is a known id of a supported family.

    :param env_id: e.g. ``"MiniGrid-MemoryS7-v0"``
    """
    FAMILIES[env_family(env_id)].check_env_id(env_id)


def make_env(
    env_id: str, seed: int | None = None, idx: int = 0, evaluation: bool = False, **env_kwargs: Any
) -> Callable[[], gym.Env]:
    """Return a thunk that builds copy ``idx`` of ``env_id`` with its family's wrappers.

    :param env_id: environment id; the family is read from it (see :func:`env_family`)
    :param seed: base seed, copy ``idx`` gets ``seed + idx``
    :param idx: index of this copy in the vectorised environment
    :param evaluation: build an evaluation copy: the family's ``EVALUATION_KWARGS`` override
        ``env_kwargs`` (Atari: whole games and unclipped rewards, so returns are game scores)
    :param env_kwargs: family-specific options (MiniGrid: ``observation``, ``fully_observable``, ...;
        Atari: ``frame_stack``, ``max_episode_steps``, ...)
    """
    family = FAMILIES[env_family(env_id)]
    family.check_env_id(env_id)  # now, not when the thunk runs in a worker process
    if evaluation:
        env_kwargs = {**env_kwargs, **family.EVALUATION_KWARGS}
    copy_seed = None if seed is None else seed + idx  # parallel copies see different levels

    def thunk() -> gym.Env:
        return family.make(env_id, seed=copy_seed, **env_kwargs)

    return thunk


__all__ = ["FAMILIES", "check_env_id", "env_family", "make_env"]
