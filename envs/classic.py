"""Classic-control memory tasks: CartPole with its velocities hidden.

``CartPoleNoVel-v1`` (the name rl-baselines3-zoo gives the same task) is gymnasium's
``CartPole-v1`` observing only the cart position and the pole angle, each divided by the
value at which the episode ends (2.4 and 12 degrees), so both lie in [-1, 1]. The
velocities must be inferred from consecutive observations: a memoryless policy cannot
balance the pole for long, a recurrent one can (return up to 500).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor

# Observation index -> the value at which CartPole-v1 terminates (x: 2.4, theta: 12 degrees).
_OBSERVED = {0: 2.4, 2: 12 * 2 * math.pi / 360}
ENV_IDS = ("CartPoleNoVel-v1",)
EVALUATION_KWARGS: dict[str, Any] = {}


class NoVelocityObservation(gym.ObservationWrapper):
    """Keep CartPole's position and angle, scaled to [-1, 1]; drop both velocities.

    :param env: a ``CartPole-v1`` environment
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._index = np.array(list(_OBSERVED))
        self._scale = np.array(list(_OBSERVED.values()), dtype=np.float32)
        self.observation_space = spaces.Box(-2.0, 2.0, shape=(len(_OBSERVED),), dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (observation[self._index] / self._scale).astype(np.float32)


def env_ids() -> list[str]:
    """The ids of this family."""
    return list(ENV_IDS)


def owns(env_id: str) -> bool:
    """Whether ``env_id`` names this family (a close typo is still ours, to get a hint).

    :param env_id: an environment id
    """
    return bool(difflib.get_close_matches(env_id, ENV_IDS, n=1, cutoff=0.8))


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming the known ids when ``env_id`` is not one of them.

    :param env_id: e.g. ``"CartPoleNoVel-v1"``
    """
    if env_id not in ENV_IDS:
        raise ValueError(f"env_id={env_id!r} is not a classic memory task; known: {', '.join(ENV_IDS)}")


def make_classic(env_id: str, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build one wrapped environment (Monitor outermost, so episode statistics are raw returns).

    :param env_id: ``"CartPoleNoVel-v1"``
    :param seed: seeds the first ``reset`` and the action space; None leaves them unseeded
    :param render_mode: None, or ``"rgb_array"`` for video frames
    """
    check_env_id(env_id)
    env = Monitor(NoVelocityObservation(gym.make("CartPole-v1", render_mode=render_mode)))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


# The family builder that envs.make_env calls in each vectorised copy.
make = make_classic
