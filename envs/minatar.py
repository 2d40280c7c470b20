"""MinAtar (Young & Tian 2019, arXiv 1903.03176): five Atari games on a 10x10 grid, trainable on a CPU.

Ids ``MinAtar/<Game>-v1`` with ``<Game>`` one of Asterix, Breakout, Freeway, Seaquest,
SpaceInvaders: the minimal action set of each game (3 to 6 actions), as gymnax and its
published PPO numbers use. ``MinAtar/<Game>-v0`` (all 6 actions, MinAtar's own agents) is
accepted too. Gymnasium >= 1.0 no longer loads MinAtar's plugin entry point, so this module
registers the ids (``minatar.gym.register_envs``) the first time it is asked about them.

The game is MinAtar's own, with its defaults: sticky actions (the previous action repeats
with probability 0.1) and difficulty that ramps up during a game. The observation is the
game's state, one binary channel per kind of object (Breakout 4, Asterix 4, Freeway 7,
SpaceInvaders 6, Seaquest 10), given here channels-first as ``float32`` of shape
(C, 10, 10) in {0, 1}: a float Box is not an image to SB3, so nothing divides it by 255 or
transposes it, and :class:`rim_agents.extractors.MinAtarCNN` reads it as it comes. Rewards
are the game's points, unclipped (one point per brick, per alien, per crossing...), and an
episode is one whole game, so the Monitor's returns are game scores as the MinAtar and
gymnax papers report them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.monitor import Monitor

from envs.ids import check_known_id

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
_PREFIX = "MinAtar/"
# Evaluation copies are built like training copies: MinAtar has no training-only wrappers.
EVALUATION_KWARGS: dict[str, Any] = {}


def _register() -> None:
    """Register the MinAtar ids with gymnasium, once. Done on first use rather than at import:
    importing minatar takes about a second (it loads matplotlib, seaborn and pandas), which
    runs on other families need not pay."""
    if f"{_PREFIX}Breakout-v1" not in gym.registry:  # registering twice would make gymnasium warn
        import minatar.gym

        minatar.gym.register_envs()


class ChannelsFirstFloat(gym.ObservationWrapper):
    """``(10, 10, C)`` bool -> ``(C, 10, 10)`` float32 in {0, 1}: the layout and type the policy reads.

    MinAtar declares a bool Box; SB3 would treat a uint8 one as an image and divide it by 255.

    :param env: a MinAtar environment
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        height, width, channels = env.observation_space.shape  # type: ignore[misc]
        self.observation_space = spaces.Box(0.0, 1.0, shape=(channels, height, width), dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(observation.transpose(2, 0, 1), dtype=np.float32)


class PixelFrames(gym.Wrapper):
    """Render ``uint8`` RGB frames of ``10 * scale`` pixels a side instead of MinAtar's 10x10 floats.

    MinAtar's ``rgb_array`` is one float colour per cell, too small for a video player.

    :param env: a MinAtar environment made with ``render_mode="rgb_array"``
    :param scale: pixels per cell
    """

    def __init__(self, env: gym.Env, scale: int = 16) -> None:
        super().__init__(env)
        self.scale = scale

    def render(self) -> Any:
        frame = self.env.render()
        if frame is None:
            return None
        pixels = (np.asarray(frame, dtype=np.float64) * 255).round().astype(np.uint8)  # (10, 10, 3)
        # (10, 10, 3) -> (10 * scale, 10 * scale, 3): each cell becomes a scale x scale square.
        return pixels.repeat(self.scale, axis=0).repeat(self.scale, axis=1)


def env_ids() -> list[str]:
    """The MinAtar ids, sorted: ``MinAtar/<Game>-v0`` (6 actions) and ``-v1`` (minimal action set)."""
    _register()
    return sorted(env_id for env_id in gym.registry if owns(env_id))


def owns(env_id: str) -> bool:
    """Whether ``env_id`` names this family (registered or not: ``MinAtar/Breakot-v1`` is still ours).

    :param env_id: an environment id
    """
    return env_id.startswith(_PREFIX)


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches unless ``env_id`` is a MinAtar id.

    :param env_id: e.g. ``"MinAtar/Breakout-v1"``
    """
    check_known_id(env_id, env_ids(), f"a MinAtar game ({', '.join(GAMES)})")


def make_minatar(
    env_id: str,
    seed: int | None = None,
    sticky_action_prob: float = 0.1,
    difficulty_ramping: bool = True,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """Build one MinAtar game (Monitor outermost, so episode statistics are game scores).

    :param env_id: ``MinAtar/<Game>-v1`` (minimal action set) or ``-v0`` (all 6 actions)
    :param seed: seeds the game (its levels and sticky actions) and the action space; None leaves
        them unseeded
    :param sticky_action_prob: probability that the previous action repeats instead of the chosen
        one (MinAtar's default 0.1; 0 makes the game deterministic given its seed)
    :param difficulty_ramping: let the game speed up as it goes on (MinAtar's default)
    :param max_episode_steps: stop a game after this many steps; None plays it to its end
        (Freeway ends itself after 2,500 steps; the others when the player loses)
    :param render_mode: None, or ``"rgb_array"`` for video frames (160x160 ``uint8``)
    :return: the environment; its observation space is a (C, 10, 10) ``float32`` Box
    """
    check_env_id(env_id)
    if isinstance(sticky_action_prob, bool) or not 0.0 <= float(sticky_action_prob) <= 1.0:
        raise ValueError(f"sticky_action_prob={sticky_action_prob!r} must be a probability in [0, 1]")
    if not isinstance(difficulty_ramping, bool):
        raise ValueError(f"difficulty_ramping={difficulty_ramping!r} must be True or False")
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps={max_episode_steps!r} must be a positive integer or None")
    # The passive checker's only complaints are about MinAtar's float 10x10 frames, which PixelFrames fixes.
    env = gym.make(
        env_id,
        disable_env_checker=True,
        render_mode=render_mode,
        sticky_action_prob=float(sticky_action_prob),
        difficulty_ramping=difficulty_ramping,
    )
    if max_episode_steps is not None:
        env = TimeLimit(env, max_episode_steps)
    env = ChannelsFirstFloat(env)
    if render_mode == "rgb_array":
        env = PixelFrames(env)
    env = Monitor(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


# The family builder that envs.make_env calls in each vectorised copy.
make = make_minatar
